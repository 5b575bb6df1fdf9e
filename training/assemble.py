"""Put a trained second stage beside another first stage: one model folder with the first stage (graph, metadata,
shape model) of one folder and the second stage (refine.onnx and its record) of another.

A second stage learns from crops jittered about the doctors' points, not about its first stage's landmarks, so it
serves any first stage that held out the same images: a first stage trained again on every image with a new recipe
can ship with the second stage already trained on every image, without training that again. Stages that held out
different images are refused, since one stage's test images would be the other's training images.

    python -m training.assemble --first-stage runs/new-first2 --second-stage runs/refine-all/model --output runs/ship
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from algorithm.metadata import METADATA_FILE, MODEL_FILE, ModelError, ModelMetadata
from training.export import refuse_overwrite


def assemble(first_stage: Path, second_stage: Path, output: Path, accuracy: dict | None = None,
             trained_on: str | None = None) -> ModelMetadata:
    """Write `output`: `first_stage`'s model and metadata with `second_stage`'s refinement, after checking that the
    two find the same landmarks, are both float32 and held out the same images; `accuracy` and `trained_on`
    describe the whole (none is recorded by default, as neither folder's figures do)."""
    first, second = ModelMetadata.load(first_stage), ModelMetadata.load(second_stage)
    if second.refinement is None:
        raise ModelError(f"{second_stage / METADATA_FILE}: no second stage to take")
    for folder, metadata in ((first_stage, first), (second_stage, second)):
        if metadata.quantized:
            raise ModelError(f"{folder}: quantized to integers (training.quantize); assemble the float32 models, "
                             "then quantize the result")
    if first.landmark_names != second.landmark_names:
        raise ModelError(f"{second_stage}: its second stage finds other landmarks than {first_stage}'s first stage")
    first_split, second_split = first.training.get("split"), second.refinement.training.get("split")
    if first_split is None or first_split != second_split:
        raise ModelError(f"{second_stage}: its second stage held out other images than {first_stage}'s first stage "
                         "(or one of them records no split); assemble only stages trained on the same split")
    refine_file = second.refinement.model_file
    output.mkdir(parents=True, exist_ok=True)
    for source, name in ((first_stage, MODEL_FILE), (second_stage, refine_file)):
        if (source / name).resolve() != (output / name).resolve():
            shutil.copyfile(source / name, output / name)
    first.refinement = second.refinement
    first.accuracy = accuracy or {}
    first.trained_on = trained_on or first.trained_on
    first.save(output)
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.assemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-stage", type=Path, required=True,
                        help="model folder whose first stage (model.onnx, its metadata and shape model) to take")
    parser.add_argument("--second-stage", type=Path, required=True,
                        help="model folder whose second stage (refine.onnx and its metadata) to take")
    parser.add_argument("--output", type=Path, required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--accuracy", type=Path, help="a metrics JSON from training.evaluate of the assembled model "
                        "(or of its split runs) to record in the metadata (default: none)")
    parser.add_argument("--trained-on", help="description of both stages' training data for the metadata (default: "
                        "the first stage's)")
    args = parser.parse_args(argv)
    if refuse_overwrite(args.output, args.overwrite):
        return 1
    try:
        accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else None
        assemble(args.first_stage, args.second_stage, args.output, accuracy, args.trained_on)
    except (ModelError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: the first stage of {args.first_stage} and the second stage of {args.second_stage}\n"
          f"next: python -m training.evaluate --model {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
