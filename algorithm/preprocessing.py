"""From a padded challenge image to the model's input, and from model pixels back again.

The resize maps output pixel i to the original position (i + 0.5) * size / out_size - 0.5
on each axis; `to_original` and `to_model` are that map and its inverse, so landmarks
survive the round trip exactly. Training imports these functions: what it measures is
what the container does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


# The challenge's stack: every image at the top-left, zero-padded at the right and bottom to this
# height x width, 3 x uint8 (R = G = B).
CHALLENGE_HEIGHT, CHALLENGE_WIDTH = 2400, 2880
CHALLENGE_LANDMARKS = 38  # the landmarks the challenge scores (a model may find fewer: the shipped one 19)
EXTENT_BLOCK = 256  # rows or columns read at once while looking for the padding's edge
CONSTANT_SAMPLE_STEP = 16  # every so many rows and columns: the sample that shows an image is not constant
# A viewer's window or a canvas about the picture: from each side, the lines (rows or columns) of which
# BORDER_LINE_SHARE of the pixels lie within BORDER_GREY_SHARE of the grey range of the darkest grey, where they run
# BORDER_SIDE_SHARE of that side or more (the 260 training images have at most 1 such line a side), measured on every
# BORDER_SAMPLE_STEP-th pixel across each line.
BORDER_LINE_SHARE, BORDER_GREY_SHARE, BORDER_SIDE_SHARE, BORDER_SAMPLE_STEP = 0.9, 0.02, 0.02, 4


@dataclass(frozen=True)
class ResizeGeometry:
    """Where the model input came from: the size of the region resized (the un-padded content, or a frame about
    the skull whose top-left corner is at `left`, `top` of the image) and the input size."""

    content_height: int
    content_width: int
    input_height: int
    input_width: int
    left: int = 0
    top: int = 0

    @property
    def scale_xy(self) -> np.ndarray:
        """Original pixels per model pixel, as (x, y)."""
        return np.array(
            [self.content_width / self.input_width, self.content_height / self.input_height],
            dtype=np.float64,
        )

    def to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Model-input pixel coordinates (x, y) to pixels of the original (padded) image."""
        return (np.asarray(points_xy, dtype=np.float64) + 0.5) * self.scale_xy - 0.5 + [self.left, self.top]

    def to_model(self, points_xy: np.ndarray) -> np.ndarray:
        """Original-image pixel coordinates (x, y) to model-input pixels."""
        return (np.asarray(points_xy, dtype=np.float64) - [self.left, self.top] + 0.5) / self.scale_xy - 0.5


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """A 2D (H, W) view of a (H, W) or (H, W, C) image: the first channel (R = G = B in the challenge)."""
    if image.ndim == 3:
        return image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got an array of shape {image.shape}")
    return image


def _holds_nonzero(gray: np.ndarray, axis: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): whether any value is not exactly 0.

    The maximum alone decides for unsigned pixels; signed and floating-point ones can be negative,
    so a line whose maximum is 0 may still be content, and its minimum is looked at too.
    """
    nonzero = gray.max(axis=axis) != 0
    if gray.dtype.kind == "u":
        return nonzero
    return nonzero | (gray.min(axis=axis) != 0)


def _last_line_with_content(gray: np.ndarray, axis: int) -> int:
    """The index of the last row (axis 0) or column (axis 1) of `gray` with a value that is not exactly 0, -1 if
    none. Lines are read from the end, EXTENT_BLOCK at a time, so only the padding and one block are read, not
    the whole image twice (14 ms of a challenge image's 31 ms of preprocessing)."""
    for stop in range(gray.shape[axis], 0, -EXTENT_BLOCK):
        start = max(0, stop - EXTENT_BLOCK)
        block = gray[start:stop] if axis == 0 else gray[:, start:stop]
        lines = np.flatnonzero(_holds_nonzero(block, axis=1 - axis))
        if lines.size:
            return start + int(lines[-1])
    return -1


def content_extent(image: np.ndarray) -> tuple[int, int]:
    """Height and width of the image without its zero padding at the right and bottom.

    Padding is the rows at the bottom and the columns at the right that are exactly 0 throughout,
    whatever the pixel type: a row with any non-zero value (negative ones included) is content.
    An all-zero image has no content; its full size is returned so that it is still processed.
    """
    gray = to_grayscale(image)
    last_row = _last_line_with_content(gray, axis=0)
    if last_row < 0:
        return gray.shape[0], gray.shape[1]
    return last_row + 1, _last_line_with_content(gray[:last_row + 1], axis=1) + 1


def is_constant(image: np.ndarray) -> bool:
    """Whether every pixel has the same value; a sparse sample first, as nearly every image differs within it."""
    sample = image[::CONSTANT_SAMPLE_STEP, ::CONSTANT_SAMPLE_STEP]
    return bool(sample.min() == sample.max() and image.min() == image.max())


def _block_sum_type(pixels: np.dtype, factor: int) -> np.dtype:
    """The narrowest type that holds a factor x factor block's sum exactly: integer sums of 8- and 16-bit pixels
    run faster than float64 ones (6 against 10 ms for a challenge image), and other pixels are summed in float64."""
    if pixels.kind in "ui" and pixels.itemsize <= 4:
        largest = factor**2 * max(int(np.iinfo(pixels).max), -int(np.iinfo(pixels).min))
        for accumulator in (np.uint16, np.uint32, np.int64) if pixels.kind == "u" else (np.int32, np.int64):
            if largest <= np.iinfo(accumulator).max:
                return np.dtype(accumulator)
    return np.dtype(np.float64)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor x factor blocks (anti-aliasing before interpolation).

    The block's rows, then its columns, are added as whole strided planes into an exact sum (`_block_sum_type`):
    each pass reads the image in order, about three times faster than a mean over a 4D view of it, and exact for
    integer pixels (what that float32 mean gave them, to the last bit)."""
    if factor == 1:
        return image.astype(np.float32)
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    accumulator = _block_sum_type(image.dtype, factor)
    rows = np.zeros((height // factor, width), dtype=accumulator)
    for offset in range(factor):
        rows += image[offset:height:factor, :width]
    blocks = np.zeros((height // factor, width // factor), dtype=accumulator)
    for offset in range(factor):
        blocks += rows[:, offset::factor]
    return (blocks / factor**2).astype(np.float32)


def _linear_axis_weights(out_size: int, in_size: int, pooled_size: int, factor: int):
    """Source indices and weights that sample the block-mean image along one axis."""
    original = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    pooled = np.clip((original + 0.5) / factor - 0.5, 0, pooled_size - 1)
    low = np.floor(pooled).astype(np.int64)
    high = np.minimum(low + 1, pooled_size - 1)
    return low, high, (pooled - low).astype(np.float32)


def resize(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize a 2D image to (out_height, out_width) as float32, anti-aliased when shrinking."""
    in_height, in_width = image.shape
    factor = max(1, int(min(in_height / out_height, in_width / out_width)))
    pooled = _block_mean(image, factor)
    rows_low, rows_high, row_weight = _linear_axis_weights(out_height, in_height, pooled.shape[0], factor)
    cols_low, cols_high, col_weight = _linear_axis_weights(out_width, in_width, pooled.shape[1], factor)
    rows = pooled[rows_low] * (1 - row_weight[:, None]) + pooled[rows_high] * row_weight[:, None]
    return rows[:, cols_low] * (1 - col_weight) + rows[:, cols_high] * col_weight


# How `resize` shrinks: the mean of whole-pixel blocks, then bilinear interpolation (recorded in the metadata).
RESIZE_METHODS = ("block_mean_bilinear",)
NORMALIZATIONS = ("zscore", "rank")
# 'rank' spreads the grey levels' ranks over this width about 0: a uniform distribution of unit variance, as 'zscore'
# gives.
RANK_SCALE = 12 ** 0.5


def normalize(image: np.ndarray, method: str, reference: np.ndarray | None = None) -> np.ndarray:
    """Scale intensities as the model was trained.

    'zscore' subtracts `reference`'s mean and divides by its standard deviation (default: the image's own), so 8- and
    16-bit data are alike; they are taken in float64, as squared float32 deviations overflow beyond about 1e19, which
    the reader accepts (up to its MAX_ABS_PIXEL_VALUE). 'rank' puts each pixel at its grey level's mid-rank among the
    image's own pixels (`reference` is not used), scaled to unit variance: a histogram equalisation that any
    increasing grey-level mapping (another scanner's tone curve, a viewer's window or gamma) leaves unchanged.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r} in the model metadata")
    if method == "rank":
        flat = image.ravel()
        order = np.argsort(flat)
        levels = flat[order]
        mid_rank = np.empty(flat.size)
        mid_rank[order] = np.searchsorted(levels, levels, "left") + np.searchsorted(levels, levels, "right")
        return ((mid_rank / (2 * flat.size) - 0.5) * RANK_SCALE).astype(np.float32).reshape(image.shape)
    reference = image if reference is None else reference
    std = float(reference.std(dtype=np.float64))
    return ((image - float(reference.mean(dtype=np.float64))) / (std if std > 0 else 1.0)).astype(np.float32)


def _border_run(is_border: np.ndarray) -> int:
    """How many of the lines `is_border` flags from its start on, 0 where they are fewer than BORDER_SIDE_SHARE."""
    run = len(is_border) if is_border.all() else int(np.argmin(is_border))
    return run if run >= BORDER_SIDE_SHARE * len(is_border) else 0


def picture_box(content: np.ndarray) -> tuple[int, int, int, int]:
    """Left, top, right and bottom (exclusive) of the picture inside a black border of a 2D image: a viewer's window
    about a screenshot's picture, with text over it, or a canvas the picture was put on. The whole image where there
    is none (or nothing but border), or where unsigned pixels hold no 0 (a dark grey, smooth air, is no border)."""
    height, width = content.shape
    sample = content[::BORDER_SAMPLE_STEP, ::BORDER_SAMPLE_STEP]
    darkest = float(sample.min())
    if content.dtype.kind == "u" and darkest > 0:
        return 0, 0, width, height
    dark_up_to = darkest + BORDER_GREY_SHARE * (float(sample.max()) - darkest)
    columns = (content[::BORDER_SAMPLE_STEP] <= dark_up_to).mean(axis=0) >= BORDER_LINE_SHARE
    rows = (content[:, ::BORDER_SAMPLE_STEP] <= dark_up_to).mean(axis=1) >= BORDER_LINE_SHARE
    left, right = _border_run(columns), width - _border_run(columns[::-1])
    top, bottom = _border_run(rows), height - _border_run(rows[::-1])
    return (left, top, right, bottom) if left < right and top < bottom else (0, 0, width, height)


def strip_padding(image: np.ndarray, extent: tuple[int, int] | None = None) -> np.ndarray:
    """The 2D grayscale content of a (padded) image, as a view: what both stages see. `extent` (height, width)
    is the content's size where it was measured already (a `ResizeGeometry`'s), so the image is not scanned
    again."""
    gray = to_grayscale(image)
    height, width = content_extent(gray) if extent is None else extent
    return gray[:height, :width]


def prepare(image: np.ndarray, input_height: int, input_width: int, normalization: str):
    """Strip padding, resize and normalise one image; returns the model input and its geometry."""
    content = strip_padding(image)
    resized = resize(content, input_height, input_width)
    return normalize(resized, normalization), ResizeGeometry(*content.shape, input_height, input_width)


def prepare_region(content: np.ndarray, left: int, top: int, width: int, height: int, input_height: int,
                   input_width: int, normalization: str):
    """One region of a 2D image resized and normalised as `prepare` does; returns the model input and its geometry.

    Where the region reaches past the image it holds the mean grey of the image's part inside it, and that part
    alone sets the 'zscore' normalisation, so the fill is 0 in the model's input: what training's zoom-out pads with
    (the augmentation warps z-scored images with zero padding). Black there made tight crops worse on the validation
    splits (1.33 -> 1.41 mm, the mean grey 1.15). 'rank' ranks the fill with the rest, as training ranks a zoomed-out
    image with its padding."""
    rows = slice(max(0, top), min(content.shape[0], top + height))
    cols = slice(max(0, left), min(content.shape[1], left + width))
    overlaps = rows.start < rows.stop and cols.start < cols.stop
    inside = content[rows, cols] if overlaps else np.zeros((1, 1), dtype=content.dtype)
    region = np.full((height, width), inside.mean(dtype=np.float64), dtype=np.float32)
    if overlaps:
        region[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = inside
    resized = resize(region, input_height, input_width)
    return (normalize(resized, normalization, reference=inside),
            ResizeGeometry(height, width, input_height, input_width, left, top))


def turn_points(points_xy: np.ndarray, centre_xy: np.ndarray, degrees: float) -> np.ndarray:
    """(K, 2) pixel positions (x, y) turned by `degrees` about `centre_xy`, clockwise on screen (y points down)."""
    turn = np.exp(1j * np.radians(degrees))
    centre = complex(*centre_xy)
    points = np.asarray(points_xy, dtype=np.float64)
    turned = (points[:, 0] + 1j * points[:, 1] - centre) * turn + centre
    return np.stack([turned.real, turned.imag], axis=1)


def turned_image(content: np.ndarray, centre_xy: np.ndarray, degrees: float) -> np.ndarray:
    """A 2D image turned by `degrees` about `centre_xy` as `turn_points` turns points, on the same canvas (float32,
    bilinear): what falls outside it is cut, and where nothing of the image lands it holds the image's mean grey,
    which the model sees as it sees a frame reaching past the image (`prepare_region`)."""
    source = sitk.GetImageFromArray(np.asarray(content, dtype=np.float32))
    # Resampling maps each output pixel back to where it came from: the turn undone.
    back = sitk.Euler2DTransform([float(centre_xy[0]), float(centre_xy[1])], -float(np.radians(degrees)))
    fill = float(np.mean(content, dtype=np.float64))
    return sitk.GetArrayFromImage(sitk.Resample(source, source, back, sitk.sitkLinear, fill, sitk.sitkFloat32))
