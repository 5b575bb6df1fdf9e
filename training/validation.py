"""Torch inference decoded by the container's codec, and validation scores per data set and pooled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from algorithm.codec import HeatmapCodec
from training.data import LandmarkData, PreparedData
from training.metrics import radial_errors_mm, summarize
from training.model import SpatialSoftmax


def predict_with_torch(model: torch.nn.Module, codec: HeatmapCodec, inputs: np.ndarray, device: torch.device,
                       batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) model inputs to (N, K, 2) model-pixel landmarks and (N, K) confidences, through the graph the
    container runs."""
    exported_form = SpatialSoftmax(model).eval()
    points, confidence = [], []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(inputs[start:start + batch_size])[:, None].to(device)
            heatmaps = exported_form(batch).float().cpu().numpy()
            batch_points, batch_confidence = codec.decode(heatmaps)
            points.append(batch_points)
            confidence.append(batch_confidence)
    return np.concatenate(points), np.concatenate(confidence)


def to_original(prepared: PreparedData, model_points: np.ndarray) -> np.ndarray:
    """(N, K, 2) model-pixel landmarks to pixels of each original image."""
    return np.stack([g.to_original(p) for g, p in zip(prepared.geometries, model_points)])


@dataclass
class ValidationSet:
    """One data set's validation images, prepared once as its stage needs them."""

    data: LandmarkData
    indices: list[int]
    prepared: Any  # what the stage predicts from: PreparedData (detect) or FullResolution images (refine)


def validate(predict: Callable[[ValidationSet], np.ndarray], sets: list[ValidationSet], selection: str) -> dict:
    """Summaries per data set and pooled, and the score that model selection minimises.

    `predict` gives a set's (N, K, 2) original-pixel landmarks. `source_mean` (the mean of the
    per-set MREs) weighs every centre alike; `pooled` weighs every landmark alike, so the larger
    set dominates.
    """
    errors = {}
    for item in sets:
        predicted = predict(item)
        errors[item.data.name] = radial_errors_mm(predicted, item.data.landmarks[item.indices],
                                                  item.data.spacing[item.indices])
    per_source = {name: summarize(value) for name, value in errors.items()}
    pooled = summarize(np.concatenate(list(errors.values())))
    score = pooled["MRE"] if selection == "pooled" else float(np.mean([s["MRE"] for s in per_source.values()]))
    return {"pooled": pooled, "sources": per_source, "score": score}
