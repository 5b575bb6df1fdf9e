"""The second stage: crop geometry and its map back, confidences, and the life cycle of a two-stage model
(train the refinement -> resume -> export beside its first stage -> evaluate -> run the container)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from conftest import TINY_CONFIG, TINY_REFINE, assert_valid_output, run_module

from algorithm.codec import HeatmapCodec
from algorithm.crops import MAX_CROP_OFFSET, CropSpec, refine_landmarks
from algorithm.devices import DeviceError
from algorithm.inference import Detection, LandmarkDetector
from algorithm.metadata import ModelMetadata
from algorithm.output import multiple_points
from training.data import source_name
from training.ensemble import weights_at_half_precision
from training.quantize import head_convolutions
from training.metrics import auroc, confidence_report


def dot_image(height: int, width: int, at_xy: tuple[int, int]) -> np.ndarray:
    image = np.full((height, width), 10, dtype=np.uint8)
    image[at_xy[1], at_xy[0]] = 250
    return image


@pytest.mark.parametrize("fraction, frame_height", [(0.1, None), (0.2, None), (0.1, 480)])
def test_a_bright_pixel_appears_in_the_crop_where_to_crop_puts_it(fraction, frame_height):
    """At scale 1 the crop pixel is the original pixel; at scale 2 the dot is averaged within half a pixel. The
    side is a share of the content's height, or of the frame's where the first stage looked again at a frame
    taller than the image (a tight crop)."""
    height, width, size = 320, 250, 32
    dot = (101, 157)
    centres = np.array([[96.0, 150.0], [110.0, 149.0]])
    crops, geometry = CropSpec(fraction, size).extract(dot_image(height, width, dot), centres, frame_height)
    assert crops.shape == (2, size, size) and crops.dtype == np.float32
    assert geometry.scale == pytest.approx(fraction * (frame_height or height) / size)
    expected = geometry.to_crop(np.array([dot, dot], dtype=float))
    for crop, where in zip(crops, expected):
        peak_y, peak_x = np.unravel_index(crop.argmax(), crop.shape)
        assert np.abs(np.array([peak_x, peak_y]) - where).max() <= 0.5 * geometry.scale
        assert crop.mean() == pytest.approx(0, abs=1e-5) and crop.std() == pytest.approx(1, abs=1e-3)


def test_crop_coordinates_map_back_exactly_and_place_every_landmark_in_every_crop():
    _, geometry = CropSpec(0.1, 48).extract(np.ones((400, 300), np.uint8), np.array([[50.0, 60.0], [200.5, 300.25]]))
    points = np.array([[41.3, 77.0], [190.0, 310.0]])
    np.testing.assert_allclose(geometry.to_original(geometry.to_crop(points)), points)
    np.testing.assert_allclose(geometry.to_crop(geometry.centres), (48 - 1) / 2)
    every = geometry.every_landmark_in_every_crop(points)
    assert every.shape == (2, 2, 2)
    np.testing.assert_allclose(every[0, 1], (points[1] - geometry.centres[0]) / geometry.scale + 23.5)
    np.testing.assert_allclose(np.diagonal(every, axis1=0, axis2=1).T, geometry.to_crop(points))


def test_crops_near_the_border_repeat_the_edge_pixels():
    """Outside the image a crop sees the nearest edge pixel. On the linear image 80 y + x bilinear samples are
    exact, so each crop pixel is the mean of 80 y + x over its 2 x 2 sub-samples (scale / 4 either side of its
    centre on each axis), each coordinate clamped into the image, then z-scored per crop."""
    height, width, size = 100, 80, 16
    centres = np.array([[-5.0, -5.0], [79.0, 99.0], [500.0, 40.0]])
    crops, _ = CropSpec(0.3, size).extract(np.arange(height * width, dtype=np.uint16).reshape(height, width), centres)
    scale = 0.3 * height / size  # 1.875 original pixels a crop pixel: two sub-samples on each axis
    footprints = (np.arange(size) - (size - 1) / 2)[:, None] * scale + [-scale / 4, scale / 4]
    for crop, (x, y) in zip(crops, centres):
        xs = np.clip(x + footprints, 0, width - 1).mean(axis=1)
        ys = np.clip(y + footprints, 0, height - 1).mean(axis=1)
        raw = width * ys[:, None] + xs[None, :]
        np.testing.assert_allclose(crop, (raw - raw.mean()) / raw.std(), atol=1e-5)
    # right of the image every column repeats its last one (x = 79), and the rows rise evenly with y
    rows = (np.arange(size) - (size - 1) / 2) / np.arange(size).std()
    np.testing.assert_allclose(crops[2], np.repeat(rows[:, None], size, axis=1), atol=1e-5)


@pytest.mark.parametrize("fraction", [0.05, 0.23, 0.6])  # about 0.6, 2.7 and 7.1 original pixels a crop pixel
def test_each_crop_pixel_is_the_mean_of_its_bilinear_samples(fraction):
    """Against bilinear sampling written out one sample at a time: each crop pixel is the mean of ceil(scale)^2
    samples spread evenly over its footprint, each clamped into the image, then the crop is z-scored; a crop wholly
    past a corner sees one edge pixel and is exactly constant (all zeros once z-scored)."""
    rng = np.random.default_rng(4)
    height, width, size = 97, 131, 11
    image = rng.integers(0, 4096, (height, width)).astype(np.uint16)
    centres = np.array([[65.3, 48.9], [2.2, 90.6], [128.7, 1.4], [-300.0, -300.0]])
    crops, geometry = CropSpec(fraction, size).extract(image, centres)
    samples = int(np.ceil(geometry.scale))
    offsets = ((np.arange(samples) + 0.5) / samples - 0.5) * geometry.scale
    for crop, centre in zip(crops[:-1], centres[:-1]):
        raw = np.zeros((size, size))
        for row, col in np.ndindex(size, size):
            for dy, dx in np.ndindex(samples, samples):
                x, y = centre + (np.array([col, row]) - (size - 1) / 2) * geometry.scale + [offsets[dx], offsets[dy]]
                x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
                x0, y0 = min(int(x), width - 2), min(int(y), height - 2)
                top = image[y0, x0] * (x0 + 1 - x) + image[y0, x0 + 1] * (x - x0)
                bottom = image[y0 + 1, x0] * (x0 + 1 - x) + image[y0 + 1, x0 + 1] * (x - x0)
                raw[row, col] += (top * (y0 + 1 - y) + bottom * (y - y0)) / samples**2
        np.testing.assert_allclose(crop, (raw - raw.mean()) / raw.std(), atol=1e-4)
    assert np.all(crops[-1] == 0)


def test_refinement_finds_the_landmark_in_each_crop_through_its_own_channel():
    """A fake second stage that puts landmark k's Gaussian in channel k of every crop: the refined landmarks
    are the true ones, whatever the first stage's offsets, so the crop map and the channel choice are right."""
    rng = np.random.default_rng(0)
    spec = CropSpec(0.12, 40)
    codec = HeatmapCodec(40, 40, 2, 1.5)
    image = rng.integers(0, 255, size=(500, 420)).astype(np.uint8)
    truth = rng.uniform(60, 400, size=(6, 2))
    first = truth + rng.uniform(-6, 6, size=truth.shape)
    _, geometry = spec.extract(image, first)

    def fake_model(crops: np.ndarray) -> np.ndarray:
        maps = np.stack([codec.encode(points)[0] for points in geometry.every_landmark_in_every_crop(truth)])
        return maps / maps.sum(axis=(2, 3), keepdims=True).clip(1e-12)  # a spatial softmax's distributions

    refined, confidence = refine_landmarks(image, first, spec, codec, fake_model)
    np.testing.assert_allclose(refined, truth, atol=0.25 * codec.stride * geometry.scale)
    assert np.all((confidence > 0.5) & (confidence <= 1))


def test_confidence_is_the_mass_near_the_peak():
    codec = HeatmapCodec(64, 64, 2, 2.0)
    sharp = codec.encode(np.array([[30.0, 30.0]]))[0]
    sharp /= sharp.sum()
    flat = np.full_like(sharp, 1.0 / sharp[0].size)
    assert codec.decode(sharp)[1][0] > 0.6  # a 5 x 5 window holds about 62 % of a sigma-2 Gaussian
    window = (2 * codec.centroid_radius + 1) ** 2
    assert codec.decode(flat)[1][0] <= window / flat[0].size  # no more than the window's share of the map


def pairwise_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The AUROC counted by brute force: the share of (positive, negative) pairs the positive scores higher in,
    ties counted half; NaN without a pair."""
    pairs = scores[positive][:, None] - scores[~positive][None, :]
    return float(((pairs > 0) + 0.5 * (pairs == 0)).mean()) if pairs.size else float("nan")


def test_auroc_matches_a_pairwise_count_and_the_report_splits_the_least_confident():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 300).astype(float)
    positive = rng.random(300) < 0.2 + 0.1 * scores
    assert auroc(scores, positive) == pytest.approx(pairwise_auroc(scores, positive))
    errors = np.array([[0.5, 3.0, np.nan], [1.0, 5.0, 0.7]])
    confidence = np.array([[0.9, 0.2, 0.5], [0.8, 0.1, 0.95]])
    report = confidence_report(confidence, errors, least_share=0.2)
    assert report["AUROC"] == 1.0
    assert report["MRE_least_confident"] == 5.0 and report["MRE_rest"] == pytest.approx((0.5 + 3.0 + 1.0 + 0.7) / 4)
    assert np.isnan(report["gross_among_least_confident"])  # no error beyond 5 mm
    # errors beyond 2.5 mm: 3.0 (confidence 0.2) and 5.0 (0.1); the least confident one is the 5.0
    assert confidence_report(confidence, errors, least_share=0.2, gross_mm=2.5)["gross_among_least_confident"] == 0.5


@pytest.mark.parametrize("confidence, expected", [
    ([0.9, 0.8, 0.3, 0.2, 0.5], 1.0),    # every error above 2 mm less confident than every one below
    ([0.2, 0.3, 0.8, 0.9, 0.5], 0.0),    # every one more confident
    ([0.5, 0.5, 0.5, 0.5, 0.1], 0.5),    # all tied
    ([0.9, 0.4, 0.6, 0.4, 0.0], 0.625),  # pairs (above, below): (0.6, 0.9) 1, (0.6, 0.4) 0, (0.4, 0.9) 1, tie 0.5
])
def test_the_confidence_report_gives_the_auroc_of_low_confidence_for_large_errors(confidence, expected):
    """Errors 3 and 4 mm are above the 2 mm threshold, 0.5 and 1 mm below; the fifth landmark is unannotated."""
    errors = np.array([[0.5, 1.0, 3.0, 4.0, np.nan]])
    assert confidence_report(np.array([confidence]), errors)["AUROC"] == expected


def test_probabilities_are_written_per_point_in_the_unit_interval():
    value = multiple_points([np.zeros((2, 2)), np.ones((2, 2))], probabilities=[[0.5, 1.2], [-0.1, 0.25]])
    assert [p["probability"] for p in value["points"]] == [0.5, 1.0, 0.0, 0.25]
    with pytest.raises(ValueError, match="3 probabilities for 4 points"):
        multiple_points([np.zeros((2, 2)), np.ones((2, 2))], probabilities=[[0.5], [0.1, 0.2]])


# ---------------------------------------------------------------- the life cycle, on the synthetic set


def crop_heights(detections: Iterable[Detection], images: list[np.ndarray]) -> np.ndarray:
    """What each image's crops are a share of: its height, or the frame's where the first stage looked again."""
    return np.array([d.frame_height or image.shape[0] for d, image in zip(detections, images)])


def assert_some_moved_none_beyond_their_crops(refined: np.ndarray, first: np.ndarray, heights: np.ndarray) -> None:
    """The second stage moves some of the (N, K, 2) first-stage landmarks, none further on either axis of its crop
    than MAX_CROP_OFFSET of the crop's side (tiny-refine's crop fraction of `crop_heights`): a landmark refined
    further keeps its first-stage position. An image read in a copy turned level has its crops' axes turned, so
    the bound is on the length of each move: sqrt(2) x MAX_CROP_OFFSET of the side."""
    moved = np.linalg.norm(refined - first, axis=-1)
    sides = json.loads(TINY_REFINE.read_text())["crop_fraction"] * heights
    assert (moved > 1e-3).any()
    assert (moved <= np.sqrt(2) * MAX_CROP_OFFSET * sides[:, None] + 1e-3).all(), moved.max()


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory, synthetic_dataset) -> Path:
    """A first stage trained for one epoch and exported: what the refinement is trained to correct."""
    run = tmp_path_factory.mktemp("detect") / "run"
    result = run_module("training.train", "--config", TINY_CONFIG, "--images", synthetic_dataset.images_dir,
                        "--annotations", synthetic_dataset.annotations, "--output", run, "--epochs", 1)
    assert result.returncode == 0, result.stderr
    model = run.parent / "model"
    result = run_module("training.export", "--checkpoint", run / "best.pt", "--output", model)
    assert result.returncode == 0, result.stderr
    return model


@pytest.fixture(scope="module")
def refine_run(tmp_path_factory, synthetic_dataset, first_stage) -> Path:
    """The second stage: one epoch, then --resume for the second of two."""
    run = tmp_path_factory.mktemp("refine") / "run"
    result = run_module("training.train", "--config", TINY_REFINE, "--first-stage", first_stage,
                        "--images", synthetic_dataset.images_dir, "--annotations", synthetic_dataset.annotations,
                        "--output", run, "--epochs", 2, "--max-epochs-this-run", 1)
    assert result.returncode == 0, result.stderr
    assert "training the refine stage" in result.stdout and "first stage alone, validation MRE" in result.stdout
    resumed = run_module("training.train", "--output", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    return run


@pytest.fixture(scope="module")
def two_stage_model(tmp_path_factory, refine_run) -> Path:
    folder = tmp_path_factory.mktemp("two-stage") / "model"
    result = run_module("training.export", "--checkpoint", refine_run / "best.pt", "--output", folder)
    assert result.returncode == 0, result.stderr
    assert "refine.onnx" in result.stdout
    return folder


@pytest.mark.slow
def test_the_refinement_trains_resumes_and_records_its_crops(refine_run):
    history = json.loads((refine_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    config = json.loads((refine_run / "config.json").read_text())
    assert config["stage"] == "refine" and config["crop_size"] == 32


@pytest.mark.slow
def test_the_export_puts_the_second_stage_beside_a_copy_of_the_first(two_stage_model, first_stage):
    assert (two_stage_model / "model.onnx").read_bytes() == (first_stage / "model.onnx").read_bytes()
    metadata = ModelMetadata.load(two_stage_model)
    first = ModelMetadata.load(first_stage)
    assert metadata.codec == first.codec and metadata.landmark_names == first.landmark_names
    assert metadata.refinement.crops == CropSpec(0.25, 32)
    assert (metadata.refinement.codec.input_height, metadata.refinement.codec.stride) == (32, 2)
    assert metadata.refinement.training["export_check"]["max_landmark_shift_px"] < 0.05


@pytest.mark.slow
def test_no_refine_gives_the_first_stage_and_refine_moves_the_landmarks(two_stage_model, first_stage,
                                                                       synthetic_dataset):
    images = synthetic_dataset.images
    alone = [d.points for d in LandmarkDetector(first_stage, device="cpu").predict(images)]
    unrefined = [d.points for d in LandmarkDetector(two_stage_model, device="cpu", refine=False).predict(images)]
    refined = list(LandmarkDetector(two_stage_model, device="cpu").predict(images))
    np.testing.assert_array_equal(np.stack(unrefined), np.stack(alone))
    assert_some_moved_none_beyond_their_crops(np.stack([d.points for d in refined]), np.stack(alone),
                                              crop_heights(refined, images))
    assert all(((d.confidence >= 0) & (d.confidence <= 1)).all() for d in refined)
    argmax = LandmarkDetector(two_stage_model, device="cpu", decoder="argmax")
    assert (argmax.codec.decoder, argmax.refine_codec.decoder) == ("argmax", "argmax")  # --decoder: both stages


def per_image_errors(path: Path) -> dict[int, np.ndarray]:
    """evaluate's per_image.csv as each image's radial errors in mm, by the image's index in the synthetic set
    (its file case_NN.png is image NN - 1)."""
    with path.open(newline="") as file:
        rows = list(csv.reader(file))[1:]
    return {int(Path(row[1]).stem.split("_")[1]) - 1: np.array(row[3:-1], dtype=np.float64) for row in rows}


@pytest.mark.slow
def test_evaluate_scores_the_refined_landmarks_or_the_first_stage_alone(two_stage_model, synthetic_dataset,
                                                                        tmp_path):
    """Each image's radial errors, --refine from the two stages and --no-refine from the first stage alone, and
    the AUROC, mean and least confident landmark of the refined confidences: as computed here by hand from the
    detectors' landmarks; the container's warnings in per_image.csv."""
    model = tmp_path / "model"  # with a shape check so strict that every image is warned of
    shutil.copytree(two_stage_model, model)
    metadata = ModelMetadata.load(model)
    metadata.shape.outlier_z = 0.5
    metadata.save(model)
    detectors = {"--refine": LandmarkDetector(model, device="cpu"),
                 "--no-refine": LandmarkDetector(model, device="cpu", refine=False)}
    results, detections, errors = {}, {}, {}
    for flag, detector in detectors.items():
        result = run_module("training.evaluate", "--model", model, "--output", tmp_path / flag, flag)
        assert result.returncode == 0, result.stderr
        assert "confidence, " in result.stdout and "AUROC" in result.stdout
        results[flag] = json.loads((tmp_path / flag / "metrics.json").read_text())
        written = per_image_errors(tmp_path / flag / "per_image.csv")
        detections[flag] = list(detector.predict([synthetic_dataset.images[i] for i in written]))
        truth, spacing = synthetic_dataset.landmarks[list(written)], synthetic_dataset.spacing[list(written)]
        points = np.stack([d.points for d in detections[flag]])
        errors[flag] = np.hypot(*(points - truth).transpose(2, 0, 1)) * spacing[:, None]
        np.testing.assert_allclose(np.stack(list(written.values())), errors[flag], atol=6e-4)  # 3 decimals
        with (tmp_path / flag / "per_image.csv").open(newline="") as file:
            notes = [row["notes"] for row in csv.DictReader(file)]
        assert notes == [" | ".join(d.notes) for d in detections[flag]] and all(notes)
        assert f"the container warned about {sum(map(bool, notes))} (per_image.csv)" in result.stdout
    assert results["--refine"]["stages"] == "first stage and refinement"
    assert results["--no-refine"]["stages"] == "first stage"
    scored = ~np.isnan(errors["--refine"])
    scored_errors = errors["--refine"][scored]
    scored_confidence = np.stack([d.confidence for d in detections["--refine"]])[scored]
    report = results["--refine"]["confidence"]
    # NaN: a one-epoch model's errors are all above 2 mm (the hand-made rankings above test the value)
    assert report["AUROC"] == pytest.approx(pairwise_auroc(-scored_confidence, scored_errors > report["threshold_mm"]),
                                            nan_ok=True)
    assert report["mean_confidence"] == pytest.approx(scored_confidence.mean())
    assert scored_errors.size == 10  # so the 10 % least confident are the least confident landmark alone
    assert report["MRE_least_confident"] == pytest.approx(scored_errors[scored_confidence.argmin()])


@pytest.mark.slow
def test_evaluating_the_checkpoint_gives_what_its_export_gives(refine_run, two_stage_model, tmp_path):
    """Torch on the checkpoint and ONNX Runtime on the export: the same refinement, to export's tolerance."""
    scores = {}
    for name, source in (("checkpoint", ["--checkpoint", refine_run / "best.pt"]),
                         ("export", ["--model", two_stage_model, "--no-shape-check"])):
        result = run_module("training.evaluate", *source, "--output", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert "(first stage and refinement)" in result.stdout
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())["summary"]["MRE"]
    assert scores["checkpoint"] == pytest.approx(scores["export"], abs=0.01)


@pytest.mark.slow
def test_the_container_writes_refined_landmarks_with_probabilities(two_stage_model, first_stage, packed_dataset,
                                                                  synthetic_dataset, tmp_path):
    """Each run logs its own stages; --no-refine writes the first stage's landmarks, --refine moves some of them,
    each within its crop."""
    points = {}
    for flag, stages in (("--refine", "two stages"), ("--no-refine", "first stage only (--no-refine)")):
        output = tmp_path / f"{flag}.json"
        result = run_module("algorithm.process", "--input", packed_dataset.stack.parent, "--output", output,
                            "--model", two_stage_model, "--device", "cpu", flag)
        assert result.returncode == 0, result.stderr
        assert f"(height x width), {stages}, " in result.stderr, result.stderr
        value = json.loads(output.read_text())
        points[flag] = assert_valid_output(value, 12, 5)
        assert all(0 <= point["probability"] <= 1 for point in value["points"])
    alone = np.stack([d.points for d in LandmarkDetector(first_stage, device="cpu").predict(synthetic_dataset.images)])
    np.testing.assert_allclose(points["--no-refine"], alone, atol=5e-4)  # written to 3 decimals
    refined = LandmarkDetector(two_stage_model, device="cpu").predict(synthetic_dataset.images)
    assert_some_moved_none_beyond_their_crops(points["--refine"], points["--no-refine"],
                                              crop_heights(refined, synthetic_dataset.images))


@pytest.mark.slow
def test_the_refinement_trains_on_the_split_its_first_stage_records(refine_run, first_stage):
    recorded = json.loads((first_stage / "metadata.json").read_text())["training"]["split"]
    assert json.loads((refine_run / "split.json").read_text()) == recorded


@pytest.mark.slow
def test_a_refinement_on_other_images_than_its_first_stages_split_is_refused(first_stage, synthetic_dataset,
                                                                             tmp_path):
    fewer = json.loads(synthetic_dataset.annotations.read_text())  # the same folder, its last image left out
    fewer["files"] = fewer["files"][:-1]
    fewer["points"] = [p for p in fewer["points"] if p["point"][2] <= len(fewer["files"])]
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    result = run_module("training.train", "--config", TINY_REFINE, "--first-stage", first_stage,
                        "--images", synthetic_dataset.images_dir, "--annotations", tmp_path / "fewer.json",
                        "--output", tmp_path / "run", "--epochs", 1)
    assert result.returncode == 1
    name = source_name(synthetic_dataset.images_dir)
    assert result.stderr.strip() == (f"error: {first_stage} (the first stage): the split of {name!r} was made for "
                                      f"{len(fewer['files']) + 1} images, the data set has {len(fewer['files'])}; "
                                      "use the data the split was made for")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_evaluate_scores_the_test_part_the_model_records(two_stage_model, synthetic_dataset, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(two_stage_model, model)
    metadata = json.loads((model / "metadata.json").read_text())
    (name, split), = metadata["training"]["split"].items()
    split["test"] = split["train"][:3]  # not what the seed makes: evaluate must read the split, not remake it
    (model / "metadata.json").write_text(json.dumps(metadata))
    result = run_module("training.evaluate", "--model", model, "--output", tmp_path / "scores", "--overlays", 0)
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "scores" / "metrics.json").read_text())["data_sets"][name]
    assert scored["split"] == "test" and scored["num_images"] == 3


@pytest.fixture(scope="module")
def second_seed(tmp_path_factory, synthetic_dataset, first_stage) -> Path:
    """Another second stage of the same recipe and first stage, seed 1: the same split, other weights."""
    run = tmp_path_factory.mktemp("refine-seed-1") / "run"
    result = run_module("training.train", "--config", TINY_REFINE, "--first-stage", first_stage, "--seed", 1,
                        "--images", synthetic_dataset.images_dir, "--annotations", synthetic_dataset.annotations,
                        "--output", run, "--epochs", 1)
    assert result.returncode == 0, result.stderr
    result = run_module("training.export", "--checkpoint", run / "best.pt", "--output", run.parent / "model")
    assert result.returncode == 0, result.stderr
    return run.parent / "model"


def graph_heatmaps(model: Path, inputs: np.ndarray, graph: str = "refine.onnx") -> np.ndarray:
    """The heatmaps of one of a model folder's graphs (the second stage's by default) for `inputs`."""
    session = ort.InferenceSession(str(model / graph), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.slow
def test_an_ensemble_of_second_stages_is_the_mean_of_their_heatmaps_in_one_graph(two_stage_model, second_seed,
                                                                                 synthetic_dataset, tmp_path):
    output = tmp_path / "ensemble"
    result = run_module("training.ensemble", two_stage_model, second_seed, "--output", output, "--trained-on",
                        "two seeds of one recipe")
    assert result.returncode == 0, result.stderr
    assert "the mean of 2 second stages" in result.stdout
    crops = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    members = [graph_heatmaps(model, crops) for model in (two_stage_model, second_seed)]
    assert not np.allclose(members[0], members[1], rtol=1e-2, atol=0)  # two seeds: different maps
    np.testing.assert_allclose(graph_heatmaps(output, crops), np.mean(members, axis=0), rtol=1e-4, atol=1e-7)
    assert (output / "model.onnx").read_bytes() == (two_stage_model / "model.onnx").read_bytes()
    assert ModelMetadata.load(output).trained_on == "two seeds of one recipe"
    refinement = ModelMetadata.load(output).refinement
    assert [m["config"]["seed"] for m in refinement.training["members"]] == [0, 1]
    assert refinement.training["split"] == ModelMetadata.load(second_seed).refinement.training["split"]
    assert not any("split" in member for member in refinement.training["members"])  # recorded once, above
    detections = list(LandmarkDetector(output, device="cpu").predict(synthetic_dataset.images[:2]))
    assert all(((d.confidence >= 0) & (d.confidence <= 1)).all() for d in detections)
    again = run_module("training.ensemble", two_stage_model, second_seed, "--output", output)
    assert again.returncode == 1 and "already holds a model; add --overwrite" in again.stderr


@pytest.mark.slow
def test_an_ensemble_of_second_stages_that_see_other_crops_or_none_is_refused(two_stage_model, second_seed,
                                                                             first_stage, tmp_path):
    wider = tmp_path / "wider"
    shutil.copytree(second_seed, wider)
    metadata = json.loads((wider / "metadata.json").read_text())
    metadata["refinement"]["crops"]["fraction"] = 0.3
    (wider / "metadata.json").write_text(json.dumps(metadata))
    for members, message in (([two_stage_model, wider], f"error: {wider}: its second stage differs from "
                              f"{two_stage_model}'s in its crops; average only second stages of one recipe and split"),
                             ([two_stage_model, first_stage], f"error: {first_stage / 'metadata.json'}: no second "
                              "stage to average")):
        result = run_module("training.ensemble", *members, "--output", tmp_path / "ensemble")
        assert result.returncode == 1 and result.stderr.strip() == message
        assert not (tmp_path / "ensemble").exists()


@pytest.fixture(scope="module")
def first_stage_seeds_1(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    """The first stage's recipe again with seed 1: on the same split (--split-seed 0), and on its own split."""
    models = {}
    for name, split_options in (("same split", ["--split-seed", 0]), ("own split", [])):
        run = tmp_path_factory.mktemp("detect-seed-1") / "run"
        result = run_module("training.train", "--config", TINY_CONFIG, "--seed", 1, *split_options, "--images",
                            synthetic_dataset.images_dir, "--annotations", synthetic_dataset.annotations,
                            "--output", run, "--epochs", 1)
        assert result.returncode == 0, result.stderr
        result = run_module("training.export", "--checkpoint", run / "best.pt", "--output", run.parent / "model")
        assert result.returncode == 0, result.stderr
        models[name] = run.parent / "model"
    return models


@pytest.mark.slow
def test_an_ensemble_of_first_stages_is_their_mean_and_keeps_the_second_stage(two_stage_model, first_stage_seeds_1,
                                                                              synthetic_dataset, tmp_path):
    output = tmp_path / "ensemble"
    seed_1 = first_stage_seeds_1["same split"]
    result = run_module("training.ensemble", "--stage", "detect", two_stage_model, seed_1, "--output", output)
    assert result.returncode == 0, result.stderr
    assert "the mean of 2 first stages" in result.stdout
    codec = ModelMetadata.load(output).codec
    inputs = np.random.default_rng(1).standard_normal((2, 1, codec.input_height, codec.input_width)).astype(np.float32)
    members = [graph_heatmaps(model, inputs, "model.onnx") for model in (two_stage_model, seed_1)]
    assert not np.allclose(members[0], members[1], rtol=1e-2, atol=0)
    np.testing.assert_allclose(graph_heatmaps(output, inputs, "model.onnx"), np.mean(members, axis=0),
                               rtol=1e-4, atol=1e-9)
    assert (output / "refine.onnx").read_bytes() == (two_stage_model / "refine.onnx").read_bytes()
    training = ModelMetadata.load(output).training
    assert [member["config"]["seed"] for member in training["members"]] == [0, 1]
    assert training["split"] == ModelMetadata.load(seed_1).training["split"]
    assert training["config"] == ModelMetadata.load(two_stage_model).training["config"]
    scored = run_module("training.evaluate", "--model", output, "--split", "test", "--output", tmp_path / "scored")
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "scored" / "metrics.json").read_text())["stages"] == "first stage and refinement"
    halved = tmp_path / "halved"
    result = run_module("training.ensemble", "--stage", "detect", two_stage_model, seed_1, "--output", halved,
                        "--half-weights")
    assert result.returncode == 0, result.stderr
    assert (halved / "model.onnx").stat().st_size < 0.65 * (output / "model.onnx").stat().st_size  # tiny: more biases
    assert ModelMetadata.load(halved).training["ensemble_check"]["half_precision_weights"] is True
    full, half = (np.stack([d.points for d in LandmarkDetector(model, device="cpu").predict(
        synthetic_dataset.images[:2])]) for model in (output, halved))
    assert np.abs(full - half).max() < 0.5  # original pixels


@pytest.mark.slow
def test_an_ensemble_of_first_stages_that_held_out_other_images_is_refused(two_stage_model, first_stage_seeds_1,
                                                                          tmp_path):
    other = first_stage_seeds_1["own split"]
    result = run_module("training.ensemble", "--stage", "detect", two_stage_model, other, "--output", tmp_path / "e")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {other}: its first stage differs from {two_stage_model}'s in its "
                                     "split; average only first stages of one recipe and split")
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_second_stage_assembled_beside_another_first_stage_of_its_split_runs_with_it(two_stage_model,
                                                                                     first_stage_seeds_1,
                                                                                     synthetic_dataset, tmp_path):
    seed_1, output = first_stage_seeds_1["same split"], tmp_path / "assembled"
    result = run_module("training.assemble", "--first-stage", seed_1, "--second-stage", two_stage_model,
                        "--output", output, "--trained-on", "both stages")
    assert result.returncode == 0, result.stderr
    assert (output / "model.onnx").read_bytes() == (seed_1 / "model.onnx").read_bytes()
    assert (output / "refine.onnx").read_bytes() == (two_stage_model / "refine.onnx").read_bytes()
    assembled, first, second = (ModelMetadata.load(m) for m in (output, seed_1, two_stage_model))
    assert assembled.refinement == second.refinement and assembled.refinement is not None
    assert (assembled.training, assembled.shape) == (first.training, first.shape)
    assert (assembled.trained_on, assembled.accuracy) == ("both stages", {})
    refined, alone = (np.stack([d.points for d in LandmarkDetector(output, device="cpu", refine=refine).predict(
        synthetic_dataset.images[:2])]) for refine in (True, False))
    first_alone = np.stack([d.points for d in LandmarkDetector(seed_1, device="cpu").predict(
        synthetic_dataset.images[:2])])
    np.testing.assert_allclose(alone, first_alone)
    assert not np.allclose(refined, alone)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other split", "no second stage"])
def test_assembling_stages_of_other_splits_or_without_a_second_stage_is_refused(case, two_stage_model,
                                                                                first_stage_seeds_1, tmp_path):
    first = first_stage_seeds_1["own split" if case == "other split" else "same split"]
    second = two_stage_model if case == "other split" else first
    result = run_module("training.assemble", "--first-stage", first, "--second-stage", second,
                        "--output", tmp_path / "a")
    assert result.returncode == 1
    expected = (f"{second}: its second stage held out other images than {first}'s first stage (or one of them "
                "records no split); assemble only stages trained on the same split" if case == "other split"
                else f"{second / 'metadata.json'}: no second stage to take")
    assert result.stderr.strip() == f"error: {expected}"
    assert not (tmp_path / "a").exists()


def one_convolution(weight: np.ndarray) -> onnx.ModelProto:
    """A graph of one 2D convolution with `weight` (out, in, k, k) and a small bias."""
    bias = np.linspace(-0.1, 0.1, weight.shape[0]).astype(np.float32)
    node = helper.make_node("Conv", ["image", "weight", "bias"], ["heatmaps"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "one_convolution",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", weight.shape[1], 16, 16])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", weight.shape[0], 16, 16])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def run_graph(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": inputs})[0]


def test_weights_at_half_precision_halve_the_file_and_compute_as_before():
    weight = np.random.default_rng(0).standard_normal((32, 16, 3, 3)).astype(np.float32)
    inputs = np.random.default_rng(1).standard_normal((2, 16, 16, 16)).astype(np.float32)
    full = one_convolution(weight)
    half = weights_at_half_precision(one_convolution(weight))
    stored = {tensor.name: tensor.data_type for tensor in half.graph.initializer}
    assert stored == {"weight/half": TensorProto.FLOAT16, "bias": TensorProto.FLOAT}  # the bias is too small to halve
    assert len(half.SerializeToString()) < 0.55 * len(full.SerializeToString())
    expected = run_graph(full, inputs)
    assert run_graph(half, inputs).dtype == np.float32
    # the same as float32 arithmetic on the rounded weights: only the storage changed
    np.testing.assert_allclose(run_graph(half, inputs), run_graph(one_convolution(
        weight.astype(np.float16).astype(np.float32)), inputs), rtol=1e-6, atol=1e-5)
    assert np.abs(run_graph(half, inputs) - expected).max() < 1e-2 * np.abs(expected).max()


def test_weights_beyond_half_precision_are_refused():
    weight = np.full((32, 16, 3, 3), 1e5, dtype=np.float32)
    with pytest.raises(ValueError, match="weight 'weight' exceeds half precision's range"):
        weights_at_half_precision(one_convolution(weight))


def test_the_head_convolutions_are_those_no_convolution_follows():
    """Two branches (an ensemble's members), each two convolutions then a softmax, joined by a mean: the second
    convolution of each is a head and stays float32 in training.quantize; the first of each is not."""
    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "weight")
    nodes = []
    for branch in ("a", "b"):
        nodes += [helper.make_node("Conv", ["image", "weight"], [f"{branch}1"], name=f"{branch}/body", pads=[1] * 4),
                  helper.make_node("Relu", [f"{branch}1"], [f"{branch}2"], name=f"{branch}/relu"),
                  helper.make_node("Conv", [f"{branch}2", "weight"], [f"{branch}3"], name=f"{branch}/head",
                                   pads=[1] * 4),
                  helper.make_node("Softmax", [f"{branch}3"], [f"{branch}4"], name=f"{branch}/softmax")]
    nodes.append(helper.make_node("Mean", ["a4", "b4"], ["heatmaps"], name="mean"))
    graph = helper.make_graph(nodes, "two_branches",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 1, 8, 8])], [weight])
    assert head_convolutions(graph) == ["a/head", "b/head"]


@pytest.mark.slow
def test_a_quantized_two_stage_model_keeps_its_heads_in_float_and_runs_in_the_container(two_stage_model,
                                                                                       synthetic_dataset, tmp_path):
    output = tmp_path / "int8"
    result = run_module("training.quantize", "--model", two_stage_model, "--output", output,
                        "--calibration-images", 4)
    assert result.returncode == 0, result.stderr
    assert "model.onnx, refine.onnx quantized (weights int8 per output channel in 7 bits" in result.stdout
    for name in ("model.onnx", "refine.onnx"):
        graph = onnx.load(str(output / name)).graph
        dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        convolutions = [node for node in graph.node if node.op_type == "Conv"]
        heads = head_convolutions(graph)
        assert heads and all(node.input[1] not in dequantized for node in convolutions if node.name in heads)
        assert all(node.input[1] in dequantized for node in convolutions if node.name not in heads)
        assert (output / name).stat().st_size < 0.6 * (two_stage_model / name).stat().st_size  # int8 + its scales
    metadata = ModelMetadata.load(output)
    record = metadata.training["quantization"]
    assert 1 <= record["calibration_images"] <= 4 and "7 bits" in record["weights"]
    assert metadata.trained_on.startswith(ModelMetadata.load(two_stage_model).trained_on)
    assert "Quantized by training.quantize" in metadata.trained_on
    assert np.isfinite(record["calibration_landmark_shift_px"]["max"])
    images = synthetic_dataset.images
    for image, detection in zip(images, LandmarkDetector(output, device="cpu").predict(images)):
        assert detection.points.shape == (len(synthetic_dataset.names), 2)
        assert np.all((detection.points >= 0) & (detection.points <= np.array(image.shape[1::-1]) - 1))
    assert metadata.quantized and LandmarkDetector(output).providers == ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="quantized to integers for the CPU"):
        LandmarkDetector(output, device="cuda")
    again = run_module("training.quantize", "--model", two_stage_model, "--output", output)
    assert again.returncode == 1 and "already holds a model" in again.stderr
    twice = run_module("training.quantize", "--model", output, "--output", tmp_path / "twice")
    assert twice.returncode == 1
    assert twice.stderr.strip() == (f"error: {output}: already quantized (its metadata says so); quantize the "
                                    "float32 model it came from")
    averaged = run_module("training.ensemble", two_stage_model, output, "--output", tmp_path / "mean")
    assert averaged.returncode == 1
    assert averaged.stderr.strip() == (f"error: {output}: quantized to integers (training.quantize); average the "
                                       "float32 models, then quantize the average")
