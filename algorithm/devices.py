"""The devices a user can ask for, shared by the container, training and the benchmarks (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

DEVICES = ("auto", "cuda", "cpu")


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def nvidia_gpu_visible() -> bool:
    """Whether the NVIDIA driver exposes a GPU here (inside Docker: run with --gpus)."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or any(Path("/dev").glob("nvidia[0-9]*"))
