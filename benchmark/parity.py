"""How far the landmarks of two outputs are apart, by the comparison test.sh runs (test/compare_outputs.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

COMPARE_OUTPUTS_FILE = Path(__file__).resolve().parent.parent / "test" / "compare_outputs.py"


def _load_compare_outputs():
    """test/compare_outputs.py, the parity check test.sh runs (standard library only, not a package)."""
    spec = importlib.util.spec_from_file_location("compare_outputs", COMPARE_OUTPUTS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_outputs = _load_compare_outputs()


def max_deviation_px(reference: Path, other: Path) -> float:
    """Largest distance between the same landmark of the same image in two outputs (test.sh's comparison);
    infinite when they differ in anything but the coordinates."""
    try:
        return compare_outputs.compare(compare_outputs.load(reference, "reference"),
                                       compare_outputs.load(other, "other"), tolerance=math.inf)[1]
    except compare_outputs.ParityError:
        return math.inf
