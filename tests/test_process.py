"""algorithm.process: z numbering across stacks, each stack opened once, and the committed smoke test end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import (EXPECTED_OUTPUT, FIVE_HEIGHT, FIVE_IMAGES, FIVE_WIDTH, REPO, SMOKE_INPUT, UNTRAINED_LANDMARKS,
                      assert_valid_output, pad_gray, run_module, save_image, save_stack)

from algorithm import process
from algorithm.inference import LandmarkDetector
from algorithm.reader import ImageStack


def two_stacks(folder):
    # written in the reverse of the order they are to be read in
    save_stack(folder, "b.mha", FIVE_IMAGES[2:], FIVE_HEIGHT, FIVE_WIDTH)
    save_stack(folder, "a.mha", FIVE_IMAGES[:2], FIVE_HEIGHT, FIVE_WIDTH)


def ten_before_nine(folder):
    """Sorted by name, "10.mha" comes before "9.mha"."""
    save_stack(folder, "9.mha", FIVE_IMAGES[3:], FIVE_HEIGHT, FIVE_WIDTH)
    save_stack(folder, "10.mha", FIVE_IMAGES[:3], FIVE_HEIGHT, FIVE_WIDTH)


def compressed(folder):
    save_stack(folder, "stack.mha", FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH, compress=True)


def single_channel(folder):
    save_image(folder / "stack.mha", pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH))


@pytest.mark.parametrize("make_input", [two_stacks, ten_before_nine, compressed, single_channel])
def test_z_counts_on_across_stacks_in_sorted_file_name_order(tmp_path, untrained_model, five_image_landmarks,
                                                             make_input):
    folder = tmp_path / "input"
    folder.mkdir()
    make_input(folder)
    output = tmp_path / "output" / "orthodontic-landmarks.json"
    assert process.main(["--input", str(folder), "--output", str(output), "--model", str(untrained_model),
                         "--device", "cpu"]) == 0
    found = assert_valid_output(json.loads(output.read_text()), num_images=5, num_landmarks=UNTRAINED_LANDMARKS)
    np.testing.assert_allclose(found, five_image_landmarks, atol=1e-3)


def test_each_stack_is_opened_once(tmp_path, untrained_model, monkeypatch):
    """The stack loaded for the duplicate check is the one processed: no file's header is read twice."""
    folder = tmp_path / "input"
    folder.mkdir()
    two_stacks(folder)
    opened = []
    open_stack = ImageStack.__init__

    def counting(stack, path, scope=None):
        opened.append(path.name)
        open_stack(stack, path, scope)

    monkeypatch.setattr(ImageStack, "__init__", counting)
    assert process.main(["--input", str(folder), "--output", str(tmp_path / "landmarks.json"), "--model",
                         str(untrained_model), "--device", "cpu"]) == 0
    assert opened == ["a.mha", "b.mha"]


def two_of_one_size(folder):
    save_stack(folder, "a.mha", FIVE_IMAGES[:2], FIVE_HEIGHT, FIVE_WIDTH)
    save_stack(folder, "b.mha", FIVE_IMAGES[2:4], FIVE_HEIGHT, FIVE_WIDTH)


def test_only_files_of_one_size_are_read_for_the_duplicate_check(tmp_path, untrained_model, monkeypatch):
    """A lone stack, or stacks of different sizes, cannot hold the same bytes: none is read for a checksum. Two of
    one size are, and pass when their images differ (a file given twice is refused: test_hostile_inputs)."""
    checksummed = []
    content_hash = ImageStack.content_hash

    def counting(stack):
        checksummed.append(stack.path.name)
        return content_hash(stack)

    monkeypatch.setattr(ImageStack, "content_hash", counting)
    for name, make_input in [("one stack", compressed), ("two sizes", two_stacks), ("one size", two_of_one_size)]:
        folder = tmp_path / name
        folder.mkdir()
        make_input(folder)
        checksummed.clear()
        assert process.main(["--input", str(folder), "--output", str(tmp_path / f"{name}.json"), "--model",
                             str(untrained_model), "--device", "cpu"]) == 0
        assert checksummed == (["a.mha", "b.mha"] if name == "one size" else []), name


def test_the_entry_point_starts_without_scikit_learn_and_evalutils_scorers_still_work():
    """evalutils' scorers (scikit-learn, SciPy: about 1 s and 85 MB) load only when an evaluation asks for them."""
    check = ("import sys, algorithm.process\n"
             "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules, 'loaded at start-up'\n"
             "from evalutils.evalutils import score_detection\n"
             "print(score_detection(ground_truth=[(0, 0), (5, 5)], predictions=[(0.1, 0), (9, 9)], radius=1))\n"
             "assert 'sklearn' in sys.modules")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DetectionScore(true_positives=1, false_negatives=1, false_positives=1)"


def test_the_five_images_are_told_apart(five_image_landmarks):
    """Otherwise the order checks above could not fail."""
    assert len({tuple(np.round(points.ravel(), 1)) for points in five_image_landmarks}) == 5


def test_batches_give_the_same_landmarks_as_single_images(untrained_model, five_image_landmarks):
    detector = LandmarkDetector(untrained_model, device="cpu", batch_size=3)
    batched = np.stack([d.points for d in detector.predict(pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH))])
    np.testing.assert_allclose(batched, five_image_landmarks, atol=1e-3)


@pytest.mark.slow
def test_the_smoke_stack_gives_the_expected_output(tmp_path):
    """The committed smoke stack and the shipped model reproduce test/expected_output.json (within 0.5 px)."""
    stack = ImageStack(next(SMOKE_INPUT.glob("*.mha")))
    assert (stack.height, stack.width, stack.components) == (2400, 2880, 3)
    output = tmp_path / "orthodontic-landmarks.json"
    result = run_module("algorithm.process", "--input", SMOKE_INPUT, "--output", output, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    expected = json.loads(EXPECTED_OUTPUT.read_text())
    actual = json.loads(output.read_text())
    num_landmarks = len({p["name"] for p in expected["points"]})
    found = assert_valid_output(actual, num_images=len(stack), num_landmarks=num_landmarks)
    assert [(p["name"], p["point"][2]) for p in actual["points"]] == [(p["name"], p["point"][2])
                                                                       for p in expected["points"]]
    reference = assert_valid_output(expected, num_images=len(stack), num_landmarks=num_landmarks)
    np.testing.assert_allclose(found, reference, atol=0.5)
