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
from training.metrics import (SDR_THRESHOLDS_MM, confidence_report, format_table, per_landmark,
                              radial_errors_mm, summarize)
from training.plots import image_label, plot_error_cdf, plot_overlays
from training.stages import first_stage_inputs, predict_refined
from training.validation import ValidationSet, predict_with_torch, to_original

SUMMARY_COLUMNS = ["MRE", "SD"] + [f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM]
SPLITS = ("auto", "train", "val", "test", "all")


def predict_with_checkpoint(model: torch.nn.Module, config: TrainConfig, data: LandmarkData,
                            indices: list[int]) -> np.ndarray:
    """(N, K, 2) original-pixel predictions of a torch model, decoded as the container decodes; a second-stage
    checkpoint refines its exported first stage's landmarks."""
    if config.stage == "refine":
        first = LandmarkDetector(config.first_stage, device="cpu", refine=False)
        val_set = ValidationSet(data, indices, first_stage_inputs(first, data, indices))
        return predict_refined(config, model, val_set, torch.device("cpu"))
    codec = config.codec()
    prepared = prepare_data(data, indices, codec.input_height, codec.input_width, config.normalization)
    return to_original(prepared, predict_with_torch(model, codec, prepared.inputs, torch.device("cpu"), 4))


def predict_with_onnx(model_dir: Path, data: LandmarkData, indices: list[int], decoder: str | None,
                      refine: bool, shape_check: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 2) original-pixel predictions and (N, K) confidences through the container's inference path."""
    detector = LandmarkDetector(model_dir, device="cpu", decoder=decoder, refine=refine, shape_check=shape_check)
    detections = list(detector.predict(data.read_images(indices)))
    return np.stack([d.points for d in detections]), np.stack([d.confidence for d in detections])


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
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="with --model: run its second stage, if it has one (--no-refine: the first stage alone)")
    parser.add_argument("--shape-check", action=argparse.BooleanOptionalAction, default=True,
                        help="with --model: keep the landmarks on a plausible skull with its shape model, if it has one")
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
    two_stages = config.stage == "refine" if args.checkpoint else bool(args.refine and metadata.refinement)
    stages = "first stage and refinement" if two_stages else "first stage"
    model_name = str(args.checkpoint or args.model)
    output.mkdir(parents=True, exist_ok=True)
    results, all_errors, all_confidences, per_image = {}, [], [], []
    for data, (images, ground_truth) in zip(datasets, sources):
        split, indices = split_indices(data, args.split, config, trained_on)
        if args.checkpoint:
            predicted, confidence = predict_with_checkpoint(model, config, data, indices), None
        else:
            predicted, confidence = predict_with_onnx(args.model, data, indices, args.decoder, args.refine,
                                                      args.shape_check)
            all_confidences.append(confidence)
        errors = radial_errors_mm(predicted, data.landmarks[indices], data.spacing[indices])
        all_errors.append(errors)
        per_image += [(data.name, image_label(data, i), e) for i, e in zip(indices, errors)]
        results[data.name] = {"images": str(images), "annotations": str(ground_truth), "split": split,
                              "num_images": len(indices), "summary": summarize(errors),
                              "per_landmark": per_landmark(errors, data.landmark_names)}
        if confidence is not None:
            results[data.name]["confidence"] = confidence_report(confidence, errors)
        plot_overlays(data, indices, predicted, errors, output / "overlays", args.overlays)
        print(f"{data.name}, {split} ({len(indices)} images): MRE {results[data.name]['summary']['MRE']:.3f} mm, "
              f"SDR@2mm {results[data.name]['summary']['SDR@2']:.1f} %", flush=True)

    errors = np.concatenate(all_errors)
    summary, landmarks = summarize(errors), per_landmark(errors, names)
    splits = {r["split"] for r in results.values()}
    result = {"source": model_name, "split": splits.pop() if len(splits) == 1 else "mixed",
              "stages": stages, "num_images": len(errors), "summary": summary, "per_landmark": landmarks,
              "data_sets": results}
    if all_confidences:
        result["confidence"] = confidence_report(np.concatenate(all_confidences), errors)
    (output / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(landmarks, ["landmark"] + SUMMARY_COLUMNS)
    (output / "per_landmark.md").write_text(table + "\n")
    write_per_image(per_image, names, output / "per_image.csv")
    plot_error_cdf({name: e for name, e in zip(results, all_errors)}, output / "error_cdf.png")
    rows = [{"data set": f"{name} ({r['split']}, {r['num_images']} images)", **r["summary"]}
            for name, r in results.items()]
    if len(results) > 1:
        rows.append({"data set": f"pooled ({len(errors)} images)", **summary})
    print(f"{model_name} ({stages}):")
    print(format_table(rows, ["data set"] + SUMMARY_COLUMNS))
    print(f"per landmark (pooled):\n{table}")
    for name, report in [*((n, r["confidence"]) for n, r in results.items() if "confidence" in r),
                         *([("pooled", result["confidence"])] if len(results) > 1 and all_confidences else [])]:
        print(f"confidence, {name}: AUROC {report['AUROC']:.3f} for errors above {report['threshold_mm']:g} mm; "
              f"MRE {report['MRE_least_confident']:.2f} mm for the {100 * report['least_confident_share']:.0f} % "
              f"least confident landmarks, {report['MRE_rest']:.2f} mm for the rest")
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
