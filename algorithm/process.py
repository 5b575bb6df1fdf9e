"""CL-Detection 2023 entry point: every stack in the input folder to one "Multiple points" JSON.

Stacks are processed in sorted path order, subfolders included (`algorithm.inputs` lists them as
evalutils would), and `z` counts on across them: with a.mha (2 images) and b.mha (3 images), b's
images are z = 3, 4, 5. Any failure ends in one `error:` line naming the file and no output.
The model: --model, else the one grand-challenge mounts at /opt/ml/model (uploaded apart from the
image), else the one built in (`algorithm.metadata.locate_model`).

    python -m algorithm.process --input DIR --output FILE [--device auto|cuda|cpu]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import algorithm.lazy_scorers  # noqa: F401  (before evalutils: it then starts without scikit-learn)
from evalutils import DetectionAlgorithm
from evalutils.exceptions import FileLoaderError, ValidationError
from evalutils.io import ImageLoader
from evalutils.validators import DataFrameValidator
from pandas import DataFrame, Series

from algorithm.codec import DECODERS
from algorithm.devices import DEVICES, DeviceError
from algorithm.errors import describe
from algorithm.inference import Detection, LandmarkDetector
from algorithm.inputs import scan_input
from algorithm.metadata import DEFAULT_MODEL_DIR, MOUNTED_MODEL_DIR, ModelError, graph_digest, locate_model
from algorithm.output import OutputError, check_output_path, multiple_points, schema_errors, write_json_atomically
from algorithm.reader import ImageStack, InputError, InputScope, looks_like_image

logger = logging.getLogger("algorithm")

DEFAULT_INPUT = Path("/input/images/lateral-dental-x-rays")
DEFAULT_OUTPUT = Path("/output/orthodontic-landmarks.json")
INPUT_KEY = "input_image"  # evalutils' key for the input images' loader, validators and cases


class StackLoader(ImageLoader):
    """evalutils loader that reads headers only, never a whole stack. A file's size stands in for its hash: only
    files of one size can hold the same bytes, and UniqueStacksValidator reads the checksums of those alone."""

    def __init__(self) -> None:
        self.scope: InputScope | None = None  # the input tree's, once it is scanned

    def load_image(self, fname: Path) -> ImageStack:
        return ImageStack(fname, self.scope)

    @staticmethod
    def hash_image(image: ImageStack) -> str:
        return str(image.path.stat().st_size)

    def load(self, *, fname: Path) -> list[dict]:
        """The file's one case: its size (as evalutils' hash), its path and the opened stack, which `process_case`
        reads from."""
        try:
            stack = self.load_image(fname)
        except InputError as error:
            if looks_like_image(fname):
                raise  # a broken image must not silently shift the z of every later image
            raise FileLoaderError(f"{error}; skipped, as its name is not an image's either") from None
        return [{"hash": self.hash_image(stack), "path": fname, "stack": stack}]


class UniqueStacksValidator(DataFrameValidator):
    """Refuse a file given twice (the same bytes), naming both, where evalutils' validator names neither. Only
    files of the same size are read for a checksum, so a lone stack (the challenge's input) is not read twice:
    that pass over every byte cost about 15 ms an image."""

    def validate(self, *, df: DataFrame) -> None:
        first_with: dict[str, str] = {}
        same_size = df["hash"].duplicated(keep=False)
        for stack in df["stack"][same_size]:
            content_hash = stack.content_hash()
            if content_hash in first_with:
                raise ValidationError(f"{stack.label}: the same file as {first_with[content_hash]}; "
                                      "each image must be given once")
            first_with[content_hash] = stack.label


class OrthodonticLandmarks(DetectionAlgorithm):
    """Detect the model's landmarks on every image of every stack in the input folder.

    evalutils' `process()` drives it: load, validate, process_cases (evalutils' own, a case per file in
    order), save. `load` and `save` are this class's (the files from `algorithm.inputs`, the "Multiple
    points" JSON), so they keep the input folder and output file rather than evalutils.
    """

    def __init__(self, input_dir: Path, output_file: Path, detector: LandmarkDetector) -> None:
        self.loader = StackLoader()
        super().__init__(
            index_key=INPUT_KEY,
            file_loaders={INPUT_KEY: self.loader},
            validators={INPUT_KEY: (UniqueStacksValidator(),)},
        )
        self.input_dir = Path(input_dir)
        self.output_file = Path(output_file)
        self.detector = detector

    def load(self) -> None:
        """Every file `algorithm.inputs` lists (evalutils' own listing misses linked folders) through StackLoader."""
        files, self.loader.scope = scan_input(self.input_dir)
        cases = []
        for path in files:
            try:
                cases += self.loader.load(fname=path)
            except FileLoaderError as skipped:
                logger.warning("%s", skipped)
        if not cases:
            raise FileLoaderError(f"{self.input_dir}: no readable image in the input folder")
        self._cases[INPUT_KEY] = DataFrame(cases)  # where evalutils' validate and process_cases read the cases

    def process_case(self, *, idx: int, case: Series) -> list[Detection]:
        stack = case["stack"]
        logger.info("%s: %d image(s) of %d x %d pixels (height x width)", stack.label, len(stack), stack.height,
                    stack.width)
        try:
            return self.predict(input_image=stack)
        except InputError:
            raise
        except Exception as error:  # whatever fails on this file's images is reported with its name
            logger.debug("processing %s failed", stack.label, exc_info=True)
            raise InputError(f"{stack.label}: processing failed ({describe(error)})") from None

    def predict(self, *, input_image: ImageStack) -> list[Detection]:
        detections = list(self.detector.predict(input_image))
        for number, detection in enumerate(detections, start=1):
            for note in detection.notes:
                logger.warning("%s, image %d of %d: %s", input_image.label, number, len(detections), note)
        return detections

    def save(self) -> None:
        # evalutils' process_cases leaves each case's detections there, and process() calls save without them
        detections = [image for stack in self._case_results for image in stack]
        landmarks = [detection.points for detection in detections]
        value = multiple_points(landmarks, probabilities=[detection.confidence for detection in detections])
        errors = schema_errors(value)
        if errors:
            raise RuntimeError(f"refusing to write an invalid output: {errors[0]}")
        try:
            write_json_atomically(value, self.output_file)
        except OSError as error:
            raise OutputError(f"{self.output_file}: cannot be written ({describe(error)})") from None
        logger.info("wrote %d points (%d image(s) x %d landmarks) to %s", len(value["points"]), len(landmarks),
                    self.detector.metadata.num_landmarks, self.output_file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m algorithm.process",
        description="Detect cephalometric landmarks in every image stack of a folder and write "
        "grand-challenge's 'Multiple points' JSON (x, y in pixels of the padded image, z = 1-based "
        "image index counted on across stacks in sorted file-name order).",
    )
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="folder of stacks (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"folder with model.onnx and metadata.json (default: the model at {MOUNTED_MODEL_DIR}, "
                        f"where grand-challenge puts an uploaded one, else the built-in {DEFAULT_MODEL_DIR})")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA when usable, else CPU; cuda: fail if no GPU is usable; a model quantized "
                        "to integers (training.quantize) runs on the CPU (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime, 0 = its default")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default: 1)")
    parser.add_argument("--decoder", choices=DECODERS, default=None,
                        help="heatmap decoding of both stages (default: the model metadata's choice)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="run the model's second stage, a full-resolution look at each landmark, when it has "
                        "one; --no-refine keeps the first stage's landmarks (default: --refine)")
    parser.add_argument("--shape-check", action=argparse.BooleanOptionalAction, default=True,
                        help="keep each image's landmarks on a plausible skull with the model's shape model, when "
                        "it has one, and take the steps that rest on it: a second look at the skull's usual frame, "
                        "a mirrored, flipped or turned image read upright, a tilted skull read level "
                        "(default: --shape-check)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        check_output_path(args.output)  # before any work, not after all of it
        if not args.input.is_dir():
            problem = "is not a folder" if args.input.exists() else "does not exist"
            raise InputError(f"{args.input}: the input folder {problem}")
        model_dir, origin = locate_model(args.model)
        detector = LandmarkDetector(model_dir, args.device, args.threads, args.batch_size, args.decoder, args.refine,
                                    args.shape_check)
        meta = detector.metadata
        stages = "two stages" if detector.refinement else (
            "first stage only (--no-refine)" if meta.refinement else "one stage")
        shape = "shape check on" if detector.shape else ("shape check off" if meta.shape else "no shape model")
        logger.info("model %s (%s, graphs sha256 %s): %d landmarks, input %d x %d (height x width), %s, %s; "
                    "trained on: %s", model_dir, origin, graph_digest(model_dir, meta), meta.num_landmarks,
                    meta.codec.input_height, meta.codec.input_width, stages, shape, meta.trained_on[:120])
        OrthodonticLandmarks(args.input, args.output, detector).process()
    except (InputError, ModelError, OutputError, DeviceError, ValidationError, FileLoaderError, ValueError) as error:
        print(f"error: {describe(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # still one clear last line, after the traceback in the log
        logger.exception("unexpected failure")
        print(f"error: unexpected failure: {describe(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
