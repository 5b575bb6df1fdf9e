"""The learning-rate schedule: linear warm-up, then cosine decay to zero over the planned epochs."""

from __future__ import annotations

import math

from training.config import TrainConfig


def learning_rate_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of (0-based) `epoch`."""
    if epoch < config.warmup_epochs:
        return config.learning_rate * (epoch + 1) / config.warmup_epochs
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
