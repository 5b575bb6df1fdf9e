"""Average the first or the second stages of several model folders into one graph: an ensemble the container runs
as one graph, so its code, its decoding and its parity check do not change.

Networks trained with the same recipe and split but another seed (`training.train --seed`; a second stage keeps its
first stage's split, a first stage keeps it with `--split-seed`) err differently; the mean of their heatmaps lands
closer than either, and where they disagree the mean map is spread out, so the landmark's `probability` falls. The
cost is one more pass of that stage an image (README, "The shipped model": 0.25 -> 0.31 s an image on 2 CPU cores
for two second stages).

    python -m training.ensemble runs/refine-split/model runs/refine-split-s1/model --output runs/refine-split-2
    python -m training.ensemble --stage detect runs/refine-split-2 runs/clinic-tone-s1/model --output runs/both-2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from algorithm.metadata import METADATA_FILE, MODEL_FILE, ModelError, ModelMetadata
from training.export import RELATIVE_TOLERANCE, ExportMismatch, refuse_overwrite


# Weights rounded to half precision move the heatmaps by about 0.1 % of their largest value (the shipped first stage
# on noise); the ensemble's check allows this much, and training.evaluate judges what it does to the landmarks.
HALF_RELATIVE_TOLERANCE = 1e-2
HALF_MAX = float(np.finfo(np.float16).max)
HALF_MIN_SIZE = 1024  # smaller tensors (biases, constants) stay float32: they weigh nothing


@dataclass(frozen=True)
class AveragedStage:
    """Where a model folder keeps one stage: its graph, its input size, the record of its training and the settings
    that every member must share (what it sees and what its heatmaps mean)."""

    ordinal: str  # "first" or "second", for messages and the graph's name
    present: Callable[[ModelMetadata], bool]
    graph_file: Callable[[ModelMetadata], str]
    input_size: Callable[[ModelMetadata], tuple[int, int]]
    record: Callable[[ModelMetadata], Any]  # the object whose `training` describes the stage's run
    settings: Callable[[ModelMetadata], dict[str, Any]]


AVERAGED_STAGES = {
    "detect": AveragedStage(
        "first", lambda meta: True, lambda meta: MODEL_FILE,
        lambda meta: (meta.codec.input_height, meta.codec.input_width), lambda meta: meta,
        lambda meta: {"codec": meta.codec, "resize": meta.resize, "normalization": meta.normalization,
                      "landmarks": meta.landmark_names}),
    "refine": AveragedStage(
        "second", lambda meta: meta.refinement is not None, lambda meta: meta.refinement.model_file,
        lambda meta: (meta.refinement.crops.size,) * 2, lambda meta: meta.refinement,
        lambda meta: {"crops": meta.refinement.crops, "codec": meta.refinement.codec,
                      "landmarks": meta.landmark_names}),
}


def stage_members(folders: list[Path], stage: AveragedStage) -> list[ModelMetadata]:
    """Each folder's metadata, refused where it lacks the stage or where its stage differs from the first folder's in
    what it sees (input, codec, landmarks) or in the split it held out."""
    members = [ModelMetadata.load(folder) for folder in folders]
    first = members[0]
    for folder, member in zip(folders, members):
        if not stage.present(member):
            raise ModelError(f"{folder / METADATA_FILE}: no {stage.ordinal} stage to average")
        if member.quantized:
            raise ModelError(f"{folder}: quantized to integers (training.quantize); average the float32 models, "
                             "then quantize the average")
        if not (folder / stage.graph_file(member)).is_file():
            raise ModelError(f"{folder / stage.graph_file(member)}: not found (the metadata's {stage.ordinal} stage)")
        settings, first_settings = stage.settings(member), stage.settings(first)
        differs = [what for what in settings if settings[what] != first_settings[what]]
        if stage.record(member).training.get("split") != stage.record(first).training.get("split"):
            differs.append("split")
        if differs:
            raise ModelError(f"{folder}: its {stage.ordinal} stage differs from {folders[0]}'s in its "
                             f"{', '.join(differs)}; average only {stage.ordinal} stages of one recipe and split")
    return members


def mean_graph(graphs: list[onnx.ModelProto], name: str) -> onnx.ModelProto:
    """One graph that feeds its input to every member and outputs the mean of their heatmaps."""
    first = graphs[0].graph
    image, heatmaps = first.input[0].name, first.output[0].name
    nodes, initializers, outputs = [], [], []
    for index, graph in enumerate(graphs):
        prefix = f"member{index}/"
        prefixed = onnx.compose.add_prefix(graph, prefix)
        own_input = prefix + graph.graph.input[0].name
        for node in prefixed.graph.node:
            node.input[:] = [image if name == own_input else name for name in node.input]
        nodes += prefixed.graph.node
        initializers += prefixed.graph.initializer
        outputs.append(prefix + graph.graph.output[0].name)
    nodes.append(onnx.helper.make_node("Mean", outputs, [heatmaps]))
    merged = onnx.helper.make_graph(nodes, name, list(first.input), list(first.output), initializers)
    model = onnx.helper.make_model(merged, opset_imports=graphs[0].opset_import)
    model.ir_version = graphs[0].ir_version
    onnx.checker.check_model(model)
    return model


def weights_at_half_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its float weights stored at half precision and cast back to float32 as it loads (ONNX
    Runtime folds the casts once, so it computes in float32 as before): a file half the size."""
    graph = model.graph
    weights, casts = [], []
    for weight in graph.initializer:
        if weight.data_type != TensorProto.FLOAT or np.prod(weight.dims) < HALF_MIN_SIZE:  # biases, constants
            weights.append(weight)
            continue
        values = numpy_helper.to_array(weight)
        if np.abs(values).max(initial=0) > HALF_MAX:
            raise ValueError(f"weight {weight.name!r} exceeds half precision's range ({HALF_MAX:g}); keep float32")
        half = numpy_helper.from_array(values.astype(np.float16), weight.name + "/half")
        weights.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [weight.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.initializer[:], graph.node[:]
    graph.initializer.extend(weights)
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def compare_with_members(ensemble: Path, members: list[Path], size: tuple[int, int],
                         tolerance: float = RELATIVE_TOLERANCE) -> float:
    """The largest difference, as a share of the largest value, between the ensemble's heatmaps and the mean of its
    members' on the same inputs (z-scored noise: any input checks that the graph is their mean)."""
    inputs = np.random.default_rng(0).standard_normal((2, 1, *size)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]

    expected = np.mean([run(path) for path in members], axis=0)
    relative = float(np.abs(run(ensemble) - expected).max() / np.abs(expected).max())
    if relative > tolerance:
        raise ExportMismatch(f"the averaged graph differs from the mean of its members by {100 * relative:.4f} % of "
                             f"the largest value (limit {100 * tolerance:g} %)")
    return relative


def ensemble(folders: list[Path], output: Path, stage_name: str = "refine", accuracy: dict | None = None,
             trained_on: str | None = None, half_weights: bool = False) -> tuple[Path, float]:
    """Write `output`: the first folder's model and metadata with `stage_name`'s graph the mean of every folder's
    (its weights stored at half precision with `half_weights`; and `accuracy`, the ensemble's held-out figures, and
    `trained_on`, where given); returns the averaged graph's path and how far it differs from its members' mean."""
    stage = AVERAGED_STAGES[stage_name]
    members = stage_members(folders, stage)
    metadata = members[0]
    averaged = stage.graph_file(metadata)
    kept = [MODEL_FILE] + ([metadata.refinement.model_file] if metadata.refinement else [])
    with tempfile.TemporaryDirectory() as scratch:
        merged = Path(scratch) / averaged
        graphs = [folder / stage.graph_file(member) for folder, member in zip(folders, members)]
        averaged_graph = mean_graph([onnx.load(str(path)) for path in graphs], f"{stage.ordinal}_stage_mean")
        onnx.save(weights_at_half_precision(averaged_graph) if half_weights else averaged_graph, str(merged))
        relative = compare_with_members(merged, graphs, stage.input_size(metadata),
                                        HALF_RELATIVE_TOLERANCE if half_weights else RELATIVE_TOLERANCE)
        output.mkdir(parents=True, exist_ok=True)
        for name in kept:
            if name != averaged and (folders[0] / name).resolve() != (output / name).resolve():
                shutil.copyfile(folders[0] / name, output / name)
        shutil.copyfile(merged, output / averaged)
    # the split once (`stage_members` checked that every member held out the same one), and the first member's
    # configuration, which names the data sets that training.evaluate and training.clinic_exports score on
    record = stage.record(metadata)
    record.training = {"config": record.training.get("config", {}),
                       "members": [{key: value for key, value in stage.record(member).training.items()
                                    if key != "split"} for member in members],
                       "split": record.training.get("split"),
                       "ensemble_check": {"max_relative_difference": relative, "half_precision_weights": half_weights}}
    metadata.accuracy = accuracy or metadata.accuracy
    metadata.trained_on = trained_on or metadata.trained_on
    metadata.save(output)
    return output / averaged, relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help="model folders whose --stage is of one recipe and split; the first gives the other "
                        "stage and the metadata")
    parser.add_argument("--stage", choices=tuple(AVERAGED_STAGES), default="refine",
                        help="the stage to average: refine, the second stage (refine.onnx), or detect, the first "
                        "(model.onnx) (default: refine)")
    parser.add_argument("--output", type=Path, required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--half-weights", action="store_true",
                        help="store the averaged graph's weights at half precision (computed in float32 as before): "
                        "half the file, heatmaps within about 0.1 %% of their largest value; score it again")
    parser.add_argument("--accuracy", type=Path, help="a metrics JSON from training.evaluate of this ensemble (or of "
                        "its split runs' ensemble) to record in the metadata (default: the first folder's)")
    parser.add_argument("--trained-on", help="description of the training data for the metadata (default: the first "
                        "folder's)")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("give at least two model folders to average")
    if refuse_overwrite(args.output, args.overwrite):
        return 1
    try:
        accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else None
        graph, relative = ensemble(args.models, args.output, args.stage, accuracy, args.trained_on,
                                   args.half_weights)
    except (ModelError, ExportMismatch, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    ordinal = AVERAGED_STAGES[args.stage].ordinal
    print(f"wrote {graph}, the mean of {len(args.models)} {ordinal} stages ({graph.stat().st_size / 1e6:.1f} MB), and "
          f"metadata.json; it differs from the mean of its members by at most {100 * relative:.4f} % of the "
          "largest value\n"
          f"next: python -m training.evaluate --model {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
