"""`python -m training.view` on synthetic stacks: each landmark drawn on its pixel, z counted on across stacks
as the container counts it, JSONs that do not fit the input refused, and scores that are training.evaluate's.
Also the learning curves' axes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import TINY_CONFIG, UNTRAINED_LANDMARKS, run_module, save_stack
from PIL import Image

from algorithm.output import multiple_points
from training.pictures import TITLE_HEIGHT, Marks
from training.plots import epoch_axis, millimetre_axis
from training.synthetic import synthetic_set

BACKGROUND, BRIGHT = 40, 255
# two stacks of other sizes: a.mha holds images z = 1, 2 and b.mha image z = 3
SIZES = {"a.mha": [(300, 240), (300, 240)], "b.mha": [(260, 220)]}
PADDED = {"a.mha": (320, 260), "b.mha": (280, 250)}
GRID_LANDMARKS = 6
PROBABILITY, LOWEST = 0.9, 0.2


def grid_landmarks(height: int, width: int, shift: int) -> np.ndarray:
    """(6, 2) whole-pixel landmarks 60+ px apart, moved by `shift` so that each image's are its own."""
    xs, ys = np.meshgrid([40 + shift, width // 2 + shift], [40 + shift, height // 2, height - 50])
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def bright_pixel_input(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Dim images with one bright pixel at each landmark, in two stacks; and every image's landmarks, z order."""
    folder = tmp_path_factory.mktemp("view") / "input"
    folder.mkdir()
    landmarks = []
    for name, sizes in SIZES.items():
        images = []
        for height, width in sizes:
            points = grid_landmarks(height, width, shift=7 * len(landmarks))
            image = np.full((height, width), BACKGROUND, dtype=np.uint8)
            image[points[:, 1].astype(int), points[:, 0].astype(int)] = BRIGHT
            images.append(image)
            landmarks.append(points)
        save_stack(folder, name, images, *PADDED[name])
    return folder, landmarks


def probabilities(count: int) -> list[np.ndarray]:
    """PROBABILITY everywhere but landmark 4 of each image (its least confident)."""
    values = np.full((count, GRID_LANDMARKS), PROBABILITY)
    values[:, 3] = LOWEST
    return list(values)


@pytest.fixture(scope="module")
def model_of_six(tmp_path_factory) -> Path:
    """A model folder whose metadata names 6 landmarks (the viewer reads only the names)."""
    folder = tmp_path_factory.mktemp("six") / "model"
    result = run_module("training.export", "--untrained", TINY_CONFIG, "--num-landmarks",
                        GRID_LANDMARKS, "--output", folder)
    assert result.returncode == 0, result.stderr
    return folder


def write_output(path: Path, landmarks: list[np.ndarray]) -> Path:
    path.write_text(json.dumps(multiple_points(landmarks, probabilities=probabilities(len(landmarks)))))
    return path


def view(*args) -> tuple:
    result = run_module("training.view", *args)
    return result.returncode, result.stdout, result.stderr


def ring_centre(picture: np.ndarray, x: int, y: int, colour: tuple, reach: int = 6) -> np.ndarray:
    """The mean position of the pixels of exactly `colour` within `reach` of (x, y): a ring's centre."""
    window = picture[y - reach:y + reach + 1, x - reach:x + reach + 1]
    rows, cols = np.nonzero((window == colour).all(axis=2))
    assert len(rows) >= 8, f"no ring about ({x}, {y})"
    return np.array([cols.mean() + x - reach, rows.mean() + y - reach])


def test_every_landmark_is_drawn_on_its_pixel_and_z_counts_on_across_stacks(bright_pixel_input, model_of_six,
                                                                             tmp_path):
    folder, landmarks = bright_pixel_input
    output = tmp_path / "view"
    code, stdout, stderr = view("--input", folder, "--landmarks", write_output(tmp_path / "out.json", landmarks),
                                "--model", model_of_six, "--output", output, "--height", 300)
    assert code == 0, stderr
    assert sorted(p.name for p in (output / "pictures").iterdir()) == ["z001.png", "z002.png", "z003.png"]
    assert (output / "contact_sheet_01.png").is_file() and not (output / "metrics.json").exists()
    names = [str(k + 1) for k in range(GRID_LANDMARKS)]
    for z, points in enumerate(landmarks, start=1):
        marks = Marks(names, points, np.array(probabilities(1)[0]))
        picture = np.asarray(Image.open(output / "pictures" / f"z{z:03d}.png").convert("RGB"))
        height = SIZES["a.mha"][0][0] if z < 3 else SIZES["b.mha"][0][0]
        scale = 300 / height  # b's image is drawn 300 / 260 larger: its rings sit where the scale puts them
        for k, (x, y) in enumerate(points):
            at = (np.array([x, y]) + 0.5) * scale - 0.5 + [0, TITLE_HEIGHT]
            centre = ring_centre(picture, *np.round(at).astype(int), marks.colour(k))
            np.testing.assert_allclose(centre, np.round(at), atol=0.5, err_msg=f"z {z}, landmark {k + 1}")
            if scale == 1:  # drawn 1:1: the ring leaves the landmark's own bright pixel showing
                assert (picture[int(y) + TITLE_HEIGHT, int(x)] == BRIGHT).all(), f"z {z}, landmark {k + 1}"


def test_a_json_that_does_not_fit_the_input_is_refused_in_one_line(bright_pixel_input, model_of_six, tmp_path):
    folder, landmarks = bright_pixel_input
    good = write_output(tmp_path / "good.json", landmarks)
    value = json.loads(good.read_text())
    beyond = dict(value, points=value["points"] + [{"name": "1", "point": [50.0, 50.0, 4], "probability": 0.5}])
    outside = json.loads(json.dumps(value))
    outside["points"][GRID_LANDMARKS + 2]["point"][0] = 245.0  # in the padding of z = 2 (x 0..259): inside its image
    outside["points"][2 * GRID_LANDMARKS + 1]["point"][1] = 280.5  # z = 3, 280 px tall padded: beyond
    missing = dict(value, points=value["points"][:-1])
    cases = {"beyond": (beyond, "point 19 (landmark '1', z = 4): z beyond the 3 images of the input"),
             "outside": (outside, "landmark 2 of image z = 3 at (124, 280.5) lies outside its image of 250 x 280"),
             "missing": (missing, "landmark 6 of image z = 3 is missing")}
    for name, (json_value, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(json_value))
        code, _, stderr = view("--input", folder, "--landmarks", path, "--model", model_of_six,
                               "--output", tmp_path / name)
        assert code == 1, name
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(f"error: {path}: {message}"), stderr
        assert not (tmp_path / name).exists() and not list(tmp_path.glob(f".{name}-*")), name
    truth = tmp_path / "truth.json"
    points = [{"name": str(k + 1), "point": [float(x), float(y), z], "scale": 0.1}
              for z, image in enumerate(landmarks, start=1) for k, (x, y) in enumerate(image)]
    points[0]["point"][2] = 5
    truth.write_text(json.dumps({"points": points}))
    code, _, stderr = view("--input", folder, "--landmarks", good, "--model", model_of_six, "--ground-truth", truth,
                           "--output", tmp_path / "truth")
    assert code == 1 and stderr.strip().splitlines()[-1] == f"error: {truth}: point with z=5 outside 1..3"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, _, stderr = view("--input", folder, "--landmarks", good, "--model", model_of_six,
                           "--output", tmp_path / "taken")
    assert code == 1 and "--overwrite" in stderr and [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]


@pytest.fixture(scope="module")
def scored_stack(tmp_path_factory, untrained_model) -> tuple[Path, Path, Path]:
    """3 synthetic images in one stack, its ground truth (z = slice, 0.1 mm) and the container's output."""
    root = tmp_path_factory.mktemp("scored")
    images, landmarks = synthetic_set(3, UNTRAINED_LANDMARKS, seed=5, sizes=[(240, 200), (220, 180)])
    stack = save_stack(root / "input", "stack.mha", images, 250, 210)
    truth = root / "gt.json"
    truth.write_text(json.dumps({"points": [
        {"name": str(k + 1), "point": [float(x), float(y), z], "scale": 0.1}
        for z, image in enumerate(landmarks, start=1) for k, (x, y) in enumerate(image)]}))
    output = root / "orthodontic-landmarks.json"
    result = run_module("algorithm.process", "--input", stack.parent, "--output", output, "--model", untrained_model,
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return stack, truth, output


def test_the_viewers_scores_are_training_evaluates(scored_stack, untrained_model, tmp_path):
    stack, truth, output = scored_stack
    code, stdout, stderr = view("--input", stack.parent, "--landmarks", output, "--ground-truth", truth,
                                "--model", untrained_model, "--output", tmp_path / "view")
    assert code == 0, stderr
    evaluated = run_module("training.evaluate", "--model", untrained_model, "--images", stack, "--annotations", truth,
                           "--split", "all", "--output", tmp_path / "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    viewed, scored = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("view", "evaluate"))
    assert viewed["summary"] == pytest.approx(scored["summary"], abs=1e-3)  # the JSON keeps 3 decimals a pixel
    for mine, theirs in zip(viewed["per_landmark"], scored["per_landmark"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-3)
    # the JSON keeps 4 decimals of a probability: an untrained model's near-equal ones tie there, so which
    # landmarks are the least confident 10 % may differ; their mean may not
    assert viewed["confidence"]["mean_confidence"] == pytest.approx(scored["confidence"]["mean_confidence"], abs=1e-4)
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| data set | MRE | SD | SDR@2 | SDR@2.5 | SDR@3 | SDR@4 | beyond_10mm |"
    assert table[1].split("|")[2:] == [line for line in evaluated.stdout.splitlines()
                                       if line.startswith("| stack (all")][0].split("|")[2:]
    for name in ("per_landmark.md", "per_image.csv", "error_cdf.png", "pictures/z003.png", "contact_sheet_01.png"):
        assert (tmp_path / "view" / name).is_file(), name


def test_one_epoch_has_a_tick_at_1_and_the_log_axis_labels_1_2_5_mm():
    figure, axis = plt.subplots()
    axis.plot([1], [3.0], marker="o")
    epoch_axis(axis, [1])
    millimetre_axis(axis)
    axis.set_ylim(0.8, 30)
    figure.canvas.draw()
    low, high = axis.get_xlim()
    assert [tick.get_text() for tick in axis.get_xticklabels() if low <= tick.get_position()[0] <= high] == ["1"]
    labels = [tick.get_text() for tick in axis.get_yticklabels() if 0.8 <= tick.get_position()[1] <= 30]
    assert labels == ["1", "2", "5", "10", "20"]
    plt.close(figure)
