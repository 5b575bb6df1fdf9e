"""Every written landmark lies inside its image's content, through every step (both stages, the shape check and
the re-framing), whatever the image: 1 px to past the model's input, any aspect, constant, or with the model's
peaks pushed to each edge and corner. An image with nothing to find still gets its landmarks, with probability 0."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from algorithm.inference import CLAMPED_PROBABILITY, MIN_CONTENT_SIDE
from training.synthetic import synthetic_image, synthetic_landmarks
from tests.conftest import UNTRAINED_LANDMARKS, save_stack

SIZES = [(1, 1), (3, 3), (1, 40), (40, 1), (2, 9), (10, 10000), (63, 80), (64, 64), (100, 30), (127, 95),
         (128, 96), (129, 97), (500, 600), (600, 500), (1000, 1400), (2400, 1935)]


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


def peaked(session_shape: tuple[int, int], where: tuple[float, float]):
    """A stand-in for a session's run: every map peaks at `where`, a share of the (height, width) map."""
    def run(_outputs, feeds):
        batch = next(iter(feeds.values())).shape[0]
        height, width = session_shape
        maps = np.full((batch, UNTRAINED_LANDMARKS, height, width), 1e-6, np.float32)
        maps[:, :, round(where[1] * (height - 1)), round(where[0] * (width - 1))] = 1.0
        return [maps / maps.sum(axis=(2, 3), keepdims=True)]
    return run


@pytest.mark.parametrize("corner", CORNERS)
def test_peaks_at_each_edge_and_corner_are_clamped_and_trusted_less(full_model, corner, monkeypatch):
    """The first stage's heatmaps peak at a corner or edge of the image, the second stage's 30 % of a crop
    side further out (within what it learned to move): the landmarks fall outside the image and must come
    back to its edge with a lower probability."""
    outwards = tuple(0.5 + 0.6 * (share - 0.5) for share in corner)  # 0.3 of the side from the centre
    monkeypatch.setattr(full_model.session, "run", peaked(full_model.codec.heatmap_shape, corner))
    monkeypatch.setattr(full_model.refine_session, "run", peaked(full_model.refine_codec.heatmap_shape, outwards))
    height, width = 400, 320
    image = synthetic_image(height, width, synthetic_landmarks(height, width, 5, np.random.default_rng(2)),
                            np.random.default_rng(3))
    detection = next(full_model.predict([image]))
    assert_inside(detection.points, height, width)
    on_edge = ((detection.points == 0) | (detection.points == [width - 1, height - 1])).any(axis=1)
    assert on_edge.all()
    assert (detection.confidence <= CLAMPED_PROBABILITY).all()


@pytest.mark.parametrize("compress", [False, True])
def test_the_container_warns_about_an_empty_image_in_a_stack(full_model_dir, tmp_path, caplog, compress):
    """A stack of noise and an all-zero image, as a compressed MetaImage too."""
    from algorithm.process import main

    images = [np.random.default_rng(4).integers(1, 256, size=(300, 240), dtype=np.uint8), np.zeros((300, 240),
                                                                                                  np.uint8)]
    save_stack(tmp_path / "in", "cases.mha", images, 300, 240, compress=compress)
    output = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING, logger="algorithm"):
        assert main(["--input", str(tmp_path / "in"), "--output", str(output), "--model",
                     str(full_model_dir)]) == 0
    assert any("cases.mha, image 2 of 2: nothing to find" in record.getMessage() for record in caplog.records)
    points = json.loads(output.read_text())["points"]
    second = [p for p in points if p["point"][2] == 2]
    assert len(second) == UNTRAINED_LANDMARKS and all(p["probability"] == 0 for p in second)
    assert all(0 <= p["point"][0] <= 239 and 0 <= p["point"][1] <= 299 for p in points)


def test_a_refinement_beyond_what_it_learned_keeps_the_first_landmark(full_model, monkeypatch):
    """A second stage that moves every landmark to its crop's corner (half a side away, beyond the 35 % that
    training offsets a crop by) is overruled: the first stage's landmarks are written."""
    height, width = 400, 320
    image = synthetic_image(height, width, synthetic_landmarks(height, width, 5, np.random.default_rng(5)),
                            np.random.default_rng(6))
    monkeypatch.setattr(full_model.refine_session, "run", peaked(full_model.refine_codec.heatmap_shape, (1, 1)))
    refined = next(full_model.predict([image]))
    monkeypatch.setattr(full_model, "refinement", None)
    first = next(full_model.predict([image]))
    np.testing.assert_allclose(refined.points, first.points)
