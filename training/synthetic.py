"""Synthetic cephalogram-like images with known landmarks, for tests and the container's smoke input.

Each image has a smooth skull-shaped ellipse on a darker background, and every landmark is a
small bright disc, so even a tiny model can learn to find them in a few epochs.
"""

from __future__ import annotations

import numpy as np

# content sizes (height, width) of the two scanners of the public data: ISBI 2015 and Hamedan
SCANNER_CONTENT_SIZES = [(2400, 1935), (1671, 1340)]


def synthetic_image(height: int, width: int, landmarks_xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) uint8 image, nowhere zero, with a bright disc at each (x, y) landmark."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    centre_x, centre_y = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    skull = ((xs - centre_x) / (0.4 * width)) ** 2 + ((ys - centre_y) / (0.42 * height)) ** 2
    image = 40 + 25 * ys / height + 90 / (1 + np.exp((skull - 1) * 12))
    radius = max(2.0, 0.012 * min(height, width))
    for x, y in landmarks_xy:
        image += 110 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * radius**2))
    return np.clip(image, 1, 255).astype(np.uint8)


def synthetic_landmarks(height: int, width: int, num_landmarks: int, rng: np.random.Generator,
                        template_seed: int = 7) -> np.ndarray:
    """(K, 2) landmarks: a fixed template (same anatomy in every image) jittered per image."""
    template = np.random.default_rng(template_seed).uniform(0.15, 0.85, size=(num_landmarks, 2))
    jitter = rng.normal(0, 0.02, size=(num_landmarks, 2))
    return (np.clip(template + jitter, 0.05, 0.95) * [width, height]).astype(np.float64)


def synthetic_set(count: int, num_landmarks: int, seed: int, sizes: list[tuple[int, int]]):
    """`count` images (cycling through (height, width) sizes) and their (count, K, 2) landmarks."""
    rng = np.random.default_rng(seed)
    images, landmarks = [], []
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        points = synthetic_landmarks(height, width, num_landmarks, rng)
        images.append(synthetic_image(height, width, points, rng))
        landmarks.append(points)
    return images, np.stack(landmarks)
