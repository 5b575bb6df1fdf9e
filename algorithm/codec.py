"""Landmarks to Gaussian heatmap targets and heatmaps back to landmarks, in one object.

Heatmap pixel j sits at model-input position (j + 0.5) * stride - 0.5, the same
convention as the resize, so encoding and decoding share one coordinate map: argmax is
within half a heatmap pixel, the centroid refinement within about 0.3 of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

DECODERS = ("argmax", "centroid")
# The graph's last layer: a softmax over each landmark's map, so every heatmap is a probability distribution.
ACTIVATIONS = ("spatial_softmax",)


def _sliding_max(values: np.ndarray, window: int, axis: int) -> np.ndarray:
    """The maximum of every run of `window` consecutive values along `axis` (which shrinks by window - 1), in about
    log2(window) passes: runs of 2, 4, 8 ... values from pairs of shorter ones, then one pass joining two
    overlapping runs for the rest (4 passes for a window of 9, against 9)."""
    def part(start: int, stop: int) -> np.ndarray:
        return values[(slice(None),) * axis + (slice(start, stop),)]

    span = 1
    while span < window:
        step = min(span, window - span)  # doubles the run, or overlaps it to end at exactly `window`
        length = values.shape[axis] - step
        values = np.maximum(part(0, length), part(step, step + length))
        span += step
    return values


@dataclass(frozen=True)
class HeatmapCodec:
    """Encode (x, y) model-input coordinates as heatmaps and decode them back."""

    input_height: int
    input_width: int
    stride: int
    sigma: float
    decoder: str = "centroid"
    centroid_radius: int = 0  # heatmap pixels about the peak that the centroid averages; 0: round(sigma)
    activation: str = "spatial_softmax"

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {DECODERS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown output activation {self.activation!r}; choose one of {ACTIVATIONS}")
        for key in ("input_height", "input_width", "stride"):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{key} = {value!r} is not a positive whole number")
        if not (isinstance(self.sigma, Real) and not isinstance(self.sigma, bool) and math.isfinite(self.sigma)
                and self.sigma > 0):
            raise ValueError(f"sigma = {self.sigma!r} is not a positive number")
        if not (isinstance(self.centroid_radius, int) and self.centroid_radius >= 0):
            raise ValueError(f"centroid_radius = {self.centroid_radius!r} is not a whole number >= 0")
        if self.centroid_radius == 0:  # recorded as the number it stands for
            object.__setattr__(self, "centroid_radius", max(1, int(round(self.sigma))))
        if self.input_height % self.stride or self.input_width % self.stride:
            raise ValueError("the input size must be a multiple of the heatmap stride")

    @property
    def heatmap_shape(self) -> tuple[int, int]:
        return self.input_height // self.stride, self.input_width // self.stride

    def to_heatmap(self, points_xy):
        """Model-input (x, y) to heatmap-pixel coordinates (numpy arrays and torch tensors alike)."""
        return (points_xy + 0.5) / self.stride - 0.5

    def from_heatmap(self, points_xy):
        """Heatmap-pixel (x, y) back to model-input coordinates."""
        return (points_xy + 0.5) * self.stride - 0.5

    def weights(self, points_xy):
        """Per-landmark target weight: 1 inside the model input (pixel edges included), 0 when missing (NaN)
        or moved out of the frame; (..., K, 2) to (..., K), numpy arrays and torch tensors alike."""
        x, y = points_xy[..., 0], points_xy[..., 1]
        inside = (x >= -0.5) & (x <= self.input_width - 0.5) & (y >= -0.5) & (y <= self.input_height - 0.5)
        return inside * 1.0

    def encode(self, points_xy, xp=np):
        """(..., K, 2) model-input coordinates to (..., K, H/stride, W/stride) float32 Gaussians (peak 1) and
        (..., K) float32 weights; a landmark with weight 0 (missing, or outside the frame) gets an all-zero map.

        `xp` is the array library of `points_xy`: numpy in the container and the tests, torch in training (which
        passes its own module, so the targets are made on the training device and the container never imports
        torch). The same lines draw both, so training's targets cannot drift from this definition.
        """
        points_xy = xp.asarray(points_xy)
        weights = self.weights(points_xy)
        centres = self.to_heatmap(xp.where(weights[..., None] > 0, points_xy, 0.0))
        height, width = self.heatmap_shape
        ys = xp.arange(height, dtype=points_xy.dtype, device=points_xy.device)
        xs = xp.arange(width, dtype=points_xy.dtype, device=points_xy.device)
        gauss_y = xp.exp(-((ys - centres[..., 1:2]) ** 2) / (2 * self.sigma**2))
        gauss_x = xp.exp(-((xs - centres[..., 0:1]) ** 2) / (2 * self.sigma**2))
        heatmaps = gauss_y[..., :, None] * gauss_x[..., None, :] * weights[..., None, None]
        return xp.asarray(heatmaps, dtype=xp.float32), xp.asarray(weights, dtype=xp.float32)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., K, h, w) heatmaps to (..., K, 2) model-input coordinates and (..., K) confidences in [0, 1], in one
        pass over each map's peak window.

        The confidence is the probability mass within the centroid window about the peak (the output
        activation makes each map a distribution), so a sharp, single peak scores near 1 and a flat or
        split map near 0.
        """
        *lead, height, width = heatmaps.shape
        flat = heatmaps.reshape(-1, height, width)
        peak_index = flat.reshape(flat.shape[0], -1).argmax(axis=1)
        peak_y, peak_x = np.divmod(peak_index, width)
        window, rows, cols = self._window(flat, peak_x, peak_y)
        if self.decoder == "centroid":
            points = self._centroid(window, rows, cols, peak_x, peak_y)
        else:
            points = np.stack([peak_x, peak_y], axis=1).astype(np.float64)
        confidence = np.clip(window.sum(axis=(1, 2)), 0.0, 1.0)
        return self.from_heatmap(points).reshape(*lead, 2), confidence.reshape(*lead)

    def candidates(self, heatmaps: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, h, w) heatmaps to the `count` strongest local maxima of each (peaks at least 2 sigma apart):
        (K, C, 2) model-input positions, refined as `decode` refines, and (K, C) heatmap values (-inf where a
        map has fewer maxima). The first candidate of each map is its `decode`d landmark."""
        num_maps, height, width = heatmaps.shape
        reach = max(1, int(round(2 * self.sigma)))
        padded = np.pad(heatmaps, ((0, 0), (reach, reach), (reach, reach)), constant_values=-np.inf)
        # the maximum over each pixel's row window, then its column window
        local_max = _sliding_max(_sliding_max(padded, 2 * reach + 1, axis=2), 2 * reach + 1, axis=1)
        values = np.where(heatmaps >= local_max, heatmaps, -np.inf).reshape(num_maps, -1)
        count = min(count, values.shape[1])
        best = np.argpartition(-values, count - 1, axis=1)[:, :count]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(values, best, axis=1), axis=1, kind="stable"),
                                  axis=1)
        scores = np.take_along_axis(values, best, axis=1)
        peak_y, peak_x = np.divmod(best.ravel(), width)
        maps = np.repeat(np.arange(num_maps), count)
        points = np.stack([peak_x, peak_y], axis=1).astype(np.float64)
        if self.decoder == "centroid":
            points = self._centroid(*self._window(heatmaps, peak_x, peak_y, maps), peak_x, peak_y)
        return self.from_heatmap(points).reshape(num_maps, count, 2), scores

    def _window(self, flat: np.ndarray, peak_x: np.ndarray, peak_y: np.ndarray, maps: np.ndarray | None = None):
        """The positive heatmap within `centroid_radius` of each peak (peak i in map `maps[i]`, by default
        map i), with its rows and columns.

        The window stays symmetric about the peak: near the border it shrinks on both sides, as a
        window cut off on one side only would pull the landmark away from the border.
        """
        radius = self.centroid_radius
        offsets = np.arange(-radius, radius + 1)
        height, width = flat.shape[1:]
        rows = peak_y[:, None] + offsets[None, :]
        cols = peak_x[:, None] + offsets[None, :]
        reach_y = np.minimum(np.minimum(peak_y, height - 1 - peak_y), radius)
        reach_x = np.minimum(np.minimum(peak_x, width - 1 - peak_x), radius)
        inside = ((np.abs(offsets)[None, :] <= reach_y[:, None])[:, :, None]
                  & (np.abs(offsets)[None, :] <= reach_x[:, None])[:, None, :])
        index = (np.arange(flat.shape[0]) if maps is None else maps)[:, None, None]
        window = flat[index, np.clip(rows, 0, height - 1)[:, :, None], np.clip(cols, 0, width - 1)[:, None, :]]
        return np.where(inside, np.maximum(window, 0), 0).astype(np.float64), rows, cols

    @staticmethod
    def _centroid(window: np.ndarray, rows: np.ndarray, cols: np.ndarray, peak_x: np.ndarray,
                  peak_y: np.ndarray) -> np.ndarray:
        """Sub-pixel (x, y) heatmap positions: the mean of each peak's positive window (`_window`), or the peak
        itself where the window holds nothing positive."""
        total = window.sum(axis=(1, 2))
        safe_total = np.where(total > 0, total, 1.0)
        x = (window.sum(axis=1) * cols).sum(axis=1) / safe_total
        y = (window.sum(axis=2) * rows).sum(axis=1) / safe_total
        refined = np.stack([x, y], axis=1)
        fallback = np.stack([peak_x, peak_y], axis=1).astype(np.float64)
        return np.where((total > 0)[:, None], refined, fallback)
