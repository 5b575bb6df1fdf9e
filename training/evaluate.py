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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from algorithm.codec import DECODERS
from algorithm.inference import LandmarkDetector
from algorithm.metadata import DEFAULT_MODEL_DIR, ModelMetadata
from training.data import LandmarkData, load_sources
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.metrics import (GROSS_COUNT, SDR_THRESHOLDS_MM, confidence_report, format_table, landmark_label,
                              per_landmark, radial_errors_mm, summarize)
from training.pictures import PICTURE_HEIGHT, PNG_COMPRESSION, Marks, display_gray, render
from training.plots import plot_error_cdf
from training.split import SPLIT_FILE, Split, part_or_all, read_split
from training.stages import STAGES, Predictions

SUMMARY_COLUMNS = ["MRE", "SD"] + [f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM] + [GROSS_COUNT]
SPLITS = ("auto", "train", "val", "test", "all")


def predict_with_onnx(model_dir: Path, data: LandmarkData, indices: list[int], decoder: str | None,
                      refine: bool, shape_check: bool) -> Predictions:
    """The container's inference path (`LandmarkDetector.predict`); for two stages, also the first stage alone
    (what --no-refine writes), to draw beside the refined landmarks."""
    options = dict(device="cpu", decoder=decoder, shape_check=shape_check)
    detector = LandmarkDetector(model_dir, refine=refine, **options)
    first_stage = LandmarkDetector(model_dir, refine=False, **options) if detector.refinement else None
    final, first = [], []
    for image in tqdm(data.read_images(indices), total=len(indices), desc=f"{data.name}: inference", leave=False):
        final.append(next(detector.predict([image])))
        if first_stage is not None:
            first.append(next(first_stage.predict([image])).points)
    return Predictions(np.stack([d.points for d in final]), np.stack([d.confidence for d in final]),
                       np.stack(first) if first else None, [d.notes for d in final])


def draw_overlays(data: LandmarkData, indices: list[int], predictions: Predictions, errors_mm: np.ndarray,
                  folder: Path, count: int) -> None:
    """The `count` images with the largest MRE, drawn whole with a zoomed tile per landmark."""
    folder.mkdir(parents=True, exist_ok=True)
    worst = np.argsort(-np.nanmean(errors_mm, axis=1))[:count]
    for position, image in zip(worst, data.read_images([indices[p] for p in worst])):
        index = indices[position]
        marks = Marks(data.landmark_names, predictions.points[position], predictions.confidence[position],
                      data.landmarks[index], None if predictions.first_stage is None else
                      predictions.first_stage[position], float(data.spacing[index]))
        label = data.image_name(index)
        title = f"{data.name} {label}: MRE {np.nanmean(errors_mm[position]):.2f} mm"
        render(display_gray(image, marks), marks, title, PICTURE_HEIGHT).save(
            folder / f"{data.name}_{Path(label).stem.replace(' ', '-')}.png", compress_level=PNG_COMPRESSION)


def set_result(images: Path | str, annotations: Path | str, split: str, errors: np.ndarray, names: list[str],
               confidence: np.ndarray | None) -> dict:
    """One data set's entry of metrics.json: where it came from, its summary, per landmark and confidence."""
    result = {"images": str(images), "annotations": str(annotations), "split": split, "num_images": len(errors),
              "summary": summarize(errors), "per_landmark": per_landmark(errors, names)}
    if confidence is not None:
        result["confidence"] = confidence_report(confidence, errors)
    return result


def pooled_result(source: str, stages: str, results: dict, errors: list[np.ndarray],
                  confidences: list[np.ndarray | None], names: list[str]) -> dict:
    """metrics.json: every data set's entry and the figures pooled over all of them."""
    pooled = np.concatenate(errors)
    splits = {r["split"] for r in results.values()}
    result = {"source": source, "split": splits.pop() if len(splits) == 1 else "mixed", "stages": stages,
              "num_images": len(pooled), "summary": summarize(pooled), "per_landmark": per_landmark(pooled, names),
              "data_sets": results}
    if all(c is not None for c in confidences):
        result["confidence"] = confidence_report(np.concatenate(confidences), pooled)
    return result


def write_results(output: Path, result: dict, errors: dict[str, np.ndarray], per_image: list, names: list[str]) -> None:
    """metrics.json, per_landmark.md, per_image.csv and error_cdf.png."""
    (output / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / "per_landmark.md").write_text(format_table(result["per_landmark"], ["landmark"] + SUMMARY_COLUMNS) + "\n")
    write_per_image(per_image, names, output / "per_image.csv")
    plot_error_cdf(errors, output / "error_cdf.png")


def print_report(result: dict) -> None:
    """The metrics table per data set (and pooled), per landmark, and how well the confidences rank errors."""
    results = result["data_sets"]
    rows = [{"data set": f"{name} ({r['split']}, {r['num_images']} images)", **r["summary"]}
            for name, r in results.items()]
    if len(results) > 1:
        rows.append({"data set": f"pooled ({result['num_images']} images)", **result["summary"]})
    print(f"{result['source']} ({result['stages']}):")
    print(format_table(rows, ["data set"] + SUMMARY_COLUMNS))
    print(f"per landmark (pooled):\n{format_table(result['per_landmark'], ['landmark'] + SUMMARY_COLUMNS)}")
    for name, report in [*((n, r["confidence"]) for n, r in results.items() if "confidence" in r),
                         *([("pooled", result["confidence"])] if len(results) > 1 and "confidence" in result else [])]:
        gross, beyond = report["gross_among_least_confident"], f"beyond {report['gross_mm']:g} mm"
        found = (f"{100 * gross:.0f} % of the errors {beyond} are among them" if np.isfinite(gross)
                 else f"no error {beyond}")
        print(f"confidence, {name}: AUROC {report['AUROC']:.3f} for errors above {report['threshold_mm']:g} mm; "
              f"MRE {report['MRE_least_confident']:.2f} mm for the {100 * report['least_confident_share']:.0f} % "
              f"least confident landmarks, {report['MRE_rest']:.2f} mm for the rest; {found}")


def write_per_image(rows: list[tuple[str, str, np.ndarray, tuple[str, ...]]], names: list[str], path: Path) -> None:
    """One CSV row per image: data set, image, MRE, each landmark's radial error in mm, and the container's
    warnings about the image (re-estimated landmarks, a second look not kept...), joined by " | "."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["data_set", "image", "MRE"] + [landmark_label(k, name) for k, name in enumerate(names)]
                        + ["notes"])
        for data_set, label, errors, notes in rows:
            writer.writerow([data_set, label, f"{np.nanmean(errors):.3f}"] + [f"{e:.3f}" for e in errors]
                            + [" | ".join(notes)])


def new_output_folder(base: Path) -> Path:
    """The first of base/001, base/002, ... that does not exist yet."""
    number = 1
    while (base / f"{number:03d}").exists():
        number += 1
    return base / f"{number:03d}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help="an exported model folder (default: %(default)s)")
    source.add_argument("--checkpoint", type=Path, help="a torch checkpoint (best.pt / last.pt)")
    parser.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "ANNOTATIONS"),
                        help="a data set to score (repeatable); default: the model's training data sets")
    parser.add_argument("--images", type=Path, help="one data set's image folder or stack (with --annotations)")
    parser.add_argument("--annotations", type=Path, help="its ground-truth JSON")
    parser.add_argument("--split", choices=SPLITS, default="auto",
                        help="which images of each data set: a part of the seeded split, or all; auto: the test "
                        "split of a data set the model trained on, all images of any other (default: auto)")
    parser.add_argument("--output", type=Path,
                        help="results folder (default: a new runs/evaluation/NNN); an existing one needs --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing --output folder")
    parser.add_argument("--decoder", choices=DECODERS, help="with --model: heatmap decoding (default: the metadata's)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="with --model: run its second stage, if it has one (--no-refine: the first stage alone; "
                        "default: --refine)")
    parser.add_argument("--shape-check", action=argparse.BooleanOptionalAction, default=True,
                        help="with --model: keep the landmarks on a plausible skull with its shape model, if it has "
                        "one (default: --shape-check)")
    parser.add_argument("--overlays", type=int, default=6,
                        help="pictures of the worst images per data set, each landmark zoomed, the first stage's "
                        "point beside the refined one for two stages (default: %(default)s)")
    return parser.parse_args(argv)


@dataclass
class Evaluated:
    """The model to score: a torch checkpoint's network (None for an exported model folder), its configuration,
    landmark names and split, whether both stages run, and where it came from."""

    model: torch.nn.Module | None
    config: TrainConfig
    names: list[str]
    split: Split | None
    two_stages: bool
    source: Path


def load_model(args: argparse.Namespace) -> Evaluated:
    """The checkpoint (its split is its run folder's split.json) or the exported model (its metadata's split)."""
    if args.checkpoint:
        model, config, names, _ = load_checkpoint(args.checkpoint)
        split = read_split(args.checkpoint.parent / SPLIT_FILE)
        return Evaluated(model, config, names, split, STAGES[config.stage].refines, args.checkpoint)
    metadata = ModelMetadata.load(args.model)
    config = TrainConfig.from_dict(metadata.training.get("config", {}))
    return Evaluated(None, config, metadata.landmark_names, metadata.training.get("split"),
                     bool(args.refine and metadata.refinement), args.model)


def evaluation_sources(args: argparse.Namespace, config: TrainConfig) -> list[tuple[str, str]]:
    """The data sets to score: --data and --images/--annotations, else the model's own training data sets."""
    if bool(args.images) != bool(args.annotations):
        raise ValueError("--images and --annotations go together")
    sources = [tuple(pair) for pair in args.data or []] + ([(args.images, args.annotations)] if args.images else [])
    if not (sources or config.sources()):
        raise ValueError("give --data IMAGES ANNOTATIONS (the model records no training data)")
    return sources or config.sources()


def results_folder(args: argparse.Namespace) -> Path:
    """--output (refused when it holds results, unless --overwrite), else a new runs/evaluation/NNN."""
    output = args.output or new_output_folder(Path("runs/evaluation"))
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise ValueError(f"{output} already holds results; choose another --output or add --overwrite")
    return output


def split_indices(data: LandmarkData, part: str, evaluated: Evaluated, trained_on: set[str]) -> tuple[str, list[int]]:
    """The resolved part and its image indices; `auto` is `test` for a data set the model trained on, else `all`.
    A part of the split is read from the model's recorded split, refused when it was made for other images."""
    if part == "auto":
        part = "test" if data.name in trained_on else "all"
    return part, part_or_all(data, part, evaluated.split, str(evaluated.source), evaluated.config.split_run)


def predict(args: argparse.Namespace, evaluated: Evaluated, data: LandmarkData, indices: list[int]) -> Predictions:
    """The landmarks as the checkpoint's stage validates (torch) or as the container finds them (ONNX)."""
    if evaluated.model is None:
        return predict_with_onnx(args.model, data, indices, args.decoder, args.refine, args.shape_check)
    stage, config = STAGES[evaluated.config.stage], evaluated.config
    return stage.predict(config, evaluated.model, stage.validation_set(config, data, indices), torch.device("cpu"))


def score_data_set(args: argparse.Namespace, evaluated: Evaluated, data: LandmarkData, source: tuple[str, str],
                   trained_on: set[str], output: Path) -> tuple[dict, np.ndarray, np.ndarray, list]:
    """One data set scored: its metrics.json entry, errors, confidences and per-image rows; its overlays drawn."""
    part, indices = split_indices(data, args.split, evaluated, trained_on)
    predictions = predict(args, evaluated, data, indices)
    errors = radial_errors_mm(predictions.points, data.landmarks[indices], data.spacing[indices])
    result = set_result(*source, part, errors, evaluated.names, predictions.confidence)
    draw_overlays(data, indices, predictions, errors, output / "overlays", args.overlays)
    notes = predictions.notes or [()] * len(indices)
    warned = f", the container warned about {sum(map(bool, notes))} (per_image.csv)" if predictions.notes else ""
    print(f"{data.name}, {part} ({len(indices)} images{warned}): MRE {result['summary']['MRE']:.3f} mm, "
          f"SDR@2mm {result['summary']['SDR@2']:.1f} %", flush=True)
    rows = [(data.name, data.image_name(i), e, n) for i, e, n in zip(indices, errors, notes)]
    return result, errors, predictions.confidence, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluated = load_model(args)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {args.checkpoint or args.model}: cannot load the model ({error})", file=sys.stderr)
        return 1
    try:
        sources = evaluation_sources(args, evaluated.config)
        output = results_folder(args)
        datasets = load_sources(sources, evaluated.names)
        trained_on = evaluated.config.data_set_names()
        output.mkdir(parents=True, exist_ok=True)
        scored = [score_data_set(args, evaluated, d, s, trained_on, output) for d, s in zip(datasets, sources)]
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results = {data.name: entry for data, (entry, *_) in zip(datasets, scored)}
    errors = [item[1] for item in scored]
    stages = "first stage and refinement" if evaluated.two_stages else "first stage"
    result = pooled_result(str(evaluated.source), stages, results, errors, [item[2] for item in scored],
                           evaluated.names)
    write_results(output, result, dict(zip(results, errors)), [row for item in scored for row in item[3]],
                  evaluated.names)
    print_report(result)
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
