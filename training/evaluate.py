"""Score a model on a data split: `python -m training.evaluate --model algorithm/model` (or --checkpoint).

An exported model runs through the container's own `LandmarkDetector`, so the numbers are
the container's. Writes metrics.json, a per-landmark table, an error CDF plot and
prediction overlays (ground truth, prediction and the error line) to --output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from algorithm.codec import DECODERS
from algorithm.inference import DEFAULT_MODEL_DIR, LandmarkDetector
from algorithm.metadata import ModelMetadata
from training.data import LandmarkData, load_data, make_split, prepare_data
from training.export import load_checkpoint
from training.metrics import SDR_THRESHOLDS_MM, format_table, per_landmark, radial_errors_mm, summarize
from training.train import TrainConfig, predict_model_space, to_original

SUMMARY_COLUMNS = ["MRE", "SD"] + [f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM]


def predict_with_checkpoint(path: Path, data: LandmarkData, indices: list[int]) -> np.ndarray:
    """(N, K, 2) original-pixel predictions of a torch checkpoint, decoded as the container decodes."""
    model, config, _, _ = load_checkpoint(path)
    prepared = prepare_data(data, indices, config.input_height, config.input_width, config.normalization)
    return to_original(prepared, predict_model_space(model, config.codec(), prepared.inputs, torch.device("cpu"), 4))


def predict_with_onnx(model_dir: Path, data: LandmarkData, indices: list[int], decoder: str | None) -> np.ndarray:
    """(N, K, 2) original-pixel predictions through the container's inference path."""
    detector = LandmarkDetector(model_dir, device="cpu", decoder=decoder)
    return np.stack(list(detector.predict(data.read_images(indices))))


def plot_error_cdf(errors_mm: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = np.sort(errors_mm[~np.isnan(errors_mm)])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(pooled, np.arange(1, pooled.size + 1) / pooled.size * 100)
    for threshold in SDR_THRESHOLDS_MM:
        axis.axvline(threshold, color="grey", linewidth=0.5, linestyle="--")
    axis.set_xlim(0, max(6.0, float(np.percentile(pooled, 98))))
    axis.set_xlabel("radial error (mm)"), axis.set_ylabel("landmarks within (%)"), axis.grid(alpha=0.3)
    axis.set_title(f"MRE {pooled.mean():.2f} mm over {pooled.size} landmarks")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_overlays(data: LandmarkData, indices: list[int], predicted: np.ndarray, folder: Path, count: int) -> None:
    """Ground truth (green), prediction (red) and the error line on the first `count` images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for position, image in enumerate(data.read_images(indices[:count])):
        truth, guess = data.landmarks[indices[position]], predicted[position]
        figure, axis = plt.subplots(figsize=(6, 7.5))
        axis.imshow(image if image.ndim == 2 else image[..., 0], cmap="gray")
        for (tx, ty), (px, py) in zip(truth, guess):
            axis.plot([tx, px], [ty, py], color="yellow", linewidth=0.8)
        axis.scatter(truth[:, 0], truth[:, 1], s=8, c="lime", label="ground truth")
        axis.scatter(guess[:, 0], guess[:, 1], s=8, c="red", label="prediction")
        axis.legend(loc="lower left", fontsize=7), axis.set_axis_off()
        figure.tight_layout()
        figure.savefig(folder / f"image_{indices[position] + 1:03d}.png", dpi=100)
        plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"an exported model folder (default: {DEFAULT_MODEL_DIR})")
    source.add_argument("--checkpoint", type=Path, help="a torch checkpoint (best.pt / last.pt)")
    parser.add_argument("--images", type=Path, help="image folder or stack (default: the model's training data)")
    parser.add_argument("--annotations", type=Path, help="ground truth JSON (default: the model's training data)")
    parser.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                        help="which part of the model's seeded split to score (default: test)")
    parser.add_argument("--output", type=Path, default=Path("runs/evaluation"), help="folder for the results")
    parser.add_argument("--decoder", choices=DECODERS, help="with --model: heatmap decoding (default: the metadata's)")
    parser.add_argument("--overlays", type=int, default=6, help="how many overlay images to draw (default: 6)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.checkpoint:
        config_values = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["config"]
    else:
        args.model = args.model or DEFAULT_MODEL_DIR
        config_values = ModelMetadata.load(args.model).training.get("config", {})
    config = TrainConfig.from_dict(config_values)
    images, annotations = args.images or config.images, args.annotations or config.annotations
    if not images or not annotations:
        print("error: give --images and --annotations (the model records no training data)", file=sys.stderr)
        return 1
    try:
        data = load_data(Path(images), Path(annotations))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.split == "all":
        indices = list(range(len(data)))
    else:
        indices = make_split(len(data), config.seed, config.val_fraction, config.test_fraction)[args.split]
    if args.checkpoint:
        predicted = predict_with_checkpoint(args.checkpoint, data, indices)
    else:
        predicted = predict_with_onnx(args.model, data, indices, args.decoder)
    errors = radial_errors_mm(predicted, data.landmarks[indices], data.spacing[indices])
    summary = summarize(errors)
    landmarks = per_landmark(errors, data.landmark_names)

    args.output.mkdir(parents=True, exist_ok=True)
    source = str(args.checkpoint or args.model)
    result = {"source": source, "images": str(images), "split": args.split, "num_images": len(indices),
              "summary": summary, "per_landmark": landmarks}
    (args.output / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(landmarks, ["landmark"] + SUMMARY_COLUMNS)
    (args.output / "per_landmark.md").write_text(table + "\n")
    plot_error_cdf(errors, args.output / "error_cdf.png")
    plot_overlays(data, indices, predicted, args.output / "overlays", args.overlays)
    print(f"{source} on the {args.split} split ({len(indices)} images, {summary['count']} landmarks):")
    print(format_table([{"landmark": "all", **summary}], ["landmark"] + SUMMARY_COLUMNS))
    print(table)
    print(f"results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
