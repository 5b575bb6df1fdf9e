"""The clinic-export test's framings (`training.clinic_exports`): each moves the landmarks with the pixels and keeps
their distances in mm, or its figures in the README would score landmarks against the wrong places."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from training.clinic_exports import (EAR_ROD_OFFSET_MM, EAR_ROD_RADIUS_MM, PORION, TRANSFORMS, images_to_score,
                                     score_framings, stray_ear_rod)
from training.config import TrainConfig
from training.data import LandmarkData
from training.split import new_split
from training.metrics import gross_errors

SPACING_MM = 0.1
DOTS = np.array([[320.0, 310.0], [610.5, 340.0], [450.0, 560.25], [350.0, 790.0], [640.0, 770.0]])  # x, y
DOT_RADIUS = 8


def dotted_image(height: int = 1200, width: int = 1000) -> np.ndarray:
    """A dim portrait image with a bright disk centred on each landmark."""
    rows, columns = np.mgrid[:height, :width]
    image = np.full((height, width), 20, np.uint8)
    for x, y in DOTS:
        image[(columns - x) ** 2 + (rows - y) ** 2 <= DOT_RADIUS ** 2] = 220
    return image


def disk_centroid(image: np.ndarray, near_xy: np.ndarray, radius: int) -> np.ndarray:
    """The contrast-weighted centre of the pixels within `radius` of `near_xy` that stand out from the window's
    background (its median: the disk covers a fifth of the window), bright or dark."""
    x0, y0 = np.round(near_xy).astype(int)
    window = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
    contrast = np.abs(window - np.median(window))
    weights = np.where(contrast > 100, contrast, 0.0)
    rows, columns = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return np.array([(weights * columns).sum(), (weights * rows).sum()]) / weights.sum() + [x0, y0]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_framing_moves_the_landmarks_with_the_pixels_and_keeps_their_mm(name):
    framed = TRANSFORMS[name](dotted_image(), DOTS.copy(), SPACING_MM)
    scale = SPACING_MM / framed.spacing
    for point in framed.points:
        found = disk_centroid(framed.image, point, int(np.ceil(2 * DOT_RADIUS * scale)))
        assert np.hypot(*(found - point)) < 0.5 + 0.05 * DOT_RADIUS * scale, (name, point, found)
    distances_mm = [np.hypot(*(points[1:] - points[0]).T) * spacing
                    for points, spacing in ((DOTS, SPACING_MM), (framed.points, framed.spacing))]
    np.testing.assert_allclose(distances_mm[1], distances_mm[0], rtol=0.005)


def test_the_stray_ear_rod_is_a_ring_where_it_is_said_to_be():
    image = dotted_image()
    framed = stray_ear_rod(image, DOTS.copy(), SPACING_MM)
    rows, columns = np.nonzero(framed.image != image)
    centre = DOTS[PORION] + EAR_ROD_OFFSET_MM / SPACING_MM
    distance_mm = np.hypot(columns - centre[0], rows - centre[1]) * SPACING_MM
    on_ring = np.abs(distance_mm - EAR_ROD_RADIUS_MM) < 1.0
    assert on_ring.sum() > 0.9 * distance_mm.size and (distance_mm[~on_ring] < 1.0).all()  # a ring and its dot
    missing = DOTS.copy()
    missing[PORION] = np.nan
    assert np.array_equal(stray_ear_rod(image, missing, SPACING_MM).image, image)


def test_gross_errors_name_image_and_landmark_worst_first():
    errors = np.array([[1.0, 12.0, np.nan], [30.0, 0.5, 10.0]])
    found = gross_errors(errors, ["a 1.png", "a 2.png"], ["Sella", "Nasion", "Porion"])
    assert found == [{"image": "a 2.png", "landmark": "1 Sella", "error_mm": 30.0},
                     {"image": "a 1.png", "landmark": "2 Nasion", "error_mm": 12.0}]  # 10.0 is not beyond 10 mm


def test_score_framings_gives_each_framings_figures_per_landmark_and_its_gross_errors(tmp_path):
    """A detector that puts landmark 2 15 mm off on every framing: the summary, the per-landmark row and the
    list of gross errors must all say so, naming the image."""
    path = tmp_path / "ceph.png"
    Image.fromarray(dotted_image()).save(path)
    names = [f"L{k + 1}" for k in range(len(DOTS))]
    data = LandmarkData([path], DOTS[None].copy(), np.array([SPACING_MM]), names, "centre")
    off = DOTS.copy()
    off[1, 0] += 15.0 / SPACING_MM

    class OffByOne:
        metadata = SimpleNamespace(landmark_names=names)

        def predict(self, images):
            for _ in images:
                yield SimpleNamespace(points=off.copy(), confidence=np.linspace(0.1, 0.9, len(DOTS)))

    results = score_framings(OffByOne(), [data], {"centre": [0]}, ["unchanged", "inverted contrast"])
    for framing in ("unchanged", "inverted contrast"):
        row = results[framing]
        assert row["beyond_10mm"] == 1 and row["MRE"] == pytest.approx(15.0 / len(DOTS))
        assert row["per_landmark"][1]["landmark"] == "2 L2" and row["per_landmark"][1]["MRE"] == pytest.approx(15.0)
        assert row["per_landmark"][0]["MRE"] == 0.0
        assert row["gross_errors"] == [{"image": "centre ceph.png", "landmark": "2 L2",
                                        "error_mm": pytest.approx(15.0)}]


def test_a_centre_the_model_never_saw_is_reframed_whole_and_its_own_centre_on_the_chosen_part(tmp_path):
    """`--data` with an unseen centre scores every image of it (nothing of it was trained on); the model's own centre
    keeps to its recorded split, so training images never count as held out."""
    def centre(name: str, count: int) -> LandmarkData:
        paths = [tmp_path / name / "images" / f"{k}.png" for k in range(count)]
        return LandmarkData(paths, np.zeros((count, 1, 2)), np.full(count, SPACING_MM), ["L1"], name)
    own, unseen = centre("own", 10), centre("unseen", 7)
    (tmp_path / "own" / "images").mkdir(parents=True)
    config = TrainConfig(data=[[str(tmp_path / "own" / "images"), "own.json"]])
    metadata = SimpleNamespace(training={"split": new_split([own], 0, 0.2, 0.2)})
    assert images_to_score(unseen, "test", metadata, config, tmp_path) == list(range(7))
    assert images_to_score(own, "test", metadata, config, tmp_path) == metadata.training["split"]["own"]["test"]
    assert images_to_score(own, "all", metadata, config, tmp_path) == list(range(10))
