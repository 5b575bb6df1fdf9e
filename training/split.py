"""The train/validation/test split of each data set: made once from the seed, written beside the run as
split.json and into the exported model's metadata, and read back wherever a split is needed.

Recomputing it from the seed would silently move images between training and test whenever the way
splits are made, or the order of a data set's images, changed. A split read back is checked against the
data it is applied to: the same data sets, the same number of images and the same image names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from training.data import LandmarkData

SPLIT_FILE = "split.json"
PARTS = ("train", "val", "test")

Split = dict[str, dict]  # data-set name -> {"train": [...], "val": [...], "test": [...], "images": N, "names": hash}


def make_split(num_images: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """A deterministic train/val/test split of image indices from a seed (a part of at least one image whenever
    its fraction is above 0; both at 0 train on every image)."""
    order = np.random.default_rng(seed).permutation(num_images).tolist()
    num_test, num_val = (max(1, int(round(num_images * fraction))) if fraction > 0 else 0
                         for fraction in (test_fraction, val_fraction))
    split = {"test": order[:num_test], "val": order[num_test:num_test + num_val], "train": order[num_test + num_val:]}
    if not split["train"]:
        raise ValueError(f"{num_images} images leave none for training with these fractions")
    return {name: sorted(indices) for name, indices in split.items()}


def names_digest(data: LandmarkData) -> str:
    """A short hash of a data set's image names in order (a stack's are its slice numbers)."""
    return hashlib.sha256("\n".join(data.image_names()).encode()).hexdigest()[:16]


def new_split(datasets: list[LandmarkData], seed: int, val_fraction: float, test_fraction: float) -> Split:
    """Every data set split from the seed, with what identifies the images it was made for."""
    return {data.name: {**make_split(len(data), seed, val_fraction, test_fraction), "images": len(data),
                        "names": names_digest(data)} for data in datasets}


def check_split(split: Split, datasets: list[LandmarkData], source: str) -> None:
    """Refuse a split (read from `source`) that was not made for these data sets: another name, image count or
    image list would put training images into the test part."""
    for data in datasets:
        if data.name not in split:
            raise ValueError(f"{source}: no split for data set {data.name!r} (it has {', '.join(split) or 'none'}); "
                             "use the data sets the split was made for")
        part = split[data.name]
        if part.get("images") != len(data):
            raise ValueError(f"{source}: the split of {data.name!r} was made for {part.get('images')} images, the "
                             f"data set has {len(data)}; use the data the split was made for")
        if part.get("names") != names_digest(data):
            raise ValueError(f"{source}: the split of {data.name!r} was made for other images (their names or order "
                             "differ); use the data the split was made for")


def write_split(split: Split, folder: Path) -> Path:
    path = Path(folder) / SPLIT_FILE
    path.write_text(json.dumps(split, indent=2) + "\n")
    return path


def read_split(path: Path) -> Split:
    """A split.json, refused with its path when it cannot be read."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the split ({error})") from None
    if not isinstance(split, dict) or not all(isinstance(p, dict) and set(PARTS) <= set(p) for p in split.values()):
        raise ValueError(f"{path}: not a split (data-set names, each with train, val and test image indices)")
    return split


def require_split(split: Split | None, source: str) -> Split:
    """The split a model records (`training.split` in its metadata), refused when it records none."""
    if not split:
        raise ValueError(f"{source}: the model records no split of its training data; export it again with "
                         "python -m training.export from its run folder (which holds split.json)")
    return split


def recorded_split(split: Split | None, datasets: list[LandmarkData], source: str) -> Split:
    """The split a model records, refused when it records none or was made for other data."""
    check_split(require_split(split, source), datasets, source)
    return split


def run_split(folder: Path, datasets: list[LandmarkData]) -> Split:
    """A run folder's split.json, refused when it was made for other data."""
    path = Path(folder) / SPLIT_FILE
    split = read_split(path)
    check_split(split, datasets, str(path))
    return split


def part_of(split: Split, name: str, part: str, source: str, split_run: str = "") -> list[int]:
    """A data set's image indices in one part of the split, refused when that part is empty (a model trained on
    every image has no validation or test images to be scored on)."""
    indices = split[name][part]
    if not indices:
        hint = (f"; it was trained on every image: score the model of its split run, {split_run}, whose held-out "
                "images these were" if split_run else "")
        raise ValueError(f"{source}: its split holds no {part} images of {name!r}{hint}")
    return indices


def part_or_all(data: LandmarkData, part: str, split: Split | None, source: str, split_run: str = "") -> list[int]:
    """A data set's images to score: every one for `all`, else one part of the split a model records (refused as
    `recorded_split` and `part_of` refuse it)."""
    if part == "all":
        return list(range(len(data)))
    return part_of(recorded_split(split, [data], source), data.name, part, source, split_run)
