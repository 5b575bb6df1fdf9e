"""Padding removal, the resize and the coordinate maps between original and model pixels."""

from __future__ import annotations

import numpy as np
import pytest

from algorithm.preprocessing import (CONSTANT_SAMPLE_STEP, EXTENT_BLOCK, ResizeGeometry, content_extent, is_constant,
                                    normalize, picture_box, prepare, prepare_region, resize, to_grayscale,
                                    turn_points, turned_image)

INPUT_HEIGHT, INPUT_WIDTH = 128, 96


def padded(content: np.ndarray, pad_height: int, pad_width: int) -> np.ndarray:
    image = np.zeros((pad_height, pad_width) + content.shape[2:], dtype=content.dtype)
    image[: content.shape[0], : content.shape[1]] = content
    return image


@pytest.mark.parametrize("content_hw, padded_hw", [
    ((100, 80), (150, 120)),   # padded right and bottom
    ((100, 80), (100, 120)),   # right only: content touches the bottom edge
    ((100, 80), (150, 80)),    # bottom only: content touches the right edge
    ((100, 80), (100, 80)),    # no padding at all
    ((1, 1), (40, 30)),        # a single pixel of content
])
def test_content_extent_finds_the_unpadded_size(content_hw, padded_hw):
    content = np.random.default_rng(0).integers(1, 256, size=content_hw, dtype=np.uint8)
    image = padded(content, *padded_hw)
    assert content_extent(image) == content_hw
    rgb = np.repeat(image[..., None], 3, axis=2)
    assert content_extent(rgb) == content_hw


def test_content_extent_keeps_content_with_zero_pixels_inside_it():
    content = np.full((60, 50), 7, dtype=np.uint8)
    content[-1, 1:] = 0   # the last content row is dark except its first pixel
    content[:-1, -1] = 0  # and the right column is dark except in the last row...
    content[-1, -1] = 9   # ...where the bottom-right pixel is bright
    content[20:30, :] = 0  # a dark band across the whole image
    assert content_extent(padded(content, 90, 70)) == (60, 50)


def test_content_extent_of_an_all_zero_image_is_its_full_size():
    assert content_extent(np.zeros((33, 21), dtype=np.uint8)) == (33, 21)
    assert content_extent(np.zeros((33, 21, 3), dtype=np.uint16)) == (33, 21)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_content_extent_read_from_the_end_agrees_with_a_scan_of_every_pixel(dtype):
    """Images several EXTENT_BLOCKs across, with a few stray non-zero pixels (negative ones where the type has
    them) anywhere in the content and other channels that must not count: the extent is that of the last row and
    column of the first channel with any non-zero value."""
    rng = np.random.default_rng(1)
    side = 3 * EXTENT_BLOCK + 5
    for _ in range(40):
        image = np.zeros((side, side + 17, 3), dtype=dtype)
        image[..., 1:] = rng.integers(0, 2, (side, side + 17, 2))
        height, width = rng.integers(1, side + 1), rng.integers(1, side + 18)
        for _ in range(rng.integers(1, 4)):
            image[rng.integers(0, height), rng.integers(0, width), 0] = -1 if dtype != np.uint8 else 1
        image[height - 1, rng.integers(0, width), 0] = 2
        image[rng.integers(0, height), width - 1, 0] = 3
        gray = image[..., 0]
        expected = (np.flatnonzero((gray != 0).any(axis=1))[-1] + 1, np.flatnonzero((gray != 0).any(axis=0))[-1] + 1)
        assert content_extent(image) == (height, width) == expected


def test_an_image_is_constant_only_when_every_pixel_is_the_same():
    image = np.full((40 * CONSTANT_SAMPLE_STEP + 3, 97), 42, dtype=np.uint16)
    assert is_constant(image)
    image[CONSTANT_SAMPLE_STEP + 1, 2 * CONSTANT_SAMPLE_STEP + 1] = 43  # off every sampled row and column
    assert not is_constant(image)


def test_to_grayscale_takes_the_first_channel_and_rejects_other_shapes():
    image = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    np.testing.assert_array_equal(to_grayscale(image), image[..., 0])
    with pytest.raises(ValueError):
        to_grayscale(np.zeros((2, 2, 2, 2)))


@pytest.mark.parametrize("geometry", [
    ResizeGeometry(2400, 1935, 128, 96),
    ResizeGeometry(1671, 1340, 512, 416),
    ResizeGeometry(60, 50, 128, 96),      # smaller than the model input
    ResizeGeometry(301, 97, 128, 96),
])
def test_to_model_and_to_original_are_inverses_and_map_edges_to_edges(geometry):
    points = np.random.default_rng(1).uniform(-0.5, 1.0, size=(50, 2)) * [geometry.content_width, geometry.content_height]
    np.testing.assert_allclose(geometry.to_model(geometry.to_original(points)), points, atol=1e-9)
    np.testing.assert_allclose(geometry.to_original(geometry.to_model(points)), points, atol=1e-9)
    # the outer edges of the model input are the outer edges of the content
    np.testing.assert_allclose(geometry.to_original([[-0.5, -0.5]]), [[-0.5, -0.5]])
    np.testing.assert_allclose(geometry.to_original([[geometry.input_width - 0.5, geometry.input_height - 0.5]]),
                               [[geometry.content_width - 0.5, geometry.content_height - 0.5]])


@pytest.mark.parametrize("in_hw", [(60, 50), (128, 96), (301, 97), (1671, 1340), (2400, 1935)])
def test_resize_samples_a_ramp_at_the_documented_positions(in_hw):
    """Output pixel i shows original position (i + 0.5) * in / out - 0.5 (away from the clamped borders)."""
    in_height, in_width = in_hw
    ramp_x = np.broadcast_to(np.arange(in_width, dtype=np.float32), in_hw)
    ramp_y = np.broadcast_to(np.arange(in_height, dtype=np.float32)[:, None], in_hw)
    expected_x = (np.arange(INPUT_WIDTH) + 0.5) * in_width / INPUT_WIDTH - 0.5
    expected_y = (np.arange(INPUT_HEIGHT) + 0.5) * in_height / INPUT_HEIGHT - 0.5
    margin = max(1.0, in_height / INPUT_HEIGHT, in_width / INPUT_WIDTH) * 2
    inner_x = (expected_x > margin) & (expected_x < in_width - 1 - margin)
    inner_y = (expected_y > margin) & (expected_y < in_height - 1 - margin)
    resized_x, resized_y = resize(ramp_x, INPUT_HEIGHT, INPUT_WIDTH), resize(ramp_y, INPUT_HEIGHT, INPUT_WIDTH)
    assert resized_x.shape == resized_y.shape == (INPUT_HEIGHT, INPUT_WIDTH)
    assert resized_x.dtype == np.float32
    np.testing.assert_allclose(resized_x[:, inner_x], np.broadcast_to(expected_x[inner_x], (INPUT_HEIGHT, inner_x.sum())),
                               atol=1e-2)
    np.testing.assert_allclose(resized_y[inner_y], np.broadcast_to(expected_y[inner_y, None], (inner_y.sum(), INPUT_WIDTH)),
                               atol=1e-2)


def test_resize_keeps_a_constant_image_constant():
    np.testing.assert_allclose(resize(np.full((517, 333), 42, np.uint8), INPUT_HEIGHT, INPUT_WIDTH), 42, rtol=1e-6)


@pytest.mark.parametrize("factor", [4, 17])  # 17 x 17 blocks of 8-bit pixels overflow a 16-bit sum
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.float32])
def test_shrinking_averages_whole_pixel_blocks_exactly(dtype, factor):
    """An integer shrink samples each output pixel at the centre of a factor x factor block, so it is that block's
    mean: the same to the last bit for integer pixels of any type, also from a strided channel of an RGB image,
    and for blocks of the largest value the type holds."""
    low, high = (-300, 4000) if dtype == np.int16 else (0, 256 if dtype == np.uint8 else 60000)
    out_height, out_width = INPUT_HEIGHT // 4, INPUT_WIDTH // 4
    values = np.random.default_rng(0).integers(low, high, (factor * out_height, factor * out_width)).astype(dtype)
    values[:factor, :factor] = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else high
    expected = values.astype(np.float64).reshape(out_height, factor, out_width, factor).mean(axis=(1, 3))
    rgb = np.repeat(values[..., None], 3, axis=2)
    resized = resize(to_grayscale(rgb), out_height, out_width)
    np.testing.assert_array_equal(resized, expected.astype(np.float32))


def blob_image(content_hw, padded_hw, centre_xy, sigma, dtype=np.uint16):
    """A bright Gaussian blob on a constant, non-zero background, zero-padded at the right and bottom."""
    height, width = content_hw
    ys, xs = np.mgrid[0:height, 0:width]
    blob = np.exp(-((xs - centre_xy[0]) ** 2 + (ys - centre_xy[1]) ** 2) / (2 * sigma**2))
    background, peak = (20, 200) if dtype == np.uint8 else (300, 20000)
    return padded(np.round(background + peak * blob).astype(dtype), *padded_hw)


def brightness_centroid(model_input: np.ndarray) -> np.ndarray:
    """(x, y) of the blob in model pixels, found from the image alone: the centroid above the background."""
    weights = model_input - model_input.min()
    weights[weights < 1e-3 * weights.max()] = 0
    ys, xs = np.mgrid[0:model_input.shape[0], 0:model_input.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


ROUND_TRIP_CASES = [  # (content height, width), (padded height, width)
    ((2400, 1935), (2400, 2880)),  # challenge-sized, ISBI-like content
    ((1671, 1340), (2400, 2880)),  # challenge-sized, Hamedan-like content
    ((200, 160), (240, 200)),
    ((301, 97), (301, 120)),
    ((128, 96), (128, 96)),        # the model input size itself
    ((60, 50), (80, 64)),          # smaller than the model input
]


@pytest.mark.parametrize("content_hw, padded_hw", ROUND_TRIP_CASES)
@pytest.mark.parametrize("relative_xy", [(0.31, 0.62), (0.77, 0.23)])
def test_a_blob_comes_back_to_its_original_pixel(content_hw, padded_hw, relative_xy):
    """prepare -> locate the blob in model space -> to_original lands within 1 px of where it was drawn."""
    height, width = content_hw
    centre = np.array([relative_xy[0] * width + 0.37, relative_xy[1] * height + 0.81])
    scale = max(height / INPUT_HEIGHT, width / INPUT_WIDTH)
    image = blob_image(content_hw, padded_hw, centre, sigma=max(2.0, 2.5 * scale))
    model_input, geometry = prepare(image, INPUT_HEIGHT, INPUT_WIDTH, "zscore")
    assert model_input.shape == (INPUT_HEIGHT, INPUT_WIDTH) and model_input.dtype == np.float32
    assert (geometry.content_height, geometry.content_width) == content_hw
    found = geometry.to_original(brightness_centroid(model_input))
    assert np.linalg.norm(found - centre) < 1.0


@pytest.mark.parametrize("content_hw", [(64, 48), (60, 50), (128, 96)])
def test_a_single_bright_pixel_of_a_small_image_comes_back(content_hw):
    x, y = 17, 29
    content = np.full(content_hw, 10, dtype=np.uint8)
    content[y, x] = 250
    model_input, geometry = prepare(padded(content, content_hw[0] + 7, content_hw[1] + 5), INPUT_HEIGHT, INPUT_WIDTH,
                                    "zscore")
    np.testing.assert_allclose(geometry.to_original(brightness_centroid(model_input)), [x, y], atol=0.5)


def test_prepare_treats_rgb_8_and_16_bit_versions_of_an_image_alike():
    image = blob_image((300, 240), (320, 256), (100.3, 200.6), sigma=8, dtype=np.uint8)
    reference, geometry = prepare(image, INPUT_HEIGHT, INPUT_WIDTH, "zscore")
    rgb, rgb_geometry = prepare(np.repeat(image[..., None], 3, axis=2), INPUT_HEIGHT, INPUT_WIDTH, "zscore")
    wide, wide_geometry = prepare(image.astype(np.uint16) * 257, INPUT_HEIGHT, INPUT_WIDTH, "zscore")
    np.testing.assert_array_equal(rgb, reference)
    np.testing.assert_allclose(wide, reference, atol=1e-4)
    assert geometry == rgb_geometry == wide_geometry


def test_normalize_standardises_and_survives_a_constant_image():
    values = np.random.default_rng(2).uniform(0, 4000, size=(50, 40)).astype(np.float32)
    normalised = normalize(values, "zscore")
    assert abs(float(normalised.mean())) < 1e-5 and abs(float(normalised.std()) - 1) < 1e-5
    np.testing.assert_array_equal(normalize(np.full((5, 5), 3.0, np.float32), "zscore"), 0)
    with pytest.raises(ValueError):
        normalize(values, "minmax")


def test_rank_normalisation_ignores_any_increasing_grey_level_mapping():
    """Another scanner's tone curve or a viewer's window and gamma keep the grey levels' order, so 'rank' gives the model
    the same input; equal grey levels share one value, and the result has zero mean and unit variance as 'zscore'."""
    values = np.round(np.random.default_rng(5).uniform(0, 255, size=(60, 50))).astype(np.float32)
    values[:, :10] = 0  # a black border: one grey level shared by many pixels
    ranked = normalize(values, "rank")
    for mapping in (lambda v: (v / 255) ** 0.4 * 4095, lambda v: np.exp(v / 40), lambda v: 3 * v + 1000):
        np.testing.assert_allclose(normalize(mapping(values).astype(np.float32), "rank"), ranked, atol=1e-6)
    assert len(np.unique(ranked[:, :10])) == 1 and ranked[0, 0] <= ranked[:, 10:].min()
    assert abs(float(ranked.mean())) < 1e-5 and abs(float(ranked.std()) - 1) < 0.02
    np.testing.assert_array_equal(normalize(np.full((5, 5), 3.0, np.float32), "rank"), 0)
    assert not np.allclose(normalize(255 - values, "rank"), ranked)  # inverted contrast is not an increasing mapping


def test_a_region_past_the_image_is_filled_with_what_the_training_zoom_out_pads_with():
    """Training z-scores an image, then zooms out with zero padding; a frame larger than the image (a tight crop seen
    at the skull's usual frame) must give the model the same: 0 outside, the image scaled by its own statistics."""
    content = np.random.default_rng(3).uniform(0, 4000, size=(100, 80)).astype(np.float32)
    model_input, geometry = prepare_region(content, -80, 0, 160, 100, 50, 80, "zscore")
    assert (geometry.left, geometry.top, geometry.content_width, geometry.content_height) == (-80, 0, 160, 100)
    np.testing.assert_allclose(model_input[:, :40], 0, atol=1e-5)
    np.testing.assert_allclose(model_input[:, 40:], normalize(resize(content, 50, 40), "zscore", reference=content),
                               atol=1e-5)


@pytest.mark.parametrize("degrees", [25.0, -40.0, 90.0])
def test_a_turned_image_holds_each_pixel_where_the_turned_points_say(degrees):
    """The container reads a tilted skull in a copy turned level and turns the landmarks back with `turn_points`:
    a dot must land in the copy where its point is turned to (clockwise on screen for positive degrees), and what
    the turn brings in from outside the image is the image's mean grey."""
    image = np.full((120, 160), 10, dtype=np.uint8)
    image[30, 120] = 250  # x 120, y 30
    centre = np.array([70.0, 55.0])
    copy = turned_image(image, centre, degrees)
    assert copy.shape == image.shape and copy.dtype == np.float32
    row, column = np.unravel_index(np.argmax(copy), copy.shape)
    expected = turn_points(np.array([[120.0, 30.0]]), centre, degrees)[0]
    assert np.hypot(column - expected[0], row - expected[1]) <= 1
    if degrees == 90.0:  # clockwise: above the centre goes to its right, right of it to below
        np.testing.assert_allclose(expected, [70 + 25, 55 + 50])
    np.testing.assert_allclose(turn_points(turn_points(np.array([[3.0, 4.0]]), centre, degrees), centre, -degrees),
                               [[3.0, 4.0]])
    assert copy[0, 0] == pytest.approx(image.mean(), abs=1e-3) or copy[-1, -1] == pytest.approx(image.mean(), abs=1e-3)


def _viewer_window(picture: np.ndarray, left: int, top: int, height: int, width: int) -> np.ndarray:
    """`picture` at `left`, `top` of a black window `height` x `width`, with short bright text-like strokes in its
    corners (a date, a zoom factor: each line under a tenth of the window's width)."""
    window = np.zeros((height, width), picture.dtype)
    window[top:top + picture.shape[0], left:left + picture.shape[1]] = picture
    window[10:30:4, 5:85] = window.max()
    window[height - 20:height - 12:3, width - 80:width - 10] = window.max()
    return window


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_picture_inside_a_viewers_black_border_is_found_text_and_all(dtype):
    """A screenshot's picture sits in a black window with text on it; the box is the picture's, to the pixel, even
    where the picture's own first and last lines are darker than most of it."""
    rng = np.random.default_rng(3)
    picture = rng.uniform(40, 250, size=(500, 380)).astype(dtype)
    picture[:, :3] = 30  # a dim edge, still far above the border's black
    window = _viewer_window(picture, 310, 0, 500, 1000)
    assert picture_box(window) == (310, 0, 690, 500)
    assert picture_box(_viewer_window(picture, 200, 60, 700, 900)) == (200, 60, 580, 560)


def test_no_box_is_cut_from_an_image_without_a_border():
    """A line or two of black at the edge (as the ISBI images have) is no border; nor is an image all one grey, nor
    smooth dark air that is not black."""
    image = np.random.default_rng(4).uniform(20, 250, size=(600, 500)).astype(np.uint8)
    image[-1], image[:, -1] = 0, 0
    assert picture_box(image) == (0, 0, 500, 600)
    assert picture_box(np.zeros((300, 200), np.uint8)) == (0, 0, 200, 300)
    image[:100] = 12  # a flat dark grey above the head
    assert picture_box(image) == (0, 0, 500, 600) and picture_box(image[:-1, :-1]) == (0, 0, 499, 599)
