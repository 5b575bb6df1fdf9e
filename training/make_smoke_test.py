"""Regenerate the container's smoke test: `python -m training.make_smoke_test`.

Writes a synthetic 2-image stack in the challenge's shape and padding to test/input/...,
then runs the algorithm outside Docker on it to write test/expected_output.json, which
`test.sh` compares the container's output with. Run it again after exporting a new model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from algorithm import process
from training.pack import write_stack
from training.synthetic import SCANNER_CONTENT_SIZES, synthetic_set

TEST_DIR = Path(__file__).resolve().parent.parent / "test"
INPUT_DIR = TEST_DIR / "input" / "images" / "lateral-dental-x-rays"
STACK_NAME = "smoke-stack.mha"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.make_smoke_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-stack", action="store_true", help="only rewrite expected_output.json")
    args = parser.parse_args(argv)
    if not args.keep_stack:
        images, _ = synthetic_set(2, 19, seed=2023, sizes=SCANNER_CONTENT_SIZES)
        write_stack(INPUT_DIR / STACK_NAME, images, len(images), compress=True)
    return process.main(["--input", str(INPUT_DIR), "--output", str(TEST_DIR / "expected_output.json"),
                         "--device", "cpu"])


if __name__ == "__main__":
    sys.exit(main())
