"""Image files read one image at a time, so memory does not grow with the stack, and refused with one
message naming the file whenever what would be read is not exactly what the file holds.

MetaImage files (the challenge's format) are read by `algorithm.metaimage`, image by image, compressed
or not. Any other file SimpleITK reads is loaded whole, after the checks for what SimpleITK itself
would read silently wrong: a data file outside the input, a broken gzip stream, a truncated NIfTI,
Analyze or BMP file (GIPL and VTK files are not checked). Every file is held to the limits below
before anything is allocated, and every floating-point image is checked for values the preprocessing
cannot handle.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from algorithm.errors import describe
from algorithm.metaimage import MAX_HEADER_BYTES, READ_CHUNK_BYTES, MetaImageHeader, is_metaimage

# What can be an X-ray: checked on the header, before any pixel is read (the challenge's stacks hold up
# to a few hundred images of CHALLENGE_HEIGHT x CHALLENGE_WIDTH x 3 uint8).
MAX_IMAGE_SIDE = 10_000  # pixels, width and height
MAX_IMAGES_PER_FILE = 10_000
MAX_COMPONENTS = 4  # values per pixel (RGBA at most)
MAX_WHOLE_FILE_BYTES = 4 << 30  # decoded size of a non-MetaImage file, which SimpleITK loads whole
MAX_ABS_PIXEL_VALUE = 1e30  # beyond this, the resize's float32 block sums could overflow (3.4e38)
PIXEL_KINDS = "uif"  # unsigned, signed and floating-point pixels (numpy's dtype.kind)

# Files with these endings are meant to be images: failing to read one is an error, not a skip.
IMAGE_SUFFIXES = (
    ".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".png", ".tif", ".tiff",
    ".jpg", ".jpeg", ".bmp", ".dcm", ".gipl", ".hdr", ".img", ".vtk",
)
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")  # .hdr: Analyze 7.5 or a NIfTI pair, pixels in .img
ANALYZE_DATA_SUFFIXES = (".img", ".img.gz", ".IMG")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
NRRD_DATA_FILE_KEYS = ("data file", "datafile")


class InputError(Exception):
    """An input the algorithm cannot process; its message names the file and is shown to the user as is."""


@dataclass(frozen=True)
class InputScope:
    """The input folder and the real folders its tree spans (links followed): what a header may point to."""

    root: Path
    real_folders: tuple[Path, ...]

    @classmethod
    def around(cls, path: Path) -> "InputScope":
        """The scope of a file opened on its own: its own folder."""
        folder = Path(path).parent
        return cls(folder, (folder.resolve(),))

    def label(self, path: Path) -> str:
        """`path` as the user knows it: relative to the input folder when it lies inside."""
        path = Path(path)
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) and path != self.root else str(path)

    def contains(self, path: Path) -> bool:
        """Whether `path`, links resolved, lies inside one of the scope's folders."""
        real = Path(path).resolve()
        return any(real.is_relative_to(folder) for folder in self.real_folders)


def looks_like_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _nrrd_data_file(path: Path) -> Path | None:
    """The one file a NRRD header keeps its pixels in (`data file: name`), if not the header itself."""
    with open(path, "rb") as handle:
        lines = handle.read(MAX_HEADER_BYTES).decode("latin-1").split("\n")
    if not lines[0].startswith("NRRD"):
        return None
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            break  # the end of the header
        key, separator, value = line.partition(": ")
        if separator and key.strip().lower() in NRRD_DATA_FILE_KEYS:
            value = value.strip()
            if value.startswith("LIST") or "%" in value or len(value.split()) != 1:
                raise ValueError(f"data file: {value[:40]!r}: one data file per image is not supported")
            return path.parent / value
    return None


def detached_data_file(path: Path) -> Path | None:
    """The file holding a header's pixels when that is not the header itself (MetaImage, NRRD, Analyze pairs).

    Raises ValueError or OSError for a header that cannot be read.
    """
    path = Path(path)
    name = path.name.lower()
    if is_metaimage(path):
        data_file = MetaImageHeader.read(path).data_file
        return None if data_file == path else data_file
    if name.endswith(NRRD_SUFFIXES):
        return _nrrd_data_file(path)
    if name.endswith(".hdr"):
        stem = path.name[: -len(".hdr")]
        return next((path.with_name(stem + suffix) for suffix in ANALYZE_DATA_SUFFIXES
                     if path.with_name(stem + suffix).is_file()), None)
    return None


def _stored_content(path: Path) -> tuple[bytes, int]:
    """The first bytes and the size of a file's content, decompressed for a .gz file (which must be whole)."""
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as handle:
            return handle.read(MAX_HEADER_BYTES), path.stat().st_size
    head, size = b"", 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                head = head or chunk[:MAX_HEADER_BYTES]
                size += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"compressed data is broken after {size} bytes ({describe(error)})") from None
    return head, size


def _nifti_data_offset(header: bytes) -> int:
    """Where the voxels start, from a NIfTI-1, NIfTI-2 or Analyze 7.5 header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            return max(0, int(struct.unpack(order + "f", header[108:112])[0]))
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            return max(0, struct.unpack(order + "q", header[168:176])[0])
    raise ValueError("not a NIfTI or Analyze header")


def _bmp_pixel_bytes(header: bytes) -> tuple[int, int] | None:
    """(where the pixels start, how many bytes they take) of an uncompressed BMP; None for a compressed one."""
    if len(header) < 34 or header[:2] != b"BM":
        raise ValueError("not a BMP header")
    (start,) = struct.unpack("<I", header[10:14])
    width, height, _, bits, compression = struct.unpack("<iiHHI", header[18:34])
    if compression not in (0, 3, 6):  # run-length encoded: the size is not fixed
        return None
    row_bytes = (abs(width) * bits + 31) // 32 * 4
    return start, row_bytes * abs(height)


def _sitk_information(path: Path) -> tuple[tuple[int, ...], int, np.dtype]:
    """Sizes, values a pixel and pixel type as SimpleITK reads them from the header (no pixel is read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError("not a readable image") from None
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype
    return tuple(reader.GetSize()), reader.GetNumberOfComponents(), dtype


def _increasing_runs(indices: list[int]) -> Iterator[list[int]]:
    """`indices` cut into runs that increase strictly: [4, 7, 2, 3, 3] gives [4, 7], [2, 3], [3]."""
    run: list[int] = []
    for index in indices:
        if run and index <= run[-1]:
            yield run
            run = []
        run.append(index)
    if run:
        yield run


class ImageStack:
    """A file of one or more 2D images (a 3D stack or a single 2D image), read lazily."""

    def __init__(self, path: Path, scope: InputScope | None = None) -> None:
        self.path = Path(path)
        self.scope = scope or InputScope.around(self.path)
        self.label = self.scope.label(self.path)
        try:
            self._open()
        except (ValueError, OSError) as error:
            raise InputError(f"{self.label}: {describe(error)}") from None

    def _open(self) -> None:
        """Read and check the header: sizes, pixel type, where the pixels are, whether they are all there."""
        if not self.path.is_file():
            raise ValueError("a broken link" if self.path.is_symlink() else "not a regular file")
        self._metaimage = MetaImageHeader.read(self.path) if is_metaimage(self.path) else None
        if self._metaimage is not None:  # held to the limits before SimpleITK sees the sizes
            meta = self._metaimage
            self._set_layout(meta.size, meta.components, meta.dtype.newbyteorder("="))
        information = _sitk_information(self.path)
        if self._metaimage is None:
            self._set_layout(*information)
        elif information != self._layout:
            raise ValueError("the header is ambiguous: SimpleITK reads other sizes or another pixel type")
        data_file = detached_data_file(self.path)
        if data_file is not None and not self.scope.contains(data_file):
            raise ValueError(f"its pixel data file {data_file} lies outside the input folder; refused")
        if data_file is not None and not data_file.is_file():
            raise ValueError(f"its pixel data file {data_file} is missing or not a regular file")
        if self._streamed:
            self._metaimage.data_region()  # a truncated file fails here, before any image is read

    def _set_layout(self, size: tuple[int, ...], components: int, dtype: np.dtype) -> None:
        """Take the declared sizes and pixel type, refusing what cannot be an X-ray before anything is allocated."""
        if len(size) not in (2, 3):
            raise ValueError(f"expected a 2D image or a 3D stack, got {len(size)} dimensions")
        self._layout = (tuple(size), components, dtype)
        self.width, self.height, self.depth = size[0], size[1], size[2] if len(size) == 3 else 1
        self.components, self._dtype = components, dtype
        if dtype.kind not in PIXEL_KINDS:
            raise ValueError(f"pixels of type {dtype} are not supported (integers or floating point only)")
        if self.depth < 1:
            raise ValueError(f"declares a stack of {self.depth} images")
        if min(self.width, self.height) < 1:
            raise ValueError(f"declares an empty image of {self.width} x {self.height} pixels")
        if max(self.width, self.height) > MAX_IMAGE_SIDE:
            raise ValueError(f"declares {self.width} x {self.height} pixels; at most {MAX_IMAGE_SIDE} a side "
                             "are accepted")
        if self.depth > MAX_IMAGES_PER_FILE:
            raise ValueError(f"declares {self.depth} images; at most {MAX_IMAGES_PER_FILE} a file are accepted")
        if not 1 <= components <= MAX_COMPONENTS:
            raise ValueError(f"declares {components} values a pixel; 1 to {MAX_COMPONENTS} are accepted")
        if not self._streamed and self.depth * self.image_bytes > MAX_WHOLE_FILE_BYTES:
            raise ValueError(f"decodes to {self.depth * self.image_bytes / 2**30:.1f} GiB, more than the "
                             f"{MAX_WHOLE_FILE_BYTES / 2**30:.0f} GiB read at once from a file that is not MetaImage")

    @property
    def _streamed(self) -> bool:
        """Whether the pixels are read image by image (a binary MetaImage) rather than whole by SimpleITK."""
        return self._metaimage is not None and self._metaimage.binary

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * self.components * self._dtype.itemsize

    def __len__(self) -> int:
        return self.depth

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each image as an (H, W) or (H, W, C) array in native byte order, in stack order."""
        return self.read()

    def read(self, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """The images at these positions (all by default), in the order asked, one at a time: each run of
        increasing positions is one pass over the file, so no image waits in memory for its turn."""
        wanted = list(range(self.depth)) if indices is None else [int(index) for index in indices]
        outside = [index for index in wanted if not 0 <= index < self.depth]
        if outside:
            raise IndexError(f"{self.label}: no image at position {outside[0]} of a stack of {self.depth}")
        try:
            for run in _increasing_runs(wanted):
                images = self._metaimage.images(run) if self._streamed else self._whole_file_images(run)
                for index in run:  # no name keeps an image while the next is read
                    yield self._checked(index, next(images))
                next(images, None)  # to its end, where a compressed stream is checked
        except (ValueError, OSError, RuntimeError) as error:
            raise InputError(f"{self.label}: cannot read the image data ({describe(error)})") from None

    def _whole_file_images(self, indices: list[int]) -> Iterator[np.ndarray]:
        """The chosen images of a file SimpleITK reads whole, each copied out so the volume is held only once."""
        self._check_stored_pixels()
        image = sitk.ReadImage(str(self.path))
        volume = sitk.GetArrayViewFromImage(image)
        if volume.ndim == (3 if self.components > 1 else 2):
            volume = volume[None]
        for index in indices:
            yield volume[index].copy()

    def _check_stored_pixels(self) -> None:
        """Refuse what SimpleITK reads without a word: a broken gzip stream, too few pixel bytes."""
        head, size = _stored_content(self.path)
        name = self.path.name.lower()
        if name.endswith(NIFTI_SUFFIXES):
            data_file = detached_data_file(self.path) or self.path
            stored = size if data_file == self.path else _stored_content(data_file)[1]
            start, needed = _nifti_data_offset(head), self.depth * self.image_bytes
        elif name.endswith(".bmp"):
            layout = _bmp_pixel_bytes(head)
            if layout is None:
                return
            data_file, stored, (start, needed) = self.path, size, layout
        else:
            return
        if stored - start < needed:
            raise ValueError(f"truncated: {max(0, stored - start)} bytes of pixels in {data_file.name} where "
                             f"the header needs {needed}")

    def _checked(self, index: int, image: np.ndarray) -> np.ndarray:
        """The image, if its values can be preprocessed: floating-point pixels must be finite and not absurd."""
        if image.dtype.kind == "f" and image.size:
            low, high = float(image.min()), float(image.max())
            if not (np.isfinite(low) and np.isfinite(high)):
                raise InputError(f"{self.label}: image {index + 1} has NaN or infinite pixel values")
            if max(-low, high) > MAX_ABS_PIXEL_VALUE:
                raise InputError(f"{self.label}: image {index + 1} has pixel values up to {max(-low, high):.3g}, "
                                 f"beyond the {MAX_ABS_PIXEL_VALUE:.0e} accepted")
        return image

    def content_hash(self) -> str:
        """A checksum of the file's bytes, read in chunks (the whole stack is never held in memory)."""
        checksum = 0
        with open(self.path, "rb") as handle:
            while chunk := handle.read(1 << 23):
                checksum = zlib.crc32(chunk, checksum)
        return f"{self.path.stat().st_size}:{checksum:08x}"
