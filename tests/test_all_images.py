"""Training once more on every image (`python -m training.train --all-images SPLIT_RUN`), as the shipped model is:
the split run's recipe and epoch count, no validation, last.pt exported with a shape model whose detector spread
comes from the split run, and no held-out score claimed for it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATASET_COUNT, TINY_CONFIG, TINY_REFINE, run_module

from algorithm.metadata import ModelMetadata
from training.data import source_name
from training.shape_model import build_shape_model

pytestmark = pytest.mark.slow

SPLIT_RUN_EPOCHS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dataset) -> tuple[Path, Path]:
    """A split run of two epochs, then a run on every image made from it, paused after one epoch and resumed."""
    folder = tmp_path_factory.mktemp("all-images")
    split_run, every_image = folder / "split", folder / "split-all-images"
    result = run_module("training.train", "--config", TINY_CONFIG, "--images", synthetic_dataset.images_dir,
                        "--annotations", synthetic_dataset.annotations, "--output", split_run,
                        "--epochs", SPLIT_RUN_EPOCHS)
    assert result.returncode == 0, result.stderr
    paused = run_module("training.train", "--all-images", split_run, "--max-epochs-this-run", 1)
    assert paused.returncode == 0, paused.stderr
    assert "no validation images: all 2 epochs run, the model is the last (last.pt)" in paused.stdout
    assert (f"paused after epoch 1 of 2: resume with python -m training.train --output {every_image} --resume"
            in paused.stdout)
    result = run_module("training.train", "--output", every_image, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "epoch 2: loss" in result.stdout and "epoch 1: loss" not in result.stdout
    assert (f"trained 2 epochs without validation images: the model is the last epoch, {every_image / 'last.pt'}; "
            f"the held-out figures of {split_run} estimate it\nnext: python -m training.export --checkpoint "
            f"{every_image / 'last.pt'} --output OUTPUT_MODEL_FOLDER") in result.stdout
    return split_run, every_image


def test_it_repeats_the_split_runs_recipe_on_every_image(runs):
    split_run, every_image = runs
    config, recipe = (json.loads((folder / "config.json").read_text()) for folder in (every_image, split_run))
    changed = {"epochs": SPLIT_RUN_EPOCHS, "val_fraction": 0.0, "test_fraction": 0.0, "split_run": str(split_run),
               "output": str(every_image)}
    assert config == {**recipe, **changed}
    split = next(iter(json.loads((every_image / "split.json").read_text()).values()))
    assert (split["train"], split["val"], split["test"]) == (list(range(DATASET_COUNT)), [], [])
    rows = json.loads((every_image / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2] and not any("val_MRE" in row for row in rows)
    assert (every_image / "learning_curves.png").is_file() and not (every_image / "best.pt").exists()


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("all-images-export") / "model"
    result = run_module("training.export", "--checkpoint", runs[1] / "last.pt", "--output", folder)
    assert result.returncode == 0, result.stderr
    assert "added a shape model of" in result.stdout
    return folder


def test_its_export_names_both_runs_and_adds_the_split_runs_detector_spread(runs, exported, synthetic_dataset):
    split_run, every_image = runs
    metadata = ModelMetadata.load(exported)
    assert metadata.training["epoch"] == SPLIT_RUN_EPOCHS
    assert metadata.training["config"]["split_run"] == str(split_run)
    assert metadata.trained_on.endswith(f"; every image, as its split run {split_run}")
    complete = np.isfinite(synthetic_dataset.landmarks).all(axis=(1, 2))
    assert metadata.shape.num_shapes == complete.sum() == DATASET_COUNT - 1  # every image's shape
    skull_only = build_shape_model(synthetic_dataset.landmarks)
    # a detector trained for two epochs errs far beyond how skulls vary: its spread dominates every landmark's
    assert np.all(np.asarray(metadata.shape.spread) > 2 * np.asarray(skull_only.spread))
    assert np.allclose(metadata.shape.mean, skull_only.mean)


def test_it_has_no_held_out_score_to_claim(runs, exported, synthetic_dataset, tmp_path):
    result = run_module("training.evaluate", "--model", exported, "--images", synthetic_dataset.images_dir,
                        "--annotations", synthetic_dataset.annotations, "--split", "test", "--output", tmp_path)
    assert result.returncode == 1
    name = source_name(synthetic_dataset.images_dir)
    assert result.stderr.strip() == (f"error: {exported}: its split holds no test images of {name!r}; it was trained "
                                     f"on every image: score the model of its split run, {runs[0]}, whose held-out "
                                     "images these were")


def test_a_shape_model_without_validation_images_or_split_run_is_refused(exported, tmp_path):
    model = Path(shutil.copytree(exported, tmp_path / "model"))
    metadata = ModelMetadata.load(model)
    metadata.training["config"]["split_run"] = ""
    metadata.save(model)
    result = run_module("training.shape_model", "--model", model, "--overwrite")
    assert result.returncode == 1
    assert "no validation images to measure the detector's precision on, and no split run" in result.stderr


def test_the_pose_alone_is_measured_again_for_a_shape_model_whose_split_run_is_gone(exported, tmp_path):
    """--pose-only keeps the mean, modes and spreads (which need the split run) and measures the training frame and
    angles from the recorded training split alone: the frame as the export measured it, the angles added."""
    model = Path(shutil.copytree(exported, tmp_path / "model"))
    metadata = ModelMetadata.load(model)
    metadata.training["config"]["split_run"] = ""
    metadata.shape.angles = None
    metadata.save(model)
    result = run_module("training.shape_model", "--model", model, "--pose-only")
    assert result.returncode == 0, result.stderr
    measured, built = ModelMetadata.load(model).shape, ModelMetadata.load(exported).shape
    np.testing.assert_allclose(measured.frame, built.frame, rtol=1e-12)
    assert measured.angles == built.angles and measured.spread == built.spread
    lowest, median, highest = measured.angles
    assert lowest <= median <= highest and "training angles" in result.stdout
    metadata.shape = None
    metadata.save(model)
    result = run_module("training.shape_model", "--model", model, "--pose-only")
    assert result.returncode == 1 and "holds no shape model to measure the pose for" in result.stderr


def test_all_images_cannot_resume_or_take_other_data(runs, synthetic_dataset):
    refused = run_module("training.train", "--all-images", runs[0], "--resume")
    assert refused.returncode == 2 and "resume a run on every image with --output ITS_FOLDER --resume" in refused.stderr
    refused = run_module("training.train", "--all-images", runs[0], "--data", synthetic_dataset.images_dir,
                         synthetic_dataset.annotations)
    assert refused.returncode == 2 and "--data cannot change them" in refused.stderr


def test_a_second_stage_trains_on_every_image_on_the_first_stage_that_did(runs, exported, synthetic_dataset,
                                                                           tmp_path):
    """A second stage's split is its first stage's: --all-images on a second stage's split run needs --first-stage
    with the first stage trained on every image, and refuses the split run's own first stage."""
    first_stage = tmp_path / "split-model"
    assert run_module("training.export", "--checkpoint", runs[0] / "best.pt", "--output", first_stage).returncode == 0
    refine_split_run = tmp_path / "refine"
    result = run_module("training.train", "--config", TINY_REFINE, "--first-stage", first_stage,
                        "--images", synthetic_dataset.images_dir, "--annotations", synthetic_dataset.annotations,
                        "--output", refine_split_run, "--epochs", SPLIT_RUN_EPOCHS)
    assert result.returncode == 0, result.stderr
    refused = run_module("training.train", "--all-images", refine_split_run)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {first_stage}: this first stage holds validation and test images out")
    assert not Path(f"{refine_split_run}-all-images").exists()
    result = run_module("training.train", "--all-images", refine_split_run, "--first-stage", exported)
    assert result.returncode == 0, result.stderr
    every_image = Path(f"{refine_split_run}-all-images")
    assert f"no validation images: all {SPLIT_RUN_EPOCHS} epochs run, the model is the last (last.pt)" in result.stdout
    assert "first stage alone, validation MRE" not in result.stdout
    config = json.loads((every_image / "config.json").read_text())
    assert (config["stage"], config["first_stage"], config["split_run"]) == ("refine", str(exported),
                                                                             str(refine_split_run))
    split = next(iter(json.loads((every_image / "split.json").read_text()).values()))
    assert (split["train"], split["val"], split["test"]) == (list(range(DATASET_COUNT)), [], [])
    assert (every_image / "last.pt").is_file() and not (every_image / "best.pt").exists()
