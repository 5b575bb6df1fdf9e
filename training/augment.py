"""Augmentation for lateral cephalograms: small affine changes and intensity jitter, landmarks moved along.

Every step is a batched torch operation on the images' device (CPU or GPU), drawing from a
generator on that device. Horizontal flips are off by default (every image faces the same way); `horizontal_flip` sets
their probability, for the ablation in the README. The steps that imitate clinic exports (a skull squeezed
or stretched across as a landscape frame resized to the portrait input makes it, bright overlay text and
rulers, inverted contrast) are off by default too; `training/configs/clinic.json` turns them on, with
random tone curves (`tone`: another scanner's grey levels, which moved landmarks across centres) and tight
crops about the landmarks (`crop`: what the container's second look at a tightly cropped export sees). So are
stray ear-rod rings near landmarks (`rings`: another cephalostat's ear rods, which pulled Porion onto them;
tried and not adopted, the tight crop's Porion got worse), hiding boxes about landmarks (`occlusion`, tried
across centres and not adopted) and viewers' windows burned in (`window`: grey levels clipped at both ends; it helped
a centre's own windowed images and cost an unseen centre's, and was not adopted); see the README for each. A step
that is off draws nothing, so the default augmentation is what it always was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from algorithm.preprocessing import RANK_SCALE


@dataclass
class AugmentConfig:
    rotation_degrees: float = 10.0
    scale: float = 0.1
    translation: float = 0.05
    gamma: float = 0.3
    contrast: float = 0.2
    noise: float = 0.05
    horizontal_flip: float = 0.0
    aspect: float = 0.0  # largest |log| of the horizontal squeeze or stretch (a landscape frame: about 0.43)
    overlays: float = 0.0  # probability of bright overlay text and a ruler on an image
    invert: float = 0.0  # probability of inverted contrast (bone dark)
    occlusion: float = 0.0  # probability of two boxes about random landmarks hidden under the mean grey
    tone: float = 0.0  # spread (log) of a random monotone tone curve's slopes: another scanner's grey levels
    rings: float = 0.0  # probability of stray bright ear-rod rings near landmarks on an image
    crop: float = 0.0  # probability of a crop tight about the landmarks, the rest under the mean grey
    window: float = 0.0  # probability of a viewer's window burned in: grey levels beyond it clipped, the rest stretched


# A random tone curve is piecewise linear over this many equal steps of the grey range.
TONE_STEPS = 8
# A burned-in window clips up to this share of the grey range at each end (each end drawn on its own).
WINDOW_MOST = 0.4
# Stray ear-rod rings, as shares of the image height (a whole-skull frame of about 240 mm): their radius
# (ear rods of 3.5-9.5 mm), the stroke's width, and how far from the landmark they are drawn about.
RING_RADIUS = (0.015, 0.04)
RING_STROKE = (0.003, 0.007)
RING_REACH = 0.1
# A tight crop's margin beyond the landmarks' bounding box on each side, as a share of the box's size (the
# clinic-export test cuts at 8 %).
CROP_MARGIN = (0.02, 0.15)


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
    if config.aspect:  # the output's x stretched by exp(u): its input x is x / exp(u)
        across = torch.exp(-uniform(config.aspect))
        matrix = matrix * torch.stack([across, torch.ones_like(across)], 1)[:, None, :]
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


def random_overlays(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """With `probability`, three blocks of striped "text" and one ruler bar at the brightest value of each
    (B, 1, H, W) image, at random places (over the skull too, as a viewer's overlay is): landmarks stay."""
    batch, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float, count: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, count, generator=generator, device=device)

    widths = torch.cat([uniform(0.1, 0.3, 3), uniform(0.01, 0.03, 1)], 1) * width
    heights = torch.cat([uniform(0.02, 0.05, 3), uniform(0.2, 0.5, 1)], 1) * height
    lefts, tops = uniform(0, 1, 4) * (width - widths), uniform(0, 1, 4) * (height - heights)
    xs = torch.arange(width, device=device, dtype=images.dtype)[None, None, None, :]
    ys = torch.arange(height, device=device, dtype=images.dtype)[None, None, :, None]
    inside = ((xs >= lefts[..., None, None]) & (xs < (lefts + widths)[..., None, None])
              & (ys >= tops[..., None, None]) & (ys < (tops + heights)[..., None, None]))  # (B, 4, H, W)
    strokes = ((xs.long() // 2 + ys.long() // 3) % 2 == 0).expand_as(inside).clone()
    strokes[:, 3] = True  # the ruler is solid
    marks = (inside & strokes).any(dim=1, keepdim=True)
    chosen = torch.rand(batch, generator=generator, device=device) < probability
    bright = images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images)
    return torch.where(marks & chosen[:, None, None, None], bright, images)


def random_inversion(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """With `probability`, each (B, 1, H, W) image's grey levels reversed within its own range."""
    chosen = torch.rand(images.shape[0], generator=generator, device=images.device) < probability
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(chosen[:, None, None, None], low + high - images, images)


def random_occlusion(images: torch.Tensor, points: torch.Tensor, probability: float,
                     generator: torch.Generator) -> torch.Tensor:
    """With `probability`, two boxes of each (B, 1, H, W) image, 5-15 % of its width and height, each about a
    random one of its (B, K, 2) landmarks (shifted by up to half the box), filled with the image's mean grey:
    the landmark must be placed from the rest of the skull, as where its own surroundings look unlike any
    training image (another centre's scanner, a structure that resembles it)."""
    batch, _, height, width = images.shape
    device = images.device
    boxes = 2
    size = torch.tensor([width, height], device=device, dtype=images.dtype)
    sizes = (0.05 + 0.1 * torch.rand(batch, boxes, 2, generator=generator, device=device)) * size
    chosen_landmarks = torch.randint(points.shape[1], (batch, boxes), generator=generator, device=device)
    centres = torch.gather(points, 1, chosen_landmarks[..., None].expand(-1, -1, 2))
    centres = centres + (torch.rand(batch, boxes, 2, generator=generator, device=device) - 0.5) * sizes
    low, high = (centres - sizes / 2)[..., None, None], (centres + sizes / 2)[..., None, None]  # (B, boxes, 2, 1, 1)
    xs = torch.arange(width, device=device, dtype=images.dtype)
    ys = torch.arange(height, device=device, dtype=images.dtype)[:, None]
    inside = ((xs >= low[:, :, 0]) & (xs < high[:, :, 0]) & (ys >= low[:, :, 1]) & (ys < high[:, :, 1]))
    chosen = torch.rand(batch, generator=generator, device=device) < probability
    hidden = inside.any(dim=1, keepdim=True) & chosen[:, None, None, None]  # a missing landmark (NaN) hides nothing
    return torch.where(hidden, images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images), images)


def random_rings(images: torch.Tensor, points: torch.Tensor, probability: float,
                 generator: torch.Generator) -> torch.Tensor:
    """With `probability`, two bright rings on each (B, 1, H, W) image, each about a random one of its (B, K, 2)
    landmarks (shifted by up to RING_REACH of the height either way), half of them with a dot at the centre:
    the ear rods of another cephalostat, or a second ear rod where the head was turned, which a model that
    finds Porion by its own centres' ear rod would follow. Landmarks stay."""
    batch, _, height, width = images.shape
    device = images.device
    count = 2

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch, count, generator=generator, device=device)) * height

    radius, stroke = uniform(*RING_RADIUS), uniform(*RING_STROKE)
    anchors = torch.randint(points.shape[1], (batch, count), generator=generator, device=device)
    centres = torch.gather(points, 1, anchors[..., None].expand(-1, -1, 2))
    centres = centres + (torch.rand(batch, count, 2, generator=generator, device=device) * 2 - 1) * RING_REACH * height
    dotted = torch.rand(batch, count, generator=generator, device=device) < 0.5
    xs = torch.arange(width, device=device, dtype=images.dtype)
    ys = torch.arange(height, device=device, dtype=images.dtype)[:, None]
    distance = torch.hypot(xs - centres[..., 0, None, None], ys - centres[..., 1, None, None])  # (B, count, H, W)
    ring = (distance - radius[..., None, None]).abs() <= stroke[..., None, None] / 2
    dot = dotted[..., None, None] & (distance <= stroke[..., None, None])
    chosen = torch.rand(batch, generator=generator, device=device) < probability
    marks = (ring | dot).any(dim=1, keepdim=True) & chosen[:, None, None, None]  # a missing landmark draws none
    return torch.where(marks, images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images), images)


def random_tight_crop(images: torch.Tensor, points: torch.Tensor, probability: float,
                      generator: torch.Generator) -> torch.Tensor:
    """With `probability`, each (B, 1, H, W) image cut to its (B, K, 2) landmarks' bounding box widened by
    CROP_MARGIN on each side, the rest under the mean grey of what is kept: what the container's second look at
    a tightly cropped export sees, where its frame reaches past the image (`prepare_region`). Landmarks stay."""
    batch, _, height, width = images.shape
    device = images.device
    low, high = torch.nan_to_num(points, nan=float("inf")).amin(1), torch.nan_to_num(points, nan=float("-inf")).amax(1)
    size = high - low  # (B, 2)
    margins = CROP_MARGIN[0] + (CROP_MARGIN[1] - CROP_MARGIN[0]) * torch.rand(batch, 2, 2, generator=generator,
                                                                              device=device)
    low, high = low - margins[:, 0] * size, high + margins[:, 1] * size
    xs = torch.arange(width, device=device, dtype=images.dtype)
    ys = torch.arange(height, device=device, dtype=images.dtype)[:, None]
    kept = ((xs >= low[:, 0, None, None]) & (xs <= high[:, 0, None, None])
            & (ys >= low[:, 1, None, None]) & (ys <= high[:, 1, None, None]))[:, None]  # (B, 1, H, W)
    chosen = torch.rand(batch, generator=generator, device=device) < probability
    chosen = (chosen & (size > 0).all(1))[:, None, None, None]  # a box about two landmarks at least
    mean_kept = (images * kept).sum(dim=(1, 2, 3), keepdim=True) / kept.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    return torch.where(chosen & ~kept, mean_kept.expand_as(images), images)


def random_tone_curve(unit: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """Each (B, 1, H, W) image of grey levels in [0, 1] through its own random increasing curve from 0 to 1,
    piecewise linear over TONE_STEPS steps whose slopes are log-normal with `spread`: a scanner's or a
    viewer's tone mapping, of which a gamma is one smooth kind. Grey levels keep their order."""
    batch = unit.shape[0]
    slopes = torch.exp(spread * torch.randn(batch, TONE_STEPS, generator=generator, device=unit.device))
    knots = F.pad(torch.cumsum(slopes, dim=1), (1, 0)) / slopes.sum(dim=1, keepdim=True)  # (B, TONE_STEPS + 1)
    position = unit.clamp(0, 1).flatten(1) * TONE_STEPS
    step = position.floor().clamp(max=TONE_STEPS - 1)
    low, high = torch.gather(knots, 1, step.long()), torch.gather(knots, 1, step.long() + 1)
    return (low + (high - low) * (position - step)).view_as(unit)


def random_window(unit: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Each (B, 1, H, W) image of grey levels in [0, 1], with `probability`, through a viewer's window burned in as an
    export does: up to WINDOW_MOST of the range clipped at each end (black below, white above) and the rest stretched
    to [0, 1]."""
    batch = unit.shape[0]
    chosen = torch.rand(batch, 1, 1, 1, generator=generator, device=unit.device) < probability
    low, cut_high = (torch.rand(2, batch, 1, 1, 1, generator=generator, device=unit.device) * WINDOW_MOST).unbind(0)
    windowed = ((unit - low) / (1 - cut_high - low)).clamp(0, 1)
    return torch.where(chosen, windowed, unit)


def standardize(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """Each (B, 1, H, W) image normalised by its own grey levels as the container's `normalize` does: 'zscore' or
    'rank' (each pixel at its grey level's mid-rank, scaled to unit variance)."""
    if normalization == "rank":
        flat = images.flatten(1)
        levels, order = flat.sort(dim=1)
        twice_mid_rank = torch.searchsorted(levels, levels) + torch.searchsorted(levels, levels, right=True)
        mid_rank = torch.empty_like(flat).scatter_(1, order, twice_mid_rank.to(flat.dtype))
        return ((mid_rank / (2 * flat.shape[1]) - 0.5) * RANK_SCALE).view_as(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (images - mean) / std


def random_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                     normalization: str = "zscore") -> torch.Tensor:
    """A burned-in window and a tone curve (when on), gamma, contrast and noise, then normalised again as the
    container's `normalization` does."""
    batch = images.shape[0]
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    unit = (images - low) / (high - low).clamp_min(1e-6)
    if config.window:
        unit = random_window(unit, config.window, generator)
    if config.tone:
        unit = random_tone_curve(unit, config.tone, generator)
    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(batch, 1, 1, 1, generator=generator, device=images.device) * 2 - 1) * limit
    jittered = unit.pow(torch.exp(uniform(config.gamma))) * (1 + uniform(config.contrast))
    noise = torch.randn(jittered.shape, generator=generator, device=images.device)
    return standardize(jittered + noise * config.noise * jittered.std(), normalization)


def augment(images: torch.Tensor, points: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
            normalization: str = "zscore") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole augmentation of a (B, 1, H, W) batch and its (B, K, 2) landmarks: flip, affine, the clinic
    exports' overlays, stray ear-rod rings, inversion, the occlusion of landmarks and tight crops (when on),
    intensity, and the model's `normalization` again."""
    images, points = random_flip(images, points, config.horizontal_flip, generator)
    images, points = random_affine(images, points, config, generator)
    if config.overlays:
        images = random_overlays(images, config.overlays, generator)
    if config.rings:
        images = random_rings(images, points, config.rings, generator)
    if config.invert:
        images = random_inversion(images, config.invert, generator)
    if config.occlusion:
        images = random_occlusion(images, points, config.occlusion, generator)
    if config.crop:
        images = random_tight_crop(images, points, config.crop, generator)
    return random_intensity(images, config, generator, normalization), points
