"""The codec's Gaussian targets, computed as a batch with torch on the training device.

`HeatmapCodec.encode` (numpy, one image) is the reference; this is the same map, coordinate
convention and weights (tests compare them), so the GPU is not left waiting on the CPU.
"""

from __future__ import annotations

import torch

from algorithm.codec import HeatmapCodec


def encode_batch(codec: HeatmapCodec, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 2) model-input landmarks to (B, K, h, w) Gaussian targets and (B, K) weights, on points' device."""
    weights = codec.weights(points).float()
    centres = codec.to_heatmap(torch.where(weights[..., None] > 0, points, torch.zeros_like(points)))
    height, width = codec.heatmap_shape
    ys = torch.arange(height, dtype=points.dtype, device=points.device)
    xs = torch.arange(width, dtype=points.dtype, device=points.device)
    gauss_y = torch.exp(-((ys - centres[..., 1:2]) ** 2) / (2 * codec.sigma**2))
    gauss_x = torch.exp(-((xs - centres[..., 0:1]) ** 2) / (2 * codec.sigma**2))
    targets = gauss_y[..., :, None] * gauss_x[..., None, :] * weights[..., None, None]
    return targets, weights
