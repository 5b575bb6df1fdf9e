"""The model's metadata: everything the container must know about what training chose, and which model folder it loads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from algorithm.codec import HeatmapCodec
from algorithm.crops import CropSpec
from algorithm.preprocessing import NORMALIZATIONS, RESIZE_METHODS
from algorithm.shape import ShapeModel

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
REFINE_MODEL_FILE = "refine.onnx"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"  # built in; absent from an image built WITH_MODEL=0
MOUNTED_MODEL_DIR = Path("/opt/ml/model")  # where grand-challenge extracts a model uploaded apart from the image


class ModelError(ValueError):
    """A model folder that cannot be used (files missing, unreadable or disagreeing); the message names the file."""


def _from_dict(kind: type, value: Any, key: str):
    """A nested metadata object from its JSON object (the codec, the crops)."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not a JSON object")
    try:
        return kind(**value)
    except TypeError as error:
        raise ValueError(f"{key}: {error}") from None


@dataclass
class RefinementStage:
    """The second stage: its graph, the crops it sees and the codec of its crop heatmaps."""

    crops: CropSpec
    codec: HeatmapCodec
    model_file: str = REFINE_MODEL_FILE
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.crops = _from_dict(CropSpec, self.crops, "refinement.crops")
        self.codec = _from_dict(HeatmapCodec, self.codec, "refinement.codec")
        if (self.codec.input_height, self.codec.input_width) != (self.crops.size, self.crops.size):
            raise ValueError(f"refinement.codec's input ({self.codec.input_height} x {self.codec.input_width}) is "
                             f"not the crop ({self.crops.size} x {self.crops.size})")
        if not isinstance(self.model_file, str) or Path(self.model_file).name != self.model_file:
            raise ValueError(f"refinement.model_file {self.model_file!r} is not a file name in the model folder")


@dataclass
class ModelMetadata:
    """Settings that travel with `model.onnx`, so nothing is hard-coded in the container.

    `codec` describes the first stage's heatmaps whole (input size, stride, sigma, decoder, centroid
    radius, output activation); the container and training build the same `HeatmapCodec` from it.
    `shape`, when present, is the statistical shape model that keeps each image's landmarks plausible.
    `quantized` graphs (integer arithmetic, `training.quantize`) run on the CPU, where they were scored.
    """

    landmark_names: list[str]  # anatomical names; the output names landmark k as "k"
    codec: HeatmapCodec
    resize: str = RESIZE_METHODS[0]
    normalization: str = "zscore"
    refinement: RefinementStage | None = None
    shape: ShapeModel | None = None
    quantized: bool = False
    trained_on: str = "untrained"
    accuracy: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse settings the container cannot run with, before any image."""
        if not (isinstance(self.landmark_names, (list, tuple)) and self.landmark_names
                and all(isinstance(name, str) for name in self.landmark_names)):
            raise ValueError("landmark_names is not a non-empty list of names")
        self.codec = _from_dict(HeatmapCodec, self.codec, "codec")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize {self.resize!r} is not one of {RESIZE_METHODS}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")
        if not isinstance(self.quantized, bool):
            raise ValueError(f"quantized {self.quantized!r} is not true or false")
        if self.refinement is not None:
            self.refinement = _from_dict(RefinementStage, self.refinement, "refinement")
        if self.shape is not None:
            self.shape = _from_dict(ShapeModel, self.shape, "shape")
            if self.shape.num_landmarks != self.num_landmarks:
                raise ValueError(f"shape: a model of {self.shape.num_landmarks} landmarks, not the "
                                 f"{self.num_landmarks} of landmark_names")

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
        if "codec" not in value and "heatmap_stride" in value:
            raise ModelError(f"{path}: the layout of an older export (no `codec` object); export the checkpoint "
                             "again with python -m training.export")
        try:
            return cls(**value)
        except (TypeError, ValueError) as error:
            raise ModelError(f"{path}: not valid model metadata ({error})") from None


def _holds_model(folder: Path) -> bool:
    """Whether `folder` holds a model: False when it is absent or empty, a ModelError when it holds something else."""
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise ModelError(f"{folder}: not a folder, so no model folder") from None
    except OSError as error:
        raise ModelError(f"{folder}: cannot be listed ({error.strerror or error})") from None
    if not names:
        return False
    if METADATA_FILE in names:
        return True
    problem = f"holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} but no {METADATA_FILE}"
    nested = next((name for name in names if (folder / name / METADATA_FILE).is_file()), None)
    if nested:  # a tarball packed with its folder: tar -czf model.tar.gz model/
        problem += f"; the model is in its subfolder {nested}/: pack it with tar -czf model.tar.gz -C {nested} ."
    raise ModelError(f"{folder}: {problem}")


def locate_model(explicit: Path | None) -> tuple[Path, str]:
    """The model folder to load and where it comes from: --model, else one mounted at MOUNTED_MODEL_DIR, else the
    built-in one; a broken mounted model is an error, never a fallback to the built-in one."""
    if explicit is not None:
        return Path(explicit), "--model"
    if _holds_model(MOUNTED_MODEL_DIR):
        return MOUNTED_MODEL_DIR, "mounted"
    if _holds_model(DEFAULT_MODEL_DIR):
        return DEFAULT_MODEL_DIR, "built in"
    raise ModelError(f"no model: nothing at {MOUNTED_MODEL_DIR} and none built in at {DEFAULT_MODEL_DIR} (an image "
                     "built WITH_MODEL=0); upload one on grand-challenge (Algorithm -> Models) or give --model")


def graph_digest(model_dir: Path, meta: ModelMetadata) -> str:
    """The first 12 hex digits of sha256 over the graph files in order (`cat model.onnx refine.onnx | sha256sum`),
    which tell in the log which model ran."""
    digest = hashlib.sha256()
    for name in [MODEL_FILE] + ([meta.refinement.model_file] if meta.refinement else []):
        with open(Path(model_dir) / name, "rb") as graph:
            for block in iter(lambda: graph.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
