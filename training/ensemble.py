"""Average the second stages of several model folders into one refine.onnx: an ensemble the container runs as one
graph, so its code, its decoding and its parity check do not change.

Second stages trained with the same recipe and split but another seed (`training.train --seed`, which keeps the
first stage's split) err differently; the mean of their crop heatmaps lands closer than either, and where they
disagree the mean map is spread out, so the landmark's `probability` falls. The cost is one more second-stage
pass an image (README, "The shipped model": 0.25 -> 0.31 s an image on 2 CPU cores for two seeds).

    python -m training.ensemble runs/refine-split/model runs/refine-split-s1/model --output runs/refine-split-2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from algorithm.metadata import METADATA_FILE, MODEL_FILE, ModelError, ModelMetadata
from training.export import RELATIVE_TOLERANCE, ExportMismatch, refuse_overwrite


def second_stages(folders: list[Path]) -> list[ModelMetadata]:
    """Each folder's metadata, refused where it has no second stage or where the second stages differ in what they
    see (crops, codec, landmarks) or in the split they held out."""
    members = [ModelMetadata.load(folder) for folder in folders]
    first = members[0]
    for folder, member in zip(folders, members):
        if member.refinement is None:
            raise ModelError(f"{folder / METADATA_FILE}: no second stage to average")
        if not (folder / member.refinement.model_file).is_file():
            raise ModelError(f"{folder / member.refinement.model_file}: not found (the metadata's second stage)")
        differs = [what for what, same in (
            ("crops", member.refinement.crops == first.refinement.crops),
            ("codec", member.refinement.codec == first.refinement.codec),
            ("landmarks", member.landmark_names == first.landmark_names),
            ("split", member.refinement.training.get("split") == first.refinement.training.get("split")))
            if not same]
        if differs:
            raise ModelError(f"{folder}: its second stage differs from {folders[0]}'s in its {', '.join(differs)}; "
                             "average only second stages of one recipe and split")
    return members


def mean_graph(graphs: list[onnx.ModelProto]) -> onnx.ModelProto:
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
    merged = onnx.helper.make_graph(nodes, "second_stage_mean", list(first.input), list(first.output), initializers)
    model = onnx.helper.make_model(merged, opset_imports=graphs[0].opset_import)
    model.ir_version = graphs[0].ir_version
    onnx.checker.check_model(model)
    return model


def compare_with_members(ensemble: Path, members: list[Path], size: int) -> float:
    """The largest difference, as a share of the largest value, between the ensemble's heatmaps and the mean of its
    members' on the same crops (z-scored noise: any input checks that the graph is their mean)."""
    crops = np.random.default_rng(0).standard_normal((4, 1, size, size)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: crops})[0]

    expected = np.mean([run(path) for path in members], axis=0)
    relative = float(np.abs(run(ensemble) - expected).max() / np.abs(expected).max())
    if relative > RELATIVE_TOLERANCE:
        raise ExportMismatch(f"the averaged graph differs from the mean of its members by {100 * relative:.4f} % of "
                             f"the largest value (limit {100 * RELATIVE_TOLERANCE:g} %)")
    return relative


def ensemble(folders: list[Path], output: Path, accuracy: dict | None = None,
             trained_on: str | None = None) -> tuple[Path, float]:
    """Write `output`: the first folder's first stage and metadata, with the mean of every folder's second stage
    (and `accuracy`, the ensemble's held-out figures, and `trained_on`, where given); returns the averaged graph's
    path and how far it differs from its members' mean."""
    members = second_stages(folders)
    graphs = [folder / member.refinement.model_file for folder, member in zip(folders, members)]
    metadata = members[0]
    refinement = metadata.refinement
    with tempfile.TemporaryDirectory() as scratch:
        merged = Path(scratch) / refinement.model_file
        onnx.save(mean_graph([onnx.load(str(path)) for path in graphs]), str(merged))
        relative = compare_with_members(merged, graphs, refinement.crops.size)
        output.mkdir(parents=True, exist_ok=True)
        if (folders[0] / MODEL_FILE).resolve() != (output / MODEL_FILE).resolve():
            shutil.copyfile(folders[0] / MODEL_FILE, output / MODEL_FILE)
        shutil.copyfile(merged, output / refinement.model_file)
    # the split once: `second_stages` checked that every member held out the same one
    refinement.training = {"members": [{key: value for key, value in member.refinement.training.items()
                                        if key != "split"} for member in members],
                           "split": refinement.training.get("split"),
                           "ensemble_check": {"max_relative_difference": relative}}
    metadata.accuracy = accuracy or metadata.accuracy
    metadata.trained_on = trained_on or metadata.trained_on
    metadata.save(output)
    return output / refinement.model_file, relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help="model folders with a second stage of one recipe and split; the first gives the first "
                        "stage and the metadata")
    parser.add_argument("--output", type=Path, required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
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
        graph, relative = ensemble(args.models, args.output, accuracy, args.trained_on)
    except (ModelError, ExportMismatch, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {graph}, the mean of {len(args.models)} second stages ({graph.stat().st_size / 1e6:.1f} MB), and "
          f"metadata.json; it differs from the mean of its members by at most {100 * relative:.4f} % of the "
          "largest value\n"
          f"next: python -m training.evaluate --model {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
