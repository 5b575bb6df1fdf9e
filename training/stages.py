"""What each stage trains on and how it is validated, behind one interface that `train.py` drives.

detect: whole images resized to the model input (the first stage).
refine: crops of the full-resolution image about each landmark (the second stage); it trains on
crops about jittered ground truth and validates exactly as the container runs it, on the crops
about the exported first stage's landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from algorithm.crops import MAX_CROP_OFFSET, refine_landmarks
from algorithm.inference import LandmarkDetector
from algorithm.metadata import ModelMetadata
from algorithm.preprocessing import strip_padding
from training.config import TrainConfig
from training.data import LandmarkData, concatenate, prepare_data
from training.metrics import radial_errors_mm, summarize
from training.model import SpatialSoftmax
from training.validation import ValidationSet, predict_with_torch, to_original



class DetectStage:
    """The first stage: each training image once per epoch, resized as the container resizes it."""

    def __init__(self, config: TrainConfig, datasets: list[LandmarkData], splits: dict, is_main: bool) -> None:
        self.config = config
        prep = dict(input_height=config.input_height, input_width=config.input_width,
                    normalization=config.normalization)
        train = concatenate([prepare_data(d, splits[d.name]["train"], **prep) for d in datasets])
        self.inputs, self.points = train.inputs, train.model_landmarks
        self.val_sets = [ValidationSet(d, splits[d.name]["val"], prepare_data(d, splits[d.name]["val"], **prep))
                         for d in datasets]

    def epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) model inputs and (N, K, 2) model-pixel landmarks to train on this epoch."""
        return self.inputs, self.points

    def predict(self, model: torch.nn.Module, val_set: ValidationSet, device: torch.device) -> np.ndarray:
        """(N, K, 2) original-pixel landmarks of a validation set, decoded as the container decodes."""
        codec = self.config.codec()
        model_points, _ = predict_with_torch(model, codec, val_set.inputs.inputs, device, self.config.batch_size)
        return to_original(val_set.inputs, model_points)


@dataclass
class FullResolution:
    """Un-padded grayscale images at their own resolution, and what the crops are centred on."""

    contents: list[np.ndarray]
    centres: np.ndarray  # (N, K, 2) original pixels: ground truth (training) or first-stage landmarks


def read_contents(data: LandmarkData, indices: list[int], what: str, progress: bool = True) -> list[np.ndarray]:
    """The chosen images as 2D arrays without their zero padding (copies, so a colour image's planes and the
    padding go; map, unlike a comprehension, keeps no raw image while reading the next)."""
    images = tqdm(data.read_images(indices), total=len(indices), disable=not progress, leave=False,
                  desc=f"{data.name}: reading the {what} images at full resolution")
    return list(map(unpadded_copy, images))


def unpadded_copy(image: np.ndarray) -> np.ndarray:
    """An image's un-padded grayscale content as an array of its own, which does not keep the raw image."""
    return np.array(strip_padding(image))


def first_stage_detector(model_dir: Path | str) -> LandmarkDetector:
    """The exported first stage that a second stage trains and is validated on: the network alone, without the
    shape check, so that a checkpoint's scores are those of its export run with `--no-shape-check`."""
    return LandmarkDetector(model_dir, device="cpu", refine=False, shape_check=False)


def first_stage_inputs(first_stage: LandmarkDetector, data: LandmarkData, indices: list[int], what: str,
                       progress: bool = True) -> FullResolution:
    """What the second stage refines on the chosen images: their content and the first stage's landmarks."""
    detections = tqdm(first_stage.predict(data.read_images(indices)), total=len(indices), disable=not progress,
                      leave=False, desc=f"{data.name}: the first stage's landmarks on the {what} images")
    points = np.stack([detection.points for detection in detections])
    return FullResolution(read_contents(data, indices, what, progress), points)


class RefineStage:
    """The second stage: a crop about every annotated landmark of every training image each epoch."""

    def __init__(self, config: TrainConfig, datasets: list[LandmarkData], splits: dict, is_main: bool) -> None:
        self.config, self.spec, self.codec = config, config.crop_spec(), config.codec()
        first_stage = first_stage_detector(config.first_stage)
        check_first_stage(first_stage.metadata, config, datasets[0].landmark_names)
        self.train = [FullResolution(read_contents(d, splits[d.name]["train"], "training", is_main),
                                     d.landmarks[splits[d.name]["train"]]) for d in datasets]
        self.val_sets = []
        for data in datasets:
            indices = splits[data.name]["val"]
            inputs = first_stage_inputs(first_stage, data, indices, "validation", is_main)
            self.val_sets.append(ValidationSet(data, indices, inputs))
            if is_main:
                errors = radial_errors_mm(inputs.centres, data.landmarks[indices], data.spacing[indices])
                print(f"  {data.name}: first stage alone, validation MRE {summarize(errors)['MRE']:.3f} mm",
                      flush=True)

    def epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(M, S, S) crops about jittered ground truth and (M, K, 2) every landmark's crop-pixel position."""
        rng = np.random.default_rng([self.config.seed, epoch])
        crops, points = [], []
        for part in self.train:
            for content, truth in zip(part.contents, part.centres):
                annotated = truth[np.isfinite(truth).all(axis=1)]
                side = self.spec.fraction * content.shape[0]
                jitter = np.clip(rng.normal(0, self.config.crop_jitter * side, annotated.shape),
                                 -MAX_CROP_OFFSET * side, MAX_CROP_OFFSET * side)
                image_crops, geometry = self.spec.extract(content, annotated + jitter)
                crops.append(image_crops)
                points.append(geometry.every_landmark_in_every_crop(truth))
        return np.concatenate(crops), np.concatenate(points)

    def predict(self, model: torch.nn.Module, val_set: ValidationSet, device: torch.device) -> np.ndarray:
        """(N, K, 2) original-pixel landmarks after refining the first stage's, as the container does."""
        return predict_refined(self.config, model, val_set, device)[0]


def predict_refined(config: TrainConfig, model: torch.nn.Module, val_set: ValidationSet,
                    device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A torch second stage on the crops about `val_set`'s first-stage landmarks: (N, K, 2) original pixels and
    (N, K) confidences."""
    exported_form = SpatialSoftmax(model).eval()

    def heatmaps_of(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return exported_form(torch.from_numpy(crops)[:, None].to(device)).float().cpu().numpy()

    spec, codec = config.crop_spec(), config.codec()
    refined = [refine_landmarks(content, points, spec, codec, heatmaps_of)
               for content, points in zip(val_set.inputs.contents, val_set.inputs.centres)]
    return np.stack([points for points, _ in refined]), np.stack([confidence for _, confidence in refined])


def check_first_stage(meta: ModelMetadata, config: TrainConfig, names: list[str]) -> None:
    """The first stage must find the same landmarks and must not have trained on this run's validation or
    test images (the same split seed and fractions)."""
    if [n.lower() for n in meta.landmark_names] != [n.lower() for n in names]:
        raise ValueError(f"{config.first_stage}: the first stage finds {meta.num_landmarks} landmarks "
                         f"({meta.landmark_names[:2]}...), the data has {len(names)} ({names[:2]}...)")
    trained: dict[str, Any] = meta.training.get("config", {})
    for key in ("seed", "val_fraction", "test_fraction"):
        if key in trained and trained[key] != getattr(config, key):
            raise ValueError(f"{config.first_stage}: the first stage was split with {key} = {trained[key]}, this run "
                             f"with {getattr(config, key)}; use the same split, or its validation and test images "
                             "leak into training")


STAGES = {"detect": DetectStage, "refine": RefineStage}
