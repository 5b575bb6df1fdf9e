"""Pack a folder of images into a challenge-format stack: `python -m training.pack --images DIR ...`.

The stack is what the container reads: N images of 3 x uint8 (R = G = B), each at the top-left
and zero-padded at the right and bottom to one size (the challenge's by default).
With --gt-output, the folder's ground truth is rewritten with z = slice and no `files` list.
--files or --first packs a subset (e.g. a 3-image stack to try the container on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from algorithm.preprocessing import CHALLENGE_HEIGHT, CHALLENGE_WIDTH
from training.data import load_data


def pad_to_stack(images: list[np.ndarray], height: int = CHALLENGE_HEIGHT, width: int = CHALLENGE_WIDTH) -> np.ndarray:
    """(N, height, width, 3) uint8: each 2D image at the top-left, zero-padded, copied to R, G and B."""
    stack = np.zeros((len(images), height, width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        if image.ndim == 3:
            image = image[..., 0]
        if image.shape[0] > height or image.shape[1] > width:
            raise ValueError(f"image {index} of {image.shape[1]} x {image.shape[0]} does not fit in {width} x {height}")
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"image {index} has values {image.min()}..{image.max()}, outside the stack's 8 bits "
                             "(scale it to 0..255 first)")
        stack[index, : image.shape[0], : image.shape[1]] = image[..., None]
    return stack


def write_stack(stack: np.ndarray, path: Path, compress: bool = False) -> None:
    """Write an (N, H, W, 3) uint8 array as a vector MetaImage (uncompressed, like the challenge's)."""
    image = sitk.GetImageFromArray(stack, isVector=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)


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
        write_stack(pad_to_stack(list(data.read_images(indices)), args.height, args.width), args.output,
                    args.compress)
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
