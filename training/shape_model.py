"""Build the statistical shape model from training landmarks and store it with a model.

    python -m training.shape_model --model algorithm/model [--overwrite | --pose-only]

It is built from the ground truth of the model's own training split (the split its metadata
records) and from how far the model's first stage errs on the validation split, so the container's
shape check knows both how skulls vary and how precisely this detector finds each landmark. A model
trained on every image has no validation split: the best first stage of its split run, on that run's
validation split, stands in for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from algorithm.metadata import DEFAULT_MODEL_DIR, ModelMetadata
from algorithm.preprocessing import strip_padding
from algorithm.shape import ShapeModel, similarity, to_complex, to_xy
from training.checkpoint import BEST, load_checkpoint
from training.config import TrainConfig
from training.data import LandmarkData, load_sources
from training.split import Split, recorded_split, run_split
from training.stages import STAGES, first_stage_detector, validated

# Modes kept: the fewest that explain this share of the aligned shapes' variance. 0.8 (8 modes on the two
# centres' training shapes) gave the smallest leave-one-out spreads of 0.5-0.95 (too rigid below, over-fitted above).
EXPLAINED_VARIANCE = 0.8
# The median of a 2D Gaussian error's length is this many per-axis standard deviations (sqrt(2 ln 2)).
RAYLEIGH_MEDIAN = float(np.sqrt(2 * np.log(2)))


def normalised(shapes: np.ndarray) -> np.ndarray:
    """Complex (..., K) shapes centred and scaled to unit root-mean-square radius."""
    centred = shapes - shapes.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((np.abs(centred) ** 2).mean(axis=-1, keepdims=True))


def procrustes(shapes: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes alignment of complex (N, K) shapes: the aligned shapes and their unit mean."""
    aligned = normalised(shapes)
    mean = aligned[0]
    for _ in range(iterations):
        ones = np.ones(shapes.shape[1])
        aligned = np.stack([factor * shape + offset for shape in aligned
                            for factor, offset in [similarity(shape, mean, ones)]])
        new_mean = normalised(aligned.mean(axis=0))
        if np.abs(new_mean - mean).max() < 1e-10:
            break
        mean = new_mean
    return aligned, mean


def _modes(aligned: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal modes (M, K, 2) and variances (M,) of the aligned shapes about their mean."""
    deviations = to_xy(aligned - mean).reshape(len(aligned), -1)
    _, singular, vectors = np.linalg.svd(deviations, full_matrices=False)
    variances = singular**2 / max(1, len(aligned) - 1)
    count = int(np.searchsorted(np.cumsum(variances) / variances.sum(), EXPLAINED_VARIANCE) + 1)
    return vectors[:count].reshape(count, -1, 2), variances[:count]


def unexplained_spread(aligned: np.ndarray, mean: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """(K,) per-axis standard deviation of the aligned shapes about the mean that the modes leave unexplained."""
    deviations = to_xy(aligned - mean).reshape(len(aligned), -1)
    flat_modes = modes.reshape(len(modes), -1)
    rest = deviations - (deviations @ flat_modes.T) @ flat_modes
    return np.sqrt((rest.reshape(len(aligned), -1, 2) ** 2).mean(axis=(0, 2)))


def leave_one_out_residuals(aligned: np.ndarray) -> np.ndarray:
    """(N, K): how far each landmark of each training shape lies from where a model built without that shape,
    fitted to its other landmarks, puts it (model units). That is what the container's check measures: a
    landmark that does not fit has no pull on the fit, and a new skull is not among the training shapes."""
    residuals = np.zeros(aligned.shape)
    for index in range(len(aligned)):
        rest = np.delete(aligned, index, axis=0)
        mean = normalised(rest.mean(axis=0))
        modes, variances = _modes(rest, mean)
        spread = unexplained_spread(rest, mean, modes)
        provisional = ShapeModel(to_xy(mean).tolist(), modes.tolist(), variances.tolist(), spread.tolist(),
                                 outlier_z=1e9)
        points = to_xy(aligned[index])
        for k in range(aligned.shape[1]):
            residuals[index, k] = provisional.fit(points, usable=np.arange(len(points)) != k).z[k] * spread[k]
    return residuals


def build_shape_model(truth_xy: np.ndarray, detector_spread: np.ndarray | None = None) -> ShapeModel:
    """A shape model of (N, K, 2) training landmarks (shapes with a missing landmark are left out); each
    landmark's spread adds the detector's own (K,) error spread (`detection_spread`), when given."""
    complete = np.isfinite(truth_xy).all(axis=(1, 2))
    if complete.sum() < 5:
        raise ValueError(f"{int(complete.sum())} complete training shapes; a shape model needs at least 5")
    aligned, mean = procrustes(to_complex(truth_xy[complete]))
    modes, variances = _modes(aligned, mean)
    spread_squared = (leave_one_out_residuals(aligned) ** 2).mean(axis=0) / 2
    if detector_spread is not None:
        spread_squared = spread_squared + np.asarray(detector_spread) ** 2
    return ShapeModel(to_xy(mean).tolist(), modes.tolist(), variances.tolist(), np.sqrt(spread_squared).tolist(),
                      num_shapes=int(complete.sum()))


def training_pose(model: ShapeModel, truth_xy: np.ndarray, sizes_wh: np.ndarray) -> tuple[list[float], list[float]]:
    """How (N, K, 2) training landmarks sit in their (N, 2) image sizes: the frame's centre (x, y) and size (width,
    height) about the mean shape in model units, what the container re-frames an odd image to; and the lowest, median
    and highest angle of their fits in degrees, beyond which it turns an image level."""
    centres, sizes, angles = [], [], []
    for points, size in zip(truth_xy, np.asarray(sizes_wh, dtype=np.float64)):
        if not np.isfinite(points).all():
            continue
        fit = model.fit(points)
        centres.append((complex(*((size - 1) / 2)) - fit.offset) / fit.factor)
        sizes.append(size / abs(fit.factor))
        angles.append(fit.degrees)
    if not centres:
        raise ValueError("no complete training shape to measure the training frame on")
    centre = np.mean(centres)
    frame = [float(centre.real), float(centre.imag), *map(float, np.mean(sizes, axis=0))]
    return frame, [float(np.min(angles)), float(np.median(angles)), float(np.max(angles))]


def detection_spread(error_xy: np.ndarray, truth_xy: np.ndarray) -> np.ndarray:
    """(K,) per-axis standard deviation of a detector's errors in model units, robust to its gross errors: the
    median error length, each scaled by its image's shape size, over the Rayleigh median."""
    sizes = np.sqrt(np.nanmean(np.sum((truth_xy - np.nanmean(truth_xy, axis=1, keepdims=True)) ** 2, axis=-1),
                               axis=1))
    lengths = np.linalg.norm(error_xy, axis=-1) / sizes[:, None]
    return np.nanmedian(lengths, axis=0) / RAYLEIGH_MEDIAN


def recorded_sources(model_dir: Path, metadata: ModelMetadata) -> tuple[TrainConfig, list[LandmarkData], Split]:
    """An exported first stage's training configuration, data sets and split, as its metadata records them."""
    config = TrainConfig.from_dict(metadata.training.get("config", {}))
    if not config.sources():
        raise ValueError("its metadata records no training data to build a shape model from")
    datasets = load_sources(config.sources(), metadata.landmark_names)
    return config, datasets, recorded_split(metadata.training.get("split"), datasets, str(model_dir))


def shape_model_of(model_dir: Path, metadata: ModelMetadata) -> ShapeModel:
    """The shape model of an exported first stage, from the data sets and the split its metadata records."""
    config, datasets, split = recorded_sources(model_dir, metadata)
    return shape_model_for(model_dir, split, datasets, config.split_run)


def training_shapes(split: Split, datasets: list[LandmarkData]) -> tuple[np.ndarray, np.ndarray]:
    """The training split's (N, K, 2) ground-truth landmarks and (N, 2) image sizes (width, height)."""
    truth, sizes = [], []
    for data in datasets:
        indices = split[data.name]["train"]
        truth.append(data.landmarks[indices])
        images = tqdm(data.read_images(indices), total=len(indices), desc=f"{data.name}: training image sizes",
                      unit="image")
        sizes += [strip_padding(image).shape[::-1] for image in images]
    return np.concatenate(truth), np.array(sizes)


def shape_model_for(model_dir: Path, split: Split, datasets: list[LandmarkData], split_run: str = "") -> ShapeModel:
    """The shape model of a trained first stage: training-split ground truth and frames, and the detector's
    errors on validation images (a model trained on every image has none: its split run's are used)."""
    truth, sizes = training_shapes(split, datasets)
    if validated(datasets, split):
        errors, val_truth = validation_errors(exported_first_stage(model_dir), split, datasets)
    elif split_run:
        errors, val_truth = validation_errors(checkpoint_first_stage(Path(split_run) / BEST),
                                              run_split(Path(split_run), datasets), datasets)
    else:
        raise ValueError("no validation images to measure the detector's precision on, and no split run "
                         "(config split_run) whose validation images could stand in")
    model = build_shape_model(truth, detection_spread(errors, val_truth))
    model.frame, model.angles = training_pose(model, truth, sizes)
    return model


def measure_pose(model_dir: Path, metadata: ModelMetadata) -> tuple[list[float], list[float]]:
    """The training frame and angles of a model's existing shape model, from its recorded training split: for a
    shape model built before angles were recorded, whose split run (for the spreads) may be gone."""
    _, datasets, split = recorded_sources(model_dir, metadata)
    return training_pose(metadata.shape, *training_shapes(split, datasets))


SetPredictor = Callable[[LandmarkData, list[int]], np.ndarray]  # a set's chosen images -> (N, K, 2) landmarks


def exported_first_stage(model_dir: Path) -> SetPredictor:
    """An exported first stage's network alone, as the container runs it."""
    detector = first_stage_detector(model_dir)

    def predict(data: LandmarkData, indices: list[int]) -> np.ndarray:
        images = tqdm(data.read_images(indices), total=len(indices), desc=f"{data.name}: first stage on validation",
                      unit="image")
        return np.stack([detection.points for detection in detector.predict(images)])

    return predict


def checkpoint_first_stage(path: Path) -> SetPredictor:
    """A first-stage checkpoint (a split run's best.pt), predicting as it validated."""
    model, config, _, _ = load_checkpoint(path)
    stage = STAGES[config.stage]
    return lambda data, indices: stage.predict(config, model, stage.validation_set(config, data, indices),
                                               torch.device("cpu")).points


def validation_errors(predict: SetPredictor, split: Split, datasets: list[LandmarkData]) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """(N, K, 2) errors of a first stage's landmarks on the split's validation images, and their ground truth."""
    errors, val_truth = [], []
    for data in validated(datasets, split):
        indices = split[data.name]["val"]
        errors.append(predict(data, indices) - data.landmarks[indices])
        val_truth.append(data.landmarks[indices])
    return np.concatenate(errors), np.concatenate(val_truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.shape_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a shape model the metadata already holds")
    parser.add_argument("--pose-only", action="store_true",
                        help="keep the shape model's mean, modes and spreads and measure again only where training "
                             "images frame the skull and how far they turn it (frame and angles), from the recorded "
                             "training split: for a shape model from before angles were recorded")
    args = parser.parse_args(argv)
    try:
        metadata = ModelMetadata.load(args.model)
        if args.pose_only:
            if metadata.shape is None:
                raise ValueError("its metadata holds no shape model to measure the pose for; build one without "
                                 "--pose-only")
            previous = metadata.shape.frame
            metadata.shape.frame, metadata.shape.angles = measure_pose(args.model, metadata)
            if previous is not None:
                print(f"training frame: largest change {np.abs(np.subtract(metadata.shape.frame, previous)).max():.2g} "
                      "model units")
        elif metadata.shape is not None and not args.overwrite:
            raise ValueError("its metadata already holds a shape model; add --overwrite to build it again")
        else:
            metadata.shape = shape_model_of(args.model, metadata)
    except (OSError, ValueError) as error:
        print(f"error: {args.model}: {error}", file=sys.stderr)
        return 1
    metadata.save(args.model)
    lowest, median, highest = metadata.shape.angles
    print(f"wrote a shape model of {metadata.shape.num_shapes} training shapes ({len(metadata.shape.variances)} modes, "
          f"training angles {lowest:.1f} to {highest:.1f} degrees, median {median:.1f}) to {args.model}/metadata.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
