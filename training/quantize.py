"""Quantize an exported model's graphs to 8-bit integers, so that ONNX Runtime runs its convolutions in integer
arithmetic: about 40 % less time for each network on this machine's CPU. The container loads it like any other
model and runs it on the CPU (its metadata says `quantized`).

Weights are quantized per output channel, activations per tensor (uint8) with ranges measured on training images
run through the container's own preprocessing (and, for the second stage, its crops about the first stage's
landmarks). Weights keep 7 bits by default: ONNX Runtime's uint8 x int8 products can saturate on x86 CPUs without
VNNI, and the judges' CPU is unknown; --full-range keeps 8 bits, for CPUs known to have VNNI. Each network's head
convolution and what follows it (the spatial softmax, an ensemble's mean) stay float32: heatmap logits in 256
steps move the peaks by whole pixels. Score the result with training.evaluate.

    python -m training.quantize --model runs/refine-split-2 --output runs/refine-split-2-int8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from algorithm.inference import LandmarkDetector, content_of
from algorithm.metadata import MODEL_FILE, ModelError, ModelMetadata
from training.config import TrainConfig
from training.data import LandmarkData, load_sources
from training.export import refuse_overwrite
from training.split import recorded_split

CALIBRATION_IMAGES = 16  # spread evenly over the data sets' training images
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MaxPool", "Concat", "Relu"]  # never Softmax, Reshape or Mean
NETWORK_OPS = {"Conv", "ConvTranspose"}


def head_convolutions(graph: onnx.GraphProto) -> list[str]:
    """The convolutions after which no other convolution comes on the way to an output: each network's head."""
    producer = {output: node for node in graph.node for output in node.output}
    heads, seen = [], set()
    pending = [output.name for output in graph.output]
    while pending:
        tensor = pending.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in NETWORK_OPS:
            heads.append(node.name)
        else:
            pending.extend(node.input)
    return sorted(heads)


def calibration_images(model: Path, metadata: ModelMetadata, count: int) -> Iterator[np.ndarray]:
    """`count` of the model's training images (its split's training part; every image of a model trained on all),
    spread evenly over its data sets."""
    config = TrainConfig.from_dict(metadata.training.get("config", {}))
    if not config.sources():
        raise ValueError(f"{model}: its metadata names no training data to calibrate on")
    datasets: list[LandmarkData] = load_sources(config.sources(), metadata.landmark_names)
    split = recorded_split(metadata.training.get("split"), datasets, str(model))
    per_set = max(1, count // len(datasets))
    for data in datasets:
        training = split[data.name]["train"]
        chosen = [training[int(i)] for i in np.linspace(0, len(training) - 1, min(per_set, len(training)))]
        yield from data.read_images(sorted(set(chosen)))


class BatchReader(CalibrationDataReader):
    """ONNX Runtime's calibration feed: one input batch at a time."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_graph(source: Path, target: Path, batches: list[np.ndarray], full_range: bool = False) -> list[str]:
    """Write `source` quantized to `target`, its activation ranges measured on `batches` (weights in 7 bits unless
    `full_range`); returns the head convolutions kept in float32."""
    graph = onnx.load(str(source))
    kept = head_convolutions(graph.graph)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / source.name
        quant_pre_process(str(source), str(prepared))  # shapes inferred and the graph folded, as the quantizer wants
        quantize_static(str(prepared), str(target), BatchReader(graph.graph.input[0].name, batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=kept,
                        reduce_range=not full_range)
    return kept


def landmark_shifts(float_model: Path, quantized: Path, images: list[np.ndarray]) -> np.ndarray:
    """(N, K) distances in image pixels between the two models' landmarks, through the container's whole path."""
    before, after = LandmarkDetector(float_model, "cpu"), LandmarkDetector(quantized, "cpu")
    return np.stack([np.linalg.norm(next(before.predict([image])).points - next(after.predict([image])).points,
                                    axis=1) for image in images])


def quantize(model: Path, output: Path, count: int = CALIBRATION_IMAGES, full_range: bool = False,
             accuracy: dict | None = None) -> dict:
    """Write `output`: `model` with every graph quantized, its metadata recording how (in `training.quantization`
    and at the end of `trained_on`) and `accuracy` where given; returns that record."""
    metadata = ModelMetadata.load(model)
    if metadata.quantized:
        raise ModelError(f"{model}: already quantized (its metadata says so); quantize the float32 model it came from")
    first_stage = LandmarkDetector(model, "cpu", refine=False)
    images = list(calibration_images(model, metadata, count))
    inputs = [first_stage.prepare(image) for image in images]
    bits = "8 bits (needs VNNI)" if full_range else "7 bits (reduce_range: no saturation without VNNI)"
    record: dict = {"weights": f"int8 per output channel in {bits}", "activations": "uint8 per tensor",
                    "calibration_images": len(images)}
    output.mkdir(parents=True, exist_ok=True)
    record["float32_kept"] = {MODEL_FILE: quantize_graph(model / MODEL_FILE, output / MODEL_FILE,
                                                         [model_input[None, None] for model_input, _ in inputs],
                                                         full_range)}
    if metadata.refinement is not None:
        spec = metadata.refinement.crops
        crops = []
        for image, (_, geometry) in zip(images, inputs):
            first = next(first_stage.predict([image]))
            crops.append(spec.extract(content_of(image, geometry), first.points, first.frame_height)[0][:, None])
        name = metadata.refinement.model_file
        record["float32_kept"][name] = quantize_graph(model / name, output / name, crops, full_range)
    metadata.training = {**metadata.training, "quantization": record}
    metadata.quantized = True
    metadata.trained_on += (f" Quantized by training.quantize: weights {record['weights']}, activations "
                            f"{record['activations']}, calibrated on {len(images)} training images, each network's "
                            "head convolution in float32.")
    metadata.accuracy = accuracy or metadata.accuracy
    metadata.save(output)
    shifts = landmark_shifts(model, output, images)
    record["calibration_landmark_shift_px"] = {"median": float(np.median(shifts)), "max": float(shifts.max())}
    metadata.save(output)  # the record is the metadata's own dict: it now holds the shifts too
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported model folder (one or two stages)")
    parser.add_argument("--output", type=Path, required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                        help="training images whose activations set the ranges (default: %(default)s)")
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights: for CPUs with VNNI only, as they may saturate on others (default: 7 bits)")
    parser.add_argument("--accuracy", type=Path, help="a metrics JSON from training.evaluate of the quantized model (or "
                        "of its split runs, quantized the same way) to record in the metadata (default: --model's)")
    args = parser.parse_args(argv)
    if args.model.resolve() == args.output.resolve():
        parser.error("--output must be another folder than --model")
    if refuse_overwrite(args.output, args.overwrite):
        return 1
    try:
        accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else None
        record = quantize(args.model, args.output, args.calibration_images, args.full_range, accuracy)
    except (ModelError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shift = record["calibration_landmark_shift_px"]
    kept = ", ".join(name for names in record["float32_kept"].values() for name in names)
    print(f"wrote {args.output}: {', '.join(record['float32_kept'])} quantized (weights {record['weights']}; kept "
          f"in float32: {kept}); on the "
          f"{record['calibration_images']} calibration images the landmarks moved by {shift['median']:.2f} px "
          f"(median), {shift['max']:.2f} px at most\nnext: python -m training.evaluate --model {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
