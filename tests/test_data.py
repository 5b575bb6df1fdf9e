"""Both ground-truth layouts (folder + `files`, challenge stack + z = slice), packing, and the split."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PACKED_HEIGHT, PACKED_WIDTH, pad_gray, run_module, save_image

from algorithm.metaimage import READ_CHUNK_BYTES
from algorithm.reader import ImageStack
from training import pack
from training.data import load_data, read_ground_truth
from training.split import make_split
from training.synthetic import synthetic_image


def test_folder_layout_gives_images_landmarks_and_spacing(synthetic_dataset):
    data = load_data(synthetic_dataset.images_dir, synthetic_dataset.annotations)
    assert len(data) == len(synthetic_dataset.images)
    np.testing.assert_array_equal(data.landmarks, synthetic_dataset.landmarks)  # NaN where left out
    assert np.isnan(data.landmarks[synthetic_dataset.missing]).all()
    assert np.isnan(data.landmarks).sum() == 2
    np.testing.assert_array_equal(data.spacing, synthetic_dataset.spacing)  # one given as a string
    assert data.landmark_names == synthetic_dataset.names
    read = list(data.read_images())
    assert len(read) == len(synthetic_dataset.images)
    for image, written in zip(read, synthetic_dataset.images):
        np.testing.assert_array_equal(image, written)
    picked = list(data.read_images([7, 2]))
    np.testing.assert_array_equal(picked[0], synthetic_dataset.images[7])
    np.testing.assert_array_equal(picked[1], synthetic_dataset.images[2])


def test_pack_makes_a_challenge_stack_of_the_padded_images(synthetic_dataset, packed_dataset):
    assert "wrote 12 images" in packed_dataset.pack_result.stdout
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(packed_dataset.stack)))
    assert volume.shape == (len(synthetic_dataset.images), PACKED_HEIGHT, PACKED_WIDTH, 3)
    assert volume.dtype == np.uint8
    expected = pad_gray(synthetic_dataset.images, PACKED_HEIGHT, PACKED_WIDTH)
    for channel in range(3):
        np.testing.assert_array_equal(volume[..., channel], expected)
    original = json.loads(synthetic_dataset.annotations.read_text())
    rewritten = json.loads(packed_dataset.annotations.read_text())
    assert "files" not in rewritten
    assert rewritten["points"] == original["points"] and rewritten["landmarks"] == original["landmarks"]


def test_pack_can_pack_a_subset_with_its_ground_truth_renumbered(synthetic_dataset, tmp_path):
    stack, annotations = tmp_path / "three.mha", tmp_path / "three-gt.json"
    result = run_module("training.pack", "--images", synthetic_dataset.images_dir,
                        "--annotations", synthetic_dataset.annotations, "--output", stack, "--gt-output", annotations,
                        "--height", PACKED_HEIGHT, "--width", PACKED_WIDTH, "--files", "case_08.png", "case_03.png")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 images" in result.stdout
    data = load_data(stack, annotations)
    expected = pad_gray([synthetic_dataset.images[i] for i in (7, 2)], PACKED_HEIGHT, PACKED_WIDTH)
    for image, wanted in zip(data.read_images(), expected):
        np.testing.assert_array_equal(image[..., 0], wanted)
    np.testing.assert_array_equal(data.landmarks, synthetic_dataset.landmarks[[7, 2]])
    unknown = run_module("training.pack", "--images", synthetic_dataset.images_dir, "--annotations",
                         synthetic_dataset.annotations, "--output", tmp_path / "x.mha", "--files", "nope.png")
    assert unknown.returncode == 1 and "nope.png" in unknown.stderr and not (tmp_path / "x.mha").exists()


def test_stack_layout_gives_the_same_data_with_z_as_slice(synthetic_dataset, packed_dataset):
    data = load_data(packed_dataset.stack, packed_dataset.annotations)
    assert len(data) == len(synthetic_dataset.images)
    np.testing.assert_array_equal(data.landmarks, synthetic_dataset.landmarks)
    np.testing.assert_array_equal(data.spacing, synthetic_dataset.spacing)
    assert data.landmark_names == synthetic_dataset.names
    expected = pad_gray(synthetic_dataset.images, PACKED_HEIGHT, PACKED_WIDTH)
    picked = list(data.read_images([9, 0, 4]))
    for image, index in zip(picked, [9, 0, 4]):
        assert image.shape == (PACKED_HEIGHT, PACKED_WIDTH, 3)
        np.testing.assert_array_equal(image[..., 1], expected[index])


def test_pack_refuses_an_image_larger_than_the_stack(synthetic_dataset, tmp_path, capsys):
    code = pack.main(["--images", str(synthetic_dataset.images_dir), "--annotations", str(synthetic_dataset.annotations),
                      "--output", str(tmp_path / "s.mha"), "--height", "190", "--width", "190"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: case_01.png: 160 x 200 does not fit in 190 x 190")
    assert list(tmp_path.iterdir()) == []  # neither the stack nor its partial file


def test_pad_image_refuses_values_that_do_not_fit_8_bits():
    wide = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100  # up to 1100
    with pytest.raises(ValueError, match="0..1100"):
        pack.pad_image(wide, 3, 4)
    fits = np.arange(12, dtype=np.uint16).reshape(3, 4) * 20  # 16-bit storage, 8-bit values
    np.testing.assert_array_equal(pack.pad_image(fits, 4, 5)[:3, :4, 2], fits)


STREAM_HEIGHT, STREAM_WIDTH = 50, 40


@pytest.fixture(scope="module")
def noise_images() -> list[np.ndarray]:
    """Images of random bytes (SimpleITK's uninitialised buffer cannot pass for them), of several sizes."""
    rng = np.random.default_rng(17)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in [(50, 40), (31, 22), (1, 1), (48, 39)]]


def in_memory_stack(images: list[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3): the stack as the old in-memory path built it, independently of training.pack."""
    return np.repeat(pad_gray(images, STREAM_HEIGHT, STREAM_WIDTH)[..., None], 3, axis=3)


@pytest.mark.parametrize("compress", [False, True])
def test_a_streamed_stack_reads_back_as_the_in_memory_one(tmp_path, noise_images, compress):
    streamed = tmp_path / "streamed.mha"
    pack.write_stack(streamed, iter(noise_images), len(noise_images), STREAM_HEIGHT, STREAM_WIDTH, compress)
    expected = in_memory_stack(noise_images)
    whole = tmp_path / "whole.mha"
    sitk.WriteImage(sitk.GetImageFromArray(expected, isVector=True), str(whole), useCompression=compress)
    if not compress:  # byte for byte what SimpleITK writes
        assert streamed.read_bytes() == whole.read_bytes()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(streamed))), expected)
    np.testing.assert_array_equal(np.stack(list(ImageStack(streamed))), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mha", "whole.mha"]


def refused_images(images: list[np.ndarray]):
    """The images, with one that cannot be packed (9 bits) after the first."""
    yield images[0]
    yield np.full((4, 4), 300, dtype=np.uint16)
    yield from images[1:]


@pytest.mark.parametrize("compress", [False, True])
def test_a_refused_image_leaves_no_stack_and_keeps_an_older_one(tmp_path, noise_images, compress):
    path = tmp_path / "s.mha"
    path.write_bytes(b"the stack of an earlier run")
    with pytest.raises(ValueError, match="^b.png: values 300..300 are outside"):
        pack.write_stack(path, refused_images(noise_images), len(noise_images) + 1, STREAM_HEIGHT, STREAM_WIDTH,
                         compress, names=["a.png", "b.png", "c.png", "d.png", "e.png"])
    assert path.read_bytes() == b"the stack of an earlier run"
    assert [p.name for p in tmp_path.iterdir()] == ["s.mha"]


@pytest.mark.parametrize("declared", [3, 5])
def test_a_stack_with_other_than_the_declared_count_is_not_written(tmp_path, noise_images, declared):
    with pytest.raises(ValueError, match="declared"):
        pack.write_stack(tmp_path / "s.mha", noise_images, declared, STREAM_HEIGHT, STREAM_WIDTH)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [4, 1, 2, 5], [3, 3, 0]])
def test_reading_a_stack_never_holds_two_raw_images(tmp_path, compress, order):
    """Peak traced memory while the images are read (each dropped before the next) is one image and the
    reader's buffers (a chunk of compressed input and inflated pieces in flight, a few READ_CHUNK_BYTES):
    holding every wanted image before yielding the first, as read_images once did, or the last image
    while reading the next, takes at least two."""
    height, width = 2000, 1500
    images = [np.full((height, width), 10 + index, dtype=np.uint8) for index in range(6)]
    stack = tmp_path / "s.mha"
    pack.write_stack(stack, images, len(images), height, width, compress)
    annotations = write_json(tmp_path / "gt.json", {"points": [point(1, 5, 5, z + 1) for z in range(6)]})
    data = load_data(stack, annotations)
    image_bytes = height * width * 3
    seen = []
    tracemalloc.start()
    try:
        for image in data.read_images(order):
            seen.append(int(image[0, 0, 0]))
            del image
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == [10 + index for index in order]
    buffers = 4 * READ_CHUNK_BYTES
    assert buffers < image_bytes  # so the bound below excludes a second image
    assert peak < image_bytes + buffers, f"peak {peak / image_bytes:.2f} images"


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def point(name, x, y, z, scale=0.1):
    return {"name": str(name), "point": [x, y, z], "scale": scale}


def test_a_landmark_named_but_annotated_nowhere_still_has_a_column(tmp_path):
    path = write_json(tmp_path / "gt.json", {"points": [point(1, 5.0, 6.0, 1), point(2, 7.0, 8.0, 1)],
                                             "landmarks": ["Sella", "Nasion", "Orbitale"]})
    landmarks, _, names, _ = read_ground_truth(path)
    assert landmarks.shape == (1, 3, 2) and names == ["Sella", "Nasion", "Orbitale"]
    assert np.isnan(landmarks[0, 2]).all()


def test_points_go_to_the_image_z_and_landmark_name_say(tmp_path):
    path = write_json(tmp_path / "gt.json", {"points": [point(2, 1.5, 2.5, 2, 0.2), point(1, 3.0, 4.0, 1, "0.3")]})
    landmarks, spacing, names, files = read_ground_truth(path)
    np.testing.assert_array_equal(landmarks, [[[3.0, 4.0], [np.nan, np.nan]], [[np.nan, np.nan], [1.5, 2.5]]])
    np.testing.assert_array_equal(spacing, [0.3, 0.2])
    assert names == ["1", "2"] and files is None


@pytest.mark.parametrize("value, num_images, message", [
    ({"points": [point(1, 1.0, 1.0, 1, 0.1), {"name": "1", "point": [1.0, 1.0, 2]}]}, None, "scale"),
    ({"points": [point(1, 1.0, 1.0, 3)]}, 2, "outside"),
    ({"points": [point(3, 1.0, 1.0, 1)], "landmarks": ["Sella", "Nasion"]}, None, "2 landmark names"),
    ({"no points": []}, None, "not a landmark ground-truth JSON"),
    ([1, 2, 3], None, "not a landmark ground-truth JSON"),
])
def test_broken_ground_truth_is_refused(tmp_path, value, num_images, message):
    with pytest.raises(ValueError, match=message):
        read_ground_truth(write_json(tmp_path / "gt.json", value), num_images)


def test_unreadable_json_is_refused(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a landmark ground-truth JSON"):
        read_ground_truth(path)


def test_a_folder_needs_files_and_every_listed_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    save_image(images / "a.png", synthetic_image(20, 16, np.zeros((0, 2)), np.random.default_rng(0)))
    without_files = write_json(tmp_path / "plain.json", {"points": [point(1, 1.0, 1.0, 1)]})
    with pytest.raises(ValueError, match="files"):
        load_data(images, without_files)
    missing_file = write_json(tmp_path / "missing.json", {"points": [point(1, 1.0, 1.0, 1), point(1, 1.0, 1.0, 2)],
                                                          "files": ["a.png", "b.png"]})
    with pytest.raises(FileNotFoundError, match="b.png"):
        load_data(images, missing_file)


@pytest.mark.parametrize("num_images", [7, 40, 600])
def test_make_split_is_a_seeded_partition(num_images):
    split = make_split(num_images, seed=3, val_fraction=0.15, test_fraction=0.1)
    assert split == make_split(num_images, seed=3, val_fraction=0.15, test_fraction=0.1)
    assert set(split) == {"train", "val", "test"}
    everything = split["train"] + split["val"] + split["test"]
    assert sorted(everything) == list(range(num_images))  # disjoint and complete
    assert len(split["val"]) == max(1, round(num_images * 0.15))
    assert len(split["test"]) == round(num_images * 0.1)
    assert all(part == sorted(part) for part in split.values())


def test_make_split_depends_on_the_seed():
    assert make_split(40, 1, 0.2, 0.2) != make_split(40, 2, 0.2, 0.2)


def test_make_split_needs_training_images():
    with pytest.raises(ValueError):
        make_split(2, seed=0, val_fraction=0.5, test_fraction=0.5)
