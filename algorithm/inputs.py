"""Which files of the input folder are read, in which order, and what the headers among them may point to.

Every file of the folder's tree is tried, in the order evalutils sorts paths (so z is numbered as
before): folders reached through a link are read like real ones, but each real folder only once,
since reading one twice would give its images twice. A folder that cannot be listed is an error,
as skipping it would shift the z of every later image. Skipped with a log line: macOS's AppleDouble
sidecars (`._name.mha`, which hold Finder metadata, not pixels) and the pixel file of a two-file
image (the .img of an Analyze .hdr, the data file of a .mhd or .nhdr), which is read with its header.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from algorithm.errors import describe
from algorithm.reader import InputError, InputScope, detached_data_file

logger = logging.getLogger(__name__)

APPLEDOUBLE_PREFIX = "._"
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"


def is_apple_double(path: Path) -> bool:
    """Whether `path` is a macOS AppleDouble sidecar: named ._something and starting with its magic number."""
    if not path.name.startswith(APPLEDOUBLE_PREFIX) or not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(len(APPLEDOUBLE_MAGIC)) == APPLEDOUBLE_MAGIC


def _tree(root: Path) -> tuple[list[Path], dict[Path, Path]]:
    """Every file under `root` (links to folders followed) and each real folder with the path it was reached by."""
    files: list[Path] = []
    folders: dict[Path, Path] = {}
    scope = InputScope(root, ())
    pending = [root]
    while pending:
        folder = pending.pop()
        real = folder.resolve()
        if real in folders:
            raise InputError(f"{scope.label(folder)}: the same folder as {scope.label(folders[real])} (through a "
                             "link); its images would be read twice")
        folders[real] = folder
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    (pending if entry.is_dir() else files).append(Path(entry.path))
        except OSError as error:
            raise InputError(f"{scope.label(folder)}: the folder cannot be read ({describe(error)}); skipping it "
                             "would shift the z of every later image") from None
    return files, folders


def _pixel_files(files: list[Path]) -> set[Path]:
    """The real paths of the files that hold the pixels of another file's header."""
    pixel_files = set()
    for path in filter(Path.is_file, files):  # opening a named pipe would wait for a writer
        try:
            data_file = detached_data_file(path)
        except (ValueError, OSError):
            continue  # reported when the header itself is read
        if data_file is not None:
            pixel_files.add(data_file.resolve())
    return pixel_files


def scan_input(root: Path) -> tuple[list[Path], InputScope]:
    """The files to read, in evalutils' order, and the scope (folders) they span."""
    root = Path(root)
    files, folders = _tree(root)
    scope = InputScope(root, tuple(folders))
    pixel_files = _pixel_files(files)
    kept = []
    for path in sorted(files):
        try:
            sidecar = is_apple_double(path)
        except OSError:
            sidecar = False  # an unreadable file is reported when it is read
        if sidecar:
            logger.info("%s: skipped, a macOS AppleDouble sidecar (Finder metadata, no image)", scope.label(path))
        elif path.resolve() in pixel_files:
            logger.info("%s: skipped here, the pixel data of a two-file image, read with its header",
                        scope.label(path))
        else:
            kept.append(path)
    return kept, scope
