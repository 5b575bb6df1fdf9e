"""Where our algorithm spends its time, image by image, measured in-process.

    python -m benchmark.phases --input STACK.mha [--model DIR] [--device cpu] [--threads N]

Loads the model the container would load (`algorithm.metadata.locate_model`) and runs the container's
own public pieces in the order `algorithm.process` runs them, batch size 1: its StackLoader (the
stack's header and size) and UniqueStacksValidator (which reads a checksum only of files that share a
size, so none for one stack), then for each image of the ImageStack the detector's steps that
`LandmarkDetector.predict` chains, then the output writer. Each phase is timed with time.perf_counter.
Prints one JSON object to stdout: the model folder, fixed costs in seconds (imports, model load, the JSON
output), the duplicate check (per stack: with several of one size it grows with N), per phase the time of every image in milliseconds, and the
resident memory after the imports, after the model load and at its peak.
"""

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pandas import DataFrame  # noqa: E402

from algorithm.devices import DEVICES  # noqa: E402
from algorithm.inference import Detection, LandmarkDetector  # noqa: E402
from algorithm.metadata import locate_model  # noqa: E402
from algorithm.output import multiple_points, schema_errors, write_json_atomically  # noqa: E402
from algorithm.process import StackLoader, UniqueStacksValidator  # noqa: E402  (and the entry point's imports)
from algorithm.reader import ImageStack  # noqa: E402

# each phase of an image and the LandmarkDetector step it times, in predict's order (reading is the stack's); the
# refine phase's step, upright, first looks at a mirrored or turned copy where the image seems one (synthetic images,
# which hold no skull, take those looks); an image inside a black border (the border phase) takes the picture phase
# (in_picture: its picture read, and the whole image where needed) in place of the five after the border phase
STEP_OF_PHASE = {"read": None, "preprocess": "prepare", "border": "bordered_picture", "inference": "heatmaps",
                 "decode": "decode", "reframe": "reframe", "refine": "upright", "finish": "finish",
                 "picture": "in_picture"}


def resident_mb() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[name].split()[0]) * 1024 / 1e6 for key, name in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def time_phases(detector: LandmarkDetector, images: Iterable[np.ndarray]) -> tuple[list[Detection], dict]:
    """Each image through the detector's steps one at a time, as `predict` chains them with batch size 1:
    the detections, and per phase the milliseconds of every image."""
    clock = time.perf_counter
    times: dict[str, list[float]] = {phase: [] for phase in STEP_OF_PHASE}
    detections = []
    images = iter(images)
    while True:
        marks = [clock()]
        image = next(images, None)
        marks.append(clock())
        if image is None:
            return detections, times
        inputs, geometry = detector.prepare(image)
        marks.append(clock())
        box = detector.bordered_picture(image, geometry)
        marks.append(clock())
        if box is None:
            heatmaps = detector.heatmaps(inputs[None])
            marks.append(clock())
            as_given = detector.decode(heatmaps, [geometry])[0]
            marks.append(clock())
            detection = detector.reframe(image, geometry, as_given)
            marks.append(clock())
            detection = detector.upright(image, geometry, detection, as_given)
            marks.append(clock())
            detections.append(detector.finish(image, geometry, detection))
            marks += [clock()] * 2  # no picture phase
        else:
            marks += [clock()] * 5  # the picture phase reads the image in their place
            detections.append(detector.in_picture(image, geometry, box))
            marks.append(clock())
        for phase, start, end in zip(STEP_OF_PHASE, marks, marks[1:]):
            times[phase].append(1000 * (end - start))
        del image  # not held while the next one is read


def profile(stack_path: Path, model_dir: Path, device: str = "auto", threads: int = 0) -> dict:
    """The fixed costs, the duplicate check, every image's phases and the memory of one stack's run."""
    clock = time.perf_counter
    imports_s = clock() - _STARTED
    memory = {"after_imports": resident_mb()["rss"]}

    start = clock()
    detector = LandmarkDetector(model_dir, device, threads, batch_size=1)
    model_load_s = clock() - start
    memory["after_model_load"] = resident_mb()["rss"]

    start = clock()
    UniqueStacksValidator().validate(df=DataFrame(StackLoader().load(fname=stack_path)))
    duplicate_check_s = clock() - start

    detections, times = time_phases(detector, ImageStack(stack_path))

    start = clock()
    value = multiple_points([d.points for d in detections], probabilities=[d.confidence for d in detections])
    if schema_errors(value):
        raise RuntimeError("invalid output")
    with tempfile.TemporaryDirectory() as folder:
        write_json_atomically(value, Path(folder) / "out.json")
    output_s = clock() - start
    memory["peak"] = resident_mb()["peak"]

    return {
        "model": str(model_dir),
        "images": len(detections),
        "providers": detector.providers,
        "fixed_s": {"imports": imports_s, "model_load": model_load_s, "output_json": output_s},
        "duplicate_check_s": duplicate_check_s,
        "per_image_ms": times,
        "total_s": clock() - _STARTED,
        "memory_mb": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="one stack (.mha)")
    parser.add_argument("--model", type=Path, default=None,
                        help="folder with model.onnx and metadata.json (default: the one the container would load)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads, 0 = its default")
    args = parser.parse_args(argv)
    model_dir, _ = locate_model(args.model)
    json.dump(profile(args.input, model_dir, args.device, args.threads), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
