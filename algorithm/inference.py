"""Run the exported model with ONNX Runtime: images in, landmarks in original pixels out."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import onnxruntime as ort

from algorithm.codec import HeatmapCodec
from algorithm.metadata import MODEL_FILE, ModelMetadata
from algorithm.preprocessing import prepare

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def nvidia_gpu_visible() -> bool:
    """Whether the NVIDIA driver exposes a GPU here (inside Docker: run with --gpus)."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or any(Path("/dev").glob("nvidia[0-9]*"))


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
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=_providers_for(device))
    running = session.get_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in running:
        raise DeviceError("--device cuda: no usable GPU (the CUDA provider did not start); use --device cpu or auto")
    logger.info("ONNX Runtime providers in use: %s", ", ".join(running))
    return session


class LandmarkDetector:
    """The exported model with the preprocessing and decoding its metadata describes."""

    def __init__(self, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto", threads: int = 0,
                 batch_size: int = 1, decoder: str | None = None) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / MODEL_FILE).is_file():
            raise FileNotFoundError(f"no {MODEL_FILE} in {model_dir}")
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.metadata = ModelMetadata.load(model_dir)
        meta = self.metadata
        self.codec = HeatmapCodec(meta.input_height, meta.input_width, meta.heatmap_stride,
                                  meta.heatmap_sigma, decoder or meta.decoder)
        self.session = create_session(model_dir / MODEL_FILE, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict_model_space(self, inputs: np.ndarray) -> np.ndarray:
        """(B, H, W) normalised model inputs to (B, K, 2) coordinates in model-input pixels."""
        heatmaps = self.session.run(None, {self.input_name: inputs[:, None].astype(np.float32)})[0]
        return self.codec.decode(heatmaps)[0]

    def predict(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each image ((H, W) or (H, W, C), padded or not) to its (K, 2) landmarks in its own pixels."""
        meta = self.metadata
        prepared = (prepare(image, meta.input_height, meta.input_width, meta.normalization) for image in images)
        while batch := list(islice(prepared, self.batch_size)):
            points = self.predict_model_space(np.stack([inputs for inputs, _ in batch]))
            for (_, geometry), image_points in zip(batch, points):
                yield geometry.to_original(image_points)
