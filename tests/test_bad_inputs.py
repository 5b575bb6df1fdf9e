"""Awkward and broken inputs through `python -m algorithm.process`, each as a user would run it.

Every case either succeeds with a correct result, or fails with exactly one clear "error:" line on
stderr, a non-zero exit, no traceback and no output file. The cases run concurrently (one
subprocess each) with the small untrained model, which is enough to check the plumbing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import FIVE_HEIGHT as HEIGHT
from conftest import FIVE_IMAGES as IMAGES
from conftest import FIVE_WIDTH as WIDTH
from conftest import UNTRAINED_LANDMARKS, assert_valid_output, run_module, save_image, save_stack

K = UNTRAINED_LANDMARKS


def truncate(path: Path, keep: float) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))


def one_stack(folder: Path) -> None:
    save_stack(folder, "stack.mha", IMAGES, HEIGHT, WIDTH)


def two_stacks(folder: Path) -> None:
    save_stack(folder, "b.mha", IMAGES[2:], HEIGHT, WIDTH)
    save_stack(folder, "a.mha", IMAGES[:2], HEIGHT, WIDTH)


def stack_and_notes(folder: Path) -> None:
    one_stack(folder)
    (folder / "notes.txt").write_text("scanned on the old machine\n")


def png(folder: Path) -> None:
    save_image(folder / "image.png", IMAGES[0])


def sixteen_bit(folder: Path) -> None:
    save_image(folder / "image.mha", IMAGES[0].astype(np.uint16) * 257)


def all_zero(folder: Path) -> None:
    save_stack(folder, "zero.mha", [np.zeros((100, 80), np.uint8)], 100, 80)


def small(folder: Path) -> None:
    save_stack(folder, "small.mha", [IMAGES[0][:60, :50]], 60, 50)


def empty(folder: Path) -> None:
    pass


def missing(folder: Path) -> None:
    folder.rmdir()


def truncated(folder: Path) -> None:
    one_stack(folder)
    truncate(folder / "stack.mha", keep=0.9)


def not_metaimage(folder: Path) -> None:
    (folder / "stack.mha").write_text("this is a text file named like a stack\n")


def good_then_truncated(folder: Path) -> None:
    """b.mha's header is intact, so it fails only while being read, after a.mha was processed."""
    save_stack(folder, "a.mha", IMAGES[:2], HEIGHT, WIDTH)
    save_stack(folder, "b.mha", IMAGES[2:], HEIGHT, WIDTH, compress=True)
    truncate(folder / "b.mha", keep=0.6)


@dataclass
class Case:
    make: Callable[[Path], None]
    args: tuple[str, ...] = ("--device", "cpu")


CASES = {
    "two stacks": Case(two_stacks),
    "stray text file": Case(stack_and_notes),
    "2D png": Case(png),
    "16-bit 2D mha": Case(sixteen_bit),
    "all-zero image": Case(all_zero),
    "smaller than the model input": Case(small),
    "empty folder": Case(empty),
    "missing folder": Case(missing),
    "truncated stack": Case(truncated),
    "not a MetaImage": Case(not_metaimage),
    "good stack then truncated compressed stack": Case(good_then_truncated),
    "cuda without a GPU": Case(one_stack, ("--device", "cuda")),
}


@dataclass
class Run:
    returncode: int
    stderr: str
    output_dir: Path

    @property
    def output_file(self) -> Path:
        return self.output_dir / "orthodontic-landmarks.json"

    def landmarks(self, num_images: int) -> np.ndarray:
        assert self.returncode == 0, self.stderr
        return assert_valid_output(json.loads(self.output_file.read_text()), num_images, K)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, untrained_model) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("bad-inputs")

    def run(name: str) -> Run:
        case = CASES[name]
        case_dir = root / name.replace(" ", "-")
        folder, output_dir = case_dir / "input", case_dir / "output"
        folder.mkdir(parents=True)
        case.make(folder)
        result = run_module("algorithm.process", "--input", folder, "--output", output_dir / "orthodontic-landmarks.json",
                            "--model", untrained_model, *case.args)
        return Run(result.returncode, result.stderr, output_dir)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


def assert_clean_failure(run: Run, *message_parts: str) -> None:
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr and "unexpected failure" not in errors[0], run.stderr
    for part in message_parts:
        assert part in errors[0]
    assert not run.output_dir.exists() or list(run.output_dir.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name, message_parts", [
    ("empty folder", ["no readable image"]),
    ("missing folder", ["does not exist"]),
    ("truncated stack", ["stack.mha", "truncated"]),
    ("not a MetaImage", ["stack.mha"]),
    ("good stack then truncated compressed stack", ["b.mha"]),
    ("cuda without a GPU", ["cuda"]),
])
def test_a_bad_input_fails_with_one_clear_error_and_no_output(runs, name, message_parts):
    assert_clean_failure(runs[name], *message_parts)


@pytest.mark.slow
@pytest.mark.parametrize("name, num_images", [("two stacks", 5), ("stray text file", 5)])
def test_stacks_give_each_image_its_own_landmarks_in_order(runs, five_image_landmarks, name, num_images):
    np.testing.assert_allclose(runs[name].landmarks(num_images), five_image_landmarks[:num_images], atol=1e-3)


@pytest.mark.slow
def test_the_stray_file_is_reported_as_skipped(runs):
    assert "notes.txt" in runs["stray text file"].stderr


@pytest.mark.slow
def test_landmarks_lie_on_each_image_not_on_its_padding(runs):
    found = runs["two stacks"].landmarks(num_images=5)
    sizes = np.array([[image.shape[1], image.shape[0]] for image in IMAGES], dtype=np.float64)
    assert np.all(found >= -0.5) and np.all(found <= sizes[:, None, :] - 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["2D png", "16-bit 2D mha"])
def test_a_single_2d_image_is_image_z_1_and_matches_its_padded_stack_version(runs, five_image_landmarks, name):
    np.testing.assert_allclose(runs[name].landmarks(num_images=1), five_image_landmarks[:1], atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name, height, width", [("all-zero image", 100, 80), ("smaller than the model input", 60, 50)])
def test_degenerate_images_still_get_every_landmark_inside_them(runs, name, height, width):
    found = runs[name].landmarks(num_images=1)
    assert np.all(found >= -0.5) and np.all(found <= [width - 0.5, height - 0.5])
