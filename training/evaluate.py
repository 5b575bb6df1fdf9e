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
from algorithm.inference import LandmarkDetector
from algorithm.metadata import DEFAULT_MODEL_DIR, ModelMetadata
from training.data import LandmarkData, load_sources, make_split, prepare_data, source_name
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.metrics import SDR_THRESHOLDS_MM, format_table, per_landmark, radial_errors_mm, summarize
from training.plots import image_label, plot_error_cdf, plot_overlays
from training.validation import predict_with_torch, to_original

SUMMARY_COLUMNS = ["MRE", "SD"] + [f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM]
SPLITS = ("auto", "train", "val", "test", "all")


def predict_with_checkpoint(model: torch.nn.Module, config: TrainConfig, data: LandmarkData,
                            indices: list[int]) -> np.ndarray:
    """(N, K, 2) original-pixel predictions of a torch model, decoded as the container decodes."""
    prepared = prepare_data(data, indices, config.input_height, config.input_width, config.normalization)
    return to_original(prepared, predict_with_torch(model, config.codec(), prepared.inputs, torch.device("cpu"), 4))


def predict_with_onnx(model_dir: Path, data: LandmarkData, indices: list[int], decoder: str | None) -> np.ndarray:
    """(N, K, 2) original-pixel predictions through the container's inference path."""
    detector = LandmarkDetector(model_dir, device="cpu", decoder=decoder)
    return np.stack(list(detector.predict(data.read_images(indices))))


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
    try:
        if args.checkpoint:
            model, config, names, _ = load_checkpoint(args.checkpoint)
        else:
            args.model = args.model or DEFAULT_MODEL_DIR
            metadata = ModelMetadata.load(args.model)
            config, names = TrainConfig.from_dict(metadata.training.get("config", {})), metadata.landmark_names
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {args.checkpoint or args.model}: cannot load the model ({error})", file=sys.stderr)
        return 1
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
        datasets = load_sources(sources, names)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    trained_on = {source_name(Path(images)) for images, _ in config.sources()}
    model_name = str(args.checkpoint or args.model)
    output.mkdir(parents=True, exist_ok=True)
    results, all_errors, per_image = {}, [], []
    for data, (images, ground_truth) in zip(datasets, sources):
        split, indices = split_indices(data, args.split, config, trained_on)
        if args.checkpoint:
            predicted = predict_with_checkpoint(model, config, data, indices)
        else:
            predicted = predict_with_onnx(args.model, data, indices, args.decoder)
        errors = radial_errors_mm(predicted, data.landmarks[indices], data.spacing[indices])
        all_errors.append(errors)
        per_image += [(data.name, image_label(data, i), e) for i, e in zip(indices, errors)]
        results[data.name] = {"images": str(images), "annotations": str(ground_truth), "split": split,
                              "num_images": len(indices), "summary": summarize(errors),
                              "per_landmark": per_landmark(errors, data.landmark_names)}
        plot_overlays(data, indices, predicted, errors, output / "overlays", args.overlays)
        print(f"{data.name}, {split} ({len(indices)} images): MRE {results[data.name]['summary']['MRE']:.3f} mm, "
              f"SDR@2mm {results[data.name]['summary']['SDR@2']:.1f} %", flush=True)

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
