"""Hostile and odd inputs: each class is generated here (small files; big sizes are only declared) and
must end in the correct result, or in one `error:` line naming the file, a non-zero exit and no output.

Three tables:
- AGREEING: MetaImage headers SimpleITK reads correctly; the streamed reader must give exactly its pixels.
- REFUSED: files the reader must refuse, in-process, with the file's name in the message.
- RUNS: whole runs of `python -m algorithm.process` (a subprocess each, the tiny untrained model).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FIVE_HEIGHT, FIVE_IMAGES, FIVE_WIDTH, UNTRAINED_LANDMARKS, assert_valid_output, pad_gray

from algorithm.inference import LandmarkDetector
from algorithm.preprocessing import content_extent, prepare
from algorithm.reader import MAX_ABS_PIXEL_VALUE, MAX_IMAGE_SIDE, MAX_IMAGES_PER_FILE, ImageStack, InputError

REPO = Path(__file__).resolve().parent.parent
VOLUME = np.arange(-12, 12, dtype=np.int16).reshape(2, 3, 4) * 1000  # (depth, height, width), negatives too
LITTLE = VOLUME.astype("<i2").tobytes()
BIG = VOLUME.astype(">i2").tobytes()
ZLIB = zlib.compress(LITTLE)
GZIP = gzip.compress(LITTLE)


def header(size: tuple[int, ...] = (4, 3, 2), element_type: str = "MET_SHORT", data_file: str = "LOCAL",
           **fields) -> bytes:
    """A MetaImage header as MetaIO writes one, with `fields` added before ElementDataFile."""
    lines = ["ObjectType = Image", f"NDims = {len(size)}", "BinaryData = True",
             f"DimSize = {' '.join(map(str, size))}", f"ElementType = {element_type}"]
    lines += [f"{key} = {value}" for key, value in fields.items()]
    return ("\n".join(lines + [f"ElementDataFile = {data_file}"]) + "\n").encode()


def write(path: Path, *parts: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def made(name: str, *parts: bytes) -> Callable[[Path], Path]:
    """A builder of the file `name` in the folder given, from `parts`."""
    return lambda folder: write(folder / name, *parts)


def local(name: str, *parts: bytes) -> Callable[[Path], tuple[Path, np.ndarray]]:
    """A builder of one MetaImage that holds VOLUME."""
    return lambda folder: (made(name, *parts)(folder), VOLUME)


def detached(data_name: str, data: bytes, **fields) -> Callable[[Path], tuple[Path, np.ndarray]]:
    """A builder of v.mhd with its pixels in `data_name` (relative to the folder)."""
    def make(folder: Path) -> tuple[Path, np.ndarray]:
        write(folder / data_name, data)
        return write(folder / "v.mhd", header(data_file=data_name.removesuffix(".gz"), **fields)), VOLUME
    return make


def typed(element_type: str, array: np.ndarray, **fields) -> Callable[[Path], tuple[Path, np.ndarray]]:
    """A builder of a .mha of `array` ((depth, height, width[, channels]), stored in its own byte order)."""
    size = (array.shape[2], array.shape[1], array.shape[0])
    if array.ndim == 4:
        fields["ElementNumberOfChannels"] = array.shape[3]
    return lambda folder: (write(folder / "t.mha", header(size, element_type, **fields), array.tobytes()),
                           array.astype(array.dtype.newbyteorder("=")))


AGREEING = {
    "CompressedData = T": local("s.mha", header(CompressedData="T", CompressedDataSize=len(ZLIB)), ZLIB),
    "CompressedData = 1": local("s.mha", header(CompressedData="1", CompressedDataSize=len(ZLIB)), ZLIB),
    "CompressedData = true": local("s.mha", header(CompressedData="true", CompressedDataSize=len(ZLIB)), ZLIB),
    "CompressedData = yes is false": local("s.mha", header(CompressedData="yes"), LITTLE),
    "a gzip stream": local("s.mha", header(CompressedData="True", CompressedDataSize=len(GZIP)), GZIP),
    "bytes after the stream": local("s.mha", header(CompressedData="True", CompressedDataSize=len(ZLIB) + 4),
                                    ZLIB, b"tail"),
    "BinaryDataByteOrderMSB = T": local("s.mha", header(BinaryDataByteOrderMSB="T"), BIG),
    "BinaryDataByteOrderMSB = 1": local("s.mha", header(BinaryDataByteOrderMSB="1"), BIG),
    "ElementByteOrderMSB = True": local("s.mha", header(ElementByteOrderMSB="True"), BIG),
    "BinaryDataByteOrderMSB wins": local("s.mha", header(ElementByteOrderMSB="True", BinaryDataByteOrderMSB="F"),
                                         LITTLE),
    "HeaderSize = 300": local("s.mha", header(HeaderSize=300).ljust(300, b"#"), LITTLE),
    "HeaderSize = 300, compressed": local("s.mha", header(HeaderSize=300, CompressedData="T",
                                                          CompressedDataSize=len(ZLIB)).ljust(300, b"#"), ZLIB),
    "HeaderSize = -1": local("s.mha", header(HeaderSize=-1), b"junk before the pixels", LITTLE),
    "HeaderSize = -5 skips nothing": local("s.mha", header(HeaderSize=-5), LITTLE),
    "ElementDataFile = Local": local("s.mha", header(data_file="Local"), LITTLE),
    "ElementDataFile = local": local("s.mha", header(data_file="local"), LITTLE),
    "colons": local("s.mha", header().replace(b" = ", b": "), LITTLE),
    "tabs, no spaces": local("s.mha", header().replace(b" = ", b"\t="), LITTLE),
    "CRLF line ends": local("s.mha", header().replace(b"\n", b"\r\n"), LITTLE),
    "indented keys": local("s.mha", header().replace(b"\n", b"\n  ")[:-2], LITTLE),
    "a key given twice": local("s.mha", header(element_type="MET_UCHAR", ElementType="MET_SHORT"), LITTLE),
    "data file beside": detached("v.raw", LITTLE),
    "data file in a subfolder": detached("data/v.raw", LITTLE),
    "data file with HeaderSize": detached("v.raw", b"#" * 64 + LITTLE, HeaderSize=64),
    "data file with HeaderSize = -1": detached("v.raw", b"#" * 64 + LITTLE, HeaderSize=-1),
    "data file found as .gz": detached("v.raw.gz", GZIP),
    "compressed data file, no CompressedDataSize": detached("v.zraw", ZLIB, CompressedData="True"),
    "a 2D image": lambda folder: (write(folder / "t.mha", header((4, 3)), VOLUME[0].tobytes()), VOLUME[:1]),
    "3 channels": typed("MET_UCHAR", np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)),
    "float": typed("MET_FLOAT", (VOLUME / 7).astype("<f4")),
    "big-endian double": typed("MET_DOUBLE", (VOLUME / 7).astype(">f8"), BinaryDataByteOrderMSB="True"),
    "MET_LONG is 4 bytes": typed("MET_LONG", VOLUME.astype("<i4")),
    "unsigned 64-bit": typed("MET_ULONG_LONG", (VOLUME + 20000).astype("<u8")),
    "text pixels (BinaryData = False)": local("s.mha", header(BinaryData="False"),
                                              " ".join(map(str, VOLUME.ravel())).encode() + b"\n"),
}


@pytest.mark.parametrize("name", AGREEING)
def test_the_reader_gives_exactly_what_simpleitk_reads(tmp_path, name):
    path, written = AGREEING[name](tmp_path)
    from_sitk = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    ours = np.stack(list(ImageStack(path)))
    assert ours.dtype == from_sitk.dtype
    np.testing.assert_array_equal(from_sitk.reshape(written.shape), written)  # the case is what it claims
    np.testing.assert_array_equal(ours, written)


def test_compressed_data_without_its_size_is_read_to_the_end_of_the_file(tmp_path):
    """As MetaIO's code intends (SimpleITK 2.5.7 returns an uninitialised buffer for it instead)."""
    path = write(tmp_path / "s.mha", header(CompressedData="True"), ZLIB)
    np.testing.assert_array_equal(np.stack(list(ImageStack(path))), VOLUME)


def outside_data(name: str, data_file: Callable[[Path], str]) -> Callable[[Path], Path]:
    """A header in `folder` whose pixels are the file `secret.raw` beside the folder, named by `data_file`."""
    def make(folder: Path) -> Path:
        write(folder.parent / "secret.raw", LITTLE)
        return write(folder / name, header(data_file=data_file(folder)))
    return make


def linked_outside(folder: Path) -> Path:
    """A data file inside the folder that is a link to one outside."""
    write(folder.parent / "secret.raw", LITTLE)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v.raw").symlink_to(folder.parent / "secret.raw")
    return write(folder / "v.mhd", header(data_file="v.raw"))


def nrrd_outside(folder: Path) -> Path:
    write(folder.parent / "secret.raw", LITTLE)
    text = ("NRRD0004\ntype: int16\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: raw\n"
            "data file: ../secret.raw\n")
    return write(folder / "v.nhdr", text.encode())


def float_image(value: float) -> Callable[[Path], Path]:
    image = np.ones((2, 3, 4), dtype="<f4")
    image[1, 2, 3] = value
    return lambda folder: write(folder / "f.mha", header(element_type="MET_FLOAT"), image.tobytes())


def saved_then_cut(name: str, array: np.ndarray, cut_bytes: int, cut_name: str | None = None) -> Callable[[Path], Path]:
    """`array` written by SimpleITK as `name`, then `cut_name` (default: the same file) cut short."""
    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        cut = folder / (cut_name or name)
        data = cut.read_bytes()
        cut.write_bytes(data[: len(data) - cut_bytes])
        return path
    return make


def broken_link(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.mha").symlink_to(folder / "missing.mha")
    return folder / "x.mha"


PATTERN = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
REFUSED = {
    "compressed garbage": (lambda f: write(f / "s.mha", header(CompressedData="T", CompressedDataSize=40),
                                           b"x" * 40), "corrupt"),
    "compressed stream cut, no size": (made("s.mha", header(CompressedData="True"), ZLIB[:-6]), "cut off"),
    "compressed stream cut, size kept": (made("s.mha", header(CompressedData="T", CompressedDataSize=len(ZLIB)),
                                              ZLIB[:-6]), "truncated"),
    "stream shorter than declared": (made("s.mha", header((4, 3, 3), CompressedData="T"), ZLIB), "fewer"),
    "stream longer than declared": (made("s.mha", header(CompressedData="T"), zlib.compress(LITTLE * 2)),
                                    "more than the header declares"),
    "HeaderSize = -1 with compression": (made("s.mha", header(HeaderSize=-1, CompressedData="T"), ZLIB),
                                         "HeaderSize = -1"),
    "uncompressed, truncated": (made("s.mha", header(), LITTLE[:-2]), "truncated"),
    "data file ../secret.raw": (outside_data("v.mhd", lambda f: "../secret.raw"), "outside the input folder"),
    "data file by absolute path": (outside_data("v.mhd", lambda f: str(f.parent / "secret.raw")), "outside"),
    "data file linked outside": (linked_outside, "outside"),
    "NRRD data file outside": (nrrd_outside, "outside"),
    "LIST of data files": (made("s.mhd", header(data_file="LIST")), "one data file per image"),
    "data file pattern": (made("s.mhd", header(data_file="v%03d.raw 1 2 1")), "one data file per image"),
    "20000 x 20000 in 1 KiB": (made("s.mha", header((20000, 20000, 1), "MET_UCHAR"), b"\0" * 1024),
                               f"at most {MAX_IMAGE_SIDE}"),
    "no images": (made("s.mha", header((4, 3, 0))), "a stack of 0 images"),
    "no columns": (made("s.mha", header((0, 3, 2))), "an empty image"),
    "too many images": (made("s.mha", header((4, 3, MAX_IMAGES_PER_FILE + 1))), "images; at most"),
    "too many channels": (made("s.mha", header(ElementNumberOfChannels=5)), "values a pixel"),
    "4D": (made("s.mha", header((4, 3, 2, 2))), "4 dimensions"),
    "HeaderSize not a number": (made("s.mha", header(HeaderSize="abc"), LITTLE), "HeaderSize"),
    "unsupported ElementType": (made("s.mha", header(element_type="MET_STRING"), LITTLE), "ElementType"),
    "text named .mha": (made("s.mha", b"scanned on the old machine\n"), "not a MetaImage header"),
    "NaN": (float_image(np.nan), "NaN"),
    "infinity": (float_image(-np.inf), "infinite"),
    "1e36": (float_image(1e36), f"beyond the {MAX_ABS_PIXEL_VALUE:.0e}"),
    "truncated .nii": (saved_then_cut("x.nii", PATTERN, 100), "truncated"),
    "cut .nii.gz": (saved_then_cut("x.nii.gz", PATTERN, 20), "broken"),
    "Analyze pair, .img truncated": (saved_then_cut("x.hdr", PATTERN, 100, "x.img"), "truncated"),
    "truncated BMP": (saved_then_cut("x.bmp", PATTERN, 100), "truncated"),
    "broken link": (broken_link, "broken link"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_the_reader_refuses_with_the_file_name(tmp_path, name):
    make, message = REFUSED[name]
    path = make(tmp_path / "input")
    with pytest.raises(InputError) as caught:
        list(ImageStack(path))
    assert str(caught.value).startswith(f"{path.name}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_rows_whose_maximum_is_0_are_content_when_values_can_be_negative():
    image = np.zeros((10, 8), dtype=np.int16)
    image[:6, :5] = -np.arange(30, dtype=np.int16).reshape(6, 5)  # every row's maximum is 0
    assert content_extent(image) == (6, 5)
    assert content_extent(image.astype(np.float32)) == (6, 5)


def test_float_values_up_to_the_limit_are_normalised_like_small_ones():
    image = pad_gray(FIVE_IMAGES[:1], FIVE_HEIGHT, FIVE_WIDTH)[0].astype(np.float32)
    small, _ = prepare(image, 128, 96, "zscore")
    huge, _ = prepare(image * np.float32(MAX_ABS_PIXEL_VALUE / 255), 128, 96, "zscore")
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge, small, atol=1e-3)


# --- whole runs -------------------------------------------------------------------------------------------

def stack_file(folder: Path, name: str, images: list[np.ndarray], **fields) -> Path:
    """The images, zero-padded, as a single-channel uint8 MetaImage; CompressedData given: zlib-compressed."""
    data = pad_gray(images, FIVE_HEIGHT, FIVE_WIDTH).tobytes()
    if "CompressedData" in fields:
        data = zlib.compress(data)
    return write(folder / name, header((FIVE_WIDTH, FIVE_HEIGHT, len(images)), "MET_UCHAR", **fields), data)


def all_five(folder: Path) -> None:
    stack_file(folder, "stack.mha", FIVE_IMAGES)


def compressed_t(folder: Path) -> None:
    stack_file(folder, "stack.mha", FIVE_IMAGES, CompressedData="T",
               CompressedDataSize=len(zlib.compress(pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH).tobytes())))


def compressed_without_size(folder: Path) -> None:
    stack_file(folder, "stack.mha", FIVE_IMAGES, CompressedData="1")


def big_endian_with_header_size(folder: Path) -> None:
    pixels = (pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH).astype(np.uint16) * 257).astype(">u2")
    head = header((FIVE_WIDTH, FIVE_HEIGHT, 5), "MET_USHORT", BinaryDataByteOrderMSB="T", HeaderSize=512)
    write(folder / "stack.mha", head.ljust(512, b" "), pixels.tobytes())


def signed_content(image: np.ndarray) -> np.ndarray:
    """int16 content in which every row's maximum is 0, in its first column; every other value is negative."""
    content = -1 - image.astype(np.int16)
    content[:, 0] = 0
    return content


def signed_rows(folder: Path) -> None:
    padded = np.zeros((1, FIVE_HEIGHT, FIVE_WIDTH), dtype=np.int16)
    content = signed_content(FIVE_IMAGES[0])
    padded[0, : content.shape[0], : content.shape[1]] = content
    write(folder / "signed.mha", header((FIVE_WIDTH, FIVE_HEIGHT, 1)), padded.astype("<i2").tobytes())


def analyze_pair(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = pad_gray(FIVE_IMAGES[:1], FIVE_HEIGHT, FIVE_WIDTH)[0]
    sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "x.hdr"))


def metaimage_with_img_data(folder: Path) -> None:
    write(folder / "pixels.img", pad_gray(FIVE_IMAGES, FIVE_HEIGHT, FIVE_WIDTH).tobytes())
    write(folder / "stack.mhd", header((FIVE_WIDTH, FIVE_HEIGHT, 5), "MET_UCHAR", data_file="pixels.img"))


def linked_subfolder(folder: Path) -> None:
    stack_file(folder, "a.mha", FIVE_IMAGES[:2])
    stack_file(folder.parent / "elsewhere", "b.mha", FIVE_IMAGES[2:])
    (folder / "link").symlink_to(folder.parent / "elsewhere")


def apple_double(folder: Path) -> None:
    all_five(folder)
    write(folder / "._stack.mha", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")


def garbage_compressed(folder: Path) -> None:
    write(folder / "stack.mha", header((FIVE_WIDTH, FIVE_HEIGHT, 5), "MET_UCHAR", CompressedData="T"), b"x" * 999)


def reads_outside(folder: Path) -> None:
    write(folder.parent / "secret.raw", bytes(FIVE_WIDTH * FIVE_HEIGHT))
    write(folder / "stack.mhd", header((FIVE_WIDTH, FIVE_HEIGHT, 1), "MET_UCHAR", data_file="../secret.raw"))


def huge(folder: Path) -> None:
    write(folder / "huge.mha", header((20000, 20000, 1), "MET_UCHAR"), bytes(1024))


def no_images(folder: Path) -> None:
    write(folder / "empty.mha", header((FIVE_WIDTH, FIVE_HEIGHT, 0), "MET_UCHAR"))


def float_stack(value: float) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        pixels = pad_gray(FIVE_IMAGES[:2], FIVE_HEIGHT, FIVE_WIDTH).astype("<f4")
        pixels[1, 5, 5] = value
        write(folder / "float.mha", header((FIVE_WIDTH, FIVE_HEIGHT, 2), "MET_FLOAT"), pixels.tobytes())
    return make


def locked_subfolder(folder: Path) -> None:
    all_five(folder)
    stack_file(folder / "locked", "more.mha", FIVE_IMAGES[:1])


def folder_loop(folder: Path) -> None:
    all_five(folder)
    (folder / "loop").symlink_to(folder)


def duplicate(folder: Path) -> None:
    stack_file(folder, "a.mha", FIVE_IMAGES)
    stack_file(folder, "b.mha", FIVE_IMAGES)


def truncated_nifti(folder: Path) -> None:
    saved_then_cut("image.nii", pad_gray(FIVE_IMAGES[:1], FIVE_HEIGHT, FIVE_WIDTH)[0], 500)(folder)


def model_with(change: Callable[[Path], None]) -> Callable[[Path, Path], Path]:
    """A copy of the untrained model folder, changed."""
    def make(model: Path, case_dir: Path) -> Path:
        copy = shutil.copytree(model, case_dir / "model")
        change(copy)
        return copy
    return make


def edit_metadata(**changes) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        metadata = json.loads((model / "metadata.json").read_text())
        metadata.update({key: value(metadata) for key, value in changes.items()})
        (model / "metadata.json").write_text(json.dumps(metadata))
    return change


def edit_codec(**changes) -> Callable[[Path], None]:
    return edit_metadata(codec=lambda m: {**m["codec"], **changes})


def older_layout(model: Path) -> None:
    """The metadata as exports wrote it before the codec was one object: its fields at the top level."""
    metadata = json.loads((model / "metadata.json").read_text())
    codec = metadata.pop("codec")
    metadata.update(input_height=codec["input_height"], input_width=codec["input_width"],
                    heatmap_stride=codec["stride"], heatmap_sigma=codec["sigma"], decoder=codec["decoder"])
    (model / "metadata.json").write_text(json.dumps(metadata))


# Whoever runs these may be root, who can list any folder; an unreadable folder is therefore made by
# failing os.scandir for it, in the process under test and nowhere else.
LOCKED_SCANDIR = """
import os, runpy
real_scandir = os.scandir
def scandir(path="."):
    if os.path.basename(os.fspath(path)) == "locked":
        raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_scandir(path)
os.scandir = scandir
runpy.run_module("algorithm.process", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    """One run of the entry point: what is made, how it is called, what comes out."""

    make: Callable[[Path], None]
    expect: list[str] | int  # the parts of the one error line, or the number of images in the output
    model: Callable[[Path, Path], Path] | None = None  # (untrained model, case folder) -> model folder
    output: Callable[[Path], Path] | None = None  # case folder -> --output
    python_code: str | None = None  # run this with `python -c` instead of `python -m algorithm.process`
    returncode: int = -1
    stderr: str = ""
    output_file: Path = field(default=Path())


def output_is_a_folder(case_dir: Path) -> Path:
    (case_dir / "out.json").mkdir(parents=True)
    return case_dir / "out.json"


def output_under_a_file(case_dir: Path) -> Path:
    write(case_dir / "notes.txt", b"not a folder")
    return case_dir / "notes.txt" / "out.json"


def output_is_a_pipe(case_dir: Path) -> Path:
    os.mkfifo(case_dir / "pipe.json")
    return case_dir / "pipe.json"


def output_not_writable(case_dir: Path) -> Path:
    """A folder nobody may create files in: read-only for a user, /sys (sysfs) for root."""
    if os.geteuid() != 0:
        folder = case_dir / "read-only"
        folder.mkdir(parents=True)
        folder.chmod(0o555)
        return folder / "out.json"
    return Path("/sys/orthodontic-landmarks.json")


RUNS = {
    "CompressedData = T": Run(compressed_t, 5),
    "no CompressedDataSize": Run(compressed_without_size, 5),
    "big-endian 16-bit, HeaderSize": Run(big_endian_with_header_size, 5),
    "signed rows whose maximum is 0": Run(signed_rows, 1),
    "Analyze pair": Run(analyze_pair, 1),
    ".mhd with its pixels in a .img": Run(metaimage_with_img_data, 5),
    "linked subfolder": Run(linked_subfolder, 5),
    "AppleDouble sidecar": Run(apple_double, 5),
    "garbage compressed data": Run(garbage_compressed, ["stack.mha", "corrupt"]),
    "data file outside the input": Run(reads_outside, ["stack.mhd", "outside the input folder"]),
    "20000 x 20000 declared": Run(huge, ["huge.mha", f"at most {MAX_IMAGE_SIDE}"]),
    "a stack of 0 images": Run(no_images, ["empty.mha", "a stack of 0 images"]),
    "NaN": Run(float_stack(np.nan), ["float.mha", "image 2", "NaN"]),
    "1e36": Run(float_stack(1e36), ["float.mha", "image 2", "beyond"]),
    "unreadable subfolder": Run(locked_subfolder, ["locked", "cannot be read"], python_code=LOCKED_SCANDIR),
    "folder link loop": Run(folder_loop, ["loop", "twice"]),
    "the same stack twice": Run(duplicate, ["b.mha", "a.mha"]),
    "truncated NIfTI": Run(truncated_nifti, ["image.nii", "truncated"]),
    "broken link": Run(broken_link, ["x.mha", "broken link"]),
    "metadata: wrong heatmap stride": Run(all_five, ["model.onnx", "heatmap stride 4"],
                                          model=model_with(edit_codec(stride=4))),
    "metadata: wrong input size": Run(all_five, ["model.onnx", "(N, 1, 160, 96)"],
                                      model=model_with(edit_codec(input_height=160))),
    "metadata: a landmark name short": Run(all_five, ["model.onnx", "landmark names"],
                                           model=model_with(edit_metadata(
                                               landmark_names=lambda m: m["landmark_names"][:-1]))),
    "metadata: stride 0": Run(all_five, ["metadata.json", "stride"],
                              model=model_with(edit_codec(stride=0))),
    "metadata: an older export's layout": Run(all_five, ["metadata.json", "older export", "training.export"],
                                              model=model_with(older_layout)),
    "metadata: unknown output activation": Run(all_five, ["metadata.json", "activation 'sigmoid'"],
                                               model=model_with(edit_codec(activation="sigmoid"))),
    "metadata: second stage file missing": Run(all_five, ["refine.onnx", "not found", "--no-refine"],
                                               model=model_with(edit_metadata(refinement=lambda m: {
                                                   "crops": {"fraction": 0.1, "size": 32},
                                                   "codec": {**m["codec"], "input_height": 32, "input_width": 32}}))),
    "model.onnx not a model": Run(all_five, ["model.onnx"],
                                  model=model_with(lambda m: (m / "model.onnx").write_bytes(b"not a model"))),
    "output is a folder": Run(all_five, ["out.json", "is a folder"], output=output_is_a_folder),
    "output under a file": Run(all_five, ["notes.txt", "is a file"], output=output_under_a_file),
    "output is a named pipe": Run(all_five, ["pipe.json", "not a regular file"], output=output_is_a_pipe),
    "output folder not writable": Run(all_five, ["out.json" if os.geteuid() else "/sys", "cannot write"],
                                      output=output_not_writable),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, untrained_model) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("hostile")

    def run(name: str) -> Run:
        case = RUNS[name]
        case_dir = root / name.replace(" ", "-").replace(":", "").replace("/", "")
        folder = case_dir / "input"
        folder.mkdir(parents=True)
        case.make(folder)
        model = case.model(untrained_model, case_dir) if case.model else untrained_model
        case.output_file = case.output(case_dir) if case.output else case_dir / "output" / "landmarks.json"
        args = ["--input", folder, "--output", case.output_file, "--model", model, "--device", "cpu"]
        command = ["-c", case.python_code] if case.python_code else ["-m", "algorithm.process"]
        result = subprocess.run([sys.executable, *command, *map(str, args)], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        case.returncode, case.stderr = result.returncode, result.stderr
        return case

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(RUNS, pool.map(run, RUNS)))


FAILING = [name for name, case in RUNS.items() if isinstance(case.expect, list)]
SUCCEEDING = [name for name, case in RUNS.items() if isinstance(case.expect, int)]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAILING)
def test_a_hostile_input_fails_with_one_error_line_naming_the_file_and_no_output(runs, name):
    run = runs[name]
    assert run.returncode != 0, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr and "unexpected failure" not in errors[0], run.stderr
    for part in run.expect:
        assert part in errors[0], errors[0]
    written = run.output_file
    assert not written.is_file() and not (written.is_dir() and any(written.iterdir()))
    assert not written.parent.is_dir() or not any(p.name.endswith(".tmp") for p in written.parent.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in FAILING if name.startswith("output")])
def test_a_bad_output_path_fails_before_the_model_is_loaded(runs, name):
    assert "ONNX Runtime providers" not in runs[name].stderr


def expected_landmarks(name: str, five_image_landmarks: np.ndarray, untrained_model: Path) -> np.ndarray:
    """What each succeeding run must give: the five images' own landmarks, or for the signed image those
    of its positive twin (the same content + 512 as uint16: the same z-scores, and no row is 0)."""
    if name != "signed rows whose maximum is 0":
        return five_image_landmarks[: RUNS[name].expect]
    content = signed_content(FIVE_IMAGES[0])
    twin = np.zeros((FIVE_HEIGHT, FIVE_WIDTH), dtype=np.uint16)
    twin[: content.shape[0], : content.shape[1]] = content + 512
    return np.stack([next(LandmarkDetector(untrained_model, device="cpu").predict([twin])).points])


@pytest.mark.slow
@pytest.mark.parametrize("name", SUCCEEDING)
def test_an_odd_but_valid_input_gives_the_right_landmarks(runs, five_image_landmarks, untrained_model, name):
    run = runs[name]
    assert run.returncode == 0, run.stderr
    found = assert_valid_output(json.loads(run.output_file.read_text()), RUNS[name].expect, UNTRAINED_LANDMARKS)
    np.testing.assert_allclose(found, expected_landmarks(name, five_image_landmarks, untrained_model), atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name, logged", [("AppleDouble sidecar", "._stack.mha: skipped"),
                                          ("Analyze pair", "x.img: skipped"),
                                          (".mhd with its pixels in a .img", "pixels.img: skipped")])
def test_skipped_files_are_logged(runs, name, logged):
    assert logged in runs[name].stderr
