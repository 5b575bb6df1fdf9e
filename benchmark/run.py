"""Speed and memory of `python -m algorithm.process` against the organisers' baseline, on challenge-shaped stacks.

    python -m benchmark.run [--sizes 10 20 40] [--repeats 3] [--baseline-sizes ...] [--skip-baseline]

For each N it builds (once, cached) a stack like the challenge's: N images of 2400 x 2880 x 3
uint8 (R = G = B), synthetic content of 1935 x 2400 or 1340 x 1671 pixels (or, with --images, the real
cephalograms of a folder or of a stack file such as the challenge's train_stack.mha) at the top-left and
zero padding, uncompressed MetaImage (20.7 MB an image). Synthetic images hold no skull, so the container
also looks at them mirrored and turned, as it would at a cephalogram exported so: their times are a worst
case, real images' the usual one. Every measurement is a whole process
(python startup, imports, model load, reading, writing the JSON): wall time, CPU time and peak
resident memory (ru_maxrss of the child from os.wait4). Medians over the repeats. Also:
the share of each phase (benchmark.phases, in-process) and the --threads / --batch-size options
with the largest deviation of their landmarks from the default run's.
Prints a table and saves everything as JSON under benchmark-results/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata as package_metadata
from pathlib import Path

from algorithm.devices import DEVICES
from algorithm.metadata import MOUNTED_MODEL_DIR, ModelError, ModelMetadata, locate_model
from benchmark.parity import max_deviation_px
from benchmark.report import DUPLICATE_CHECK_PHASE, check_goals, render
from benchmark.stacks import IMAGE_MB, build_stacks, say, stack_file, warm_page_cache
from training.synthetic import SCANNER_CONTENT_SIZES

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "benchmark-results"
OPTION_CONFIGS = [  # (label, --threads, --batch-size); the first is the reference
    ("default", 0, 1), ("threads 1", 1, 1), ("threads 2", 2, 1),
    ("threads 1, batch 4", 1, 4), ("threads 2, batch 4", 2, 4),
]


class BenchmarkError(RuntimeError):
    pass


# ---------------------------------------------------------------- processes

def run_measured(command: list[str], stdout_path: Path, log_path: Path) -> dict:
    """Run a command to completion; its wall time, CPU time and peak resident memory."""
    with open(stdout_path, "wb") as stdout, open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BenchmarkError(f"{' '.join(command)} exited with {process.returncode} (log: {log_path}):\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6}


def model_option(args: argparse.Namespace) -> list[str]:
    """--model when one is given; without it, each process loads the model the container would (`locate_model`)."""
    return ["--model", str(args.model)] if args.model else []


def ours_command(input_dir: Path, output: Path, args: argparse.Namespace, threads: int = 0,
                 batch: int = 1) -> list[str]:
    return [sys.executable, "-m", "algorithm.process", "--input", str(input_dir), "--output", str(output),
            "--device", args.device, "--threads", str(threads), "--batch-size", str(batch), *model_option(args)]


def baseline_command(input_dir: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark.baseline", "--input", str(input_dir), "--output", str(output)]


def summarize_runs(runs: list[dict], count: int) -> dict:
    return {
        "images": count,
        "runs": runs,
        "wall_s": statistics.median(run["wall_s"] for run in runs),
        "s_per_image": statistics.median(run["wall_s"] for run in runs) / count,
        "cpu_s": statistics.median(run["cpu_s"] for run in runs),
        "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
        "peak_rss_mb_max": max(run["peak_rss_mb"] for run in runs),
    }


def linear_fit(summaries: dict[int, dict]) -> dict | None:
    """Least-squares wall = fixed + N * marginal over the sizes (needs two sizes or more)."""
    counts = sorted(summaries)
    if len(counts) < 2:
        return None
    walls = [summaries[n]["wall_s"] for n in counts]
    mean_n, mean_w = statistics.fmean(counts), statistics.fmean(walls)
    marginal = (sum((n - mean_n) * (w - mean_w) for n, w in zip(counts, walls))
                / sum((n - mean_n) ** 2 for n in counts))
    return {"marginal_s_per_image": marginal, "fixed_s": mean_w - marginal * mean_n}


# ---------------------------------------------------------------- phases

def summarize_phases(profiles: list[dict]) -> dict:
    """Per-image phases pooled over the runs; the stack's duplicate check spread over its images."""
    count = profiles[0]["images"]
    per_image = {DUPLICATE_CHECK_PHASE: [1000 * profile["duplicate_check_s"] / count for profile in profiles]}
    for phase in profiles[0]["per_image_ms"]:
        per_image[phase] = [ms for profile in profiles for ms in profile["per_image_ms"][phase]]
    means = {phase: statistics.fmean(values) for phase, values in per_image.items()}
    total = sum(means.values())
    median_of = lambda group, key: statistics.median(profile[group][key] for profile in profiles)  # noqa: E731
    return {
        "images": count,
        "runs": len(profiles),
        "providers": profiles[0]["providers"],
        "per_image": {phase: {"mean_ms": means[phase], "median_ms": statistics.median(per_image[phase]),
                              "max_ms": max(per_image[phase]), "share": means[phase] / total if total else 0.0}
                      for phase in per_image},
        "per_image_total_ms": total,
        "fixed_s": {key: median_of("fixed_s", key) for key in profiles[0]["fixed_s"]},
        "memory_mb": {key: median_of("memory_mb", key) for key in profiles[0]["memory_mb"]},
        "profiles": profiles,
    }


# ---------------------------------------------------------------- the run

def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for name in ("numpy", "SimpleITK", "onnxruntime-gpu", "onnxruntime", "torch", "scikit-image", "evalutils"):
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "packages": versions,
            "commit": commit, "load_start": os.getloadavg()[0]}


def model_info(explicit: Path | None) -> dict:
    """The model the container loads given `--model explicit` (`locate_model`); a ModelError if it cannot load it."""
    folder, origin = locate_model(explicit)
    meta = ModelMetadata.load(folder)
    return {"folder": str(folder), "origin": origin, "input_height": meta.codec.input_height,
            "input_width": meta.codec.input_width, "stages": 2 if meta.refinement else 1,
            "trained_on": meta.trained_on, "landmarks": meta.num_landmarks}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.run",
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40],
                        help="stack sizes N to measure (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of ours per N; medians are reported (default: %(default)s)")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=None,
                        help="stack sizes for the baseline (default: --sizes); it takes about 5 s an image")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="runs of the baseline per N (default: %(default)s)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the baseline")
    parser.add_argument("--options-size", type=int, default=None,
                        help="N for the --threads/--batch-size comparison (default: the smallest of --sizes)")
    parser.add_argument("--skip-options", action="store_true", help="do not compare --threads/--batch-size")
    parser.add_argument("--phases-size", type=int, default=None,
                        help="N for the phase profile (default: the largest of --sizes)")
    parser.add_argument("--skip-phases", action="store_true", help="do not profile the phases")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="our --device (default: %(default)s, as the container runs)")
    parser.add_argument("--model", type=Path, default=None,
                        help="our model folder (default: the one the container would load: one mounted at "
                        f"{MOUNTED_MODEL_DIR}, else algorithm/model)")
    parser.add_argument("--seed", type=int, default=2023, help="seed of the synthetic images (default: %(default)s)")
    parser.add_argument("--images", type=Path, default=None,
                        help="build the stacks of this folder's images (the first N, sorted by name, repeated where "
                        "it holds fewer), or of a stack file's (the challenge's train_stack.mha: its first N), "
                        "instead of synthetic ones: real cephalograms take the container's usual "
                        "path, while synthetic images, which hold no skull, also take its looks for a mirrored or "
                        "turned image (never written into the project; cached under --stack-dir)")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_RESULTS / "stacks",
                        help="where the stacks are built and cached (default: benchmark-results/stacks)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                        help="where each run's folder run-DATE-TIME/ (results.json, outputs/, logs/) goes "
                        "(default: benchmark-results)")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.baseline_repeats < 1:
        parser.error("sizes and repeats must be positive")
    if args.images is not None and not (args.images.is_dir() or args.images.is_file()):
        parser.error(f"--images {args.images}: no such folder or file")
    args.sizes = sorted(set(args.sizes))
    args.baseline_sizes = [] if args.skip_baseline else sorted(set(args.baseline_sizes or args.sizes))
    args.options_size = None if args.skip_options else (args.options_size or min(args.sizes))
    args.phases_size = None if args.skip_phases else (args.phases_size or max(args.sizes))
    if args.baseline_sizes:
        missing = [name for name in ("torch", "skimage") if importlib.util.find_spec(name) is None]
        if missing:
            parser.error(f"the baseline needs {' and '.join(missing)}: pip install -r benchmark/requirements.txt "
                         "(or run with --skip-baseline)")
    return args


def estimated_minutes(args: argparse.Namespace) -> float:
    """On a quiet 2-core machine: ours about 2.5 s startup + 0.15 s an image, the baseline 5 s + 5 s an image."""
    ours_s = lambda n: 2.5 + 0.15 * n  # noqa: E731
    seconds = (ours_s(min(args.sizes)) + args.repeats * sum(ours_s(n) for n in args.sizes)
               + args.baseline_repeats * sum(5 + 5 * n for n in args.baseline_sizes)
               + (args.repeats * ours_s(args.phases_size) if args.phases_size else 0)
               + (len(OPTION_CONFIGS) * args.repeats * ours_s(args.options_size) if args.options_size else 0))
    return seconds / 60


def prepare_stacks(args: argparse.Namespace) -> dict[int, Path]:
    """The input folder of every N any measurement needs, built or reused, its stack in the page cache."""
    counts = set(args.sizes) | set(args.baseline_sizes) | {n for n in (args.options_size, args.phases_size) if n}
    folders = build_stacks(sorted(counts), args.stack_dir, args.seed, args.images)
    for folder in folders.values():
        warm_page_cache(stack_file(folder))
    return folders


@dataclass
class Measurer:
    """Measures whole processes of one run, each writing its JSON to run_dir/outputs and its logs to run_dir/logs."""

    run_dir: Path
    folders: dict[int, Path]

    def measure(self, kind: str, count: int, repeat: int, command_for: Callable[[Path, Path], list[str]]) -> dict:
        name = f"{kind}-n{count}-r{repeat}"
        output = self.run_dir / "outputs" / f"{name}.json"
        result = run_measured(command_for(self.folders[count], output), self.run_dir / "logs" / f"{name}.stdout",
                              self.run_dir / "logs" / f"{name}.log")
        say(f"{name}: {result['wall_s']:.2f} s ({result['wall_s'] / count:.3f} s/image), "
            f"peak {result['peak_rss_mb']:.0f} MB")
        return {**result, "output": str(output)}

    def repeat(self, kind: str, counts: list[int], repeats: int, command_for) -> dict[int, list[dict]]:
        """`repeats` runs at each N, the sizes interleaved so that a passing load spreads over all of them."""
        runs: dict[int, list[dict]] = {n: [] for n in counts}
        for repeat in range(1, repeats + 1):
            for count in counts:
                runs[count].append(self.measure(kind, count, repeat, command_for))
        return runs


def measure_sizes(args: argparse.Namespace, measurer: Measurer) -> dict:
    """Ours and the baseline at their sizes: the runs with their medians, and the least-squares fits over N."""
    ours_for = partial(ours_command, args=args)
    measurer.measure("warmup", min(args.sizes), 0, ours_for)  # untimed: imports come from the page cache afterwards
    ours = measurer.repeat("ours", args.sizes, args.repeats, ours_for)
    if args.baseline_sizes:  # the baseline's libraries into the page cache too, untimed
        subprocess.run([sys.executable, "-c", "import torch, skimage.transform, evalutils, SimpleITK"],
                       cwd=REPO, check=True)
    baseline = measurer.repeat("baseline", args.baseline_sizes, args.baseline_repeats, baseline_command)
    summaries = {name: {n: summarize_runs(runs_of_n, n) for n, runs_of_n in runs.items()}
                 for name, runs in (("ours", ours), ("baseline", baseline))}
    by_name = {name: {str(n): summary for n, summary in by_n.items()} for name, by_n in summaries.items()}
    return {**by_name, "fits": {name: linear_fit(by_n) for name, by_n in summaries.items()}}


def profile_phases(args: argparse.Namespace, stack: Path, run_dir: Path) -> dict:
    """benchmark.phases on one stack, once per repeat, pooled."""
    profiles = []
    for repeat in range(1, args.repeats + 1):
        name = f"phases-n{args.phases_size}-r{repeat}"
        command = [sys.executable, "-m", "benchmark.phases", "--input", str(stack), "--device", args.device]
        run_measured(command + model_option(args), run_dir / "logs" / f"{name}.stdout",
                     run_dir / "logs" / f"{name}.log")
        profiles.append(json.loads((run_dir / "logs" / f"{name}.stdout").read_text()))
        say(f"{name}: done")
    return summarize_phases(profiles)


def compare_options(args: argparse.Namespace, measurer: Measurer) -> dict:
    """Each --threads / --batch-size configuration's speed and memory, and its landmarks' distance from the first's."""
    count, configs = args.options_size, []
    for label, threads, batch in OPTION_CONFIGS:
        command_for = partial(ours_command, args=args, threads=threads, batch=batch)
        runs = measurer.repeat(f"option-t{threads}-b{batch}", [count], args.repeats, command_for)[count]
        configs.append({"label": label, "threads": threads, "batch_size": batch, **summarize_runs(runs, count)})
    reference = Path(configs[0]["runs"][0]["output"])
    for config in configs:
        config["max_deviation_px"] = max(max_deviation_px(reference, Path(run["output"])) for run in config["runs"])
    return {"images": count, "repeats": args.repeats, "configs": configs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    model = model_info(args.model)  # before any stack is built: a model the container cannot load ends it here
    machine = machine_info()
    if machine["load_start"] > 0.5:
        say(f"warning: load average {machine['load_start']:.2f}: the machine is busy, timings will be pessimistic")
    folders = prepare_stacks(args)  # before the run folder is made: stacks that cannot be built leave none
    run_dir = args.results_dir / f"run-{started:%Y%m%d-%H%M%S}"
    (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    say(f"measuring; about {estimated_minutes(args):.1f} min on a quiet machine; run folder {run_dir}")
    results: dict = {
        "started": f"{started:%Y-%m-%d %H:%M:%S}",
        "command": [sys.executable, "-m", "benchmark.run", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine,
        "model": model,
        "settings": {"sizes": args.sizes, "repeats": args.repeats, "baseline_sizes": args.baseline_sizes,
                     "baseline_repeats": args.baseline_repeats, "device": args.device,
                     "options_size": args.options_size, "phases_size": args.phases_size, "seed": args.seed,
                     "image_mb": IMAGE_MB, "content_sizes_hw": SCANNER_CONTENT_SIZES,
                     "images": None if args.images is None else str(args.images.absolute())},
        "stacks": {str(n): {"path": str(stack_file(folder)), "mb": stack_file(folder).stat().st_size / 1e6}
                   for n, folder in folders.items()},
    }
    measurer = Measurer(run_dir, folders)
    results.update(measure_sizes(args, measurer))
    if args.phases_size:
        results["phases"] = profile_phases(args, stack_file(folders[args.phases_size]), run_dir)
    if args.options_size:
        results["options"] = compare_options(args, measurer)
    results["machine"]["load_end"] = os.getloadavg()[0]
    goals = check_goals(results)
    results["goals"] = list(goals.values())
    results["table"] = render(results, goals)
    results_file = run_dir / "results.json"
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"\nresults: {results_file}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchmarkError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
