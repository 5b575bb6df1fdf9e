"""The benchmark's input: stacks shaped like the challenge's, of synthetic images, built once and cached.

Each N gets a folder `n<N>/input/` holding one stack of N images of 2400 x 2880 x 3 uint8 (R = G = B),
synthetic content at the top-left and zero padding, uncompressed MetaImage, and `n<N>/recipe.json`,
which tells when a cached stack no longer fits the recipe.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

from algorithm.preprocessing import CHALLENGE_HEIGHT, CHALLENGE_LANDMARKS, CHALLENGE_WIDTH
from training.synthetic import SCANNER_CONTENT_SIZES

CHANNELS = 3
IMAGE_MB = CHALLENGE_HEIGHT * CHALLENGE_WIDTH * CHANNELS / 1e6
STACK_FORMAT = 1  # bump when the stack recipe changes: cached stacks are then rebuilt


def say(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def stack_recipe(count: int, seed: int) -> dict:
    """What a stack of `count` images is made of; a cached stack with another recipe is rebuilt."""
    return {"format": STACK_FORMAT, "images": count, "seed": seed, "content_sizes": SCANNER_CONTENT_SIZES,
            "landmarks": CHALLENGE_LANDMARKS, "height": CHALLENGE_HEIGHT, "width": CHALLENGE_WIDTH}


def build_stacks(counts: list[int], stack_root: Path, seed: int) -> dict[int, Path]:
    """One input folder per N holding one stack; reused when its recipe and size match."""
    folders: dict[int, Path] = {}
    missing = []
    for count in sorted(set(counts)):
        folder = stack_root / f"n{count}"
        stack = folder / "input" / f"stack{count}.mha"
        recipe_file = folder / "recipe.json"
        cached = (stack.is_file() and recipe_file.is_file()
                  and json.loads(recipe_file.read_text()) == json.loads(json.dumps(stack_recipe(count, seed)))
                  and stack.stat().st_size >= count * IMAGE_MB * 1e6)
        if not cached:
            missing.append(count)
        folders[count] = folder / "input"
    if missing:
        start = time.perf_counter()
        say(f"building synthetic images for stacks of {missing} (once; cached in {stack_root})")
        # In a separate process: memory this process keeps would count in every measured child's
        # peak, since a forked child's ru_maxrss includes the pages it shares before exec.
        builder = multiprocessing.get_context("spawn").Process(target=write_stacks, args=(missing, stack_root, seed))
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the stacks failed (exit code {builder.exitcode})")
        say(f"stacks built in {time.perf_counter() - start:.0f} s")
    return folders


def write_stacks(counts: list[int], stack_root: Path, seed: int) -> None:
    """Write the stacks of the given sizes (synthetic_set is deterministic per seed, so N images
    are the first N of max(N))."""
    from training.pack import write_stack
    from training.synthetic import synthetic_set

    images, _ = synthetic_set(max(counts), CHALLENGE_LANDMARKS, seed, SCANNER_CONTENT_SIZES)
    for count in counts:
        folder = stack_root / f"n{count}"
        shutil.rmtree(folder, ignore_errors=True)
        partial = folder / "partial" / f"stack{count}.mha"
        write_stack(partial, images[:count], count)
        (folder / "input").mkdir(parents=True)
        partial.rename(folder / "input" / partial.name)
        partial.parent.rmdir()
        (folder / "recipe.json").write_text(json.dumps(stack_recipe(count, seed), indent=2) + "\n")
        say(f"  wrote {folder / 'input' / partial.name}")


def stack_file(folder: Path) -> Path:
    """The stack in an input folder of `build_stacks`."""
    return next(folder.glob("*.mha"))


def warm_page_cache(path: Path) -> None:
    """Read the file once, so that no measured run pays for the disk."""
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
