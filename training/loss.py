"""The training loss: each landmark's spatial softmax against its normalised Gaussian target."""

from __future__ import annotations

import torch


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cross-entropy between softmax(logits) and targets scaled to sum 1, per landmark.

    `weights` (B, K) come from the codec: 0 for a landmark that is missing or out of the frame.
    """
    log_probs = torch.log_softmax(logits.float().flatten(2), dim=2)
    target = targets.flatten(2).float()
    target = target / target.sum(dim=2, keepdim=True).clamp_min(1e-12)
    per_landmark = -(target * log_probs).sum(dim=2)
    return (per_landmark * weights).sum() / weights.sum().clamp_min(1)
