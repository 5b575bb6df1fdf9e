"""Image stacks read one image at a time, so memory does not grow with the stack.

An uncompressed MetaImage stack (the challenge's format) is read slice by slice straight
from its data block (SimpleITK checked the header); any other file SimpleITK reads is
loaded once and then handed out image by image.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# Files with these endings are meant to be images: failing to read one is an error, not a skip.
IMAGE_SUFFIXES = (
    ".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".png", ".tif", ".tiff",
    ".jpg", ".jpeg", ".bmp", ".dcm", ".gipl", ".hdr", ".img", ".vtk",
)


class InputError(Exception):
    """An input the algorithm cannot process; its message is shown to the user as is."""


def looks_like_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _metaimage_header(path: Path) -> dict[str, str]:
    """The key = value lines of a MetaImage header (up to the data)."""
    header: dict[str, str] = {}
    with open(path, "rb") as handle:
        for raw_line in handle:
            key, _, value = raw_line.decode("latin-1").partition("=")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                header["_data_offset"] = str(handle.tell())
                break
    return header


class ImageStack:
    """A file of one or more 2D images (a 3D stack or a single 2D image), read lazily."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(self.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"{self.path.name}: not a readable image") from None
        size = reader.GetSize()
        if len(size) not in (2, 3):
            raise InputError(f"{self.path.name}: expected a 2D image or a 3D stack, got {len(size)} dimensions")
        self.width, self.height = size[0], size[1]
        self.depth = size[2] if len(size) == 3 else 1
        self.components = reader.GetNumberOfComponents()
        self._data_offset: int | None = None  # set for an uncompressed .mha, read without SimpleITK
        self._dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype
        if len(size) == 3 and self.path.name.lower().endswith(".mha"):
            self._check_uncompressed_metaimage()

    def _check_uncompressed_metaimage(self) -> None:
        """Find the data block of a local, uncompressed .mha and check its size against the header."""
        header = _metaimage_header(self.path)
        if header.get("CompressedData", "False").lower() == "true" or header.get("ElementDataFile") != "LOCAL":
            return
        # MetaIO takes either key for the byte order
        byte_order_msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
        if byte_order_msb.lower() == "true":
            self._dtype = self._dtype.newbyteorder(">")
        expected = self.width * self.height * self.depth * self.components * self._dtype.itemsize
        available = self.path.stat().st_size - int(header["_data_offset"])
        if available < expected:
            raise InputError(
                f"{self.path.name}: truncated, {available} bytes of image data where the header needs {expected}"
            )
        self._data_offset = int(header["_data_offset"])

    def __len__(self) -> int:
        return self.depth

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each image as an (H, W) or (H, W, C) array, in stack order."""
        try:
            if self._data_offset is not None:
                shape = (self.height, self.width, self.components) if self.components > 1 else (self.height, self.width)
                count = int(np.prod(shape))
                for index in range(self.depth):
                    offset = self._data_offset + index * count * self._dtype.itemsize
                    yield np.fromfile(self.path, dtype=self._dtype, count=count, offset=offset).reshape(shape)
                return
            volume = sitk.GetArrayFromImage(sitk.ReadImage(str(self.path)))
        except (RuntimeError, OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "read error"
            raise InputError(f"{self.path.name}: cannot read the image data ({first_line})") from None
        if self.depth == 1 and volume.ndim == (3 if self.components > 1 else 2):
            volume = volume[None]
        yield from volume

    def content_hash(self) -> str:
        """A checksum of the file's bytes, read in chunks (the whole stack is never held in memory)."""
        checksum = 0
        with open(self.path, "rb") as handle:
            while chunk := handle.read(1 << 23):
                checksum = zlib.crc32(chunk, checksum)
        return f"{self.path.stat().st_size}:{checksum:08x}"
