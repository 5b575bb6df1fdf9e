"""The whole model life cycle on a tiny synthetic data set, each step as its command-line tool:
train -> resume (also after SIGKILL) -> evaluate the checkpoint -> export -> evaluate the export ->
run the container on a packed stack."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATASET_LANDMARKS, REPO, TINY_CONFIG, assert_valid_output, run_module

from training.data import source_name
from training.metrics import radial_errors_mm, summarize
from training.split import make_split

pytestmark = pytest.mark.slow

EPOCHS = 3
RUN_FILES = ["config.json", "split.json", "history.json", "last.pt", "best.pt", "learning_curves.png"]


def train_args(dataset, output: Path, *extra) -> list:
    return ["--config", TINY_CONFIG, "--images", dataset.images_dir, "--annotations", dataset.annotations,
            "--output", output, "--epochs", EPOCHS, "--batch-size", 4, *extra]


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclass
class Run:
    directory: Path
    first: subprocess.CompletedProcess
    first_history: list[dict]
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_dataset) -> Run:
    """One epoch, then `--resume` for one more (of EPOCHS planned)."""
    directory = tmp_path_factory.mktemp("training") / "run"
    first = run_module("training.train", *train_args(synthetic_dataset, directory, "--max-epochs-this-run", 1))
    assert first.returncode == 0, first.stderr
    first_history = history(directory)
    resumed = run_module("training.train", "--output", directory, "--resume", "--max-epochs-this-run", 1)
    assert resumed.returncode == 0, resumed.stderr
    return Run(directory, first, first_history, resumed)


def test_a_run_writes_its_configuration_split_checkpoints_and_curves(run, synthetic_dataset):
    for name in RUN_FILES:
        assert (run.directory / name).is_file(), name
    config = json.loads((run.directory / "config.json").read_text())
    tiny = json.loads(TINY_CONFIG.read_text())
    assert {key: config[key] for key in tiny} == tiny
    assert config["images"] == str(synthetic_dataset.images_dir) and config["epochs"] == EPOCHS
    split = json.loads((run.directory / "split.json").read_text())
    made = make_split(len(synthetic_dataset.images), config["seed"], config["val_fraction"], config["test_fraction"])
    files = "\n".join(f"case_{index + 1:02d}.png" for index in range(len(synthetic_dataset.images)))
    assert split == {source_name(synthetic_dataset.images_dir): {**made, "images": len(synthetic_dataset.images),
                                                                 "names": hashlib.sha256(files.encode()).hexdigest()[:16]}}
    assert [row["epoch"] for row in run.first_history] == [1]
    assert "epoch 1: loss" in run.first.stdout and "val MRE (pooled)" in run.first.stdout
    assert "(validation score" in run.first.stdout
    assert "the mean of the per-data-set validation MREs" in run.first.stdout
    assert np.isfinite(run.first_history[0]["train_loss"]) and np.isfinite(run.first_history[0]["val_MRE"])


def test_a_run_is_started_again_only_with_overwrite(run, synthetic_dataset, tmp_path):
    directory = tmp_path / "again"
    shutil.copytree(run.directory, directory)
    before = (directory / "last.pt").read_bytes()
    refused = run_module("training.train", *train_args(synthetic_dataset, directory))
    assert refused.returncode == 2 and "add --resume to continue it or --overwrite to start again" in refused.stderr
    assert (directory / "last.pt").read_bytes() == before
    again = run_module("training.train", *train_args(synthetic_dataset, directory, "--overwrite",
                                                      "--max-epochs-this-run", 1))
    assert again.returncode == 0, again.stderr
    assert f"--overwrite: removed {directory / 'last.pt'}" in again.stdout
    assert [row["epoch"] for row in history(directory)] == [1]
    assert checkpoint_state(directory / "last.pt")["state"]["epoch"] == 1


def test_resume_continues_at_the_next_epoch(run):
    assert "at epoch 2" in run.resumed.stdout
    rows = history(run.directory)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0] == run.first_history[0]
    state = checkpoint_state(run.directory / "last.pt")["state"]
    assert state["epoch"] == 2 and state["history"] == rows
    best = checkpoint_state(run.directory / "best.pt")
    best_row = min(rows, key=lambda row: row["val_MRE"])
    assert best["epoch"] == best_row["epoch"] and best["summary"]["MRE"] == pytest.approx(best_row["val_MRE"])


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, synthetic_dataset):
    directory = tmp_path / "killed"
    log = (tmp_path / "train.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "training.train",
                                *map(str, train_args(synthetic_dataset, directory, "--epochs", 1000))],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (directory / "last.pt").exists():
            assert process.poll() is None, (tmp_path / "train.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
        log.close()
    done = checkpoint_state(directory / "last.pt")["state"]["epoch"]
    assert done >= 1
    resumed = run_module("training.train", "--output", directory, "--resume", "--max-epochs-this-run", 1)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {done + 1}" in resumed.stdout
    assert [row["epoch"] for row in history(directory)] == list(range(1, done + 2))


def test_ctrl_c_stops_a_run_with_the_command_that_resumes_it(tmp_path, synthetic_dataset):
    directory = tmp_path / "interrupted"
    # a suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would
    # the run (it would train on until its early stop): give it the default disposition, as a terminal does
    process = subprocess.Popen([sys.executable, "-m", "training.train",
                                *map(str, train_args(synthetic_dataset, directory, "--epochs", 1000))],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while not (directory / "last.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint within 3 minutes"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == f"stopped: resume with python -m training.train --output {directory} --resume"
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def checkpoint_evaluation(run, synthetic_dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("evaluation") / "checkpoint"
    result = run_module("training.evaluate", "--checkpoint", run.directory / "best.pt",
                        "--images", synthetic_dataset.images_dir, "--annotations", synthetic_dataset.annotations,
                        "--split", "val", "--output", output)
    assert result.returncode == 0, result.stderr
    return output


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_evaluating_the_checkpoint_reproduces_its_validation_score(run, checkpoint_evaluation, synthetic_dataset):
    for name in ["metrics.json", "per_landmark.md", "error_cdf.png"]:
        assert (checkpoint_evaluation / name).is_file(), name
    result = metrics(checkpoint_evaluation)
    val = json.loads((run.directory / "split.json").read_text())[source_name(synthetic_dataset.images_dir)]["val"]
    assert result["split"] == "val" and result["num_images"] == len(val)
    assert {"AUROC", "MRE_least_confident", "mean_confidence"} <= set(result["confidence"])  # as for --model
    # the landmark missing from the ground truth (in a validation image) is not scored
    assert synthetic_dataset.missing[0] in val
    assert result["summary"]["count"] == len(val) * DATASET_LANDMARKS - 1
    assert result["summary"]["MRE"] == pytest.approx(checkpoint_state(run.directory / "best.pt")["summary"]["MRE"],
                                                     rel=1e-6)
    assert [row["landmark"] for row in result["per_landmark"]] == [f"{k + 1} {name}" for k, name in
                                                                   enumerate(synthetic_dataset.names)]
    table = (checkpoint_evaluation / "per_landmark.md").read_text().splitlines()
    assert len(table) == 2 + DATASET_LANDMARKS and table[2].startswith("| 1 landmark A |")


@pytest.fixture(scope="module")
def exported_model(run, packed_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "model"
    result = run_module("training.export", "--checkpoint", run.directory / "best.pt", "--output", folder,
                        "--compare-input", packed_dataset.stack)
    assert result.returncode == 0, result.stderr
    assert "check passed: against torch, the heatmaps differ by at most" in result.stdout
    assert f"next: python -m training.evaluate --model {folder}" in result.stdout
    return folder


def test_export_writes_the_model_and_its_metadata(run, exported_model, synthetic_dataset):
    assert (exported_model / "model.onnx").stat().st_size > 0
    metadata = json.loads((exported_model / "metadata.json").read_text())
    tiny = json.loads(TINY_CONFIG.read_text())
    assert metadata["landmark_names"] == synthetic_dataset.names
    codec = metadata["codec"]
    assert (codec["input_height"], codec["input_width"]) == (tiny["input_height"], tiny["input_width"])
    assert (codec["stride"], codec["sigma"]) == (tiny["stride"], tiny["sigma"])
    assert (codec["decoder"], codec["centroid_radius"], codec["activation"]) == ("centroid", 2, "spatial_softmax")
    assert metadata["resize"] == "block_mean_bilinear" and metadata["refinement"] is None
    assert metadata["training"]["epoch"] == checkpoint_state(run.directory / "best.pt")["epoch"]
    assert metadata["training"]["export_check"]["max_landmark_shift_px"] < 0.05


def evaluate_export(exported_model: Path, dataset, output: Path, *options: str) -> Path:
    result = run_module("training.evaluate", "--model", exported_model, "--images", dataset.images_dir,
                        "--annotations", dataset.annotations, "--split", "val", "--output", output, *options)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def exported_evaluation(exported_model, synthetic_dataset, tmp_path_factory) -> Path:
    """The export scored as the container runs it: with the shape model that export built."""
    return evaluate_export(exported_model, synthetic_dataset, tmp_path_factory.mktemp("evaluation") / "exported")


def test_the_exported_model_scores_as_the_checkpoint_did(checkpoint_evaluation, exported_model, synthetic_dataset,
                                                         tmp_path):
    """The same network through ONNX Runtime: the checkpoint has no shape model, so neither does this score."""
    exported_evaluation = evaluate_export(exported_model, synthetic_dataset, tmp_path / "exported",
                                          "--no-shape-check")
    exported, checkpoint = metrics(exported_evaluation)["summary"], metrics(checkpoint_evaluation)["summary"]
    assert exported["count"] == checkpoint["count"]
    assert exported["MRE"] == pytest.approx(checkpoint["MRE"], abs=0.05)


def test_the_container_runs_the_exported_model_on_a_packed_stack(tmp_path, exported_model, exported_evaluation,
                                                                   packed_dataset, synthetic_dataset, run):
    output = tmp_path / "orthodontic-landmarks.json"
    result = run_module("algorithm.process", "--input", packed_dataset.stack.parent, "--output", output,
                        "--model", exported_model, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    found = assert_valid_output(json.loads(output.read_text()), len(synthetic_dataset.images), DATASET_LANDMARKS)
    # z = slice of the stack = position in the folder's `files`: scoring the validation images
    # from the container's JSON gives evaluate's number
    val = json.loads((run.directory / "split.json").read_text())[source_name(synthetic_dataset.images_dir)]["val"]
    errors = radial_errors_mm(found[val], synthetic_dataset.landmarks[val], synthetic_dataset.spacing[val])
    assert summarize(errors)["MRE"] == pytest.approx(metrics(exported_evaluation)["summary"]["MRE"], abs=0.01)
