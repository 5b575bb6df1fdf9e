"""Grand-challenge's "Multiple points" value: build it, check it against the schema, write it atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_NAME = "Orthodontic landmarks"
TOP_LEVEL_KEYS = {"name", "type", "points", "version"}
POINT_KEYS = {"name", "point", "probability", "type"}


def multiple_points(landmarks_per_image: Sequence[np.ndarray], first_z: int = 1,
                    probabilities: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The output value: landmark k of image i becomes {"name": "k+1", "point": [x, y, first_z + i]}, with
    "probability" (the model's confidence in [0, 1]) when `probabilities` gives one per landmark."""
    points = [
        {"name": str(k + 1), "point": [round(float(x), 3), round(float(y), 3), first_z + i]}
        for i, landmarks in enumerate(landmarks_per_image)
        for k, (x, y) in enumerate(landmarks)
    ]
    if probabilities is not None:
        flat = [float(p) for image in probabilities for p in image]
        if len(flat) != len(points):
            raise ValueError(f"{len(flat)} probabilities for {len(points)} points")
        for point, probability in zip(points, flat):
            point["probability"] = round(min(max(probability, 0.0), 1.0), 4)
    return {"name": OUTPUT_NAME, "type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}}


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)


def schema_errors(value: Any) -> list[str]:
    """What in `value` breaks grand-challenge's "Multiple points" schema (empty when it is valid)."""
    if not isinstance(value, dict):
        return ["the value is not a JSON object"]
    errors = [f"unexpected key {key!r}" for key in sorted(set(value) - TOP_LEVEL_KEYS)]
    errors += [f"missing key {key!r}" for key in ("type", "points", "version") if key not in value]
    if "name" in value and not isinstance(value["name"], str):
        errors.append("name is not a string")
    if value.get("type") != "Multiple points":
        errors.append('type is not "Multiple points"')
    version = value.get("version")
    if not (isinstance(version, dict) and set(version) == {"major", "minor"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in version.values())):
        errors.append("version is not {major, minor} with non-negative integers")
    points = value.get("points")
    if not isinstance(points, list):
        return errors + ["points is not a list"]
    for index, point in enumerate(points):
        where = f"points[{index}]"
        if not isinstance(point, dict):
            errors.append(f"{where} is not an object")
            continue
        errors += [f"{where}: unexpected key {key!r}" for key in sorted(set(point) - POINT_KEYS)]
        if "name" in point and not isinstance(point["name"], str):
            errors.append(f"{where}: name is not a string")
        coords = point.get("point")
        if not (isinstance(coords, list) and len(coords) == 3 and all(_is_number(c) for c in coords)):
            errors.append(f"{where}: point is not 3 finite numbers")
        if "probability" in point and not (_is_number(point["probability"]) and 0 <= point["probability"] <= 1):
            errors.append(f"{where}: probability is not in [0, 1]")
        if "type" in point and point["type"] != "Point":
            errors.append(f'{where}: type is not "Point"')
    return errors


class OutputError(Exception):
    """The output file cannot be written where asked; the message names it."""


def check_output_path(path: Path) -> None:
    """Fail before any work when `path` cannot be written: a folder, under a file, or in a folder not writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; --output names the file to write")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: exists and is not a regular file (a device, pipe or socket)")
    folder = path.parent
    while not folder.exists():  # missing folders are created when writing
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{path}: cannot write in {folder} ({error.strerror or error})") from None


def write_json_atomically(value: Any, path: Path) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(value, stream, indent=2, allow_nan=False)  # NaN and Infinity are not JSON
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
