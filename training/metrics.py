"""The challenge's metrics: radial error in mm, MRE with its SD, and SDR pooled over all landmarks."""

from __future__ import annotations

import numpy as np

SDR_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)


def radial_errors_mm(predicted: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(N, K) Euclidean distances in mm; NaN where the ground truth has no landmark."""
    return np.linalg.norm(np.asarray(predicted) - np.asarray(truth), axis=-1) * np.asarray(spacing)[:, None]


def summarize(errors_mm: np.ndarray) -> dict[str, float]:
    """MRE, SD and SDR@t (% of errors <= t) over every annotated landmark of every image."""
    pooled = errors_mm[~np.isnan(errors_mm)]
    if pooled.size == 0:
        raise ValueError("no annotated landmarks to score")
    summary = {"MRE": float(pooled.mean()), "SD": float(pooled.std()), "count": int(pooled.size)}
    for threshold in SDR_THRESHOLDS_MM:
        summary[f"SDR@{threshold:g}"] = float(100.0 * (pooled <= threshold).mean())
    return summary


def per_landmark(errors_mm: np.ndarray, names: list[str]) -> list[dict[str, float | str]]:
    """The summary of each landmark on its own; count 0 and NaN for a landmark annotated nowhere."""
    unscored = {**dict.fromkeys(summarize(np.zeros(1)), float("nan")), "count": 0}
    return [{"landmark": f"{k + 1} {name}",
             **(summarize(errors_mm[:, k]) if (~np.isnan(errors_mm[:, k])).any() else unscored)}
            for k, name in enumerate(names)]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table with numbers to two decimals."""
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
