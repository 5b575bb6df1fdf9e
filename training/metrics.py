"""The challenge's metrics: radial error in mm, MRE with its SD, and SDR pooled over all landmarks; and the
count of gross errors, landmarks further than any plausible reading of the image (a jump to another structure)."""

from __future__ import annotations

import numpy as np

SDR_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
GROSS_ERROR_MM = 10.0
GROSS_COUNT = f"beyond_{GROSS_ERROR_MM:g}mm"  # the summary's key for that count


def radial_errors_mm(predicted: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(N, K) Euclidean distances in mm; NaN where the ground truth has no landmark."""
    return np.linalg.norm(np.asarray(predicted) - np.asarray(truth), axis=-1) * np.asarray(spacing)[:, None]


def summarize(errors_mm: np.ndarray) -> dict[str, float]:
    """MRE, SD, SDR@t (% of errors <= t) and the count beyond GROSS_ERROR_MM over every annotated landmark of
    every image."""
    pooled = errors_mm[~np.isnan(errors_mm)]
    if pooled.size == 0:
        raise ValueError("no annotated landmarks to score")
    summary = {"MRE": float(pooled.mean()), "SD": float(pooled.std()), "count": int(pooled.size)}
    for threshold in SDR_THRESHOLDS_MM:
        summary[f"SDR@{threshold:g}"] = float(100.0 * (pooled <= threshold).mean())
    summary[GROSS_COUNT] = int((pooled > GROSS_ERROR_MM).sum())
    return summary


def landmark_label(k: int, name: str) -> str:
    """How tables, captions and lists name landmark k (0-based): its number and name, '4 Porion'."""
    return f"{k + 1} {name}"


def per_landmark(errors_mm: np.ndarray, names: list[str]) -> list[dict[str, float | str]]:
    """The summary of each landmark on its own; count 0 and NaN for a landmark annotated nowhere."""
    unscored = {**dict.fromkeys(summarize(np.zeros(1)), float("nan")), "count": 0}
    return [{"landmark": landmark_label(k, name),
             **(summarize(errors_mm[:, k]) if (~np.isnan(errors_mm[:, k])).any() else unscored)}
            for k, name in enumerate(names)]


def gross_errors(errors_mm: np.ndarray, images: list[str], landmark_names: list[str]) -> list[dict]:
    """Every landmark further than GROSS_ERROR_MM from the doctors' point in (N, K) errors, worst first: its image
    (of the N `images`), landmark and error, so that a gross error in a table can be looked at."""
    rows, landmarks = np.nonzero(np.nan_to_num(errors_mm) > GROSS_ERROR_MM)
    found = [{"image": images[i], "landmark": landmark_label(k, landmark_names[k]), "error_mm": float(errors_mm[i, k])}
             for i, k in zip(rows, landmarks)]
    return sorted(found, key=lambda row: -row["error_mm"])


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table with numbers to two decimals."""
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the `positive` cases (the Mann-Whitney U, ties counted half);
    NaN when either class is empty."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties sharing their mean rank
    return float((ranks[positive].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def confidence_report(confidence: np.ndarray, errors_mm: np.ndarray, threshold_mm: float = 2.0,
                      least_share: float = 0.1, gross_mm: float = 5.0) -> dict[str, float]:
    """How well per-landmark confidences rank errors: the AUROC of (1 - confidence) for errors above
    `threshold_mm`, the MRE of the `least_share` least confident landmarks against the rest, and the share of
    the errors beyond `gross_mm` that are among those least confident (NaN where there is none): how many
    gross errors a reader who checks the least confident landmarks finds."""
    scored = ~np.isnan(errors_mm)
    confidence, errors = np.asarray(confidence)[scored], np.asarray(errors_mm)[scored]
    order = np.argsort(confidence, kind="stable")
    least = order[:max(1, int(round(least_share * len(order))))]
    rest = np.ones(len(order), dtype=bool)
    rest[least] = False
    gross = errors > gross_mm
    return {"AUROC": auroc(-confidence, errors > threshold_mm), "threshold_mm": threshold_mm,
            "least_confident_share": least_share, "MRE_least_confident": float(errors[least].mean()),
            "MRE_rest": float(errors[rest].mean()) if rest.any() else float("nan"),
            "mean_confidence": float(confidence.mean()), "gross_mm": gross_mm,
            "gross_among_least_confident": float(gross[least].sum() / gross.sum()) if gross.any() else float("nan")}
