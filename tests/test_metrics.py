"""The challenge's metrics against values worked out by hand.

Spacings of 0.5 and 0.25 mm/pixel keep every product exact in binary floating point, so
the threshold cases below are exactly 2.0 and 2.5 mm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import format_table, per_landmark, radial_errors_mm, summarize

NAN = math.nan
TRUTH = np.array([
    [[100.0, 100.0], [200.0, 50.0], [10.0, 20.0]],
    [[30.0, 40.0], [70.0, 70.0], [NAN, NAN]],  # landmark 3 missing in image 2
])
PREDICTED = np.array([
    [[103.0, 104.0], [200.0, 46.0], [18.0, 26.0]],  # 5, 4 and 10 px off
    [[36.0, 48.0], [70.0, 70.0], [5.0, 5.0]],      # 10, 0 px off; the third has no truth
])
SPACING = np.array([0.5, 0.25])
# by hand: image 1: 5 * 0.5, 4 * 0.5, 10 * 0.5; image 2: 10 * 0.25, 0 * 0.25, (missing)
ERRORS_MM = np.array([[2.5, 2.0, 5.0], [2.5, 0.0, NAN]])


def test_radial_errors_use_each_images_spacing_and_keep_missing_as_nan():
    np.testing.assert_array_equal(radial_errors_mm(PREDICTED, TRUTH, SPACING), ERRORS_MM)


def test_summary_pools_every_annotated_landmark():
    summary = summarize(ERRORS_MM)
    # pooled errors 2.5, 2.0, 5.0, 2.5, 0.0: mean 12 / 5 = 2.4; squared deviations
    # 0.01 + 0.16 + 6.76 + 0.01 + 5.76 = 12.7, population SD sqrt(12.7 / 5)
    assert summary["count"] == 5
    assert summary["MRE"] == pytest.approx(2.4)
    assert summary["SD"] == pytest.approx(math.sqrt(2.54))
    # <= at the threshold: 2.0 counts for SDR@2, both 2.5 count for SDR@2.5
    assert summary["SDR@2"] == pytest.approx(40.0)
    assert summary["SDR@2.5"] == pytest.approx(80.0)
    assert summary["SDR@3"] == pytest.approx(80.0)
    assert summary["SDR@4"] == pytest.approx(80.0)
    assert summary["beyond_10mm"] == 0


def test_summary_counts_the_errors_beyond_10_mm_not_at_it():
    assert summarize(np.array([[10.0, 10.01, NAN], [25.0, 0.5, 9.9]]))["beyond_10mm"] == 2


def test_summary_of_nothing_annotated_is_an_error():
    with pytest.raises(ValueError):
        summarize(np.full((2, 3), NAN))


def test_per_landmark_summaries():
    rows = per_landmark(ERRORS_MM, ["Sella", "Nasion", "Orbitale"])
    assert [row["landmark"] for row in rows] == ["1 Sella", "2 Nasion", "3 Orbitale"]
    assert [row["count"] for row in rows] == [2, 2, 1]
    assert [row["MRE"] for row in rows] == pytest.approx([2.5, 1.0, 5.0])
    assert [row["SD"] for row in rows] == pytest.approx([0.0, 1.0, 0.0])
    assert [row["SDR@2"] for row in rows] == pytest.approx([0.0, 100.0, 0.0])
    assert [row["SDR@2.5"] for row in rows] == pytest.approx([100.0, 100.0, 0.0])
    assert [row["SDR@4"] for row in rows] == pytest.approx([100.0, 100.0, 0.0])


def test_per_landmark_reports_a_landmark_annotated_nowhere_instead_of_failing():
    errors = np.array([[1.0, NAN], [3.0, NAN]])
    rows = per_landmark(errors, ["Sella", "Nasion"])
    assert rows[0]["MRE"] == pytest.approx(2.0)
    assert rows[1]["count"] == 0
    assert math.isnan(rows[1]["MRE"]) and math.isnan(rows[1]["SDR@2"])
    assert set(rows[1]) == set(rows[0])


def test_format_table_is_markdown_with_two_decimals():
    table = format_table([{"landmark": "1 Sella", "MRE": 1.23456, "count": 7}], ["landmark", "MRE", "count"])
    assert table.splitlines() == ["| landmark | MRE | count |", "|---|---|---|", "| 1 Sella | 1.23 | 7 |"]
