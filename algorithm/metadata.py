"""The model's metadata: everything the container must know about what training chose."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from algorithm.preprocessing import NORMALIZATIONS

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"


class ModelError(ValueError):
    """A model folder that cannot be used (files missing, unreadable or disagreeing); the message names the file."""


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class ModelMetadata:
    """Settings that travel with `model.onnx`, so nothing is hard-coded in the container."""

    landmark_names: list[str]  # anatomical names; the output names landmark k as "k"
    input_height: int
    input_width: int
    heatmap_stride: int
    heatmap_sigma: float
    normalization: str = "zscore"
    decoder: str = "centroid"
    trained_on: str = "untrained"
    accuracy: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse settings the container cannot run with (the heatmap codec checks its own), before any image."""
        if not (isinstance(self.landmark_names, (list, tuple)) and self.landmark_names
                and all(isinstance(name, str) for name in self.landmark_names)):
            raise ValueError("landmark_names is not a non-empty list of names")
        for key in ("input_height", "input_width", "heatmap_stride"):
            if not _is_positive_int(getattr(self, key)):
                raise ValueError(f"{key} = {getattr(self, key)!r} is not a positive whole number")
        sigma = self.heatmap_sigma
        if not (isinstance(sigma, Real) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"heatmap_sigma = {sigma!r} is not a positive number")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_names)

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / METADATA_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> "ModelMetadata":
        path = Path(model_dir) / METADATA_FILE
        try:
            value = json.loads(path.read_text())
        except OSError as error:
            raise ModelError(f"{path}: cannot be read ({error.strerror or error})") from None
        except ValueError as error:
            raise ModelError(f"{path}: not JSON ({error})") from None
        if not isinstance(value, dict):
            raise ModelError(f"{path}: not a JSON object")
        try:
            return cls(**value)
        except (TypeError, ValueError) as error:
            raise ModelError(f"{path}: not valid model metadata ({error})") from None
