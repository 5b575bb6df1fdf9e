"""Heatmap encoding and the argmax / centroid decoding, checked against the pixel convention.

Heatmap pixel j is model-input position (j + 0.5) * stride - 0.5 (the codec's documented convention).
"""

from __future__ import annotations

import numpy as np
import pytest

from algorithm.codec import HeatmapCodec, _sliding_max

HEIGHT, WIDTH, STRIDE, SIGMA = 128, 96, 2, 1.5


def codec(decoder: str, sigma: float = SIGMA, stride: int = STRIDE) -> HeatmapCodec:
    return HeatmapCodec(HEIGHT, WIDTH, stride, sigma, decoder)


def heatmap_pixel_position(j) -> np.ndarray:
    return (np.asarray(j, dtype=np.float64) + 0.5) * STRIDE - 0.5


def inner_points(count: int, seed: int) -> np.ndarray:
    """Random sub-pixel model positions, far enough from the border for a full decoding window."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(12, WIDTH - 13, count), rng.uniform(12, HEIGHT - 13, count)], axis=1)


def test_encode_draws_the_documented_gaussian():
    point = np.array([[40.3, 71.8]])
    heatmap = codec("centroid").encode(point)[0][0]
    assert heatmap.shape == (HEIGHT // STRIDE, WIDTH // STRIDE) and heatmap.dtype == np.float32
    rows, cols = np.mgrid[0:heatmap.shape[0], 0:heatmap.shape[1]]
    distance_sq = (heatmap_pixel_position(cols) - 40.3) ** 2 + (heatmap_pixel_position(rows) - 71.8) ** 2
    # sigma is in heatmap pixels, i.e. sigma * stride model pixels
    np.testing.assert_allclose(heatmap, np.exp(-distance_sq / (2 * (SIGMA * STRIDE) ** 2)), atol=1e-6)


def test_a_landmark_on_a_heatmap_pixel_centre_peaks_at_one_there():
    heatmap = codec("argmax").encode(heatmap_pixel_position([[10, 20]]))[0][0]
    assert heatmap[20, 10] == pytest.approx(1.0)
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) == (20, 10)


def test_a_missing_landmark_encodes_to_an_all_zero_map():
    heatmaps, weights = codec("centroid").encode(np.array([[30.0, 40.0], [np.nan, np.nan], [np.nan, 12.0]]))
    assert not np.isnan(heatmaps).any() and weights.tolist() == [1, 0, 0]
    assert heatmaps[0].max() > 0.9
    assert not heatmaps[1].any() and not heatmaps[2].any()


@pytest.mark.parametrize("decoder", ["argmax", "centroid"])
def test_landmarks_on_heatmap_pixel_centres_decode_exactly(decoder):
    points = heatmap_pixel_position(np.random.default_rng(3).integers(6, 40, size=(20, 2)))
    decoded, _ = codec(decoder).decode(codec(decoder).encode(points)[0])
    np.testing.assert_allclose(decoded, points, atol=1e-9)


def test_argmax_is_within_half_a_heatmap_pixel_of_the_landmark():
    points = inner_points(300, seed=4)
    decoded, _ = codec("argmax").decode(codec("argmax").encode(points)[0])
    assert np.abs(decoded - points).max() <= 0.5 * STRIDE + 1e-9
    # and it lands on a heatmap pixel centre
    heatmap_position = (decoded + 0.5) / STRIDE - 0.5
    np.testing.assert_allclose(heatmap_position, np.round(heatmap_position), atol=1e-9)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_centroid_refines_argmax_towards_the_sub_pixel_landmark(sigma):
    points = inner_points(300, seed=5)
    heatmaps = codec("centroid", sigma).encode(points)[0]
    refined, _ = codec("centroid", sigma).decode(heatmaps)
    peaks, _ = codec("argmax", sigma).decode(heatmaps)
    peak_error, refined_error = np.abs(peaks - points), np.abs(refined - points)
    # each coordinate moves from the peak pixel towards the landmark and never past it
    moved, needed = refined - peaks, points - peaks
    assert np.all(moved * needed >= -1e-9)
    assert np.all(np.abs(moved) <= np.abs(needed) + 1e-9)
    assert refined_error.mean() < 0.65 * peak_error.mean()
    assert refined_error.max() < 0.35 * STRIDE


def test_centroid_beats_argmax_at_the_tiny_configuration():
    """The model's own settings (sigma 1.5, stride 2): within a quarter heatmap pixel everywhere."""
    points = inner_points(500, seed=6)
    refined, _ = codec("centroid").decode(codec("centroid").encode(points)[0])
    assert np.abs(refined - points).max() < 0.25 * STRIDE


def test_decode_keeps_leading_dimensions_and_gives_the_mass_near_each_peak_as_confidence():
    rng = np.random.default_rng(7)
    heatmaps = rng.uniform(0, 0.5, size=(3, 4, HEIGHT // STRIDE, WIDTH // STRIDE))
    heatmaps[1, 2, 33, 5] = 5000.0
    heatmaps[0, 1, 0, 7] = 60.0  # a peak on the top row: its window shrinks to that row, and stays as wide
    heatmaps /= heatmaps.sum(axis=(2, 3), keepdims=True)  # distributions, as the spatial softmax gives
    points, confidence = codec("centroid").decode(heatmaps)
    assert points.shape == (3, 4, 2) and confidence.shape == (3, 4)
    radius = codec("centroid").centroid_radius
    assert confidence[1, 2] == pytest.approx(heatmaps[1, 2, 33 - radius:34 + radius, 5 - radius:6 + radius].sum())
    assert confidence[0, 1] == pytest.approx(heatmaps[0, 1, 0, 7 - radius:8 + radius].sum())
    assert confidence[1, 2] > 0.5 and confidence[2, 3] < 0.01  # a sharp peak against a flat map
    peaks, argmax_confidence = codec("argmax").decode(heatmaps)
    np.testing.assert_allclose(peaks[1, 2], heatmap_pixel_position([5, 33]))
    np.testing.assert_array_equal(argmax_confidence, confidence)  # the decoder moves points, not confidences


def test_centroid_of_an_empty_map_falls_back_to_the_peak_without_nan():
    points, confidence = codec("centroid").decode(np.zeros((1, 2, HEIGHT // STRIDE, WIDTH // STRIDE), np.float32))
    assert np.isfinite(points).all()
    np.testing.assert_allclose(points, heatmap_pixel_position(np.zeros((1, 2, 2))))
    np.testing.assert_array_equal(confidence, 0)


def test_centroid_near_the_border_is_not_pulled_inwards():
    """Within a few heatmap pixels of each border the refinement still only moves towards the landmark."""
    rng = np.random.default_rng(8)
    near = rng.uniform(-0.5, 3 * STRIDE, size=(400, 2))
    points = np.where(rng.integers(0, 2, size=(400, 2)).astype(bool), near, [WIDTH - 1, HEIGHT - 1] - near)
    heatmaps = codec("centroid").encode(points)[0]
    refined, _ = codec("centroid").decode(heatmaps)
    peaks, _ = codec("argmax").decode(heatmaps)
    moved, needed = refined - peaks, points - peaks
    assert np.all(moved * needed >= -1e-9)
    assert np.all(np.abs(moved) <= np.abs(needed) + 1e-9)
    assert np.abs(refined - points).max() <= 0.5 * STRIDE + 1e-9


def test_invalid_codec_settings_are_refused():
    with pytest.raises(ValueError, match="decoder"):
        HeatmapCodec(HEIGHT, WIDTH, STRIDE, SIGMA, "softargmax")
    with pytest.raises(ValueError, match="multiple"):
        HeatmapCodec(130, WIDTH, 4, SIGMA)


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 9, 13])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_sliding_maximum_is_the_maximum_of_every_window(window, axis):
    """The candidates' local-maximum filter, built from runs of doubling length, against every window taken
    whole."""
    values = np.random.default_rng(window).standard_normal((4, 21, 17)).astype(np.float32)
    count = values.shape[axis] - window + 1
    every_window = np.stack([np.take(values, np.arange(start, start + count), axis=axis) for start in range(window)])
    np.testing.assert_array_equal(_sliding_max(values, window, axis), every_window.max(axis=0))
