"""Pack a folder of images into a challenge-format stack: `python -m training.pack --images DIR ...`.

The stack is what the container reads: N images of 3 x uint8 (R = G = B), each at the top-left
and zero-padded at the right and bottom to one size (the challenge's by default). It is written one
image at a time (read, padded, written or compressed), so packing the challenge's 400 images needs
the memory of one image, not of the 8.3 GB stack.
With --gt-output, the folder's ground truth is rewritten with z = slice and no `files` list.
--files or --first packs a subset (e.g. a 3-image stack to try the container on).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from algorithm.preprocessing import CHALLENGE_HEIGHT, CHALLENGE_WIDTH, to_grayscale
from training.data import load_data

COMPRESSION_LEVEL = 2  # zlib's level as SimpleITK's MetaImage writer uses it: fast, most of the gain on X-rays
COMPRESSED_SIZE_DIGITS = 20  # room in the header for any CompressedDataSize (a 64-bit byte count)


def pad_image(image: np.ndarray, height: int = CHALLENGE_HEIGHT, width: int = CHALLENGE_WIDTH) -> np.ndarray:
    """(height, width, 3) uint8: a 2D image (or the first channel of a colour one) at the top-left,
    zero-padded, copied to R, G and B; refused when it does not fit or its values are not 8-bit."""
    gray = to_grayscale(image)
    if gray.shape[0] > height or gray.shape[1] > width:
        raise ValueError(f"{gray.shape[1]} x {gray.shape[0]} does not fit in {width} x {height}")
    if gray.size and (gray.min() < 0 or gray.max() > 255):
        raise ValueError(f"values {gray.min()}..{gray.max()} are outside the stack's 8 bits (scale them to 0..255 "
                         "first)")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[: gray.shape[0], : gray.shape[1]] = gray[..., None]
    return canvas


def stack_header(count: int, height: int, width: int, compressed_size: int | None = None) -> bytes:
    """The MetaImage header SimpleITK writes for a (count, height, width, 3) uint8 vector stack; with
    `compressed_size`, for zlib data of that many bytes, the number padded to a fixed width so that the
    header written before the data can be rewritten in place once the size is known."""
    compression = ("CompressedData = False\n" if compressed_size is None else
                   f"CompressedData = True\nCompressedDataSize = {compressed_size:>{COMPRESSED_SIZE_DIGITS}}\n")
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n" + compression +
            "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nCenterOfRotation = 0 0 0\n"
            "AnatomicalOrientation = RAI\nElementSpacing = 1 1 1\n"
            f"DimSize = {width} {height} {count}\nElementNumberOfChannels = 3\nElementType = MET_UCHAR\n"
            "ElementDataFile = LOCAL\n").encode("ascii")


def write_stack(path: Path, images: Iterable[np.ndarray], count: int, height: int = CHALLENGE_HEIGHT,
                width: int = CHALLENGE_WIDTH, compress: bool = False, names: Sequence[str] | None = None) -> None:
    """Write `count` images as a challenge-format vector MetaImage (uncompressed, like the challenge's, or
    one zlib stream), padding and writing one image at a time so memory does not grow with the stack.

    The stack is written under a temporary name beside `path` and renamed when complete: an error
    (an image that does not fit or is not 8-bit, more or fewer images than `count`) leaves no file behind.
    `names` label the images in error messages (default: their position, from 1).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    compressor = zlib.compressobj(COMPRESSION_LEVEL) if compress else None
    written = 0
    try:
        with open(partial, "wb") as handle:
            handle.write(stack_header(count, height, width, 0 if compress else None))
            data_start = handle.tell()
            progress = tqdm(images, total=count, desc=f"packing {path.name}", unit="image", disable=None)
            for index, image in enumerate(progress):
                if index == count:
                    raise ValueError(f"more images than the {count} declared")
                label = names[index] if names else f"image {index + 1}"
                try:
                    canvas = pad_image(image, height, width)
                except ValueError as error:
                    raise ValueError(f"{label}: {error}") from None
                handle.write(compressor.compress(canvas) if compressor else canvas)
                written += 1
            if written != count:
                raise ValueError(f"{written} images where {count} were declared")
            if compressor:
                handle.write(compressor.flush())
                compressed_size = handle.tell() - data_start
                handle.seek(0)
                handle.write(stack_header(count, height, width, compressed_size))
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def subset_indices(files: list[str], names: list[str] | None, first: int | None) -> list[int]:
    """Positions in the JSON's `files` of the images to pack: the named ones, the first N, or all."""
    if names:
        unknown = [name for name in names if name not in files]
        if unknown:
            raise ValueError(f"not in the annotations' files list: {', '.join(unknown)}")
        return [files.index(name) for name in names]
    return list(range(len(files)))[:first]


def renumbered_ground_truth(value: dict, indices: list[int]) -> dict:
    """The ground truth of the packed images only, with z = their slice in the stack and no `files` list."""
    slice_of = {index + 1: position + 1 for position, index in enumerate(indices)}
    points = [{**p, "point": [p["point"][0], p["point"][1], slice_of[int(round(p["point"][2]))]]}
              for p in value["points"] if int(round(p["point"][2])) in slice_of]
    return {**{key: item for key, item in value.items() if key != "files"}, "points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--annotations", type=Path, required=True, help="ground truth JSON with a 'files' list")
    parser.add_argument("--output", type=Path, required=True, help="the stack to write (.mha)")
    parser.add_argument("--gt-output", type=Path, help="also write the ground truth with z = slice here")
    parser.add_argument("--height", type=int, default=CHALLENGE_HEIGHT, help="padded height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=CHALLENGE_WIDTH, help="padded width (default: %(default)s)")
    parser.add_argument("--compress", action="store_true", help="zlib-compress the stack (smaller, slower to read)")
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument("--files", nargs="+", metavar="NAME", help="pack only these images (names as in `files`)")
    subset.add_argument("--first", type=int, metavar="N", help="pack only the first N images")
    args = parser.parse_args(argv)
    try:
        if not args.images.is_dir():
            raise ValueError(f"--images {args.images}: give a folder of images (it is already a stack otherwise)")
        data = load_data(args.images, args.annotations)
        indices = subset_indices([path.name for path in data.images], args.files, args.first)
        write_stack(args.output, data.read_images(indices), len(indices), args.height, args.width, args.compress,
                    names=[data.images[index].name for index in indices])
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.gt_output:
        value = renumbered_ground_truth(json.loads(args.annotations.read_text()), indices)
        args.gt_output.write_text(json.dumps(value, indent=2) + "\n")
    print(f"wrote {len(indices)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
