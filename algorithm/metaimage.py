"""MetaImage (.mha, .mhd) headers read the way MetaIO (SimpleITK's reader) reads them, and their pixel
data streamed one image at a time: uncompressed straight from the file, compressed through zlib.

MetaIO's rules that decide which bytes are pixels (tests/test_hostile_inputs.py checks each against
SimpleITK):

- a header line is `Key = value` or `Key: value`; keys are case-sensitive; a repeated key overrides
  the earlier one; `ElementDataFile` is the last line read, the data follows it;
- a flag is true when its value starts with T, t or 1 (CompressedData, BinaryData and the byte
  order); BinaryDataByteOrderMSB wins over ElementByteOrderMSB; without either the data is
  little-endian;
- `ElementDataFile = LOCAL` (or Local, local): the data follows the header; any other value names a
  file relative to the header's folder, and when that file is missing MetaIO reads name.gz or
  name.Z as compressed data; LIST and %d patterns (one file per image) are refused here;
- `HeaderSize` > 0: the data starts at that byte of the data file; -1: the data is the last bytes
  of the file; any other value: no skip;
- compressed data is one zlib or gzip stream of `CompressedDataSize` bytes, or up to the end of the
  data file when that key is missing or 0 (as MetaIO's code intends; SimpleITK 2.5.7 does so for a
  separate data file, but for data in the header's file it decompresses nothing and returns an
  uninitialised buffer). The stream must end exactly after the declared pixels: a stream that
  fails, is cut off or holds more is refused (SimpleITK only prints "Uncompress failed").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METAIMAGE_SUFFIXES = (".mha", ".mhd")  # as ITK matches them: case-sensitive
LOCAL_DATA = ("LOCAL", "Local", "local")
COMPRESSED_DATA_SUFFIXES = (".gz", ".Z")  # MetaIO tries these when the named data file is missing
MAX_HEADER_BYTES = 1 << 16  # where a header must have ended (real ones take under 1 KiB)
MAX_VALUE_LENGTH = 499  # MetaIO reads at most this many characters of a value
ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS  # inflate's automatic header detection, as MetaIO calls it
READ_CHUNK_BYTES = 1 << 20

# MetaIO's element types with its sizes in bytes (MET_LONG is 4 bytes in MetaIO, whatever the platform)
ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
# what MetaIO strips from the end of a value: anything but printable, non-space ASCII
_TRAILING_JUNK = "".join(chr(code) for code in range(256) if not 0x21 <= code <= 0x7E)


class MetaImageError(ValueError):
    """A MetaImage header or data block that cannot be read as MetaIO would; the caller adds the file name."""


def is_metaimage(path: Path) -> bool:
    return Path(path).name.endswith(METAIMAGE_SUFFIXES)


def _flag(value: str) -> bool:
    """MetaIO's boolean: true when the value starts with T, t or 1."""
    return value[:1] in ("T", "t", "1")


def _header_fields(path: Path) -> tuple[dict[str, str], int]:
    """The key = value pairs up to and including ElementDataFile, and the byte after that line."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    position = 0
    while position < len(head):
        end = head.find(b"\n", position)
        line_end = len(head) if end < 0 else end + 1
        line = head[position:line_end].decode("latin-1")
        position = line_end
        text = line.lstrip()
        if not text:
            continue
        separator = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
        if separator < 0 or "\r" in text[:separator]:
            raise MetaImageError(f"not a MetaImage header (a line without '=': {text.strip()[:40]!r})")
        key = text[:separator].rstrip(" \t")
        value = text[separator:].lstrip("=: \t").rstrip(_TRAILING_JUNK)
        if len(value) > MAX_VALUE_LENGTH:
            raise MetaImageError(f"header value of {key} longer than MetaIO reads ({MAX_VALUE_LENGTH} characters)")
        fields[key] = value
        if key == "ElementDataFile":
            return fields, position
    raise MetaImageError(f"no ElementDataFile in the first {MAX_HEADER_BYTES} bytes: not a MetaImage header")


def _integers(fields: dict[str, str], key: str, default: int | None = None, count: int = 1) -> list[int]:
    """`count` whole numbers from a header value (MetaIO would truncate fractions; those are refused)."""
    if key not in fields:
        if default is None:
            raise MetaImageError(f"no {key} in the header")
        return [default] * count
    words = fields[key].split()
    try:
        numbers = [float(word) for word in words[:count]]
    except ValueError:
        numbers = []
    if len(numbers) != count or not all(n.is_integer() for n in numbers):
        raise MetaImageError(f"{key} = {fields[key][:40]!r} is not {count} whole number(s)")
    return [int(n) for n in numbers]


@dataclass(frozen=True)
class MetaImageHeader:
    """Where a MetaImage's pixels are and how they are stored."""

    size: tuple[int, ...]  # DimSize: width, height[, depth]
    components: int
    dtype: np.dtype  # in the file's byte order
    binary: bool  # False: the pixels are text, which only SimpleITK reads
    compressed: bool
    compressed_size: int  # 0: up to the end of the data file
    header_size: int
    data_file: Path
    data_offset: int  # where the pixels start without HeaderSize: after the header (LOCAL) or 0

    @classmethod
    def read(cls, path: Path) -> "MetaImageHeader":
        path = Path(path)
        fields, header_end = _header_fields(path)
        (ndims,) = _integers(fields, "NDims")
        if ndims < 1:
            raise MetaImageError(f"NDims = {ndims} is not a number of dimensions")
        size = tuple(_integers(fields, "DimSize", count=ndims))
        element_type = fields.get("ElementType", "")
        if element_type not in ELEMENT_TYPES:
            raise MetaImageError(f"ElementType {element_type[:40]!r} is not a supported pixel type")
        (components,) = _integers(fields, "ElementNumberOfChannels", default=1)
        big_endian = _flag(fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")))
        compressed = _flag(fields.get("CompressedData", "False"))
        binary = _flag(fields.get("BinaryData", "True"))
        data_name = fields["ElementDataFile"]
        if data_name in LOCAL_DATA:
            data_file, data_offset = path, header_end
        elif data_name.startswith("LIST") or "%" in data_name:
            raise MetaImageError(f"ElementDataFile = {data_name[:40]!r}: one data file per image is not supported")
        else:
            data_file, data_offset = path.parent / data_name, 0
            packed = [data_file.with_name(data_file.name + suffix) for suffix in COMPRESSED_DATA_SUFFIXES]
            if not data_file.exists() and any(candidate.exists() for candidate in packed):
                data_file, compressed, binary = next(c for c in packed if c.exists()), True, True
        (compressed_size,) = _integers(fields, "CompressedDataSize", default=0)
        (header_size,) = _integers(fields, "HeaderSize", default=0)
        if compressed_size < 0:
            raise MetaImageError(f"CompressedDataSize = {compressed_size} is negative")
        return cls(size, components, np.dtype(ELEMENT_TYPES[element_type]).newbyteorder(">" if big_endian else "<"),
                   binary, binary and compressed, compressed_size, header_size, data_file, data_offset)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image as numpy holds it: (H, W) or (H, W, C)."""
        width, height = self.size[:2]
        return (height, width, self.components) if self.components > 1 else (height, width)

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape)) * self.dtype.itemsize

    @property
    def depth(self) -> int:
        return self.size[2] if len(self.size) == 3 else 1

    def data_region(self) -> tuple[int, int]:
        """(first byte, byte count) of the stored pixels in the data file, checked against its size."""
        file_size = self.data_file.stat().st_size
        needed = self.image_bytes * self.depth
        if self.header_size == -1:
            if self.compressed:
                raise MetaImageError("HeaderSize = -1 (data at the end of the file) with compressed data")
            start = file_size - needed
        else:
            start = self.header_size if self.header_size > 0 else self.data_offset
        available = max(0, file_size - start)
        if self.compressed:
            stored = self.compressed_size or available
            if stored > available:
                raise MetaImageError(f"truncated: CompressedDataSize is {stored} bytes but {available} follow")
            return start, stored
        if start < 0 or available < needed:
            raise MetaImageError(f"truncated: {available} bytes of image data where the header needs {needed}")
        return start, needed

    def images(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """The images at these increasing positions, in native byte order, one at a time: uncompressed ones
        read at their offset, compressed ones by inflating the stream up to the last one asked for (whether
        the stream ends right after the pixels is checked only when that is the stack's last image)."""
        start, stored = self.data_region()
        native = self.dtype.newbyteorder("=")
        count = int(np.prod(self.image_shape))
        if not self.compressed:
            for index in indices:  # no name keeps an image while the next is read
                offset = start + index * self.image_bytes
                yield np.fromfile(self.data_file, dtype=self.dtype, count=count,
                                  offset=offset).reshape(self.image_shape).astype(native, copy=False)
            return
        wanted, last = set(indices), max(indices, default=-1)
        with open(self.data_file, "rb") as handle:
            handle.seek(start)
            stream = _Inflater(handle, stored)
            for index in range(last + 1):
                image = np.empty(count, dtype=self.dtype)
                stream.read_into(memoryview(image).cast("B"))
                if index in wanted:
                    yield image.reshape(self.image_shape).astype(native, copy=False)
                del image  # not kept while the next one is inflated
            if last == self.depth - 1:
                stream.check_ended()


class _Inflater:
    """A zlib or gzip stream of `stored` bytes from `handle`, decompressed a bounded piece at a time."""

    def __init__(self, handle, stored: int) -> None:
        self.handle = handle
        self.left = stored  # compressed bytes not yet read from the file
        self.produced = 0
        self.decompressor = zlib.decompressobj(ZLIB_OR_GZIP)

    def _next_input(self) -> bytes:
        if self.decompressor.unconsumed_tail:
            return self.decompressor.unconsumed_tail
        chunk = self.handle.read(min(READ_CHUNK_BYTES, self.left))
        self.left -= len(chunk)
        return chunk

    def _inflate(self, data: bytes, limit: int) -> bytes:
        try:
            return self.decompressor.decompress(data, limit)
        except zlib.error as error:
            raise MetaImageError(f"compressed data is corrupt after {self.produced} bytes ({error})") from None

    def read_into(self, target: memoryview) -> None:
        """Fill `target` with the next decompressed bytes; the stream must hold them all."""
        filled = 0
        while filled < len(target):
            if self.decompressor.eof:
                raise MetaImageError(f"compressed data ends after {self.produced} bytes, "
                                     "fewer than the header declares")
            data = self._next_input()
            piece = self._inflate(data, min(len(target) - filled, READ_CHUNK_BYTES))
            if not piece and not data:
                raise MetaImageError(f"compressed data is cut off after {self.produced} decompressed bytes")
            target[filled:filled + len(piece)] = piece
            filled += len(piece)
            self.produced += len(piece)

    def check_ended(self) -> None:
        """The stream must end right after the declared pixels (bytes after its end are ignored, as MetaIO does)."""
        while not self.decompressor.eof:
            data = self._next_input()
            if self._inflate(data, 1):
                raise MetaImageError("compressed data holds more than the header declares")
            if not data:
                raise MetaImageError("compressed data is cut off: the stream does not end")
