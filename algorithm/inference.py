"""Run the exported model with ONNX Runtime: images in, landmarks in original pixels out."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import onnxruntime as ort

from algorithm.codec import HeatmapCodec
from algorithm.devices import DEVICES, DeviceError, nvidia_gpu_visible
from algorithm.metadata import DEFAULT_MODEL_DIR, METADATA_FILE, MODEL_FILE, ModelError, ModelMetadata
from algorithm.preprocessing import ResizeGeometry, prepare
from algorithm.reader import describe

logger = logging.getLogger(__name__)

def _providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        if device == "cuda":
            raise DeviceError("--device cuda: this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)")
        return ["CPUExecutionProvider"]
    if device == "auto" and not nvidia_gpu_visible():
        return ["CPUExecutionProvider"]  # skips loading several hundred MB of CUDA libraries for nothing
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries that come as pip wheels
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def create_session(model_path: Path, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An inference session on `device` (auto: CUDA if usable, else CPU); threads=0 lets ONNX Runtime choose."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the CUDA fallback is reported below, once and clearly
    providers = _providers_for(device)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as error:  # ONNX Runtime's own exception types derive from Exception only
        raise ModelError(f"{model_path}: not a model ONNX Runtime can load ({describe(error)})") from None
    running = session.get_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in running:
        raise DeviceError("--device cuda: no usable GPU (the CUDA provider did not start); use --device cpu or auto")
    logger.info("ONNX Runtime providers in use: %s", ", ".join(running))
    return session


def _static_dims(value: object) -> list[int | None]:
    """An ONNX tensor shape with named or unknown dimensions as None."""
    return [dim if isinstance(dim, int) else None for dim in value.shape]


def _shape_text(dims: list[int | None]) -> str:
    return "(N, " + ", ".join("?" if dim is None else str(dim) for dim in dims) + ")"


def check_graph(session: ort.InferenceSession, meta: ModelMetadata, model_path: Path) -> None:
    """The metadata must describe the graph: an (N, 1, H, W) float input of its size and (N, K, H/stride,
    W/stride) heatmaps, one channel per landmark name. Named dimensions are measured on a blank image."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"{model_path}: does not match its {METADATA_FILE}"
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise ModelError(f"{where}: the model should take one float (N, 1, H, W) input")
    expected_input = [1, meta.input_height, meta.input_width]
    input_dims = _static_dims(inputs[0])[1:]
    if any(dim is not None and dim != want for dim, want in zip(input_dims, expected_input)):
        raise ModelError(f"{where}: the model takes {_shape_text(input_dims)} inputs, the metadata says "
                         f"{_shape_text(expected_input)}")
    if len(outputs[0].shape) != 4:
        raise ModelError(f"{where}: the model should give (N, K, h, w) heatmaps")
    output_dims = _static_dims(outputs[0])[1:]
    if None in output_dims:
        blank = np.zeros((1, *expected_input), dtype=np.float32)
        try:
            output_dims = list(session.run(None, {inputs[0].name: blank})[0].shape[1:])
        except Exception as error:  # ONNX Runtime's own exception types derive from Exception only
            raise ModelError(f"{where}: the model fails on a {_shape_text(expected_input)} input "
                             f"({describe(error)})") from None
    stride = meta.heatmap_stride
    expected_output = [meta.num_landmarks, meta.input_height // stride, meta.input_width // stride]
    if output_dims != expected_output:
        raise ModelError(f"{where}: the model gives {_shape_text(output_dims)} heatmaps, the metadata's "
                         f"{meta.num_landmarks} landmark names and heatmap stride {stride} mean "
                         f"{_shape_text(expected_output)}")


class LandmarkDetector:
    """The exported model with the preprocessing and decoding its metadata describes."""

    def __init__(self, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto", threads: int = 0,
                 batch_size: int = 1, decoder: str | None = None) -> None:
        model_path = Path(model_dir) / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(f"{model_path}: not found")
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if threads < 0:
            raise ValueError("threads must be 0 (ONNX Runtime's choice) or more")
        self.metadata = ModelMetadata.load(model_dir)
        meta = self.metadata
        try:
            self.codec = HeatmapCodec(meta.input_height, meta.input_width, meta.heatmap_stride,
                                      meta.heatmap_sigma, decoder or meta.decoder)
        except ValueError as error:
            raise ModelError(f"{Path(model_dir) / METADATA_FILE}: {error}") from None
        self.session = create_session(model_path, device, threads)
        check_graph(self.session, meta, model_path)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, ResizeGeometry]:
        """Step 1: one image to the model's normalised input and the geometry that maps back."""
        meta = self.metadata
        return prepare(image, meta.input_height, meta.input_width, meta.normalization)

    def heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """Step 2: (B, H, W) model inputs to (B, K, h, w) heatmaps with ONNX Runtime."""
        return self.session.run(None, {self.input_name: inputs[:, None].astype(np.float32)})[0]

    def decode(self, heatmaps: np.ndarray, geometries: list[ResizeGeometry]) -> list[np.ndarray]:
        """Step 3: heatmaps to each image's (K, 2) landmarks in its own pixels."""
        points = self.codec.decode(heatmaps)[0]
        return [geometry.to_original(image_points) for geometry, image_points in zip(geometries, points)]

    def predict(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each image ((H, W) or (H, W, C), padded or not) to its (K, 2) landmarks in its own pixels."""
        prepared = (self.prepare(image) for image in images)
        while batch := list(islice(prepared, self.batch_size)):
            inputs, geometries = zip(*batch)
            yield from self.decode(self.heatmaps(np.stack(inputs)), list(geometries))
