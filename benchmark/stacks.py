"""The benchmark's input: stacks shaped like the challenge's, of synthetic images or of a folder of real ones,
built once and cached.

Each N gets a folder `n<N>/input/` holding one stack of N images of 2400 x 2880 x 3 uint8 (R = G = B),
the content at the top-left and zero padding, uncompressed MetaImage, and `n<N>/recipe.json`, which tells
when a cached stack no longer fits the recipe. Synthetic images hold no skull, so the container takes its
fallback looks on them (a mirrored or turned image, `algorithm.inference.ORIENTATIONS`), which real
cephalograms do not: stacks of real images (`images`: a folder of them, or a stack file such as the challenge's
train_stack.mha, under `from-<its name>/`) time the usual path.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from algorithm.preprocessing import CHALLENGE_HEIGHT, CHALLENGE_LANDMARKS, CHALLENGE_WIDTH
from training.synthetic import SCANNER_CONTENT_SIZES

CHANNELS = 3
IMAGE_MB = CHALLENGE_HEIGHT * CHALLENGE_WIDTH * CHANNELS / 1e6
STACK_FORMAT = 1  # bump when the stack recipe changes: cached stacks are then rebuilt
IMAGE_ENDINGS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".mha"}


def say(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name (what `--images` makes stacks of)."""
    files = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_ENDINGS)
    if not files:
        raise SystemExit(f"error: {folder}: no images ({', '.join(sorted(IMAGE_ENDINGS))}) to build stacks of")
    return files


def source_names(images: Path, count: int) -> list[str]:
    """What the first `count` images of `images` come from: a folder's files, or a stack file with its size and time
    of change (its images are counted only when the stack is built, in the builder's process)."""
    if Path(images).is_dir():
        return [path.name for path in image_files(images)][:count]
    status = Path(images).stat()
    return [f"{Path(images).name} ({status.st_size} bytes, changed {status.st_mtime_ns} ns)"]


def source_images(images: Path, count: int) -> list[np.ndarray]:
    """The first `count` images of a folder (sorted by name) or of a stack file (in stack order), as 2D uint8 without
    a stack's zero padding, repeated in order where there are fewer."""
    from algorithm.reader import ImageStack, InputError
    from training.data import to_uint8

    if Path(images).is_dir():
        found = [read_8bit(path) for path in image_files(images)[:count]]
    else:
        try:
            stack = ImageStack(images)
            found = [to_uint8(image) for image in stack.read(range(min(count, len(stack))))]
        except InputError as error:
            raise SystemExit(f"error: {error}") from None
    return [found[index % len(found)] for index in range(count)]


def stack_recipe(count: int, seed: int, images: Path | None = None) -> dict:
    """What a stack of `count` images is made of; a cached stack with another recipe is rebuilt."""
    content = ({"content_sizes": SCANNER_CONTENT_SIZES, "seed": seed} if images is None else
               {"from": str(Path(images).absolute()), "files": source_names(images, count)})
    return {"format": STACK_FORMAT, "images": count, **content, "landmarks": CHALLENGE_LANDMARKS,
            "height": CHALLENGE_HEIGHT, "width": CHALLENGE_WIDTH}


def build_stacks(counts: list[int], stack_root: Path, seed: int, images: Path | None = None) -> dict[int, Path]:
    """One input folder per N holding one stack (of synthetic images, or of the first N of `images`, a folder or a
    stack file, repeated where it holds fewer); reused when its recipe and size match."""
    if images is not None:
        stack_root = stack_root / f"from-{Path(images).absolute().name}"
    folders: dict[int, Path] = {}
    missing = []
    for count in sorted(set(counts)):
        folder = stack_root / f"n{count}"
        stack = folder / "input" / f"stack{count}.mha"
        recipe_file = folder / "recipe.json"
        cached = (stack.is_file() and recipe_file.is_file()
                  and json.loads(recipe_file.read_text()) == json.loads(json.dumps(stack_recipe(count, seed, images)))
                  and stack.stat().st_size >= count * IMAGE_MB * 1e6)
        if not cached:
            missing.append(count)
        folders[count] = folder / "input"
    if missing:
        start = time.perf_counter()
        say(f"building {'synthetic images' if images is None else 'images of ' + str(images)} for stacks of "
            f"{missing} (once; cached in {stack_root})")
        # In a separate process: memory this process keeps would count in every measured child's
        # peak, since a forked child's ru_maxrss includes the pages it shares before exec.
        builder = multiprocessing.get_context("spawn").Process(target=write_stacks,
                                                                 args=(missing, stack_root, seed, images))
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the stacks failed (exit code {builder.exitcode})")
        say(f"stacks built in {time.perf_counter() - start:.0f} s")
    return folders


def read_8bit(path: Path) -> np.ndarray:
    """One image file as 2D uint8 (16-bit ones scaled by their maximum), as the challenge's stacks hold them."""
    import SimpleITK as sitk

    from training.data import to_uint8

    return to_uint8(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def write_stacks(counts: list[int], stack_root: Path, seed: int, images_from: Path | None = None) -> None:
    """Write the stacks of the given sizes (synthetic_set is deterministic per seed, and a folder's images are
    taken in order, so N images are the first N of max(N))."""
    from training.pack import write_stack
    from training.synthetic import synthetic_set

    if images_from is None:
        images, _ = synthetic_set(max(counts), CHALLENGE_LANDMARKS, seed, SCANNER_CONTENT_SIZES)
    else:
        images = source_images(images_from, max(counts))
    for count in counts:
        folder = stack_root / f"n{count}"
        shutil.rmtree(folder, ignore_errors=True)
        partial = folder / "partial" / f"stack{count}.mha"
        write_stack(partial, images[:count], count)
        (folder / "input").mkdir(parents=True)
        partial.rename(folder / "input" / partial.name)
        partial.parent.rmdir()
        (folder / "recipe.json").write_text(json.dumps(stack_recipe(count, seed, images_from), indent=2) + "\n")
        say(f"  wrote {folder / 'input' / partial.name}")


def stack_file(folder: Path) -> Path:
    """The stack in an input folder of `build_stacks`."""
    return next(folder.glob("*.mha"))


def warm_page_cache(path: Path) -> None:
    """Read the file once, so that no measured run pays for the disk."""
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
