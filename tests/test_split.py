"""The split: made once, written, read back and refused when it does not fit the data it is applied to."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import LandmarkData
from training.split import check_split, new_split, part_of, read_split, require_split, write_split
from training.stages import STAGES


def folder_data(name: str, files: list[str]) -> LandmarkData:
    """A data set of image files that are never read (the split needs only their names and number)."""
    count = len(files)
    return LandmarkData([Path(f) for f in files], np.zeros((count, 2, 2)), np.full(count, 0.1), ["A", "B"], name)


FILES = [f"{number:03d}.png" for number in range(1, 21)]


def test_a_split_written_reads_back_and_fits_its_data(tmp_path):
    datasets = [folder_data("hamedan", FILES), folder_data("isbi", FILES[:10])]
    split = new_split(datasets, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert read_split(write_split(split, tmp_path)) == split
    check_split(split, datasets, "split.json")
    assert split["hamedan"]["images"] == 20
    assert split["hamedan"]["names"] == hashlib.sha256("\n".join(FILES).encode()).hexdigest()[:16]
    for part in split.values():
        assert sorted(part["train"] + part["val"] + part["test"]) == list(range(part["images"]))


@pytest.mark.parametrize("other, message", [
    (folder_data("hamedan", FILES[:19]), "the split of 'hamedan' was made for 20 images, the data set has 19"),
    (folder_data("hamedan", FILES[::-1]), "the split of 'hamedan' was made for other images"),
    (folder_data("hamedan", FILES[:19] + ["999.png"]), "the split of 'hamedan' was made for other images"),
    (folder_data("tehran", FILES), "no split for data set 'tehran' (it has hamedan)"),
])
def test_a_split_made_for_other_images_is_refused_naming_its_source(other, message):
    split = new_split([folder_data("hamedan", FILES)], seed=0, val_fraction=0.15, test_fraction=0.15)
    with pytest.raises(ValueError) as refused:
        check_split(split, [other], "runs/x/split.json")
    assert str(refused.value).startswith(f"runs/x/split.json: {message}")


def test_a_model_without_a_split_and_a_file_that_is_not_one_are_refused(tmp_path):
    with pytest.raises(ValueError, match="^model: the model records no split"):
        require_split(None, "model")
    (tmp_path / "split.json").write_text('{"hamedan": {"train": [1]}}')
    with pytest.raises(ValueError, match="not a split"):
        read_split(tmp_path / "split.json")


def test_no_validation_and_no_test_part_trains_on_every_image():
    split = new_split([folder_data("hamedan", FILES)], seed=0, val_fraction=0, test_fraction=0)["hamedan"]
    assert (split["train"], split["val"], split["test"]) == (list(range(20)), [], [])
    held_out = new_split([folder_data("hamedan", FILES)], seed=0, val_fraction=0.01, test_fraction=0)["hamedan"]
    assert (len(held_out["val"]), held_out["test"]) == (1, [])


def test_an_empty_part_is_refused_pointing_to_the_split_run():
    split = new_split([folder_data("hamedan", FILES)], seed=0, val_fraction=0, test_fraction=0)
    with pytest.raises(ValueError) as refused:
        part_of(split, "hamedan", "test", "runs/all/model", split_run="runs/split")
    assert str(refused.value) == ("runs/all/model: its split holds no test images of 'hamedan'; it was trained on "
                                  "every image: score the model of its split run, runs/split, whose held-out images "
                                  "these were")
    assert part_of(split, "hamedan", "train", "runs/all/model") == list(range(20))


def test_a_split_seed_holds_out_the_same_images_whatever_the_run_seed():
    datasets = [folder_data("hamedan", FILES)]
    stage = STAGES["detect"]
    seed_0 = stage.split(TrainConfig(seed=0), datasets)
    assert stage.split(TrainConfig(seed=1, split_seed=0), datasets) == seed_0
    assert stage.split(TrainConfig(seed=1), datasets) != seed_0
