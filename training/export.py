"""Export a checkpoint to `algorithm/model/` (model.onnx + metadata.json) for the container.

A second-stage (refine) checkpoint becomes refine.onnx beside its first stage, whose metadata
gains a `refinement` section; exporting a first stage into a folder removes a stale refine.onnx.

The ONNX graph ends in a spatial softmax, so the container decodes probabilities. The
export is checked with onnx.checker and compared with torch on real, preprocessed
images; a model whose outputs differ beyond the tolerance is not written.

    python -m training.export --checkpoint runs/hamedan-unet/best.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from itertools import islice
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from algorithm.codec import HeatmapCodec
from algorithm.metadata import DEFAULT_MODEL_DIR, METADATA_FILE, MODEL_FILE, ModelMetadata
from algorithm.preprocessing import CHALLENGE_LANDMARKS
from algorithm.reader import ImageStack, InputError, looks_like_image
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.model import SpatialSoftmax
from training.shape_model import shape_model_of
from training.split import SPLIT_FILE, read_split
from training.stages import STAGES, DetectStage, RefineStage

# ONNX Runtime must agree with torch to this fraction of the largest probability,
# and the decoded landmarks to this many model-input pixels.
RELATIVE_TOLERANCE = 1e-3
LANDMARK_TOLERANCE_PX = 0.05
SMOKE_INPUT = Path(__file__).resolve().parent.parent / "test" / "input" / "images" / "lateral-dental-x-rays"


class ExportMismatch(RuntimeError):
    """ONNX Runtime and torch disagree on the exported model."""


def comparison_images(path: Path, count: int = 2) -> list[np.ndarray]:
    """Up to `count` images from a stack file or a folder of images, to compare torch and ONNX Runtime on."""
    files = sorted(p for p in path.iterdir() if p.is_file() and looks_like_image(p)) if path.is_dir() else [path]
    images = list(islice((image for file in files for image in ImageStack(file)), count))
    if not images:
        raise ValueError(f"no image to compare with in {path}")
    return images


def compare_with_torch(model: torch.nn.Module, onnx_path: Path, inputs: np.ndarray, codec: HeatmapCodec) -> dict:
    """Largest differences between torch and ONNX Runtime on `inputs`; raises ExportMismatch past the tolerance."""
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)[:, None]).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: inputs[:, None]})[0]
    relative = float(np.abs(actual - expected).max() / np.abs(expected).max())
    shift = float(np.linalg.norm(codec.decode(actual)[0] - codec.decode(expected)[0], axis=-1).max())
    report = {"max_relative_difference": relative, "max_landmark_shift_px": shift}
    if relative > RELATIVE_TOLERANCE or shift > LANDMARK_TOLERANCE_PX:
        raise ExportMismatch(f"ONNX Runtime differs from torch beyond tolerance: {describe_check(report)}")
    return report


def describe_check(report: dict) -> str:
    """The comparison of ONNX Runtime with torch against its limits, as a sentence."""
    return (f"the heatmaps differ by at most {100 * report['max_relative_difference']:.4f} % of the largest value "
            f"(limit {100 * RELATIVE_TOLERANCE:g} %) and the landmarks by at most "
            f"{report['max_landmark_shift_px']:.4f} model pixels (limit {LANDMARK_TOLERANCE_PX:g})")


def refuse_overwrite(output: Path, overwrite: bool) -> bool:
    """Say so and return True where `output` already holds a model that --overwrite does not allow replacing."""
    if (output / MODEL_FILE).exists() and not overwrite:
        print(f"error: {output} already holds a model; add --overwrite to replace it, or choose another --output",
              file=sys.stderr)
        return True
    return False


def next_steps(stage: DetectStage | RefineStage, output: Path) -> str:
    """What to run after an export: score it, the stage's own next step, refresh the smoke test."""
    steps = [f"python -m training.evaluate --model {output}          # score it through the container's code"]
    steps += stage.next_steps(output)
    if output.resolve() == DEFAULT_MODEL_DIR.resolve():
        steps.append("python -m training.make_smoke_test --keep-stack   # the container's expected output")
    else:
        steps.append(f"python -m algorithm.process --model {output} --input DIR --output landmarks.json")
    return "next: " + "\n      ".join(steps)


def export(model: torch.nn.Module, config: TrainConfig, names: list[str], output_dir: Path,
           compare_input: Path, trained_on: str, accuracy: dict, training: dict) -> dict:
    """Write the stage's graph and metadata.json to `output_dir`, only if the export checks pass; a second stage
    goes beside a copy of its first stage (model.onnx) unless `output_dir` is the first stage's folder."""
    stage = STAGES[config.stage]
    wrapped = SpatialSoftmax(model).eval()
    codec = config.codec()
    dummy = torch.zeros(1, 1, codec.input_height, codec.input_width)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / stage.graph_file
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        torch.onnx.export(wrapped, (dummy,), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["heatmaps"],
                          dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}})
        onnx.checker.check_model(str(onnx_path))
        inputs = stage.comparison_inputs(config, comparison_images(compare_input))
        report = compare_with_torch(wrapped, onnx_path, inputs, codec)
        metadata = stage.metadata(config, names, trained_on, accuracy, {**training, "export_check": report})
        output_dir.mkdir(parents=True, exist_ok=True)
        stage.install(config, onnx_path, output_dir)
        metadata.save(output_dir)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a training checkpoint (best.pt, or last.pt of a run "
                        "without validation images)")
    source.add_argument("--untrained", type=Path, metavar="CONFIG",
                        help="export a randomly initialised model of this JSON configuration (placeholders, tests)")
    parser.add_argument("--num-landmarks", type=int, default=CHALLENGE_LANDMARKS,
                        help="with --untrained (default: the challenge's %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR,
                        help="model folder (default: the container's, %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--compare-input", type=Path,
                        help="stack or folder of images to compare torch and ONNX Runtime on (default: the "
                        "checkpoint's first training data set where it is found, else the synthetic smoke stack "
                        f"in {SMOKE_INPUT.relative_to(SMOKE_INPUT.parents[3])})")
    parser.add_argument("--trained-on", default=None, help="description of the training data for the metadata")
    parser.add_argument("--accuracy", type=Path, help="a metrics JSON from training.evaluate to record in the metadata")
    parser.add_argument("--shape-model", action=argparse.BooleanOptionalAction, default=True,
                        help="with a first stage: also build the shape model that keeps landmarks on a plausible "
                        "skull, from the checkpoint's training split (default: --shape-model)")
    return parser.parse_args(argv)


def load_source(args: argparse.Namespace) -> tuple[torch.nn.Module, TrainConfig, list[str], dict, str]:
    """The model to export, its configuration, landmark names, what its metadata records of training (the
    configuration, the epoch and the split of its run folder) and its description."""
    if args.untrained:
        settings = json.loads(args.untrained.read_text())
        config = TrainConfig.from_dict(settings)
        torch.manual_seed(config.seed)
        names = [str(k + 1) for k in range(args.num_landmarks)]
        trained_on = args.trained_on or "untrained: random weights, a placeholder that finds no landmark"
        return config.build_model(len(names)).eval(), config, names, {"config": settings}, trained_on
    model, config, names, checkpoint = load_checkpoint(args.checkpoint)
    epoch = checkpoint["epoch"] if "epoch" in checkpoint else checkpoint["state"]["epoch"]  # best.pt or last.pt
    training = {"config": checkpoint["config"], "epoch": epoch,
                "split": read_split(args.checkpoint.parent / SPLIT_FILE)}
    return model, config, names, training, args.trained_on or STAGES[config.stage].trained_on(config)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, config, names, training, trained_on = load_source(args)
    except (OSError, KeyError, ValueError) as error:
        print(f"error: {args.checkpoint or args.untrained}: cannot load the model ({error})", file=sys.stderr)
        return 1
    stage = STAGES[config.stage]
    found = [Path(images) for images, _ in config.sources() if Path(images).exists()]
    compare_input = args.compare_input or (found[0] if found else SMOKE_INPUT)
    if refuse_overwrite(args.output, args.overwrite):
        return 1
    print(f"comparing torch and ONNX Runtime on images of {compare_input}")
    accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else {}
    try:
        report = export(model, config, names, args.output, compare_input, trained_on, accuracy, training)
    except (ExportMismatch, InputError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    graph = args.output / stage.graph_file
    print(f"wrote {graph} ({graph.stat().st_size / 1e6:.1f} MB) and metadata.json\n"
          f"check passed: against torch, {describe_check(report)}")
    if stage.builds_shape_model and args.shape_model and args.checkpoint:
        add_shape_model(args.output)
    print(next_steps(stage, args.output))
    return 0


def add_shape_model(model_dir: Path) -> None:
    """Store the shape model of the training data with a first stage, or say how to add it later."""
    metadata = ModelMetadata.load(model_dir)
    try:
        metadata.shape = shape_model_of(model_dir, metadata)
    except (ValueError, FileNotFoundError) as error:
        print(f"no shape model ({error}); add one later with python -m training.shape_model --model {model_dir}")
        return
    metadata.save(model_dir)
    print(f"added a shape model of {metadata.shape.num_shapes} training shapes to {model_dir / METADATA_FILE}")


if __name__ == "__main__":
    sys.exit(main())
