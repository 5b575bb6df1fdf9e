"""ImageStack: every kind of input file gives back exactly the images written into it."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import pad_gray, save_image, save_stack

from algorithm.reader import ImageStack, InputError, looks_like_image
from training.synthetic import synthetic_set

HEIGHT, WIDTH = 90, 70


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return synthetic_set(3, 4, seed=5, sizes=[(80, 60), (90, 70), (70, 52)])[0]


def padded_gray(images: list[np.ndarray]) -> np.ndarray:
    return pad_gray(images, HEIGHT, WIDTH)


@pytest.mark.parametrize("compress", [False, True])
def test_a_challenge_stack_gives_its_rgb_images_in_order(tmp_path, images, compress):
    stack = ImageStack(save_stack(tmp_path, "s.mha", images, HEIGHT, WIDTH, compress=compress))
    assert (len(stack), stack.width, stack.height, stack.components) == (3, WIDTH, HEIGHT, 3)
    read = list(stack)
    assert len(read) == 3
    expected = padded_gray(images)
    for image, gray in zip(read, expected):
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], gray)
    assert [np.array_equal(a, b) for a, b in zip(read, list(stack))] == [True] * 3  # can be read again


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_single_channel_stack_gives_2d_images(tmp_path, images, dtype):
    volume = padded_gray(images).astype(dtype) * 3
    path = save_image(tmp_path / "gray.mha", volume)
    read = list(ImageStack(path))
    assert len(read) == 3
    for image, expected in zip(read, volume):
        assert image.dtype == dtype
        np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("key", ["BinaryDataByteOrderMSB", "ElementByteOrderMSB"])
def test_a_big_endian_16_bit_stack_is_read_with_its_byte_order(tmp_path, key):
    """MetaIO accepts either header key for the byte order; both must give the same values."""
    data = (np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 1001)
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\n{key} = True\nCompressedData = False\n"
              "DimSize = 4 3 2\nElementType = MET_USHORT\nElementDataFile = LOCAL\n")
    path = tmp_path / "big-endian.mha"
    path.write_bytes(header.encode() + data.astype(">u2").tobytes())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), data)  # what SimpleITK reads
    np.testing.assert_array_equal(np.stack(list(ImageStack(path))), data)


@pytest.mark.parametrize("name, array", [
    ("gray.png", np.arange(35 * 20, dtype=np.uint8).reshape(35, 20)),
    ("rgb.png", np.dstack([np.arange(35 * 20, dtype=np.uint8).reshape(35, 20)] * 3)),
    ("wide.mha", np.arange(35 * 20, dtype=np.uint16).reshape(35, 20) * 90),
])
def test_a_2d_image_is_a_stack_of_one(tmp_path, name, array):
    stack = ImageStack(save_image(tmp_path / name, array, vector=array.ndim == 3))
    assert len(stack) == 1
    (image,) = list(stack)
    np.testing.assert_array_equal(image, array)


def test_a_truncated_stack_is_refused_when_opened(tmp_path, images):
    path = save_stack(tmp_path, "s.mha", images, HEIGHT, WIDTH)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 10)
    with pytest.raises(InputError, match="truncated"):
        ImageStack(path)


def test_a_truncated_compressed_stack_fails_when_read(tmp_path, images):
    path = save_stack(tmp_path, "s.mha", images, HEIGHT, WIDTH, compress=True)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(InputError, match="s.mha"):
        list(ImageStack(path))


def test_a_file_that_is_no_image_is_refused(tmp_path):
    fake = tmp_path / "fake.mha"
    fake.write_text("this is not a MetaImage\n")
    with pytest.raises(InputError, match="fake.mha"):
        ImageStack(fake)


@pytest.mark.parametrize("name, meant_as_image", [
    ("A.MHA", True), ("x.nii.gz", True), ("scan.png", True), ("notes.txt", False), ("stack.mha.bak", False),
])
def test_file_name_endings_decide_what_must_be_readable(name, meant_as_image):
    assert looks_like_image(Path(name)) == meant_as_image


def test_the_content_hash_changes_with_the_bytes_only(tmp_path, images):
    first = save_stack(tmp_path, "a.mha", images, HEIGHT, WIDTH)
    second = save_stack(tmp_path, "b.mha", images, HEIGHT, WIDTH)
    third = save_stack(tmp_path, "c.mha", images[::-1], HEIGHT, WIDTH)
    assert ImageStack(first).content_hash() == ImageStack(second).content_hash()
    assert ImageStack(first).content_hash() != ImageStack(third).content_hash()


@pytest.mark.parametrize("compress", [False, True])
def test_a_stack_gives_the_images_asked_for_in_the_order_asked(tmp_path, images, compress):
    stack = ImageStack(save_stack(tmp_path, "s.mha", images, HEIGHT, WIDTH, compress=compress))
    expected = padded_gray(images)
    for order in ([2, 0, 1], [1, 1], [2], [], [0, 1, 2]):
        read = list(stack.read(order))
        assert len(read) == len(order)
        for image, index in zip(read, order):
            np.testing.assert_array_equal(image[..., 0], expected[index])
    with pytest.raises(IndexError, match="s.mha: no image at position 3 of a stack of 3"):
        list(stack.read([0, 3]))


def test_a_compressed_stream_with_more_than_declared_is_refused_only_when_read_to_its_end(tmp_path, images):
    """Reading a subset stops inflating after the last image asked for; the whole stack is still checked."""
    path = save_stack(tmp_path, "s.mha", images, HEIGHT, WIDTH, compress=True)
    header = path.read_bytes().split(b"ElementDataFile = LOCAL\n")[0]
    data = zlib.compress(np.repeat(padded_gray(images)[..., None], 3, axis=3).tobytes() + b"extra")
    size = next(line for line in header.split(b"\n") if line.startswith(b"CompressedDataSize"))
    path.write_bytes(header.replace(size, b"CompressedDataSize = %d" % len(data)) + b"ElementDataFile = LOCAL\n" + data)
    stack = ImageStack(path)
    assert len(list(stack.read([0, 1]))) == 2
    with pytest.raises(InputError, match="holds more than the header declares"):
        list(stack)
