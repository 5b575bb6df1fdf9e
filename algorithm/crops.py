"""The second stage's input: a square crop of the original image around each landmark, and the map back.

The crop's side is a fixed share of the height the first stage saw the skull in (the container does
not know mm per pixel, and every centre's images span the whole skull): the image content's, or, where
the first stage looked again at the skull's usual frame (a tight crop, a landscape canvas), that
frame's. Each crop is centred on a first-stage landmark and resampled to `size` x `size` pixels. Crop
pixel u sits at original position centre + (u - (size - 1) / 2) * scale on each axis; `to_crop` and
`to_original` are that map and its inverse. Each crop pixel averages `ceil(scale)`^2 bilinear samples
over its footprint (an area resample, so shrinking does not alias), edges repeated; each crop is
z-scored on its own, which keeps the second stage blind to a centre's overall brightness. Training
imports these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from algorithm.codec import HeatmapCodec
from algorithm.preprocessing import NORMALIZATIONS, normalize


# Training centres each crop at most this share of its side from the ground truth (on each axis), so the
# landmark is in the crop; a refinement that moves a landmark further is beyond anything it learned.
MAX_CROP_OFFSET = 0.35


@dataclass(frozen=True)
class CropGeometry:
    """Where each of K crops lies in the original image: its (K, 2) centres and one scale."""

    centres: np.ndarray  # (K, 2) original-pixel (x, y)
    scale: float  # original pixels per crop pixel
    size: int

    def to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """(K, 2) crop-pixel positions, one in each crop, to original pixels."""
        return self.centres + (np.asarray(points_xy, dtype=np.float64) - (self.size - 1) / 2) * self.scale

    def to_crop(self, points_xy: np.ndarray) -> np.ndarray:
        """(K, 2) original-pixel positions, one for each crop, to pixels of that crop."""
        return (np.asarray(points_xy, dtype=np.float64) - self.centres) / self.scale + (self.size - 1) / 2

    def every_landmark_in_every_crop(self, points_xy: np.ndarray) -> np.ndarray:
        """(L, 2) original-pixel landmarks to (K, L, 2): where each of them lies in each crop."""
        return self.to_crop(np.asarray(points_xy, dtype=np.float64)[None, :, :].swapaxes(0, 1)).swapaxes(0, 1)


def crop_scale(content_height: int, fraction: float, size: int) -> float:
    """Original pixels per crop pixel for a crop side of `fraction` x the content height."""
    return fraction * content_height / size


def _axis_samples(positions: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis of `length` pixels: each position's two neighbouring pixels and the weight of the second, the
    positions clamped into the image first (outside it, the edge pixel repeats)."""
    positions = np.clip(positions, 0, length - 1)
    low = np.minimum(np.floor(positions).astype(np.int64), max(length - 2, 0))
    return low, np.minimum(low + 1, length - 1), (positions - low).astype(np.float32)


@dataclass(frozen=True)
class CropSpec:
    """What a second-stage crop is: its side as a share of the height the skull was found in, its pixels, its
    normalisation."""

    fraction: float
    size: int
    normalization: str = "zscore"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"crop fraction {self.fraction!r} is not in (0, 1]")
        if not (isinstance(self.size, int) and self.size > 1):
            raise ValueError(f"crop size {self.size!r} is not a whole number above 1")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")

    def extract(self, content: np.ndarray, centres_xy: np.ndarray,
                frame_height: int | None = None) -> tuple[np.ndarray, CropGeometry]:
        """(K, size, size) float32 crops of a 2D un-padded image around (K, 2) original-pixel centres, their side
        `fraction` of `frame_height` (default: the content's height)."""
        return extract_crops(content, centres_xy, self.fraction, self.size, self.normalization, frame_height)


def extract_crops(content: np.ndarray, centres_xy: np.ndarray, fraction: float, size: int,
                  normalization: str, frame_height: int | None = None) -> tuple[np.ndarray, CropGeometry]:
    """(K, size, size) normalised crops of a 2D un-padded image around (K, 2) original-pixel centres, their side
    `fraction` of `frame_height` (default: the content's height)."""
    geometry = CropGeometry(np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2),
                            crop_scale(frame_height or content.shape[0], fraction, size), size)
    samples = max(1, math.ceil(geometry.scale - 1e-9))
    sub = ((np.arange(samples) + 0.5) / samples - 0.5) * geometry.scale  # offsets within one crop pixel
    offsets = ((np.arange(size) - (size - 1) / 2)[:, None] * geometry.scale + sub[None, :]).ravel()
    # bilinear sampling is separable: rows first (each crop row the mean of its samples' rows), then columns, over
    # the part of the image the crop reads; a constant part gives an exactly constant crop, as its level is taken
    # out first and put back after
    height, width = content.shape
    crops = np.empty((len(geometry.centres), size, size), dtype=np.float32)
    for crop, (x, y) in zip(crops, geometry.centres):
        top, bottom, down = _axis_samples(y + offsets, height)
        left, right, across = _axis_samples(x + offsets, width)
        first, last = int(left.min()), int(right.max()) + 1
        part = content[:, first:last]
        level = np.float32(part[top[0], 0])
        rows = (part[top] - level) * (1 - down)[:, None] + (part[bottom] - level) * down[:, None]
        rows = rows.reshape(size, samples, -1).mean(axis=1)
        pixels = rows[:, left - first] * (1 - across) + rows[:, right - first] * across
        crop[:] = pixels.reshape(size, size, samples).mean(axis=2) + level
    return np.stack([normalize(crop, normalization) for crop in crops]), geometry


def refine_landmarks(content: np.ndarray, points_xy: np.ndarray, spec: CropSpec, codec: HeatmapCodec,
                     heatmaps_of: Callable[[np.ndarray], np.ndarray],
                     frame_height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The second stage on one image: (K, 2) first-stage landmarks, found in a frame `frame_height` high (default:
    the content), to refined ones and (K,) confidences.

    `heatmaps_of` runs the refinement model: (K, size, size) crops to (K, K, h, w) heatmaps; crop k
    is decoded in its own landmark's channel k. The confidence is that map's probability mass near its
    peak (`HeatmapCodec.decode`). A landmark the crop would move further than MAX_CROP_OFFSET of its side
    keeps its first-stage position.
    """
    crops, geometry = spec.extract(content, points_xy, frame_height)
    heatmaps = heatmaps_of(crops)
    own = heatmaps[np.arange(len(crops)), np.arange(len(crops))]
    crop_points, confidence = codec.decode(own)
    refined = geometry.to_original(crop_points)
    beyond = (np.abs(refined - geometry.centres) > MAX_CROP_OFFSET * geometry.scale * spec.size).any(axis=1)
    return np.where(beyond[:, None], geometry.centres, refined), confidence
