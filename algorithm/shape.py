"""A statistical shape model of one image's landmarks: which of them cannot be where they are, and where they belong.

The training shapes, aligned by similarity (Procrustes), give a mean shape, its main modes of variation
and each landmark's spread about the model (what the shapes vary beyond the modes, plus what the
detector errs by). Fitting one image's landmarks is robust: every pair of landmarks places the mean
shape exactly (a similarity is fixed by two points), the pair under which the most landmarks fit
starts an iteratively reweighted fit of the similarity and the modes, and a landmark whose residual
exceeds `outlier_z` spreads does not fit the rest. Such a landmark takes the strongest of its heatmap's
other peaks that does fit, or else the shape's own estimate, with a low probability. Points are complex
numbers (x + iy) here, so that a similarity is one complex factor and one offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

# Robust-fit iterations after the pair search; the cut-off between landmarks that pull on the fit and those
# that do not shrinks from ANNEALING x `outlier_z` to `outlier_z` over them, so that a skull far along a mode
# (an open jaw) is first fitted by all of its landmarks rather than locked onto the half that fits the mean.
FIT_ITERATIONS = 10
ANNEALING = 3.0
# A landmark whose fitted shape's estimate had to stand in for it, since no peak of its heatmap fits.
REESTIMATED_PROBABILITY = 0.05


def to_complex(points_xy: np.ndarray) -> np.ndarray:
    """(..., 2) (x, y) points as (...,) complex x + iy."""
    points_xy = np.asarray(points_xy, dtype=np.float64)
    return points_xy[..., 0] + 1j * points_xy[..., 1]


def to_xy(points: np.ndarray) -> np.ndarray:
    """(...,) complex points back to (..., 2) (x, y)."""
    return np.stack([points.real, points.imag], axis=-1)


class DegenerateShape(ValueError):
    """Landmarks that no similarity of the mean shape can place (all of them in one spot, say)."""


def similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> tuple[complex, complex]:
    """The complex factor a and offset t that minimise sum w |a source + t - target|^2 (complex (K,) points)."""
    total = weights.sum()
    source_mean, target_mean = (weights * source).sum() / total, (weights * target).sum() / total
    centred = source - source_mean
    factor = (weights * np.conj(centred) * (target - target_mean)).sum() / (weights * np.abs(centred) ** 2).sum()
    return factor, target_mean - factor * source_mean


@dataclass
class ShapeFit:
    """One image's landmarks fitted by the model: the similarity, the shape in model units, each z-score."""

    factor: complex
    offset: complex
    shape: np.ndarray  # (K,) complex, model units
    z: np.ndarray  # (K,) residual / spread

    @property
    def degrees(self) -> float:
        """How far the skull is turned from the mean shape, clockwise on screen (y points down)."""
        return float(np.degrees(np.angle(self.factor)))

    @property
    def centre_xy(self) -> np.ndarray:
        """(2,) the fitted skull's centre (the mean shape's), in image pixels."""
        return to_xy(self.offset)

    @property
    def estimate_xy(self) -> np.ndarray:
        """(K, 2) where the fitted shape puts each landmark, in image pixels."""
        return to_xy(self.factor * self.shape + self.offset)


@dataclass
class ShapeModel:
    """Mean shape (K, 2), modes (M, K, 2) with their variances (M,), each landmark's spread (K,), all in
    units of the aligned shapes (centred, unit root-mean-square radius); stored as lists in the metadata."""

    mean: list
    modes: list
    variances: list
    spread: list
    outlier_z: float = 4.0  # of 3-6, the best on the validation splits' first-stage landmarks, every framing
    candidates: int = 5  # heatmap peaks looked at per landmark
    num_shapes: int = 0  # training shapes it was built from
    # Where training images frame the skull: the frame's centre (x, y) and size (width, height) in model units,
    # about the mean shape; None: not recorded, no re-framing.
    frame: list | None = None
    # How far training images turn the skull: the lowest, median and highest angle of their shapes' fits (degrees,
    # `ShapeFit.degrees`); None: not recorded, no levelling.
    angles: list | None = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        modes = np.asarray(self.modes, dtype=np.float64).reshape(-1, *mean.shape)
        variances, spread = np.asarray(self.variances, dtype=np.float64), np.asarray(self.spread, dtype=np.float64)
        if mean.ndim != 2 or mean.shape[1] != 2 or len(mean) < 3:
            raise ValueError("shape.mean is not a list of at least 3 (x, y) points")
        if len(modes) != len(variances) or spread.shape != (len(mean),):
            raise ValueError("shape: modes, variances and spread do not match the mean shape")
        if self.frame is not None and not (len(self.frame) == 4 and np.isfinite(self.frame).all()
                                           and min(self.frame[2:]) > 0):
            raise ValueError("shape.frame is not a centre (x, y) and a positive width and height")
        if self.angles is not None and not (len(self.angles) == 3 and np.isfinite(self.angles).all()
                                            and self.angles[0] <= self.angles[1] <= self.angles[2]):
            raise ValueError("shape.angles is not the lowest, median and highest angle in degrees, in that order")
        if not (np.isfinite(mean).all() and np.isfinite(modes).all() and (variances > 0).all()
                and (spread > 0).all() and self.outlier_z > 0 and self.candidates >= 1):
            raise ValueError("shape: values must be finite, variances, spreads and outlier_z positive")
        # numpy forms for fitting; not dataclass fields, so the metadata's JSON holds the lists alone
        flat_modes = modes.reshape(len(modes), -1).T
        # each landmark's spread about the mean shape itself: its own plus what the modes move it by
        marginal = np.sqrt(spread**2 + (flat_modes**2 * variances).reshape(len(mean), 2, -1).sum(axis=(1, 2)) / 2)
        self._arrays = dict(mean=to_complex(mean), modes=flat_modes, variances=variances, spread=spread,
                            marginal=marginal)

    @property
    def num_landmarks(self) -> int:
        return len(self.spread)

    def _shape_of(self, coefficients: np.ndarray) -> np.ndarray:
        flat = to_xy(self._arrays["mean"]).ravel() + self._arrays["modes"] @ coefficients
        return to_complex(flat.reshape(-1, 2))

    def _z(self, model_points: np.ndarray, shape: np.ndarray,
           landmarks: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Residuals in spreads; with `landmarks`, model points of those landmarks only (the shape is whole)."""
        return np.abs(model_points - shape[landmarks]) / self._arrays["spread"][landmarks]

    def _pair_start(self, points: np.ndarray, usable: np.ndarray) -> tuple[complex, complex]:
        """The similarity, placed by one pair of landmarks, under which the landmarks' median z is lowest."""
        mean, spread = self._arrays["mean"], self._arrays["marginal"]
        pairs = np.array(list(combinations(np.flatnonzero(usable), 2)))
        first, second = pairs[:, 0], pairs[:, 1]
        factors = (points[second] - points[first]) / (mean[second] - mean[first])
        placed = np.abs(factors) > 1e-9 * max(1.0, float(np.abs(points[usable]).max()))
        if not placed.any():
            raise DegenerateShape("the landmarks all lie in one spot")
        factors, first = factors[placed], first[placed]
        offsets = points[first] - factors * mean[first]
        z = np.abs(points[None, usable] - (factors[:, None] * mean[None, usable] + offsets[:, None]))
        z /= np.abs(factors)[:, None] * spread[None, usable]
        best = int(np.argmin(np.median(z, axis=1)))
        return factors[best], offsets[best]

    def fit(self, points_xy: np.ndarray, usable: np.ndarray | None = None) -> ShapeFit:
        """Fit (K, 2) image-pixel landmarks robustly; landmarks not `usable` (or not finite) do not pull on it."""
        given = to_complex(points_xy)
        usable = np.isfinite(given) if usable is None else (np.asarray(usable, bool) & np.isfinite(given))
        if usable.sum() < 3:
            raise DegenerateShape(f"{int(usable.sum())} landmarks to fit, and a shape needs at least 3")
        points = np.where(usable, given, 0)
        spread, variances, modes = self._arrays["spread"], self._arrays["variances"], self._arrays["modes"]
        factor, offset = self._pair_start(points, usable)
        coefficients = np.zeros(len(variances))
        shape = self._shape_of(coefficients)
        z = np.abs((points - offset) / factor - shape) / self._arrays["marginal"]
        for iteration in range(FIT_ITERATIONS):
            cut_off = self.outlier_z * ANNEALING ** (1 - iteration / (FIT_ITERATIONS - 1))
            weights = np.where(usable, np.clip(1 - (z / cut_off) ** 2, 0, None) ** 2, 0.0)
            if np.count_nonzero(weights) < 3:
                break  # too few landmarks agree to move the fit further
            factor, offset = similarity(shape, points, weights)
            residual = to_xy((points - offset) / factor - self._arrays["mean"]).ravel()
            pull = np.repeat(weights / spread**2, 2)
            normal = modes.T @ (pull[:, None] * modes) + np.diag(1 / variances)
            coefficients = np.linalg.solve(normal, modes.T @ (pull * residual))
            limit = 3 * np.sqrt(variances)
            coefficients = np.clip(coefficients, -limit, limit)
            shape = self._shape_of(coefficients)
            z = self._z((points - offset) / factor, shape)
        z = self._z((np.where(np.isfinite(given), given, 0) - offset) / factor, shape)
        return ShapeFit(factor, offset, shape, np.where(np.isfinite(given), z, np.inf))

    def z_of(self, fit: ShapeFit, points_xy: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """(..., K) z-scores of other (..., K, 2) image points under an existing fit; with `landmarks` (L indices),
        (..., L) z-scores of (..., L, 2) points of those landmarks only."""
        which = slice(None) if landmarks is None else landmarks
        return self._z((to_complex(points_xy) - fit.offset) / fit.factor, fit.shape, which)

    def frame_box(self, fit: ShapeFit) -> np.ndarray:
        """(left, top, width, height) in image pixels of the frame that training images would give this skull."""
        centre = to_xy(fit.factor * complex(*self.frame[:2]) + fit.offset)
        size = abs(fit.factor) * np.asarray(self.frame[2:], dtype=np.float64)
        return np.concatenate([centre - size / 2, size])

    def levelling_turn(self, fit: ShapeFit) -> float:
        """Degrees to turn an image by, about the skull's centre, so that a skull turned beyond any training shape
        sits at their median angle; 0 for one within their range (or where the range is not recorded)."""
        return self.angles[1] - fit.degrees if self.beyond_angles(fit.degrees) else 0.0

    def beyond_angles(self, degrees: float) -> bool:
        """Whether a skull turned `degrees` from the mean shape (clockwise on screen) lies outside the training
        skulls' angles; False where they are not recorded."""
        if self.angles is None:
            return False
        lowest, _, highest = self.angles
        return not lowest <= (degrees + 180) % 360 - 180 <= highest

    def plausibility(self, z: np.ndarray) -> np.ndarray:
        """A factor in (0, 1] for the confidence: near 1 well inside the spread, e^-2 at `outlier_z`."""
        return np.exp(-2 * (np.asarray(z) / self.outlier_z) ** 2)

    def correct(self, points_xy: np.ndarray, confidence: np.ndarray,
                peaks: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray,
                                                                                      ShapeFit, np.ndarray]:
        """Keep one image's landmarks on a plausible skull.

        (K, 2) decoded landmarks and (K,) confidences to (K, 2) landmarks, (K,) confidences, the final fit and
        a (K,) mask of re-estimated ones. A landmark that does not fit takes the best-scoring of its heatmap's
        other peaks that does, else the shape's estimate; `peaks(landmarks)` gives them for L landmark indices,
        (L, C, 2) image pixels and (L, C) scores, and is asked only for the landmarks that do not fit. Raises
        DegenerateShape where the landmarks form no shape at all.
        """
        points = np.array(points_xy, dtype=np.float64)
        fit = self.fit(points)
        outliers = fit.z > self.outlier_z
        reestimated = np.zeros(len(points), dtype=bool)
        if outliers.any():
            which = np.flatnonzero(outliers)
            candidates_xy, candidate_scores = peaks(which)
            candidate_z = self.z_of(fit, candidates_xy.swapaxes(0, 1), which).T  # (L, C)
            fitting = (candidate_z <= self.outlier_z) & np.isfinite(candidate_scores)
            for row, k in enumerate(which):
                if fitting[row].any():
                    points[k] = candidates_xy[row, np.argmax(np.where(fitting[row], candidate_scores[row], -np.inf))]
                else:
                    points[k] = fit.estimate_xy[k]
                    reestimated[k] = True
            if (~reestimated).sum() >= 3:  # else the first fit, of all of them, is the best there is
                fit = self.fit(points, usable=~reestimated)
        return points, self.trust(confidence, np.where(reestimated, 0, fit.z), reestimated), fit, reestimated

    def trust(self, confidence: np.ndarray, z: np.ndarray, reestimated: np.ndarray) -> np.ndarray:
        """(K,) heatmap confidences lowered by how well each landmark fits (its z-score), and capped at
        REESTIMATED_PROBABILITY for the landmarks the shape had to estimate."""
        trusted = np.asarray(confidence, dtype=np.float64) * self.plausibility(z)
        return np.where(reestimated, np.minimum(trusted, REESTIMATED_PROBABILITY), trusted)
