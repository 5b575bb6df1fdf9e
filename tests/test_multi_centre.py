"""Several data sets in one run: naming, padding of shorter landmark lists, per-set splits, validation and
evaluation, and the command-line behaviour around them (no silent overwrite, clear errors)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, run_module

from training.data import load_sources, source_name
from training.split import PARTS, make_split


def subset_annotations(dataset, path: Path, landmarks: int, names: list[str] | None = None) -> Path:
    """The synthetic data set's JSON keeping only its first `landmarks` landmarks."""
    value = json.loads(dataset.annotations.read_text())
    value["points"] = [p for p in value["points"] if int(p["name"]) <= landmarks]
    value["landmarks"] = names or value["landmarks"][:landmarks]
    path.write_text(json.dumps(value))
    return path


def test_sources_are_named_uniquely_and_a_shorter_landmark_list_is_padded(synthetic_dataset, tmp_path):
    shorter = subset_annotations(synthetic_dataset, tmp_path / "three.json", 3)
    folder, again = load_sources([(synthetic_dataset.images_dir, synthetic_dataset.annotations),
                                  (synthetic_dataset.images_dir, shorter)])
    assert folder.name == source_name(synthetic_dataset.images_dir) and again.name == f"{folder.name}-2"
    assert again.landmarks.shape == folder.landmarks.shape
    assert again.landmark_names == synthetic_dataset.names
    assert np.isnan(again.landmarks[:, 3:]).all()
    np.testing.assert_array_equal(again.landmarks[:, :3], folder.landmarks[:, :3])


def test_sources_whose_landmarks_disagree_are_refused(synthetic_dataset, tmp_path):
    other = subset_annotations(synthetic_dataset, tmp_path / "other.json", 3, ["Sella", "Nasion", "Orbitale"])
    with pytest.raises(ValueError, match="do not match"):
        load_sources([(synthetic_dataset.images_dir, synthetic_dataset.annotations),
                      (synthetic_dataset.images_dir, other)])


def test_a_missing_data_path_is_named():
    with pytest.raises(FileNotFoundError, match="images not found at /nowhere/images"):
        load_sources([("/nowhere/images", "/nowhere/gt.json")])


@pytest.fixture(scope="module")
def two_source_run(tmp_path_factory, synthetic_dataset, packed_dataset) -> tuple[Path, object]:
    """One epoch on two data sets: the synthetic folder and the same images packed as a challenge stack."""
    output = tmp_path_factory.mktemp("two") / "run"
    result = run_module("training.train", "--config", TINY_CONFIG, "--epochs", 1, "--output", output,
                        "--data", synthetic_dataset.images_dir, synthetic_dataset.annotations,
                        "--data", packed_dataset.stack, packed_dataset.annotations)
    assert result.returncode == 0, result.stderr
    return output, result


@pytest.mark.slow
def test_a_run_splits_validates_and_selects_per_data_set(two_source_run, synthetic_dataset, packed_dataset):
    output, result = two_source_run
    names = [source_name(synthetic_dataset.images_dir), source_name(packed_dataset.stack)]
    split = json.loads((output / "split.json").read_text())
    assert list(split) == names
    for name in names:
        assert {part: split[name][part] for part in PARTS} == make_split(len(synthetic_dataset.images), 0, 0.15, 0.15)
        assert split[name]["images"] == len(synthetic_dataset.images)
        assert all(split[name][part] for part in ("train", "val", "test"))
    row = json.loads((output / "history.json").read_text())[0]
    assert list(row["val_sources"]) == names
    assert row["val_score"] == pytest.approx(np.mean([row["val_sources"][n]["MRE"] for n in names]))
    for name in names:
        assert name in result.stdout
    assert "next: python -m training.evaluate --checkpoint" in result.stdout


@pytest.mark.slow
def test_evaluate_reports_each_data_set_and_scores_a_foreign_one_whole(two_source_run, synthetic_dataset,
                                                                       tmp_path):
    output, _ = two_source_run
    shorter = subset_annotations(synthetic_dataset, tmp_path / "three.json", 3)
    result = run_module("training.evaluate", "--checkpoint", output / "best.pt", "--output", tmp_path / "own")
    assert result.returncode == 0, result.stderr
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert [r["split"] for r in own["data_sets"].values()] == ["test", "test"]
    assert own["num_images"] == 2 * len(make_split(len(synthetic_dataset.images), 0, 0.15, 0.15)["test"])

    foreign = tmp_path / "elsewhere" / "images"
    foreign.parent.mkdir()
    foreign.symlink_to(synthetic_dataset.images_dir)
    result = run_module("training.evaluate", "--checkpoint", output / "best.pt", "--data", foreign, shorter,
                        "--output", tmp_path / "foreign", "--overlays", 2)
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "foreign" / "metrics.json").read_text())
    assert scored["data_sets"]["elsewhere"]["split"] == "all"
    # only the three annotated landmarks are scored (less the one the JSON leaves out)
    assert scored["summary"]["count"] == (~np.isnan(synthetic_dataset.landmarks[:, :3, 0])).sum()
    with open(tmp_path / "foreign" / "per_image.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(synthetic_dataset.images) and rows[0]["image"] == "case_01.png"
    assert len(list((tmp_path / "foreign" / "overlays").glob("elsewhere_case_*.png"))) == 2

    again = run_module("training.evaluate", "--checkpoint", output / "best.pt", "--output", tmp_path / "own")
    assert again.returncode == 1 and "already holds results" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.slow
def test_export_never_replaces_a_model_unasked(two_source_run, untrained_model, packed_dataset):
    output, _ = two_source_run
    before = (untrained_model / "model.onnx").read_bytes()
    result = run_module("training.export", "--checkpoint", output / "best.pt", "--output", untrained_model,
                        "--compare-input", packed_dataset.stack)
    assert result.returncode == 1 and "already holds a model" in result.stderr
    assert (untrained_model / "model.onnx").read_bytes() == before


def test_resume_without_a_run_says_so(tmp_path):
    result = run_module("training.train", "--output", tmp_path / "empty", "--resume")
    assert result.returncode == 2 and f"no checkpoint in {tmp_path / 'empty'}" in result.stderr


def test_an_output_that_holds_a_run_is_refused_unless_resume_or_overwrite_says_how(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best.pt").write_bytes(b"two hours of training")
    result = run_module("training.train", "--data", tmp_path / "images", tmp_path / "gt.json", "--output", run)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"error: {run} holds a run (config.json, best.pt): add --resume to continue it or --overwrite to start "
        "again, or choose another --output")
    assert (run / "best.pt").read_bytes() == b"two hours of training"
    both = run_module("training.train", "--output", run, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_evaluate_help_gives_each_default_once():
    result = run_module("training.evaluate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: None)" not in text and ") (default: " not in text
    model_help = text[text.index("--model MODEL"):text.index("--checkpoint CHECKPOINT a torch")]
    assert model_help.count("default") == 1 and "algorithm/model" in model_help


def test_a_wrong_data_path_is_one_line_and_leaves_no_output_folder(tmp_path):
    result = run_module("training.train", "--data", tmp_path / "missing", tmp_path / "gt.json",
                        "--output", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: images not found at {tmp_path / 'missing'}"
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_repeated_images_option_is_refused(tmp_path):
    result = run_module("training.train", "--images", "a", "--images", "b", "--annotations", "gt.json")
    assert result.returncode == 2 and "--images given twice" in result.stderr


def test_train_help_describes_every_option_and_lists_choices():
    result = run_module("training.train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: )" not in text and "(default: none)" in text
    for expected in ["--data IMAGES ANNOTATIONS", "{zscore,rank}", "{argmax,centroid}", "{auto,cuda,cpu}",
                     "{source_mean,pooled}", "ground-truth JSON"]:
        assert expected in text, expected

