"""Speed and memory benchmark of the container's inference against the organisers' baseline.

    python -m benchmark.run --help       # the whole benchmark (stacks, processes, table, JSON)
    python -m benchmark.baseline --help  # the organisers' UNet baseline, re-created (random weights)
    python -m benchmark.phases --help    # in-process per-phase timing of our algorithm
"""
