"""Augmentation for lateral cephalograms: small affine changes and intensity jitter, landmarks moved along.

Every step is a batched torch operation on the images' device (CPU or GPU), drawing from a
generator on that device. Horizontal flips are off by default (every image faces the same way); `horizontal_flip` sets
their probability, for the ablation in the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    rotation_degrees: float = 10.0
    scale: float = 0.1
    translation: float = 0.05
    gamma: float = 0.3
    contrast: float = 0.2
    noise: float = 0.05
    horizontal_flip: float = 0.0


def random_affine(images: torch.Tensor, points: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate, scale and shift (B, 1, H, W) images and their (B, K, 2) pixel landmarks alike."""
    batch, _, height, width = images.shape
    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator, device=images.device) * 2 - 1) * limit
    angle = uniform(math.radians(config.rotation_degrees))
    scale = 1 + uniform(config.scale)
    shift = torch.stack([uniform(config.translation) * width, uniform(config.translation) * height], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # output -> input map in pixel units about the centre: q_in = M q_out + shift
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    to_unit = torch.tensor([2.0 / width, 2.0 / height], device=images.device)
    theta = torch.cat([matrix * to_unit[None, :, None] / to_unit[None, None, :],
                       (shift * to_unit)[:, :, None]], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=images.device)
    inverse = torch.linalg.inv(matrix)
    moved = torch.einsum("bij,bkj->bki", inverse, points - centre - shift[:, None, :]) + centre
    return warped, moved


def random_flip(images: torch.Tensor, points: torch.Tensor, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror each (B, 1, H, W) image left-right with `probability`, and its (B, K, 2) landmarks with it."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < probability
    width = images.shape[-1]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    mirrored = torch.stack([width - 1 - points[..., 0], points[..., 1]], dim=-1)
    return images, torch.where(flip[:, None, None], mirrored, points)


def random_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast and noise, then re-standardised as the container's z-score normalisation does."""
    batch = images.shape[0]
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    unit = (images - low) / (high - low).clamp_min(1e-6)
    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(batch, 1, 1, 1, generator=generator, device=images.device) * 2 - 1) * limit
    jittered = unit.pow(torch.exp(uniform(config.gamma))) * (1 + uniform(config.contrast))
    noise = torch.randn(jittered.shape, generator=generator, device=images.device)
    jittered = jittered + noise * config.noise * jittered.std()
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    std = jittered.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (jittered - mean) / std


def augment(images: torch.Tensor, points: torch.Tensor, config: AugmentConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole augmentation of a (B, 1, H, W) batch and its (B, K, 2) landmarks: flip, affine, intensity."""
    images, points = random_flip(images, points, config.horizontal_flip, generator)
    images, points = random_affine(images, points, config, generator)
    return random_intensity(images, config, generator), points
