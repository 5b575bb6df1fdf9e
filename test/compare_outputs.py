#!/usr/bin/env python3
"""Compare the container's landmarks JSON with the expected one, within a tolerance in pixels.

    python3 test/compare_outputs.py EXPECTED ACTUAL [--tolerance PX]

Standard library only, so it runs on any host's python3. It checks that both are
grand-challenge "Multiple points" values with the same keys (top level, version and every
point), the same name, type and version, the same landmark names and z values in the
same order, and that every (x, y) lies within the tolerance (Euclidean distance in pixels)
of the expected one (test.sh's parity check, also used by the benchmark).

Why 0.5 px and not exact equality: the expected output was written on a CPU; a GPU (cuDNN's
convolution algorithms, TF32 on Ampere) or another CPU (other SIMD kernels) sums in another
order, which moves a sub-pixel decoded landmark by far less than a pixel. 0.5 px is 0.05 mm
at 0.1 mm/pixel, 30 times below the best MRE of the challenge, yet any real change of the
model, its preprocessing, decoding or scaling moves landmarks by pixels and fails.

The last line printed is `parity OK (<points> points, max deviation <d> px)` with exit
code 0, or `parity FAILED: <why>` with exit code 1 (2 for bad arguments); details come before it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DEFAULT_TOLERANCE_PX = 0.5
SHOWN_MISMATCHES = 10


class ParityError(Exception):
    """The two outputs differ in a way the tolerance does not cover."""


def load(path: Path, role: str) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except OSError as error:
        raise ParityError(f"cannot read the {role} output {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParityError(f"the {role} output {path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ParityError(f"the {role} output is not a JSON object")
    if not isinstance(value.get("points"), list):
        raise ParityError(f"the {role} output has no list of points")
    return value


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coordinates(point: object, role: str, index: int) -> tuple[float, float, object]:
    if not isinstance(point, dict):
        raise ParityError(f"{role} points[{index}] is not an object")
    xyz = point.get("point")
    if not (isinstance(xyz, list) and len(xyz) == 3 and all(is_number(c) for c in xyz)):
        raise ParityError(f"{role} points[{index}].point is not 3 finite numbers: {xyz!r}")
    return float(xyz[0]), float(xyz[1]), xyz[2]


def compare(expected: dict, actual: dict, tolerance: float) -> tuple[int, float]:
    """(number of points, largest deviation in pixels), or ParityError."""
    if set(actual) != set(expected):
        raise ParityError(f"top-level keys {sorted(actual)} instead of {sorted(expected)}")
    for key in sorted(set(expected) - {"points"}):
        if actual[key] != expected[key]:
            raise ParityError(f"{key} is {actual[key]!r} instead of {expected[key]!r}")
    expected_points, actual_points = expected["points"], actual["points"]
    if not expected_points:
        raise ParityError("the expected output has no points: regenerate it")
    if len(actual_points) != len(expected_points):
        raise ParityError(f"{len(actual_points)} points instead of {len(expected_points)}")

    largest, mismatches = 0.0, []
    for index, (want, got) in enumerate(zip(expected_points, actual_points)):
        x0, y0, z0 = coordinates(want, "expected", index)
        x1, y1, z1 = coordinates(got, "actual", index)
        if set(got) != set(want):
            raise ParityError(f"points[{index}] has keys {sorted(got)} instead of {sorted(want)}")
        if got.get("name") != want.get("name") or z1 != z0:
            raise ParityError(f"points[{index}] is landmark {got.get('name')!r} of z={z1!r} "
                              f"instead of {want.get('name')!r} of z={z0!r} (names and z must keep their order)")
        for key in sorted(set(want) - {"name", "point"}):  # optional keys such as probability, type
            if key == "probability" and is_number(got[key]) and is_number(want[key]):
                continue
            if got[key] != want[key]:
                raise ParityError(f"points[{index}].{key} is {got[key]!r} instead of {want[key]!r}")
        deviation = math.hypot(x1 - x0, y1 - y0)
        largest = max(largest, deviation)
        if deviation > tolerance:
            mismatches.append(f"  landmark {want.get('name')} of z={z0}: ({x1:.3f}, {y1:.3f}) instead of "
                              f"({x0:.3f}, {y0:.3f}), {deviation:.3f} px off")
    if mismatches:
        print(f"{len(mismatches)} of {len(expected_points)} points lie more than {tolerance:g} px from the expected:")
        print("\n".join(mismatches[:SHOWN_MISMATCHES]))
        if len(mismatches) > SHOWN_MISMATCHES:
            print(f"  ... and {len(mismatches) - SHOWN_MISMATCHES} more")
        raise ParityError(f"{len(mismatches)} of {len(expected_points)} points beyond {tolerance:g} px "
                          f"(max deviation {largest:.3f} px)")
    return len(expected_points), largest


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments also end on a `parity FAILED` line (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.flush()
        print(f"parity FAILED: bad arguments: {message}")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("expected", type=Path, help="the expected JSON (test/expected_output.json)")
    parser.add_argument("actual", type=Path, help="the container's JSON")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_PX,
                        help="largest allowed distance of a landmark from the expected one, in pixels "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
            raise ParityError(f"the tolerance must be a non-negative number, not {args.tolerance}")
        count, largest = compare(load(args.expected, "expected"), load(args.actual, "actual"), args.tolerance)
    except ParityError as error:
        print(f"parity FAILED: {error}")
        return 1
    print(f"parity OK ({count} points, max deviation {largest:.3f} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
