"""Exceptions as the one line a user reads: in `error:` lines and in the messages that name a file."""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """An exception as one line: the OS's reason for an OSError, else the last line of its message
    (where SimpleITK and ONNX Runtime put the reason)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
