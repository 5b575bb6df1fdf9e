"""Shared fixtures and helpers: synthetic data made with the project's own code, a small
untrained model, a subprocess runner and an independent check of the output schema.

Nothing here reads ../shared: every image is made by training.synthetic / training.pack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # also when pytest is started without `python -m`
    sys.path.insert(0, str(REPO))

from algorithm.metadata import ModelMetadata
from algorithm.output import schema_errors
from training.split import make_split
from training.pack import write_stack
from training.shape_model import build_shape_model, training_pose
from training.synthetic import synthetic_landmarks, synthetic_set

TINY_CONFIG = REPO / "training" / "configs" / "tiny.json"
TINY_REFINE = REPO / "training" / "configs" / "tiny-refine.json"
SMOKE_INPUT = REPO / "test" / "input" / "images" / "lateral-dental-x-rays"
EXPECTED_OUTPUT = REPO / "test" / "expected_output.json"
UNTRAINED_LANDMARKS = 19

# grand-challenge's "Multiple points" value exactly as challenge.md describes it, written
# independently of algorithm/output.py
MULTIPLE_POINTS_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["Multiple points"]},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "point": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                    "type": {"enum": ["Point"]},
                },
                "additionalProperties": False,
            },
        },
        "version": {
            "type": "object",
            "properties": {
                "major": {"type": "integer", "minimum": 0},
                "minor": {"type": "integer", "minimum": 0},
            },
            "required": ["major", "minor"],
            "additionalProperties": False,
        },
    },
    "required": ["type", "points", "version"],
    "additionalProperties": False,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs subprocesses for several seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "ddp: starts torchrun with two CPU processes (gloo)")


def run_module(module: str, *args, timeout: float = 300, **popen_kwargs) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root, as a user would run it."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **popen_kwargs)


def assert_valid_output(value: dict, num_images: int, num_landmarks: int) -> np.ndarray:
    """Schema-valid, every landmark "1".."K" of every image z = 1..N in order; returns (N, K, 2) points."""
    jsonschema.validate(value, MULTIPLE_POINTS_SCHEMA)
    assert schema_errors(value) == []
    json.dumps(value, allow_nan=False)  # real JSON: no NaN or infinity
    points = value["points"]
    assert [p["name"] for p in points] == [str(k + 1) for k in range(num_landmarks)] * num_images
    assert [p["point"][2] for p in points] == [z for z in range(1, num_images + 1) for _ in range(num_landmarks)]
    return np.array([p["point"][:2] for p in points], dtype=np.float64).reshape(num_images, num_landmarks, 2)


def save_stack(folder: Path, name: str, images: list[np.ndarray], height: int, width: int, **kwargs) -> Path:
    """The images zero-padded into a challenge-format (3 x uint8) stack `folder/name`."""
    path = Path(folder) / name
    write_stack(path, images, len(images), height, width, **kwargs)
    return path


def pad_gray(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """(N, height, width) uint8: each 2D image at the top-left, zero-padded."""
    stack = np.zeros((len(images), height, width), dtype=np.uint8)
    for index, image in enumerate(images):
        stack[index, : image.shape[0], : image.shape[1]] = image
    return stack


def save_image(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    """Any array as an image file; `vector`: the last axis holds the components (e.g. RGB)."""
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A tiny random-weight model (19 landmarks, 128 x 96 input), exported the documented way."""
    folder = tmp_path_factory.mktemp("untrained") / "model"
    result = run_module("training.export", "--untrained", TINY_CONFIG, "--num-landmarks", UNTRAINED_LANDMARKS,
                        "--output", folder)
    assert result.returncode == 0, result.stderr
    return folder


# the (height, width) of the synthetic skulls the full model's shape model is built from
FULL_MODEL_FRAME = (400, 320)


@pytest.fixture(scope="session")
def full_model_dir(tmp_path_factory, untrained_model) -> Path:
    """The untrained first stage, an untrained second stage and a shape model of synthetic skulls: every step."""
    folder = tmp_path_factory.mktemp("full") / "model"
    folder.mkdir()
    for path in untrained_model.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = tmp_path_factory.mktemp("config") / "refine.json"
    config.write_text(json.dumps({"stage": "refine", "first_stage": str(folder), "crop_fraction": 0.25,
                                  "crop_size": 32, "width": 4, "depth": 3, "stride": 2, "sigma": 1.5}))
    result = run_module("training.export", "--untrained", config, "--num-landmarks", UNTRAINED_LANDMARKS,
                        "--output", folder, "--overwrite")
    assert result.returncode == 0, result.stderr
    rng = np.random.default_rng(0)
    shapes = np.stack([synthetic_landmarks(*FULL_MODEL_FRAME, UNTRAINED_LANDMARKS, rng) for _ in range(40)])
    metadata = ModelMetadata.load(folder)
    metadata.shape = build_shape_model(shapes)
    metadata.shape.frame, metadata.shape.angles = training_pose(metadata.shape, shapes,
                                                                np.tile(FULL_MODEL_FRAME[::-1], (40, 1)))
    metadata.save(folder)
    return folder


@pytest.fixture(scope="session")
def full_model(full_model_dir):
    """The LandmarkDetector of `full_model_dir`."""
    from algorithm.inference import LandmarkDetector

    detector = LandmarkDetector(full_model_dir, device="cpu")
    assert detector.refinement is not None and detector.shape is not None
    return detector


# five different images (each one's landmarks tell which image they came from), and their padding
FIVE_IMAGES = synthetic_set(5, 6, seed=21, sizes=[(200, 160), (230, 190), (180, 150), (220, 170), (160, 120)])[0]
FIVE_HEIGHT, FIVE_WIDTH = 240, 200


@pytest.fixture(scope="session")
def five_image_landmarks(untrained_model) -> np.ndarray:
    """(5, K, 2): the untrained model's landmarks of each padded image, called image by image in-process."""
    from algorithm.inference import LandmarkDetector

    detector = LandmarkDetector(untrained_model, device="cpu")
    return np.stack([next(detector.predict([image])).points for image in pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH)])


@dataclass
class SyntheticDataset:
    """A folder of PNGs with a CL-Detection style JSON (`files`), and what was written into it."""

    images_dir: Path
    annotations: Path
    images: list[np.ndarray]
    landmarks: np.ndarray  # (N, K, 2), NaN where the JSON leaves a landmark out
    spacing: np.ndarray
    names: list[str]
    missing: tuple[int, int]  # (image, landmark) left out of the JSON
    string_scale_image: int  # the image whose first point gives `scale` as a string


DATASET_COUNT, DATASET_LANDMARKS = 12, 5
DATASET_SIZES = [(200, 160), (184, 150)]
PACKED_HEIGHT, PACKED_WIDTH = 220, 180


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> SyntheticDataset:
    root = tmp_path_factory.mktemp("dataset")
    images_dir = root / "images"
    images_dir.mkdir()
    images, landmarks = synthetic_set(DATASET_COUNT, DATASET_LANDMARKS, seed=11, sizes=DATASET_SIZES)
    # the landmark left out sits in an image of the validation split that training's defaults make
    missing = (make_split(DATASET_COUNT, seed=0, val_fraction=0.15, test_fraction=0.15)["val"][0], 2)
    string_scale_image = 3
    spacing = np.where(np.arange(DATASET_COUNT) % 2 == 0, 0.1, 0.125)
    names = [f"landmark {chr(ord('A') + k)}" for k in range(DATASET_LANDMARKS)]
    files, points = [], []
    for index, (image, image_points) in enumerate(zip(images, landmarks)):
        files.append(f"case_{index + 1:02d}.png")
        save_image(images_dir / files[-1], image)
        for k, (x, y) in enumerate(image_points):
            if (index, k) == missing:
                continue
            scale = str(spacing[index]) if index == string_scale_image and k == 0 else float(spacing[index])
            points.append({"name": str(k + 1), "point": [float(x), float(y), index + 1], "scale": scale})
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps({"name": "Orthodontic landmarks", "type": "Multiple points", "points": points,
                                       "files": files, "landmarks": names, "version": {"major": 1, "minor": 0}}))
    expected = landmarks.copy()
    expected[missing] = np.nan
    return SyntheticDataset(images_dir, annotations, images, expected, spacing, names, missing, string_scale_image)


@dataclass
class PackedDataset:
    stack: Path
    annotations: Path  # z = slice, no `files`
    pack_result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def packed_dataset(synthetic_dataset, tmp_path_factory) -> PackedDataset:
    """`python -m training.pack` on the synthetic folder: a challenge-format stack and its z = slice JSON."""
    root = tmp_path_factory.mktemp("packed")
    stack, annotations = root / "stack" / "train_stack.mha", root / "train-gt.json"
    result = run_module("training.pack", "--images", synthetic_dataset.images_dir,
                        "--annotations", synthetic_dataset.annotations, "--output", stack,
                        "--gt-output", annotations, "--height", PACKED_HEIGHT, "--width", PACKED_WIDTH)
    assert result.returncode == 0, result.stderr
    return PackedDataset(stack, annotations, result)
