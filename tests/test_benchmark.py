"""Tests of the benchmarks: the phase profiler runs the detector's own steps, and each benchmark runs end to end
on the smallest input and prints its table."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import FIVE_HEIGHT, FIVE_IMAGES, FIVE_WIDTH, UNTRAINED_LANDMARKS, pad_gray, run_module, save_stack

from algorithm import inference, metadata
from algorithm.inference import LandmarkDetector
from benchmark import phases, run
from benchmark.phases import STEP_OF_PHASE, time_phases

# the detector's steps: its public methods but the one that chains them
DETECTOR_STEPS = sorted(name for name, member in vars(LandmarkDetector).items()
                        if callable(member) and not name.startswith("_") and name != "predict")


def steps_called(detector: LandmarkDetector, monkeypatch, run) -> tuple[list[str], list[str]]:
    """The detector's steps that `run()` calls, in order: all of them, and those it calls itself (not from a step)."""
    every, outermost, depth = [], [], [0]
    with monkeypatch.context() as patch:
        for step in DETECTOR_STEPS:
            def spy(*args, _step=step, _method=getattr(detector, step), **kwargs):
                every.append(_step)
                if depth[0] == 0:
                    outermost.append(_step)
                depth[0] += 1
                try:
                    return _method(*args, **kwargs)
                finally:
                    depth[0] -= 1
            patch.setattr(detector, step, spy)
        run()
    return every, outermost


@pytest.mark.parametrize("looks", ["one", "reframed", "turned", "levelled"])
def test_the_phase_profiler_finds_what_predict_finds_with_the_same_steps(full_model, monkeypatch, looks):
    # an untrained model's skulls come turned any way: levelled only where asked, every one of them then
    monkeypatch.setattr(full_model.shape, "angles", [0.0, 0.0, 0.0] if looks == "levelled" else None)
    if looks in ("reframed", "levelled"):  # every image's skull is found, an untrained model's too
        monkeypatch.setattr(inference, "off_skull", lambda detection: 0)
    if looks == "reframed":  # and the first stage looks again at its frame
        monkeypatch.setattr(inference, "REFRAME_BELOW", np.inf)
        monkeypatch.setattr(inference, "REFRAME_SMALLEST", 0.0)
    elif looks == "levelled":  # and not at its frame: the image as given, then its copy turned level
        monkeypatch.setattr(inference, "REFRAME_BELOW", 0.0)
        monkeypatch.setattr(inference, "REFRAME_ABOVE", np.inf)
    else:  # in none (an untrained model's skulls come in any size, and mostly off a plausible skull)
        monkeypatch.setattr(inference, "REFRAME_ABOVE", np.inf)
        monkeypatch.setattr(inference, "CENTRED_LOOK_ASPECT", np.inf)
    if looks == "one":  # and no look at a mirrored or turned copy either, which mostly-off skulls would take
        monkeypatch.setattr(inference, "TURNED_LOOK_SHARE", np.inf)
        monkeypatch.setattr(inference, "DOUBTFUL_CONFIDENCE", 0.0)  # nor skulls found with an untrained model's doubt
    images = list(pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH))
    predicted, profiled = [], []
    in_predict, chained = steps_called(full_model, monkeypatch, lambda: predicted.extend(full_model.predict(images)))
    in_profiler, _ = steps_called(full_model, monkeypatch, lambda: profiled.extend(time_phases(full_model, images)[0]))
    if looks == "turned":  # each image as given and upright each way, and more where an orientation is kept
        assert in_predict.count("heatmaps") >= (1 + len(inference.ORIENTATIONS)) * len(images)
    else:
        assert in_predict.count("heatmaps") == (1 if looks == "one" else 2) * len(images)
    assert in_predict.count("level") == len(images) and (looks == "levelled") == all(
        any("copy turned level" in note for note in detection.notes) for detection in predicted)
    assert in_profiler == in_predict
    # in_picture reads only an image inside a black border (the next test)
    assert {step for step in STEP_OF_PHASE.values() if step} - {"in_picture"} == set(chained)
    assert len(profiled) == len(predicted) == len(images)
    for ours, theirs in zip(profiled, predicted):
        np.testing.assert_array_equal(ours.points, theirs.points)
        np.testing.assert_array_equal(ours.confidence, theirs.confidence)
        assert ours.notes == theirs.notes


def test_the_phase_profiler_reads_a_picture_inside_a_black_border_as_predict_does(full_model, monkeypatch):
    """An image inside a black border takes the picture phase in place of re-framing, refining and finishing, in the
    profiler as in `predict`, with the same steps and landmarks; an image without one takes those three."""
    picture = pad_gray(FIVE_IMAGES[:1], FIVE_HEIGHT, FIVE_WIDTH)[0]
    window = np.zeros((FIVE_HEIGHT + 40, FIVE_WIDTH + 300), np.uint8)
    window[20:20 + FIVE_HEIGHT, 150:150 + FIVE_WIDTH] = picture
    images = [window, picture]
    predicted, profiled = [], []
    in_predict, chained = steps_called(full_model, monkeypatch, lambda: predicted.extend(full_model.predict(images)))
    in_profiler, _ = steps_called(full_model, monkeypatch, lambda: profiled.extend(time_phases(full_model, images)[0]))
    assert in_profiler == in_predict and chained.count("in_picture") == 1 and chained.count("reframe") == 1
    assert {step for step in STEP_OF_PHASE.values() if step} == set(chained)
    for ours, theirs in zip(profiled, predicted, strict=True):
        np.testing.assert_array_equal(ours.points, theirs.points)
        assert ours.notes == theirs.notes
    assert "black border" in predicted[0].notes[-1]  # the picture read, then the whole (an untrained model)


def test_the_phase_profile_loads_a_mounted_model_and_times_every_phase_of_every_image(untrained_model, tmp_path,
                                                                                       monkeypatch, capsys):
    monkeypatch.setattr(metadata, "MOUNTED_MODEL_DIR", untrained_model)  # where grand-challenge puts an uploaded one
    stack = save_stack(tmp_path, "stack.mha", FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH)
    assert phases.main(["--input", str(stack), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(untrained_model)
    assert result["images"] == len(FIVE_IMAGES)
    assert list(result["per_image_ms"]) == list(STEP_OF_PHASE)
    times = result["per_image_ms"]
    assert all(len(times[phase]) == len(FIVE_IMAGES) and min(times[phase]) > 0
               for phase in STEP_OF_PHASE if phase != "picture")
    assert times["picture"] == [0.0] * len(FIVE_IMAGES)  # none of them lies inside a black border
    assert result["duplicate_check_s"] > 0 and min(result["fixed_s"].values()) > 0
    assert 0 < result["memory_mb"]["after_imports"] <= result["memory_mb"]["peak"]


def test_the_container_benchmark_reports_the_mounted_model_the_container_loads(untrained_model, monkeypatch):
    monkeypatch.setattr(metadata, "MOUNTED_MODEL_DIR", untrained_model)
    model = run.model_info(None)
    assert (model["folder"], model["origin"]) == (str(untrained_model), "mounted")
    assert model["landmarks"] == UNTRAINED_LANDMARKS


@pytest.mark.slow
def test_the_container_benchmark_measures_a_one_image_stack(tmp_path):
    result = run_module("benchmark.run", "--sizes", 1, "--repeats", 1, "--skip-baseline", "--device", "cpu",
                        "--stack-dir", tmp_path / "stacks", "--results-dir", tmp_path / "results", timeout=600)
    assert result.returncode == 0, result.stderr
    (run_folder,) = (tmp_path / "results").glob("run-*")
    results = json.loads((run_folder / "results.json").read_text())
    assert results["ours"]["1"]["runs"][0]["wall_s"] > 0
    assert {option["max_deviation_px"] for option in results["options"]["configs"]} == {0.0}
    assert results["table"] in result.stdout and f"results: {run_folder / 'results.json'}" in result.stdout


def test_the_data_pipeline_benchmark_prints_its_table():
    result = run_module("benchmark.data_pipeline", "--device", "cpu", "--repeats", 1, "--batch-size", 2)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| before") or line.startswith("| now")]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)


def test_the_container_benchmark_fails_at_once_without_the_baselines_packages():
    if importlib.util.find_spec("skimage") is not None:
        pytest.skip("scikit-image is installed here")
    result = run_module("benchmark.run", "--sizes", 1, "--results-dir", "/nonexistent-never-created")
    assert result.returncode == 2 and "pip install -r benchmark/requirements.txt" in result.stderr


def test_stacks_of_a_folders_images_take_them_in_order_repeated_and_are_rebuilt_when_the_folder_changes(tmp_path):
    from PIL import Image

    from algorithm.reader import ImageStack
    from benchmark.stacks import build_stacks

    folder = tmp_path / "cephalograms"
    folder.mkdir()
    for name, image in zip(("b.png", "a.png"), FIVE_IMAGES):
        Image.fromarray(image).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    stacks = build_stacks([3], tmp_path / "stacks", seed=0, images=folder)
    (stack,) = stacks[3].glob("*.mha")
    read = list(ImageStack(stack).read(range(3)))
    first, second = FIVE_IMAGES[1], FIVE_IMAGES[0]  # a.png, then b.png
    for image, expected in zip(read, (first, second, first)):
        np.testing.assert_array_equal(image[:expected.shape[0], :expected.shape[1], 0], expected)
        assert image.shape[:2] == (2400, 2880) and not image[expected.shape[0]:].any()
    built = stack.stat().st_mtime_ns
    assert build_stacks([3], tmp_path / "stacks", seed=0, images=folder) == stacks and stack.stat().st_mtime_ns == built
    Image.fromarray(FIVE_IMAGES[2]).save(folder / "0.png")
    build_stacks([3], tmp_path / "stacks", seed=0, images=folder)
    (rebuilt,) = stacks[3].glob("*.mha")
    np.testing.assert_array_equal(next(ImageStack(rebuilt).read([0]))[:FIVE_IMAGES[2].shape[0],
                                                                      :FIVE_IMAGES[2].shape[1], 0], FIVE_IMAGES[2])


def test_stacks_of_a_stack_files_images_take_its_first_ones_without_their_padding(tmp_path):
    """The challenge's train_stack.mha given as --images: its first N images, each without its own zero padding, in
    a stack of the benchmark's size; repeated in order where it holds fewer."""
    from algorithm.reader import ImageStack
    from benchmark.stacks import build_stacks

    source = save_stack(tmp_path, "train_stack.mha", FIVE_IMAGES[:2], FIVE_HEIGHT + 40, FIVE_WIDTH + 30)
    stacks = build_stacks([3], tmp_path / "stacks", seed=0, images=source)
    (stack,) = stacks[3].glob("*.mha")
    for image, expected in zip(ImageStack(stack), (FIVE_IMAGES[0], FIVE_IMAGES[1], FIVE_IMAGES[0]), strict=True):
        np.testing.assert_array_equal(image[:expected.shape[0], :expected.shape[1], 0], expected)
        assert image.shape[:2] == (2400, 2880) and not image[expected.shape[0]:].any()


def test_the_benchmark_names_an_images_source_it_cannot_use(tmp_path):
    missing = run_module("benchmark.run", "--images", tmp_path / "absent", "--skip-baseline")
    assert missing.returncode == 2 and "absent: no such folder or file" in missing.stderr
    (tmp_path / "broken.mha").write_text("not a MetaImage header\n")
    broken = run_module("benchmark.run", "--images", tmp_path / "broken.mha", "--skip-baseline", "--sizes", 1,
                        "--stack-dir", tmp_path / "stacks", "--results-dir", tmp_path / "results")
    assert broken.returncode != 0 and "broken.mha" in broken.stderr
    assert not (tmp_path / "results").exists() and not list((tmp_path / "stacks").rglob("*.mha"))


@pytest.mark.parametrize("images, ratio, expected", [(None, 4.0, "worst case"), ("/data/cephalograms", 4.0, "FAIL"),
                                                      ("/data/cephalograms", 11.0, "PASS")])
def test_the_speed_up_is_judged_on_real_cephalograms_only(images, ratio, expected):
    """Synthetic images hold no skull and take the container's looks for a mirrored or turned image: their speed is
    a worst case, reported but not judged; a stack of real images is judged against the goal."""
    from benchmark.report import check_goals, verdict

    results = {"ours": {"40": {"s_per_image": 1.0, "peak_rss_mb": 500.0}},
               "baseline": {"40": {"s_per_image": ratio, "peak_rss_mb": 3000.0}},
               "stacks": {"40": {"mb": 829.0}}, "settings": {"images": images}}
    assert verdict(check_goals(results)["speed-up 40"]) == expected
