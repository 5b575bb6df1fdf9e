"""Where our algorithm spends its time, image by image, measured in-process.

    python -m benchmark.phases --input STACK.mha [--model DIR] [--device cpu] [--threads N]

Runs the algorithm's own public pieces (ImageStack, the detector's steps `prepare`, `heatmaps` and
`decode` that its `predict` chains, the output writer) in the order `algorithm.process` runs them,
batch size 1, and times each phase with time.perf_counter. Prints one JSON object to stdout:
fixed costs in seconds (imports, model load, the JSON output), the evalutils validation hash
of the stack (per stack, so it grows with N), per phase the time of every image in milliseconds,
and the resident memory after the imports, after the model load and at its peak.
"""

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import algorithm.process  # noqa: E402,F401  (the entry point's imports: evalutils, pandas)
from algorithm.devices import DEVICES  # noqa: E402
from algorithm.inference import LandmarkDetector  # noqa: E402
from algorithm.metadata import DEFAULT_MODEL_DIR  # noqa: E402
from algorithm.output import multiple_points, schema_errors, write_json_atomically  # noqa: E402
from algorithm.reader import ImageStack  # noqa: E402

PHASES = ("read", "preprocess", "inference", "decode", "refine")


def resident_mb() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[name].split()[0]) * 1024 / 1e6 for key, name in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def profile(stack_path: Path, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto", threads: int = 0) -> dict:
    clock = time.perf_counter
    imports_s = clock() - _STARTED
    memory = {"after_imports": resident_mb()["rss"]}

    start = clock()
    detector = LandmarkDetector(model_dir, device, threads, 1, None)
    model_load_s = clock() - start
    memory["after_model_load"] = resident_mb()["rss"]

    start = clock()
    stack = ImageStack(stack_path)
    stack.content_hash()  # what the evalutils loader does for the UniqueImagesValidator
    validation_hash_s = clock() - start

    times = {phase: [] for phase in PHASES}
    detections = []
    images = iter(stack)
    while True:
        t0 = clock()
        image = next(images, None)
        t1 = clock()
        if image is None:
            break
        inputs, geometry = detector.prepare(image)
        t2 = clock()
        heatmaps = detector.heatmaps(inputs[None])
        t3 = clock()
        first = detector.decode(heatmaps, [geometry])[0]
        t4 = clock()
        detections.append(detector.refine(image, geometry, first))
        t5 = clock()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[phase].append(1000 * seconds)
        del image

    start = clock()
    value = multiple_points([d.points for d in detections], probabilities=[d.confidence for d in detections])
    if schema_errors(value):
        raise RuntimeError("invalid output")
    with tempfile.TemporaryDirectory() as folder:
        write_json_atomically(value, Path(folder) / "out.json")
    output_s = clock() - start
    memory["peak"] = resident_mb()["peak"]

    return {
        "images": len(detections),
        "providers": detector.providers,
        "fixed_s": {"imports": imports_s, "model_load": model_load_s, "output_json": output_s},
        "validation_hash_s": validation_hash_s,
        "per_image_ms": times,
        "total_s": clock() - _STARTED,
        "memory_mb": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="one stack (.mha)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="folder with model.onnx and metadata.json")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads, 0 = its default")
    args = parser.parse_args(argv)
    json.dump(profile(args.input, args.model, args.device, args.threads), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
