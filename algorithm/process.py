"""CL-Detection 2023 entry point: every stack in the input folder to one "Multiple points" JSON.

Stacks are processed in sorted file-name order (evalutils also looks into subfolders, sorted
by path) and `z` counts on across them: with a.mha (2 images) and b.mha (3 images), b's
images are z = 3, 4, 5.

    python -m algorithm.process --input DIR --output FILE [--device auto|cuda|cpu]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from evalutils import DetectionAlgorithm
from evalutils.exceptions import FileLoaderError, ValidationError
from evalutils.io import ImageLoader
from evalutils.validators import UniqueImagesValidator

from algorithm.codec import DECODERS
from algorithm.inference import DEFAULT_MODEL_DIR, DEVICES, DeviceError, LandmarkDetector
from algorithm.output import multiple_points, schema_errors, write_json_atomically
from algorithm.reader import ImageStack, InputError, looks_like_image

logger = logging.getLogger("algorithm")

DEFAULT_INPUT = Path("/input/images/lateral-dental-x-rays")
DEFAULT_OUTPUT = Path("/output/orthodontic-landmarks.json")


class StackLoader(ImageLoader):
    """evalutils loader that reads headers only and hashes file bytes, never a whole stack."""

    @staticmethod
    def load_image(fname: Path) -> ImageStack:
        return ImageStack(fname)

    @staticmethod
    def hash_image(image: ImageStack) -> str:
        return image.content_hash()

    def load(self, *, fname: Path) -> list[dict]:
        if fname.is_dir():
            raise FileLoaderError(f"{fname.name} is a folder")
        try:
            stack = self.load_image(fname)
        except InputError:
            if looks_like_image(fname):
                raise  # a broken image must not silently shift the z of every later image
            raise FileLoaderError(f"{fname.name} is not an image") from None
        return [{"hash": self.hash_image(stack), "path": fname}]


class OrthodonticLandmarks(DetectionAlgorithm):
    """Detect the model's landmarks on every image of every stack in the input folder."""

    def __init__(self, input_dir: Path, output_file: Path, detector: LandmarkDetector) -> None:
        super().__init__(
            index_key="input_image",
            file_loaders={"input_image": StackLoader()},
            validators={"input_image": (UniqueImagesValidator(),)},
            input_path=Path(input_dir),
            output_file=Path(output_file),
        )
        self.detector = detector

    def process_case(self, *, idx: int, case) -> list[np.ndarray]:
        # evalutils would hash the whole file again here; the header was checked when loading
        path = case["path"]
        stack = ImageStack(path)
        logger.info("%s: %d image(s) of %d x %d", path.name, len(stack), stack.width, stack.height)
        return self.predict(input_image=stack)

    def predict(self, *, input_image: ImageStack) -> list[np.ndarray]:
        return list(self.detector.predict(input_image))

    def save(self) -> None:
        landmarks = [image for stack in self._case_results for image in stack]
        value = multiple_points(landmarks)
        errors = schema_errors(value)
        if errors:
            raise RuntimeError(f"refusing to write an invalid output: {errors[0]}")
        write_json_atomically(value, self._output_file)
        logger.info("wrote %d landmarks of %d image(s) to %s", len(value["points"]), len(landmarks), self._output_file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m algorithm.process",
        description="Detect cephalometric landmarks in every image stack of a folder and write "
        "grand-challenge's 'Multiple points' JSON (x, y in pixels of the padded image, z = 1-based "
        "image index counted on across stacks in sorted file-name order).",
    )
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="folder of stacks (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="folder with model.onnx and metadata.json")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA when usable, else CPU; cuda: fail if no GPU is usable (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime, 0 = its default")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default: 1)")
    parser.add_argument("--decoder", choices=DECODERS, default=None,
                        help="heatmap decoding (default: the model metadata's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if not args.input.is_dir():
            raise InputError(f"input folder {args.input} does not exist")
        detector = LandmarkDetector(args.model, args.device, args.threads, args.batch_size, args.decoder)
        OrthodonticLandmarks(args.input, args.output, detector).process()
    except FileLoaderError:
        print(f"error: no readable image in {args.input}", file=sys.stderr)
        return 1
    except (InputError, DeviceError, ValidationError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # still one clear last line, after the traceback in the log
        logger.exception("unexpected failure")
        print(f"error: unexpected failure: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
