"""Every written landmark lies inside its image's content, through every step (both stages, the shape check and
the re-framing), whatever the image: 1 px to past the model's input, any aspect, constant, or with the model's
peaks pushed to each edge and corner. An image with nothing to find still gets its landmarks, with probability 0."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from algorithm.inference import CLAMPED_PROBABILITY, MIN_CONTENT_SIDE, LandmarkDetector
from algorithm.metadata import ModelMetadata
from training.shape_model import build_shape_model, training_frame
from training.synthetic import synthetic_image, synthetic_landmarks
from tests.conftest import UNTRAINED_LANDMARKS, run_module, save_stack

SIZES = [(1, 1), (3, 3), (1, 40), (40, 1), (2, 9), (10, 10000), (63, 80), (64, 64), (100, 30), (127, 95),
         (128, 96), (129, 97), (500, 600), (600, 500), (1000, 1400), (2400, 1935)]


@pytest.fixture(scope="module")
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
    shapes = np.stack([synthetic_landmarks(400, 320, UNTRAINED_LANDMARKS, rng) for _ in range(40)])
    metadata = ModelMetadata.load(folder)
    metadata.shape = build_shape_model(shapes)
    metadata.shape.frame = training_frame(metadata.shape, shapes, np.tile([320, 400], (40, 1)))
    metadata.save(folder)
    return folder


@pytest.fixture(scope="module")
def full_model(full_model_dir) -> LandmarkDetector:
    detector = LandmarkDetector(full_model_dir, device="cpu")
    assert detector.refinement is not None and detector.shape is not None
    return detector


def assert_inside(points: np.ndarray, height: int, width: int) -> None:
    assert np.isfinite(points).all()
    assert (points >= 0).all() and (points[:, 0] <= width - 1).all() and (points[:, 1] <= height - 1).all()


@pytest.mark.parametrize("height, width", SIZES)
def test_every_landmark_is_inside_images_of_any_size(full_model, height, width):
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(1, 256, size=(height, width), dtype=np.uint8)
    detection = next(full_model.predict([image]))
    assert_inside(detection.points, height, width)
    assert ((detection.confidence >= 0) & (detection.confidence <= 1)).all()
    if min(height, width) < MIN_CONTENT_SIDE:
        assert (detection.confidence == 0).all() and "nothing to find" in detection.notes[0]


@pytest.mark.parametrize("value", [0, 1, 255])
@pytest.mark.parametrize("height, width", [(600, 500), (3, 3), (2400, 2880)])
def test_a_constant_image_keeps_its_landmarks_inside_with_probability_zero(full_model, value, height, width):
    detection = next(full_model.predict([np.full((height, width), value, np.uint8)]))
    assert_inside(detection.points, height, width)
    assert (detection.confidence == 0).all()
    assert "nothing to find" in detection.notes[0]


def test_a_padded_image_is_bounded_by_its_content_not_its_canvas(full_model):
    canvas = np.zeros((700, 900), np.uint8)
    canvas[:300, :200] = np.random.default_rng(1).integers(1, 256, size=(300, 200))
    assert_inside(next(full_model.predict([canvas])).points, 300, 200)


CORNERS = [(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]


@pytest.mark.parametrize("corner", CORNERS)
def test_peaks_at_each_edge_and_corner_are_clamped_and_trusted_less(full_model, corner, monkeypatch):
    """Both stages' heatmaps peak at the same corner of their input: the crops, centred on the image's edge,
    then put the landmarks outside it, and they must come back to the edge with a lower probability."""
    def peaked(session_shape):
        def run(_outputs, feeds):
            batch = next(iter(feeds.values())).shape[0]
            height, width = session_shape
            maps = np.full((batch, UNTRAINED_LANDMARKS, height, width), 1e-6, np.float32)
            maps[:, :, round(corner[1] * (height - 1)), round(corner[0] * (width - 1))] = 1.0
            return [maps / maps.sum(axis=(2, 3), keepdims=True)]
        return run

    monkeypatch.setattr(full_model.session, "run", peaked(full_model.codec.heatmap_shape))
    monkeypatch.setattr(full_model.refine_session, "run", peaked(full_model.refine_codec.heatmap_shape))
    height, width = 400, 320
    image = synthetic_image(height, width, synthetic_landmarks(height, width, 5, np.random.default_rng(2)),
                            np.random.default_rng(3))
    detection = next(full_model.predict([image]))
    assert_inside(detection.points, height, width)
    on_edge = ((detection.points == 0) | (detection.points == [width - 1, height - 1])).any(axis=1)
    assert on_edge.all()
    assert (detection.confidence <= CLAMPED_PROBABILITY).all()


def test_the_container_warns_about_an_empty_image_in_a_stack(full_model_dir, tmp_path, caplog):
    from algorithm.process import main

    images = [np.random.default_rng(4).integers(1, 256, size=(300, 240), dtype=np.uint8), np.zeros((300, 240),
                                                                                                  np.uint8)]
    save_stack(tmp_path / "in", "cases.mha", images, 300, 240)
    output = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING, logger="algorithm"):
        assert main(["--input", str(tmp_path / "in"), "--output", str(output), "--model",
                     str(full_model_dir)]) == 0
    assert any("cases.mha, image 2 of 2: nothing to find" in record.getMessage() for record in caplog.records)
    points = json.loads(output.read_text())["points"]
    second = [p for p in points if p["point"][2] == 2]
    assert len(second) == UNTRAINED_LANDMARKS and all(p["probability"] == 0 for p in second)
    assert all(0 <= p["point"][0] <= 239 and 0 <= p["point"][1] <= 299 for p in points)
