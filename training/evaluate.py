"""Score a model on one or more data sets: `python -m training.evaluate --model algorithm/model --data IMAGES GT.json`.

An exported model runs through the container's own `LandmarkDetector`, so the numbers are
the container's. Without --data it scores the model's own training data sets on their test
split; a data set the model never trained on is scored whole (all images). Writes, per data
set and pooled, metrics.json, a per-landmark table, per-image errors, an error CDF plot and
overlays of the worst images to a new folder (never over earlier results unless asked).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from algorithm.codec import DECODERS
from algorithm.inference import DEFAULT_MODEL_DIR, LandmarkDetector
from algorithm.metadata import ModelMetadata
from training.data import LandmarkData, load_sources, make_split, prepare_data, source_name
from training.export import load_checkpoint
from training.metrics import SDR_THRESHOLDS_MM, format_table, per_landmark, radial_errors_mm, summarize
from training.train import TrainConfig, predict_model_space, to_original

SUMMARY_COLUMNS = ["MRE", "SD"] + [f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM]
SPLITS = ("auto", "train", "val", "test", "all")


def predict_with_checkpoint(path: Path, data: LandmarkData, indices: list[int]) -> np.ndarray:
    """(N, K, 2) original-pixel predictions of a torch checkpoint, decoded as the container decodes."""
    model, config, _, _ = load_checkpoint(path)
    prepared = prepare_data(data, indices, config.input_height, config.input_width, config.normalization)
    return to_original(prepared, predict_model_space(model, config.codec(), prepared.inputs, torch.device("cpu"), 4))


def predict_with_onnx(model_dir: Path, data: LandmarkData, indices: list[int], decoder: str | None) -> np.ndarray:
    """(N, K, 2) original-pixel predictions through the container's inference path."""
    detector = LandmarkDetector(model_dir, device="cpu", decoder=decoder)
    return np.stack(list(detector.predict(data.read_images(indices))))


def image_label(data: LandmarkData, index: int) -> str:
    """The image's file name (folder data sets) or its slice number in the stack."""
    return data.images[index].name if isinstance(data.images, list) else f"slice {index + 1}"


def plot_error_cdf(errors_by_set: dict[str, np.ndarray], path: Path) -> None:
    """Share of landmarks within each error, per data set, over the 0-8 mm range that matters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_overlays(data: LandmarkData, indices: list[int], predicted: np.ndarray, errors_mm: np.ndarray,
                  folder: Path, count: int) -> None:
    """The `count` images with the largest MRE: ground truth (green), prediction (red, numbered), error lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    worst = np.argsort(-np.nanmean(errors_mm, axis=1))[:count]
    for position, image in zip(worst, data.read_images([indices[p] for p in worst])):
        truth, guess = data.landmarks[indices[position]], predicted[position]
        label = image_label(data, indices[position])
        figure, axis = plt.subplots(figsize=(6, 7.5))
        axis.imshow(image if image.ndim == 2 else image[..., 0], cmap="gray")
        for (tx, ty), (px, py) in zip(truth, guess):
            axis.plot([tx, px], [ty, py], color="yellow", linewidth=0.8)
        axis.scatter(truth[:, 0], truth[:, 1], s=8, c="lime", label="ground truth")
        axis.scatter(guess[:, 0], guess[:, 1], s=8, c="red", label="prediction")
        for number, (px, py) in enumerate(guess, start=1):
            axis.annotate(str(number), (px, py), xytext=(3, 3), textcoords="offset points", color="red", fontsize=6)
        axis.set_title(f"{data.name} {label}: MRE {np.nanmean(errors_mm[position]):.2f} mm", fontsize=9)
        axis.legend(loc="lower left", fontsize=7), axis.set_axis_off()
        figure.tight_layout()
        figure.savefig(folder / f"{data.name}_{Path(label).stem.replace(' ', '-')}.png", dpi=100)
        plt.close(figure)


def write_per_image(rows: list[tuple[str, str, np.ndarray]], names: list[str], path: Path) -> None:
    """One CSV row per image: data set, image, MRE and each landmark's radial error in mm."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["data_set", "image", "MRE"] + [f"{k + 1} {name}" for k, name in enumerate(names)])
        for data_set, label, errors in rows:
            writer.writerow([data_set, label, f"{np.nanmean(errors):.3f}"] + [f"{e:.3f}" for e in errors])


def new_output_folder(base: Path) -> Path:
    """The first of base/001, base/002, ... that does not exist yet."""
    number = 1
    while (base / f"{number:03d}").exists():
        number += 1
    return base / f"{number:03d}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"an exported model folder (default: {DEFAULT_MODEL_DIR})")
    source.add_argument("--checkpoint", type=Path, help="a torch checkpoint (best.pt / last.pt)")
    parser.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "ANNOTATIONS"),
                        help="a data set to score (repeatable); default: the model's training data sets")
    parser.add_argument("--images", type=Path, help="one data set's image folder or stack (with --annotations)")
    parser.add_argument("--annotations", type=Path, help="its ground-truth JSON")
    parser.add_argument("--split", choices=SPLITS, default="auto",
                        help="which images of each data set: a part of the seeded split, or all; auto: the test "
                        "split of a data set the model trained on, all images of any other")
    parser.add_argument("--output", type=Path,
                        help="results folder (default: a new runs/evaluation/NNN); an existing one needs --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing --output folder")
    parser.add_argument("--decoder", choices=DECODERS, help="with --model: heatmap decoding (default: the metadata's)")
    parser.add_argument("--overlays", type=int, default=6, help="overlays of the worst images, per data set")
    return parser.parse_args(argv)


def split_indices(data: LandmarkData, split: str, config: TrainConfig, trained_on: set[str]) -> tuple[str, list[int]]:
    """The resolved split name and its image indices; `auto` is `test` for a training data set, else `all`."""
    if split == "auto":
        split = "test" if data.name in trained_on else "all"
    if split == "all":
        return split, list(range(len(data)))
    return split, make_split(len(data), config.seed, config.val_fraction, config.test_fraction)[split]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.checkpoint:
        config_values = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["config"]
    else:
        args.model = args.model or DEFAULT_MODEL_DIR
        config_values = ModelMetadata.load(args.model).training.get("config", {})
    config = TrainConfig.from_dict(config_values)
    if bool(args.images) != bool(args.annotations):
        print("error: --images and --annotations go together", file=sys.stderr)
        return 2
    sources = [tuple(pair) for pair in args.data or []] + ([(args.images, args.annotations)] if args.images else [])
    sources = sources or config.sources()
    if not sources:
        print("error: give --data IMAGES ANNOTATIONS (the model records no training data)", file=sys.stderr)
        return 1
    output = args.output or new_output_folder(Path("runs/evaluation"))
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        print(f"error: {output} already holds results; choose another --output or add --overwrite", file=sys.stderr)
        return 1
    try:
        datasets = load_sources(sources)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    trained_on = {source_name(Path(images)) for images, _ in config.sources()}
    model_name = str(args.checkpoint or args.model)
    output.mkdir(parents=True, exist_ok=True)
    results, all_errors, per_image = {}, [], []
    for data, (images, annotations) in zip(datasets, sources):
        split, indices = split_indices(data, args.split, config, trained_on)
        if args.checkpoint:
            predicted = predict_with_checkpoint(args.checkpoint, data, indices)
        else:
            predicted = predict_with_onnx(args.model, data, indices, args.decoder)
        errors = radial_errors_mm(predicted, data.landmarks[indices], data.spacing[indices])
        all_errors.append(errors)
        per_image += [(data.name, image_label(data, i), e) for i, e in zip(indices, errors)]
        results[data.name] = {"images": str(images), "annotations": str(annotations), "split": split,
                              "num_images": len(indices), "summary": summarize(errors),
                              "per_landmark": per_landmark(errors, data.landmark_names)}
        plot_overlays(data, indices, predicted, errors, output / "overlays", args.overlays)
        print(f"{data.name}, {split} ({len(indices)} images): MRE {results[data.name]['summary']['MRE']:.3f} mm, "
              f"SDR@2mm {results[data.name]['summary']['SDR@2']:.1f} %", flush=True)

    names = datasets[0].landmark_names
    errors = np.concatenate(all_errors)
    summary, landmarks = summarize(errors), per_landmark(errors, names)
    splits = {r["split"] for r in results.values()}
    result = {"source": model_name, "split": splits.pop() if len(splits) == 1 else "mixed",
              "num_images": len(errors), "summary": summary, "per_landmark": landmarks, "data_sets": results}
    (output / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(landmarks, ["landmark"] + SUMMARY_COLUMNS)
    (output / "per_landmark.md").write_text(table + "\n")
    write_per_image(per_image, names, output / "per_image.csv")
    plot_error_cdf({name: e for name, e in zip(results, all_errors)}, output / "error_cdf.png")
    rows = [{"data set": f"{name} ({r['split']}, {r['num_images']} images)", **r["summary"]}
            for name, r in results.items()]
    if len(results) > 1:
        rows.append({"data set": f"pooled ({len(errors)} images)", **summary})
    print(f"{model_name}:")
    print(format_table(rows, ["data set"] + SUMMARY_COLUMNS))
    print(f"per landmark (pooled):\n{table}")
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
