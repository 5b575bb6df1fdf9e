"""Checkpoint files, saved and loaded side by side: last.pt (to resume) and best.pt (to export).

Both are written atomically (a temporary file, then a rename), so a run killed mid-save
leaves the previous file intact.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from training.config import TrainConfig

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(values: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(values, temporary)
    os.replace(temporary, path)


def save_last(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              state: dict, config: TrainConfig, names: list[str]) -> None:
    """Everything `--resume` needs: weights, optimiser and scaler state, history and the best so far."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "state": state, "config": asdict(config), "landmark_names": names}, folder / LAST)


def save_best(folder: Path, model: torch.nn.Module, state: dict, config: TrainConfig, names: list[str]) -> None:
    """The weights of the best validation epoch, with what export and evaluate need to use them."""
    atomic_save({"model": model.state_dict(), "config": asdict(config), "landmark_names": names,
                 "summary": state.get("best_summary"), "epoch": state["best_epoch"]}, folder / BEST)


def resume(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           config: TrainConfig, names: list[str], device: torch.device, is_main: bool) -> dict:
    """Load last.pt into the model, optimiser and scaler; returns the training state.

    A run killed between writing last.pt and best.pt gets its best.pt written now.
    """
    checkpoint = torch.load(folder / LAST, map_location=device, weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    state = checkpoint["state"]
    if "best_mre" in state:  # a run saved before the selection score had its own name
        state["best_score"] = state.pop("best_mre")
    best_path = folder / BEST
    if is_main and state["best_epoch"] == state["epoch"] and (
            not best_path.is_file() or torch.load(best_path, weights_only=False)["epoch"] != state["epoch"]):
        save_best(folder, model, state, config, names)
    return state


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, TrainConfig, list[str], dict]:
    """A checkpoint's model (in eval mode), configuration, landmark names and raw contents."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(checkpoint["config"])
    names = checkpoint["landmark_names"]
    model = config.build_model(len(names))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config, names, checkpoint
