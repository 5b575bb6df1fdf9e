"""The shape model: built from synthetic skulls, it must catch a landmark on the wrong structure and put it back."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from algorithm import inference
from algorithm.codec import HeatmapCodec
from algorithm.inference import Detection
from algorithm.metadata import ModelMetadata
from algorithm.preprocessing import turn_points
from algorithm.shape import REESTIMATED_PROBABILITY, ShapeModel, to_complex, to_xy
from training.shape_model import build_shape_model, detection_spread, procrustes, training_pose
from training.synthetic import synthetic_image, synthetic_landmarks
from tests.conftest import FULL_MODEL_FRAME, UNTRAINED_LANDMARKS

NUM_LANDMARKS = 12
TEMPLATE = np.random.default_rng(11).uniform(100, 900, size=(NUM_LANDMARKS, 2))
# Two ways skulls vary: a longer face (the lower landmarks move down) and a jaw that opens (they swing).
LOWER = TEMPLATE[:, 1] > 500


def skull(rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    """A (K, 2) synthetic skull: the template varied along both modes, moved, turned and scaled at random."""
    shape = TEMPLATE.copy()
    shape[LOWER, 1] += rng.normal(0, 40)
    shape[LOWER, 0] += rng.normal(0, 25) * (shape[LOWER, 1] - 500) / 400
    shape += rng.normal(0, noise, shape.shape)
    angle, scale = rng.normal(0, 0.1), rng.uniform(0.7, 1.4)
    turned = to_complex(shape - 500) * scale * np.exp(1j * angle) + complex(*rng.uniform(800, 1200, 2))
    return to_xy(turned)


@pytest.fixture(scope="module")
def model() -> ShapeModel:
    rng = np.random.default_rng(0)
    return build_shape_model(np.stack([skull(rng) for _ in range(120)]))


def test_procrustes_removes_position_turn_and_size():
    rng = np.random.default_rng(1)
    shape = skull(rng, noise=0)
    moved = to_xy(to_complex(shape) * 1.7 * np.exp(0.4j) + (300 - 200j))
    aligned, mean = procrustes(to_complex(np.stack([shape, moved])))
    np.testing.assert_allclose(aligned[0], aligned[1], atol=1e-9)
    assert abs((np.abs(mean - mean.mean()) ** 2).mean() - 1) < 1e-9


def test_new_skulls_fit_and_a_landmark_on_another_structure_does_not(model):
    rng = np.random.default_rng(2)
    flagged_inliers, caught = 0, 0
    for _ in range(50):
        points = skull(rng)
        flagged_inliers += int((model.fit(points).z > model.outlier_z).sum())
        k = rng.integers(NUM_LANDMARKS)
        points[k] += rng.choice([-1, 1], 2) * rng.uniform(150, 300, 2)  # far off, e.g. on a ruler
        z = model.fit(points).z
        caught += int(np.argmax(z) == k and z[k] > model.outlier_z)
    assert flagged_inliers <= 2  # of 600 landmarks: 4 spreads of a Gaussian is a rare excess
    assert caught == 50


def test_two_landmarks_off_at_once_are_both_caught(model):
    points = skull(np.random.default_rng(3))
    points[[1, 7]] += [[260, -180], [-220, 240]]
    z = model.fit(points).z
    assert set(np.flatnonzero(z > model.outlier_z)) == {1, 7}


def test_correct_takes_the_other_peak_that_fits_or_else_the_estimate(model):
    truth = skull(np.random.default_rng(4))
    decoded = truth.copy()
    decoded[[2, 5]] += [[300, 40], [-250, -260]]
    candidates = np.repeat(decoded[:, None], 3, axis=1) + np.array([0, 1e4, 2e4])[None, :, None]
    scores = np.tile([0.5, 0.2, 0.1], (NUM_LANDMARKS, 1))
    candidates[2, 1] = truth[2] + [3, -2]  # landmark 2's heatmap also peaks on the right structure
    confidence = np.full(NUM_LANDMARKS, 0.9)
    asked = []

    def peaks(which):
        asked.append(list(which))
        return candidates[which], scores[which]

    points, corrected, _, reestimated = model.correct(decoded, confidence, peaks)
    assert asked == [[2, 5]]  # the heatmaps of the two that do not fit, and no other
    np.testing.assert_allclose(points[2], truth[2] + [3, -2])
    assert not reestimated[2] and reestimated[5]
    assert np.linalg.norm(points[5] - truth[5]) < 40  # the shape's estimate: near, not exact
    assert corrected[5] <= REESTIMATED_PROBABILITY < corrected[2]
    untouched = np.setdiff1d(np.arange(NUM_LANDMARKS), [2, 5])
    np.testing.assert_array_equal(points[untouched], decoded[untouched])
    assert (corrected[untouched] > 0.3).all()  # lowered only as far as each fits less well than usual


def test_candidates_are_the_heatmap_peaks_strongest_first():
    codec = HeatmapCodec(128, 96, 2, 1.5)
    truth = np.array([[30.0, 40.0], [70.0, 100.0]])
    heatmaps = codec.encode(truth)[0]
    heatmaps[0] += 0.6 * codec.encode(np.array([[60.0, 20.0]]))[0][0]  # a weaker second peak in map 0
    points, scores = codec.candidates(heatmaps, 3)
    np.testing.assert_allclose(points[0, 0], truth[0], atol=0.3)
    np.testing.assert_allclose(points[0, 1], [60, 20], atol=0.5)
    np.testing.assert_allclose(points[:, 0], codec.decode(heatmaps)[0])
    assert scores[0, 0] > scores[0, 1] > 0.5 and scores[1, 1] < 0.01


def test_detection_spread_is_robust_to_gross_errors():
    rng = np.random.default_rng(5)
    truth = np.stack([skull(rng) for _ in range(40)])
    errors = rng.normal(0, 4.0, truth.shape)
    clean = detection_spread(errors, truth)
    errors[:4, 3] = 500  # a tenth of landmark 3's detections on another structure
    spread = detection_spread(errors, truth)
    assert spread[3] < 1.3 * clean[3]
    sizes = np.sqrt((np.abs(to_complex(truth) - to_complex(truth).mean(axis=1, keepdims=True)) ** 2).mean(axis=1))
    np.testing.assert_allclose(clean, 4.0 / sizes.mean(), rtol=0.2)


def test_the_metadata_keeps_the_shape_model_and_refuses_a_mismatched_one(model, tmp_path):
    metadata = ModelMetadata(landmark_names=[f"L{k}" for k in range(NUM_LANDMARKS)],
                             codec=HeatmapCodec(128, 96, 2, 1.5), shape=model)
    metadata.save(tmp_path)
    loaded = ModelMetadata.load(tmp_path)
    points = skull(np.random.default_rng(6))
    np.testing.assert_allclose(loaded.shape.fit(points).z, model.fit(points).z)
    assert loaded.shape.angles is None  # a shape model from before angles were recorded: no levelling
    metadata.shape = replace(model, angles=[-12.5, -5.0, 8.0])
    metadata.save(tmp_path)
    assert ModelMetadata.load(tmp_path).shape.angles == [-12.5, -5.0, 8.0]
    with pytest.raises(ValueError, match="12 landmarks"):
        ModelMetadata(landmark_names=["a", "b", "c"], codec=HeatmapCodec(128, 96, 2, 1.5), shape=model)


def test_the_detector_takes_the_weaker_peak_on_the_right_structure(full_model, monkeypatch):
    """Landmark 3's heatmap peaks hardest on another structure and more weakly on its own: the container must
    write the weaker one, with the shape check, and the stronger one without it."""
    height, width = FULL_MODEL_FRAME
    truth = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, np.random.default_rng(9))
    image = synthetic_image(height, width, truth, np.random.default_rng(10))
    geometry = full_model.prepare(image)[1]
    wrong = np.array([0.95 * width, 0.05 * height])  # a ruler's corner, far from every landmark
    codec = full_model.codec

    def heatmaps(_outputs, feeds):
        maps = codec.encode(geometry.to_model(truth))[0]
        maps[3] = 0.4 * maps[3] + codec.encode(geometry.to_model(wrong[None]))[0][0]
        maps = maps + 1e-6
        return [(maps / maps.sum(axis=(1, 2), keepdims=True))[None]]

    monkeypatch.setattr(full_model.session, "run", heatmaps)
    monkeypatch.setattr(full_model, "refinement", None)  # the first stage's choice, unrefined
    checked = next(full_model.predict([image]))
    monkeypatch.setattr(full_model, "shape", None)
    unchecked = next(full_model.predict([image]))
    pixel = geometry.scale_xy.max() * codec.stride
    assert np.linalg.norm(unchecked.points[3] - wrong) < pixel
    assert np.linalg.norm(checked.points[3] - truth[3]) < pixel
    np.testing.assert_allclose(np.delete(checked.points, 3, 0), np.delete(unchecked.points, 3, 0))
    assert checked.confidence[3] < unchecked.confidence[3]


def test_a_skull_that_fits_is_left_alone_without_looking_for_other_peaks(model):
    truth = skull(np.random.default_rng(12))

    def no_peaks(_landmarks):
        raise AssertionError("other peaks were looked for, though every landmark fits")

    points, _, _, reestimated = model.correct(truth, np.full(NUM_LANDMARKS, 0.9), no_peaks)
    np.testing.assert_array_equal(points, truth)
    assert not reestimated.any()


@pytest.mark.parametrize("off_first, off_second, second_kept", [(2, 2, True), (2, 1, True), (2, 4, True),
                                                                  (2, 5, False)])
def test_a_second_look_that_puts_more_landmarks_off_the_skull_is_not_kept(full_model, monkeypatch, off_first,
                                                                          off_second, second_kept):
    """The second look's frame comes from the first look's skull; more landmarks off the skull after it means
    that frame was wrong (a first look far off on a new centre), so the first look stays, saying why."""
    monkeypatch.setattr(inference, "REFRAME_BELOW", np.inf)
    monkeypatch.setattr(inference, "REFRAME_SMALLEST", 0.0)
    points = synthetic_landmarks(*FULL_MODEL_FRAME, UNTRAINED_LANDMARKS, np.random.default_rng(5))
    image = synthetic_image(*FULL_MODEL_FRAME, points, np.random.default_rng(6))
    geometry = full_model.prepare(image)[1]

    def detection(off: int, shift: float) -> Detection:
        reestimated = np.arange(UNTRAINED_LANDMARKS) < off
        moved = points + shift
        return Detection(moved, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(moved), reestimated)

    first, second = detection(off_first, 0.0), detection(off_second, 7.0)
    monkeypatch.setattr(full_model, "decode", lambda heatmaps, geometries: [second])
    result = full_model.reframe(image, geometry, first)
    kept_second = result.points is second.points
    assert kept_second if second_kept else (result.points is first.points and result.notes == (
        f"a second look at the skull's usual frame put {off_second} landmark(s) off the skull against "
        f"{off_first}: the first look is kept",))


@pytest.mark.parametrize("framing, off_first, looks_again", [
    ("landscape canvas", 0, True), ("as in training", 0, False), ("tight crop", 0, True),
    ("tight crop", UNTRAINED_LANDMARKS // 2 + 1, False),  # most landmarks off the skull: no frame to trust
])
def test_the_first_stage_looks_again_where_the_skull_fills_much_less_or_much_more_of_its_image(
        full_model, monkeypatch, framing, off_first, looks_again):
    """A skull in a third of a wide canvas, or one half as large again as its image would hold in training (a crop
    tight about it), gets a second look at the frame training would give it; a skull framed as in training does
    not, nor a first look whose landmarks mostly fit no skull."""
    height, width = FULL_MODEL_FRAME
    rng = np.random.default_rng(7)
    points = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, rng)
    if framing == "tight crop":
        points = (points - [width / 2, height / 2]) * 1.5 + [width / 2, height / 2]
    canvas_width = 3 * width if framing == "landscape canvas" else width
    image = rng.uniform(1, 255, size=(height, canvas_width)).astype(np.uint8)
    geometry = full_model.prepare(image)[1]
    first = Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points),
                      np.arange(UNTRAINED_LANDMARKS) < off_first)
    second = Detection(points + 1.0, first.confidence, first.shape_fit, first.reestimated)
    frames = []
    monkeypatch.setattr(full_model, "decode", lambda heatmaps, geometries: frames.extend(geometries) or [second])
    result = full_model.reframe(image, geometry, first)
    if not looks_again:
        assert result is first and result.frame_height is None
        return
    np.testing.assert_array_equal(result.points, second.points)
    assert result.frame_height == frames[0].content_height  # the second stage's crops are a share of it
    if framing == "tight crop":
        assert frames[0].content_width > canvas_width and frames[0].content_height > height
    heights = []
    monkeypatch.setattr(inference, "refine_landmarks",
                        lambda content, points, *rest: heights.append(rest[-1]) or (points, np.ones(len(points))))
    full_model.refine(image, geometry, result)
    assert heights == [frames[0].content_height]


@pytest.mark.parametrize("canvas_widths, off_centred, kept", [(3, 0, True), (3, UNTRAINED_LANDMARKS, False),
                                                               (1, 0, False)])
def test_a_first_look_that_finds_no_skull_in_a_wide_image_looks_at_its_centre_at_the_models_aspect(
        full_model, monkeypatch, canvas_widths, off_centred, kept):
    """A viewer screenshot squeezed into the model's input can hide the skull from the first look (most landmarks off
    a plausible skull, so no skull frame to look at). The first stage then looks at a frame of its input's aspect,
    as tall as the image and centred across it, and keeps that look only if fewer landmarks are off the skull; an
    image of the input's own aspect has no other frame to offer."""
    monkeypatch.setattr(inference, "REFRAME_BELOW", 0.0)  # no second look at the skull's frame after it
    monkeypatch.setattr(inference, "REFRAME_ABOVE", np.inf)
    height, width = FULL_MODEL_FRAME
    rng = np.random.default_rng(8)
    points = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, rng)
    image = rng.uniform(1, 255, size=(height, canvas_widths * width)).astype(np.uint8)
    geometry = full_model.prepare(image)[1]
    lost = np.ones(UNTRAINED_LANDMARKS, bool)
    first = Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points), lost)
    centred = Detection(points + 1.0, first.confidence, first.shape_fit, np.arange(UNTRAINED_LANDMARKS) < off_centred)
    frames = []
    monkeypatch.setattr(full_model, "decode", lambda heatmaps, geometries: frames.extend(geometries) or [centred])
    result = full_model.reframe(image, geometry, first)
    aspect = full_model.codec.input_width / full_model.codec.input_height
    if canvas_widths == 1:
        assert abs(np.log(width / height / aspect)) <= np.log(inference.CENTRED_LOOK_ASPECT) and not frames
    else:
        (frame,) = frames
        assert frame.content_height == height and frame.content_width == pytest.approx(height * aspect, abs=1)
        assert frame.left + frame.content_width / 2 == pytest.approx(canvas_widths * width / 2, abs=1)
    if not kept:
        assert result is first
        return
    np.testing.assert_array_equal(result.points, centred.points)
    assert result.notes[-1].endswith(f"at the model's aspect put {off_centred}, and is kept")


# what the log must say each export was
EXPORTED_AS = {"mirrored": "mirrored", "clockwise": "turned a quarter clockwise",
               "anticlockwise": "turned a quarter anticlockwise", "upside down": "upside down",
               "flipped top to bottom": "flipped top to bottom",
               "mirrored, then turned clockwise": "mirrored and turned a quarter clockwise",
               "mirrored, then turned anticlockwise": "mirrored and turned a quarter anticlockwise"}


def _first_looks_only(detector: inference.LandmarkDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second look at the skull's frame and no second stage: the test sees the first stage's looks alone."""
    monkeypatch.setattr(inference, "REFRAME_BELOW", 0.0)
    monkeypatch.setattr(inference, "REFRAME_ABOVE", np.inf)
    monkeypatch.setattr(detector, "refinement", None)


def _recorded_prepares(detector: inference.LandmarkDetector, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The images the detector prepares for its first stage, in order, as it prepares them (one per look)."""
    seen, real_prepare = [], detector.prepare
    monkeypatch.setattr(detector, "prepare", lambda given: seen.append(given) or real_prepare(given))
    return seen


def _upright_skull() -> tuple[np.ndarray, np.ndarray]:
    """A synthetic upright skull of the full model's frame: its (K, 2) landmarks and its image."""
    height, width = FULL_MODEL_FRAME
    truth = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, np.random.default_rng(11))
    return truth, synthetic_image(height, width, truth, np.random.default_rng(12))


def _turned(upright: np.ndarray, points: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """An upright image and its (K, 2) landmarks as a clinic might export them instead (forward maps, written here
    independently of the container's maps back)."""
    height, width = upright.shape
    x, y = points[:, 0], points[:, 1]
    if how == "mirrored":
        return upright[:, ::-1], np.stack([width - 1 - x, y], 1)
    if how == "clockwise":
        return np.rot90(upright, -1), np.stack([height - 1 - y, x], 1)
    if how == "anticlockwise":
        return np.rot90(upright, 1), np.stack([y, width - 1 - x], 1)
    if how == "upside down":
        return upright[::-1, ::-1], np.stack([width - 1 - x, height - 1 - y], 1)
    if how == "flipped top to bottom":
        return upright[::-1], np.stack([x, height - 1 - y], 1)
    if how == "mirrored, then turned clockwise":
        return np.rot90(upright[:, ::-1], -1), np.stack([height - 1 - y, width - 1 - x], 1)
    if how == "mirrored, then turned anticlockwise":
        return np.rot90(upright[:, ::-1], 1), np.stack([y, x], 1)
    return upright, points


@pytest.mark.parametrize("how", ["mirrored", "clockwise", "anticlockwise", "upside down", "flipped top to bottom",
                                 "mirrored, then turned clockwise", "mirrored, then turned anticlockwise", "upright",
                                 "no skull either way"])
def test_a_mirrored_flipped_or_turned_image_is_read_upright_and_its_landmarks_mapped_back(full_model, monkeypatch,
                                                                                         how):
    """The network finds the skull only in the upright copy (elsewhere its peaks fall anywhere): an image exported in
    any of the seven other orientations of its rectangle gets its landmarks where its own skull is, saying which;
    an upright one takes no extra look, and one with no skull in any orientation keeps its first look."""
    _first_looks_only(full_model, monkeypatch)
    truth, upright = _upright_skull()
    image, expected = _turned(upright, truth, how)
    upright_input, upright_geometry = full_model.prepare(upright)
    codec, rng, looks = full_model.codec, np.random.default_rng(13), []

    def heatmaps(_outputs, feeds):
        model_input = next(iter(feeds.values()))[0, 0]
        sees_skull = how != "no skull either way" and model_input.shape == upright_input.shape and np.allclose(
            model_input, upright_input)
        looks.append(sees_skull)
        points = (upright_geometry.to_model(truth) if sees_skull else
                  rng.uniform(0, 1, (UNTRAINED_LANDMARKS, 2)) * [codec.input_width, codec.input_height])
        maps = codec.encode(points)[0] + 1e-6
        return [(maps / maps.sum(axis=(1, 2), keepdims=True))[None]]

    monkeypatch.setattr(full_model.session, "run", heatmaps)
    result = next(full_model.predict([np.ascontiguousarray(image)]))
    pixel = upright_geometry.scale_xy.max() * codec.stride
    if how == "upright":
        assert looks == [True] and not result.notes
    if how == "no skull either way":
        assert len(looks) > 1 and not any("upright copy" in note for note in result.notes)
        return
    assert np.abs(result.points - expected).max() < pixel
    if how != "upright":
        # the search stops at the upright look (none off): no orientation is looked at after it
        assert looks[0] is False and looks.count(True) == 1 and looks[-1] is True
        assert "upright copy" in result.notes[-1] and f"the image looks {EXPORTED_AS[how]}" in result.notes[-1]


@pytest.mark.parametrize("off_as_given", [2, 0])
def test_a_few_landmarks_off_a_skull_turned_beyond_trainings_start_the_search_for_the_upright_copy(
        full_model, monkeypatch, off_as_given):
    """A transposed image (mirrored and turned a quarter) can fool the first look into a skull turned beyond any
    training skull with only a few landmarks off, too few to suspect the orientation by count: the search runs on
    it and reads the upright copy; the same look with none off is only levelled."""
    _first_looks_only(full_model, monkeypatch)
    truth, upright = _upright_skull()
    image, expected = _turned(upright, truth, "mirrored, then turned anticlockwise")
    fit = full_model.shape.fit(truth)
    turned_further = full_model.shape.angles[2] + 15 - fit.degrees
    fooled = to_xy((to_complex(truth) - fit.offset) * np.exp(1j * np.radians(turned_further)) + fit.offset)
    assert full_model.shape.levelling_turn(full_model.shape.fit(fooled)) != 0
    assert off_as_given < inference.TURNED_LOOK_SHARE * UNTRAINED_LANDMARKS
    seen = _recorded_prepares(full_model, monkeypatch)

    def is_upright(given: np.ndarray) -> bool:
        return given.shape == upright.shape and np.array_equal(given, upright)

    def decode(_heatmaps, _geometries):
        points, off = (truth, 0) if is_upright(seen[-1]) else (fooled, off_as_given if len(seen) == 1 else 10)
        return [Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points),
                          np.arange(UNTRAINED_LANDMARKS) < off)]

    monkeypatch.setattr(full_model, "decode", decode)
    result = next(full_model.predict([np.ascontiguousarray(image)]))
    if off_as_given == 0:
        assert not any(is_upright(given) for given in seen)
        assert any(note.endswith("the image is read as it is") for note in result.notes)
        return
    np.testing.assert_allclose(result.points, expected, atol=1e-6)
    assert "the image looks mirrored and turned a quarter anticlockwise" in result.notes[-1]


@pytest.mark.parametrize("confidence", [0.1, 0.5])
def test_a_few_landmarks_off_a_skull_found_with_little_confidence_start_the_search_for_the_upright_copy(
        full_model, monkeypatch, confidence):
    """A mirrored image can fool the first look into an upright-looking skull with only a few landmarks off, too few
    to suspect the orientation by count, but the network finds the rest with little confidence: the search runs and
    reads the upright copy. The same look found with the confidence of an upright skull is read as it is."""
    _first_looks_only(full_model, monkeypatch)
    truth, upright = _upright_skull()
    image, expected = _turned(upright, truth, "mirrored")
    assert full_model.shape.levelling_turn(full_model.shape.fit(truth)) == 0
    seen = _recorded_prepares(full_model, monkeypatch)

    def is_upright(given: np.ndarray) -> bool:
        return given.shape == upright.shape and np.array_equal(given, upright)

    def decode(_heatmaps, _geometries):
        off, sure = (0, 0.5) if is_upright(seen[-1]) else (2 if len(seen) == 1 else 10, confidence)
        return [Detection(truth, np.full(UNTRAINED_LANDMARKS, sure), full_model.shape.fit(truth),
                          np.arange(UNTRAINED_LANDMARKS) < off)]

    monkeypatch.setattr(full_model, "decode", decode)
    result = next(full_model.predict([np.ascontiguousarray(image)]))
    if confidence >= inference.DOUBTFUL_CONFIDENCE:
        assert len(seen) == 1 and not result.notes
        return
    assert any(is_upright(given) for given in seen)
    np.testing.assert_allclose(result.points, expected, atol=1e-6)
    assert "the image looks mirrored" in result.notes[-1]


@pytest.mark.parametrize("tilt, copy_off, levelled", [(25.0, 0, True), (-25.0, 0, True), (0.0, 0, False),
                                                       (25.0, 2, False)])
def test_a_skull_turned_beyond_trainings_is_read_in_a_copy_turned_level_and_its_landmarks_turned_back(
        full_model, monkeypatch, tilt, copy_off, levelled):
    """A skull tilted 25 degrees either way (training's synthetic skulls turn by a few) is looked at again in a copy
    turned about its centre to the training skulls' median angle, and its landmarks come back where its own discs
    are; a skull within training's angles takes no extra look, and a copy whose look puts more landmarks off the
    skull is not used."""
    _first_looks_only(full_model, monkeypatch)
    height, width = FULL_MODEL_FRAME
    truth = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, np.random.default_rng(14))
    image_centre = complex(width - 1, height - 1) / 2
    # anticlockwise on screen, y pointing down: a factor of e^(-i tilt)
    tilted = to_xy((to_complex(truth) - image_centre) * np.exp(-1j * np.radians(tilt)) + image_centre)
    image = synthetic_image(height, width, tilted, np.random.default_rng(15))
    lowest, median, highest = full_model.shape.angles
    assert highest - lowest < 20  # the synthetic skulls' own turns: 25 degrees lies beyond them either way
    seen = _recorded_prepares(full_model, monkeypatch)

    def decode(_heatmaps, _geometries):
        points, off = tilted, 0
        if len(seen) == 2:  # the copy: where a perfect network would see each disc, which must be there
            fit = full_model.shape.fit(tilted)
            points = to_xy((to_complex(tilted) - fit.offset) * np.exp(1j * np.radians(median - fit.degrees))
                           + fit.offset)
            inside = np.all((points >= 2) & (points < [width - 2, height - 2]), axis=1)
            x, y = np.round(points[inside]).astype(int).T
            tx, ty = np.round(tilted[inside]).astype(int).T
            assert inside.sum() >= UNTRAINED_LANDMARKS - 3
            np.testing.assert_allclose(seen[1][y, x], image[ty, tx], atol=15)
            assert abs(full_model.shape.fit(points).degrees - median) < 1e-6
            off = copy_off
        return [Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points),
                          np.arange(UNTRAINED_LANDMARKS) < off)]

    monkeypatch.setattr(full_model, "decode", decode)
    result = next(full_model.predict([image]))
    if tilt == 0:
        assert len(seen) == 1 and not result.notes
        return
    assert len(seen) == 2
    np.testing.assert_allclose(result.points, np.clip(tilted, 0, [width - 1, height - 1]), atol=1e-6)
    if levelled:
        assert "copy turned level about" in result.notes[-1] and result.shape_fit is None
    else:
        assert result.notes[-1].endswith("the image is read as it is")


@pytest.mark.parametrize("skull_tilt, copies_looked_at, mirrored_off", [(20.0, 2, None), (-20.0, 1, None),
                                                                       (None, 2, None), (0.0, 0, None), (20.0, 5, 5)])
def test_a_skull_found_in_no_orientation_is_looked_for_in_copies_tilted_either_way(full_model, monkeypatch,
                                                                                  skull_tilt, copies_looked_at,
                                                                                  mirrored_off):
    """A network that finds a skull only where its discs stand upright (10 of 19 landmarks off elsewhere, so no
    orientation helps): an image whose skull is tilted 20 degrees either way is read in the copy turned back, its
    landmarks turned back onto its own discs; with no skull in any copy the first look stays, and a look with fewer
    than a quarter of the landmarks off takes no tilted copy. Where the mirrored copy halves the landmarks off (5)
    without a sure reading, its tilted copies and its levelled copy find nothing (three looks), and the image as
    given is read tilted too: that reading, with none off, is kept."""
    _first_looks_only(full_model, monkeypatch)
    height, width = FULL_MODEL_FRAME
    truth = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, np.random.default_rng(18))
    centre = np.array([width - 1, height - 1]) / 2
    tilted = turn_points(truth, centre, skull_tilt or 0.0)  # clockwise on screen where positive
    image = synthetic_image(height, width, tilted, np.random.default_rng(19))
    inside = np.all((tilted >= 2) & (tilted < [width - 2, height - 2]), axis=1)
    assert inside.sum() >= UNTRAINED_LANDMARKS - 3
    seen = _recorded_prepares(full_model, monkeypatch)

    def sees_upright_skull(given: np.ndarray) -> bool:
        """Whether `given` holds the image's discs where the upright skull's landmarks are (a perfect network)."""
        if skull_tilt is None or given.shape != image.shape:
            return False
        x, y = np.round(truth[inside]).astype(int).T
        tx, ty = np.round(tilted[inside]).astype(int).T
        return bool(np.all(np.abs(given[y, x].astype(float) - image[ty, tx]) < 15))

    def decode(_heatmaps, _geometries):
        if skull_tilt == 0.0:
            points, off = truth, 3
        elif len(seen) == 2 and mirrored_off is not None:  # the first orientation looked at: mirrored
            points, off = tilted, mirrored_off
        else:
            points, off = (truth, 0) if len(seen) > 1 and sees_upright_skull(seen[-1]) else (tilted, 10)
        return [Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points),
                          np.arange(UNTRAINED_LANDMARKS) < off)]

    monkeypatch.setattr(full_model, "decode", decode)
    result = next(full_model.predict([image]))
    tilt_notes = [note for note in result.notes if "so they were found there" in note]
    if copies_looked_at == 0:
        assert len(seen) == 1 and not tilt_notes
        return
    assert len(seen) == 1 + len(inference.ORIENTATIONS) + copies_looked_at
    np.testing.assert_allclose(result.points, np.clip(tilted, 0, [width - 1, height - 1]), atol=1e-6)
    if skull_tilt is None:
        assert not tilt_notes
        return
    turned_back = "anticlockwise" if skull_tilt > 0 else "clockwise"
    assert tilt_notes == [f"10 of {UNTRAINED_LANDMARKS} landmarks fit no plausible skull as it stands: a copy turned "
                          f"20 degrees {turned_back} put 0 off, so they were found there"]
    assert result.shape_fit is None
    assert (mirrored_off is not None) == result.notes[-1].endswith("it is read as given")


def test_a_tilted_copy_that_finds_an_upright_skull_turned_is_not_used(full_model, monkeypatch):
    """A bad first look (10 of 19 off) at an upright skull: the copy turned 20 degrees finds the skull, but turned
    as the copy turns it, so the image as given holds an upright skull; that copy is a different look, not a tilted
    skull made upright, and the first look stays."""
    _first_looks_only(full_model, monkeypatch)
    height, width = FULL_MODEL_FRAME
    drawn = synthetic_landmarks(height, width, UNTRAINED_LANDMARKS, np.random.default_rng(20))
    truth = turn_points(drawn, drawn.mean(axis=0), full_model.shape.angles[1] - full_model.shape.fit(drawn).degrees)
    first_look = truth + 5.0
    centre = np.array([width - 1, height - 1]) / 2
    image = synthetic_image(height, width, truth, np.random.default_rng(21))
    seen = _recorded_prepares(full_model, monkeypatch)

    def decode(_heatmaps, _geometries):
        in_first_copy = len(seen) == 2 + len(inference.ORIENTATIONS)
        points, off = ((turn_points(truth, centre, inference.TILT_SEARCH_DEGREES[0]), 0) if in_first_copy
                       else (first_look, 10))
        return [Detection(points, np.full(UNTRAINED_LANDMARKS, 0.5), full_model.shape.fit(points),
                          np.arange(UNTRAINED_LANDMARKS) < off)]

    monkeypatch.setattr(full_model, "decode", decode)
    result = next(full_model.predict([image]))
    assert len(seen) == 2 + len(inference.ORIENTATIONS)  # the first copy put none off: the search stopped there
    np.testing.assert_allclose(result.points, first_look, atol=1e-6)
    assert not any("so they were found there" in note for note in result.notes)


@pytest.mark.parametrize("off_inside, picture_kept", [(0, True), (2, True), (3, False)])
def test_a_picture_inside_a_black_border_is_read_alone_unless_it_puts_more_landmarks_off_the_skull(
        full_model, monkeypatch, off_inside, picture_kept):
    """A skull in a black viewer window (a screenshot of a tight crop): the picture inside the window is read as an
    image of its own and its landmarks moved back by the picture's offset in the window; where that reading puts
    landmarks off the skull, the whole image is read too, and where the picture's puts more off than the whole
    image's (2 here), the whole image's reading stays. A picture read with none off is kept without reading the
    whole image, or even looking at it: the border is found before the first stage's first look."""
    truth, picture = _upright_skull()
    height, width = picture.shape
    left, top = 700, 40
    window = np.zeros((height + 80, width + 1400), np.uint8)
    window[top:top + height, left:left + width] = picture
    read = []

    def reading(image, geometry, as_given):
        read.append(image)
        inside = image.shape == picture.shape
        return Detection(truth if inside else truth + 50.0, np.full(UNTRAINED_LANDMARKS, 0.5), None,
                         np.arange(UNTRAINED_LANDMARKS) < (off_inside if inside else 2))

    looked_at = []
    heatmaps = full_model.heatmaps

    def looking(inputs):
        looked_at.append(len(inputs))
        return heatmaps(inputs)

    monkeypatch.setattr(full_model, "_read", reading)
    monkeypatch.setattr(full_model, "heatmaps", looking)
    result = next(full_model.predict([window]))
    np.testing.assert_array_equal(read[0], picture)
    assert len(read) == (1 if off_inside == 0 else 2) and (off_inside == 0 or read[1] is window)
    assert looked_at == [1] * len(read)  # one first look at each image read: the picture, then perhaps the whole
    np.testing.assert_allclose(result.points, truth + [left, top] if picture_kept else truth + 50.0)
    assert result.notes[-1].endswith("the picture is read" if picture_kept else "the whole image is read")


def test_the_levelling_turn_brings_only_a_skull_beyond_trainings_angles_to_their_median(model):
    rng = np.random.default_rng(16)
    points = skull(rng, noise=0)
    fit = model.fit(points)
    model_with_angles = replace(model, angles=[fit.degrees - 10, fit.degrees - 3, fit.degrees + 10])
    assert model_with_angles.levelling_turn(fit) == 0 and model.levelling_turn(fit) == 0  # within; not recorded
    turned = to_xy(to_complex(points) * np.exp(1j * np.radians(30)))  # 30 degrees clockwise on screen
    assert model_with_angles.levelling_turn(model.fit(turned)) == pytest.approx(-33, abs=1e-6)
    assert model_with_angles.beyond_angles(fit.degrees + 30) and model_with_angles.beyond_angles(fit.degrees - 11)
    assert not model_with_angles.beyond_angles(fit.degrees + 9 + 360) and not model.beyond_angles(fit.degrees + 90)
    with pytest.raises(ValueError, match="angles"):
        replace(model, angles=[5, 0, 10])


def test_the_training_angles_are_those_of_the_training_skulls_fits(model):
    """Skulls all turned 20 degrees further give angles 20 degrees further, and the frame's size is unchanged."""
    rng = np.random.default_rng(17)
    shapes = np.stack([skull(rng) for _ in range(30)])
    sizes = np.tile([1600.0, 2000.0], (30, 1))
    frame, angles = training_pose(model, shapes, sizes)
    turned = to_xy((to_complex(shapes) - 1000) * np.exp(1j * np.radians(20)) + 1000)
    turned_frame, turned_angles = training_pose(model, turned, sizes)
    np.testing.assert_allclose(turned_angles, np.add(angles, 20), atol=1e-6)
    assert angles[0] < angles[1] < angles[2]
    np.testing.assert_allclose(turned_frame[2:], frame[2:], rtol=1e-6)
