"""evalutils without scikit-learn at start-up: importing this module before evalutils defers its scorers.

evalutils' main module imports `score_detection` from `evalutils.scorers`, which imports scikit-learn and with it
SciPy; only evalutils' evaluation classes call it, an algorithm never does. In its place this registers a module
that loads the real one on first use, for `score_detection` and any other name asked of it. Measured on this
project's machine (2 cores, under load): `import algorithm.process` took 1.6 s and 262 MB with the real scorers,
0.5 s and 176 MB with this one, a second off every start of the container.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

SCORERS = "evalutils.scorers"
_REAL_SCORERS = "evalutils._scorers_loaded_on_first_use"


def _real_scorers() -> types.ModuleType:
    """The real `evalutils.scorers`, loaded from its file once (under another name: its own is this stand-in's)."""
    if _REAL_SCORERS not in sys.modules:
        package = importlib.util.find_spec("evalutils")  # a top-level package's spec: found without running it
        spec = importlib.util.spec_from_file_location(
            _REAL_SCORERS, Path(package.submodule_search_locations[0]) / "scorers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[_REAL_SCORERS] = module
    return sys.modules[_REAL_SCORERS]


def _score_detection(*args: Any, **kwargs: Any) -> Any:
    return _real_scorers().score_detection(*args, **kwargs)


def _attribute(name: str) -> Any:
    """Any other name of the real module; the import machinery's questions (`__path__`, `__spec__`: dunder
    names this stand-in does not have) are answered without loading it."""
    if name.startswith("__"):
        raise AttributeError(f"module {SCORERS!r} has no attribute {name!r}")
    return getattr(_real_scorers(), name)


def _defer_scorers() -> None:
    if SCORERS in sys.modules:  # evalutils was imported first: nothing left to save
        return
    stand_in = types.ModuleType(SCORERS, "evalutils.scorers, loaded on first use (algorithm.lazy_scorers)")
    stand_in.score_detection = _score_detection
    stand_in.__getattr__ = _attribute
    sys.modules[SCORERS] = stand_in


_defer_scorers()
