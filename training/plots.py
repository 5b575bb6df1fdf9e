"""The figures a run and an evaluation write: learning curves, the error CDF and prediction overlays.

Matplotlib (Agg backend: no display needed) is imported with this module, before training starts: a
Ctrl-C that lands in the first import of its C extensions would otherwise crash the interpreter
instead of stopping the run cleanly.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from training.metrics import SDR_THRESHOLDS_MM


def epoch_axis(axis: plt.Axes, epochs: list[int]) -> None:
    """Whole epochs only, with room on both sides: a single epoch is a point at 1, not a blank 0.96-1.04 axis."""
    axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("epoch")


def millimetre_axis(axis: plt.Axes) -> None:
    """A log axis labelled at 1, 2, 5, 10, 20, 50 ... mm (0.5, 0.2 ... below), with minor ticks between."""
    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
    axis.yaxis.set_minor_formatter(NullFormatter())
    axis.grid(which="major", alpha=0.3)


def plot_curves(history: list[dict], path: Path, best_epoch: int) -> None:
    """Training loss and validation MRE by epoch (pooled and per set), with markers and the best epoch marked; the
    loss alone for a run without validation images."""
    epochs = [row["epoch"] for row in history]
    validated = "val_MRE" in history[-1]
    figure, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5, 4), squeeze=False)
    loss_axis = axes[0, 0]
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", markersize=3, label="train loss")
    loss_axis.set_ylabel("heatmap cross-entropy"), loss_axis.legend()
    epoch_axis(loss_axis, epochs)
    if validated:
        plot_validation(axes[0, 1], history, best_epoch)
        if any(row["epoch"] == best_epoch for row in history):
            loss_axis.axvline(best_epoch, color="tab:red", linestyle=":", linewidth=1)
    else:
        loss_axis.set_title("no validation images: every epoch trains, the last is kept", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_validation(mre_axis: plt.Axes, history: list[dict], best_epoch: int) -> None:
    """Validation MRE by epoch, pooled and per set, with the best epoch's score starred."""
    epochs = [row["epoch"] for row in history]
    mre_axis.plot(epochs, [row["val_MRE"] for row in history], marker="o", markersize=3, color="black",
                  label="validation MRE, pooled")
    for name in history[-1].get("val_sources", {}):
        mre_axis.plot(epochs, [row["val_sources"][name]["MRE"] for row in history], marker=".", linewidth=0.8,
                      label=name)
    epoch_axis(mre_axis, epochs)
    best = next((row for row in history if row["epoch"] == best_epoch), None)
    if best is not None:
        mre_axis.axvline(best_epoch, color="tab:red", linestyle=":", linewidth=1)
        mre_axis.plot([best_epoch], [best["val_score"]], marker="*", markersize=12, color="tab:red", linestyle="none",
                      label=f"best epoch {best_epoch}: score {best['val_score']:.3f} mm")
    millimetre_axis(mre_axis)
    mre_axis.set_ylabel("MRE (mm, log scale)"), mre_axis.legend(fontsize=8)


def plot_error_cdf(errors_by_set: dict[str, np.ndarray], path: Path) -> None:
    """Share of landmarks within each error, per data set, over the 0-8 mm range that matters."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, errors in errors_by_set.items():
        pooled = np.sort(errors[~np.isnan(errors)])
        axis.plot(pooled, np.arange(1, pooled.size + 1) / pooled.size * 100,
                  label=f"{name}: MRE {pooled.mean():.2f} mm, {pooled.size} landmarks")
    for threshold in SDR_THRESHOLDS_MM:
        axis.axvline(threshold, color="dimgrey", linewidth=0.8, linestyle="--")
        axis.text(threshold, 2, f" {threshold:g} mm", color="dimgrey", fontsize=8, rotation=90, va="bottom")
    axis.set_xlim(0, 8), axis.set_ylim(0, 100)
    axis.set_xlabel("radial error (mm)"), axis.set_ylabel("landmarks within (%)"), axis.grid(alpha=0.3)
    axis.legend(loc="center right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
