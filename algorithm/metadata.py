"""The model's metadata: everything the container must know about what training chose."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"


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

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_names)

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / METADATA_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> "ModelMetadata":
        path = Path(model_dir) / METADATA_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"model metadata not found: {path}") from None
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"model metadata {path} is not valid: {error}") from None
