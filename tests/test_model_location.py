"""Which model the container loads (--model, else grand-challenge's /opt/ml/model, else the built-in one), the
errors of a broken or missing one, and the model tarball that ./export.sh writes for upload."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIVE_HEIGHT, FIVE_IMAGES, FIVE_WIDTH, REPO, UNTRAINED_LANDMARKS, assert_valid_output, save_stack

from algorithm import metadata, process
from algorithm.inference import LandmarkDetector
from algorithm.metadata import (DEFAULT_MODEL_DIR, METADATA_FILE, MODEL_FILE, ModelMetadata, graph_digest,
                                locate_model)


@pytest.fixture
def mount(tmp_path, monkeypatch) -> Path:
    """The folder the container takes for /opt/ml/model, not made yet (nothing mounted)."""
    folder = tmp_path / "opt-ml-model"
    monkeypatch.setattr(metadata, "MOUNTED_MODEL_DIR", folder)
    return folder


def run_process(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """`algorithm.process` in-process on one padded image; its exit code and output path."""
    folder = tmp_path / "input"
    folder.mkdir(exist_ok=True)
    save_stack(folder, "stack.mha", FIVE_IMAGES[:1], FIVE_HEIGHT, FIVE_WIDTH)
    output = tmp_path / "output" / "orthodontic-landmarks.json"
    return process.main(["--input", str(folder), "--output", str(output), "--device", "cpu", *args]), output


def landmarks(output: Path) -> np.ndarray:
    return assert_valid_output(json.loads(output.read_text()), num_images=1, num_landmarks=UNTRAINED_LANDMARKS)[0]


def loaded_model_line(caplog) -> str:
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("model ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_search_order_is_explicit_then_mounted_then_built_in(tmp_path, mount):
    assert locate_model(None) == (DEFAULT_MODEL_DIR, "built in")  # nothing mounted
    mount.mkdir()
    assert locate_model(None) == (DEFAULT_MODEL_DIR, "built in")  # an empty mount point: nothing mounted either
    (mount / METADATA_FILE).write_text("{}")
    assert locate_model(None) == (mount, "mounted")
    assert locate_model(tmp_path / "mine") == (tmp_path / "mine", "--model")


@pytest.mark.parametrize("built_in", ["shipped", "none"])
def test_a_mounted_model_runs_instead_of_the_built_in_one_and_the_log_names_it(tmp_path, monkeypatch, caplog, mount,
                                                                            untrained_model, five_image_landmarks,
                                                                            built_in):
    """The untrained model mounted: its landmarks, not the shipped model's, whether or not the image has one."""
    caplog.set_level(logging.INFO)
    if built_in == "none":
        monkeypatch.setattr(metadata, "DEFAULT_MODEL_DIR", tmp_path / "no-built-in-model")
    shutil.copytree(untrained_model, mount)
    code, output = run_process(tmp_path)
    assert code == 0
    np.testing.assert_allclose(landmarks(output), five_image_landmarks[0], atol=1e-3)
    digest = graph_digest(untrained_model, ModelMetadata.load(untrained_model))
    assert loaded_model_line(caplog).startswith(f"model {mount} (mounted, graphs sha256 {digest}): ")


def test_model_overrides_a_mounted_model(tmp_path, caplog, mount, untrained_model, five_image_landmarks):
    caplog.set_level(logging.INFO)
    shutil.copytree(untrained_model, mount)
    code, output = run_process(tmp_path, "--model", str(DEFAULT_MODEL_DIR))
    assert code == 0
    assert np.abs(landmarks(output) - five_image_landmarks[0]).max() > 1  # the shipped model's, not the mounted one's
    digest = graph_digest(DEFAULT_MODEL_DIR, ModelMetadata.load(DEFAULT_MODEL_DIR))
    assert len(digest) == 12
    assert loaded_model_line(caplog).startswith(f"model {DEFAULT_MODEL_DIR} (--model, graphs sha256 {digest}): ")


def without_metadata(mount: Path, model: Path) -> None:
    shutil.copytree(model, mount)
    (mount / METADATA_FILE).unlink()


def packed_with_its_folder(mount: Path, model: Path) -> None:
    """`tar -czf model.tar.gz model/`: the platform does not strip the top-level folder."""
    shutil.copytree(model, mount / "model")


def metadata_without_graphs(mount: Path, model: Path) -> None:
    mount.mkdir()
    shutil.copy(model / METADATA_FILE, mount)


def unreadable_metadata(mount: Path, model: Path) -> None:
    shutil.copytree(model, mount)
    (mount / METADATA_FILE).write_text('{"landmark_names": ')


def a_file(mount: Path, model: Path) -> None:
    mount.write_bytes((model / MODEL_FILE).read_bytes())


@pytest.mark.parametrize("make_mount, message", [
    (without_metadata, "but no metadata.json"),
    (packed_with_its_folder, "the model is in its subfolder model/: pack it with tar -czf model.tar.gz -C model ."),
    (metadata_without_graphs, f"/{MODEL_FILE}: not found"),
    (unreadable_metadata, f"/{METADATA_FILE}: not JSON"),
    (a_file, "not a folder"),
])
def test_a_broken_mounted_model_is_an_error_naming_it_never_the_built_in_model(tmp_path, capsys, mount,
                                                                               untrained_model, make_mount, message):
    make_mount(mount, untrained_model)
    code, output = run_process(tmp_path)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1
    assert len(errors) == 1 and errors[0].startswith(f"error: {mount}") and message in errors[0], errors
    assert not output.exists()


@pytest.mark.parametrize("mounted", ["absent", "empty"])
def test_an_image_without_a_model_refuses_to_run_without_one_mounted(tmp_path, monkeypatch, capsys, mount, mounted):
    monkeypatch.setattr(metadata, "DEFAULT_MODEL_DIR", tmp_path / "no-built-in-model")
    if mounted == "empty":
        mount.mkdir()
    code, output = run_process(tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err == [f"error: no model: nothing at {mount} and none built in at {tmp_path / 'no-built-in-model'} (an "
                   "image built WITH_MODEL=0); upload one on grand-challenge (Algorithm -> Models) or give --model"]
    assert not output.exists()


def export(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "export.sh"), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def test_export_writes_a_tarball_of_the_model_files_at_its_top_level_that_extracts_into_a_model_folder(tmp_path,
                                                                                                       mount):
    """What ./export.sh --model-only writes, extracted as grand-challenge does (tarfile's "data" filter)."""
    tarball = tmp_path / "export" / "model.tar.gz"
    result = export("--model-only", MODEL_TARBALL=str(tarball))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{tarball}: ")
    assert f"({tarball.stat().st_size} bytes)" in result.stdout
    with tarfile.open(tarball) as archive:
        assert {os.path.normpath(name) for name in archive.getnames()} - {"."} == set(os.listdir(DEFAULT_MODEL_DIR))
        archive.extractall(mount, filter="data")
    assert locate_model(None) == (mount, "mounted")
    detector = LandmarkDetector(mount, device="cpu")  # a working model folder: the graphs agree with the metadata
    assert detector.refinement
    assert graph_digest(mount, detector.metadata) == graph_digest(DEFAULT_MODEL_DIR,
                                                                  ModelMetadata.load(DEFAULT_MODEL_DIR))


def test_export_help_tells_the_model_only_option_and_refuses_unknown_ones():
    result = export("--help")
    assert result.returncode == 0 and "--model-only" in result.stdout and "MODEL_TARBALL" in result.stdout
    result = export("--model-onyl")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown argument '--model-onyl'")
