"""Look at, and score, what the container wrote: `python -m training.view --input DIR --landmarks OUT.json`.

Reads the input as the container does (the same files of the folder, in the same order, z counting on
across stacks; or one stack), one image at a time, and writes one picture per image (every landmark
numbered and named in a legend, coloured by its probability, the least confident marked, a zoomed
tile about each) and contact sheets of all images, least confident first. With --ground-truth (the
challenge's layout: z = slice, `scale` in mm per pixel, as `training.pack --gt-output` writes) it
also scores the output with training.evaluate's metrics, table and files, and draws each error.
A JSON that does not fit the input is refused in one line before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from evalutils.exceptions import FileLoaderError
from tqdm import tqdm

from algorithm.errors import describe
from algorithm.inputs import scan_input
from algorithm.metadata import DEFAULT_MODEL_DIR, MOUNTED_MODEL_DIR, ModelError, ModelMetadata, locate_model
from algorithm.output import schema_errors
from algorithm.process import StackLoader
from algorithm.reader import ImageStack, InputError
from training.data import fit_landmarks, read_ground_truth, source_name
from training.evaluate import new_output_folder, pooled_result, print_report, set_result, write_results
from training.metrics import radial_errors_mm
from training.pictures import (PICTURE_HEIGHT, PNG_COMPRESSION, Marks, contact_sheets, display_gray, render,
                               thumbnail)

PICTURES = "pictures"  # the output's folder of one picture per image
SHEET_PREFIX = "contact_sheet_"
THUMBNAIL_HEIGHT = 240
SHEET_COLUMNS = 10


class HeaderOnlyLoader(StackLoader):
    """The container's loader (the same files read, the same ones skipped) without its checksum of every
    file, which only the container's duplicate check needs."""

    @staticmethod
    def hash_image(image: ImageStack) -> str:
        return str(image.path)


def open_input(path: Path) -> list[ImageStack]:
    """The stacks the container reads from a folder, in its order (or the one stack given); headers only."""
    if not path.exists():
        raise InputError(f"{path}: not found")
    if not path.is_dir():
        return [ImageStack(path)]
    loader = HeaderOnlyLoader()
    files, loader.scope = scan_input(path)
    stacks = []
    for file in files:
        try:
            cases = loader.load(fname=file)
        except FileLoaderError as skipped:
            print(f"skipped: {skipped}", file=sys.stderr)
            continue
        stacks += [case["stack"] for case in cases]
    if not stacks:
        raise InputError(f"{path}: no readable image in the input folder")
    return stacks


def image_sizes(stacks: list[ImageStack]) -> np.ndarray:
    """(N, 2) width and height of every image of the input, in z order."""
    return np.array([(stack.width, stack.height) for stack in stacks for _ in range(len(stack))])


def check_inside(path: Path, points: np.ndarray, sizes: np.ndarray) -> None:
    """Refuse a JSON with a (given) point outside its image: x in 0..width - 1, y in 0..height - 1."""
    outside = ((points < 0) | (points > sizes[:, None, :] - 1)).any(axis=2)
    if outside.any():
        image, k = np.argwhere(outside)[0]
        (x, y), (width, height) = points[image, k], sizes[image]
        raise ValueError(f"{path}: landmark {k + 1} of image z = {image + 1} at ({x:g}, {y:g}) lies outside its "
                         f"image of {width} x {height} pixels")


def read_output(path: Path, sizes: np.ndarray, num_landmarks: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The container's JSON as (N, K, 2) points and (N, K) probabilities (None if it has none), refused unless
    it holds every landmark 1..K of every image z = 1..N of the input once, inside its image."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({describe(error)})") from None
    problems = schema_errors(value)
    if problems:
        raise ValueError(f"{path}: not a 'Multiple points' value: {problems[0]}")
    points = np.full((len(sizes), num_landmarks, 2), np.nan)
    probability = np.full((len(sizes), num_landmarks), np.nan)
    for number, point in enumerate(value["points"], start=1):
        (x, y, z), name = point["point"], point.get("name", "")
        where = f"{path}: point {number} (landmark {name!r}, z = {z:g})"
        if not (name.isdigit() and 1 <= int(name) <= num_landmarks):
            raise ValueError(f"{where}: not a landmark of the model, whose landmarks are 1..{num_landmarks} "
                             "(choose the model with --model)")
        if z != round(z) or not 1 <= z <= len(sizes):
            raise ValueError(f"{where}: z beyond the {len(sizes)} images of the input")
        if np.isfinite(points[int(z) - 1, int(name) - 1]).all():
            raise ValueError(f"{where}: this landmark of this image is given twice")
        points[int(z) - 1, int(name) - 1] = x, y
        probability[int(z) - 1, int(name) - 1] = point.get("probability", np.nan)
    missing = np.argwhere(np.isnan(points[..., 0]))
    if len(missing):
        raise ValueError(f"{path}: landmark {missing[0][1] + 1} of image z = {missing[0][0] + 1} is missing "
                         f"({len(missing)} of {points[..., 0].size} points missing)")
    check_inside(path, points, sizes)
    return points, None if np.isnan(probability).all() else probability


@dataclass
class Viewing:
    """What is drawn and scored, every part checked against the input before any image is read."""

    stacks: list[ImageStack]
    names: list[str]
    points: np.ndarray  # (N, K, 2) as the container wrote them
    probability: np.ndarray | None  # (N, K)
    truth: np.ndarray | None = None  # (N, K, 2), NaN where not annotated
    spacing: np.ndarray | None = None  # (N,) mm per pixel

    def marks(self, z: int) -> Marks:
        """Image z's (0-based) landmarks to draw."""
        def of(values: np.ndarray | None):
            return None if values is None else values[z]
        spacing = of(self.spacing)
        return Marks(self.names, self.points[z], of(self.probability), of(self.truth), None,
                     None if spacing is None else float(spacing))

    def least_confident_first(self) -> list[int]:
        """Image indices by their least confident landmark, lowest first (in z order without probabilities)."""
        if self.probability is None:
            return list(range(len(self.points)))
        return np.argsort(np.nanmin(self.probability, axis=1), kind="stable").tolist()

    def caption(self, z: int) -> str:
        """A contact sheet's lines under image z: its z, least confident landmark and MRE where known."""
        marks, parts = self.marks(z), [f"z {z + 1}"]
        least = marks.least_confident()
        if least is not None:
            parts.append(f"min p {marks.probability[least]:.2f} ({least + 1})")
        errors = marks.errors_mm()
        if errors is not None and np.isfinite(errors).any():
            parts.append(f"MRE {np.nanmean(errors):.2f} mm")
        return "  ".join(parts[:2]) + "".join(f"\n{part}" for part in parts[2:])


def load_viewing(args: argparse.Namespace) -> Viewing:
    """The input's stacks, the model's landmark names, the output and the ground truth, all checked."""
    stacks = open_input(args.input)
    args.model = locate_model(args.model)[0]
    names = ModelMetadata.load(args.model).landmark_names
    sizes = image_sizes(stacks)
    viewing = Viewing(stacks, names, *read_output(args.landmarks, sizes, len(names)))
    if args.ground_truth:
        truth, spacing, own, _ = read_ground_truth(args.ground_truth, num_images=len(sizes))
        viewing.truth = fit_landmarks(truth, own, names, f"{args.ground_truth}: landmarks",
                                      f"of the model in {args.model}")
        viewing.spacing = spacing
        check_inside(args.ground_truth, viewing.truth, sizes)
    return viewing


def draw(viewing: Viewing, folder: Path, height: int, per_sheet: int) -> None:
    """One picture per image into folder/pictures, then the contact sheets, least confident first."""
    (folder / PICTURES).mkdir()
    thumbnails, z = {}, 0
    digits = max(3, len(str(len(viewing.points))))
    with tqdm(total=len(viewing.points), desc="drawing", unit="image") as bar:
        for stack in viewing.stacks:
            for index, image in enumerate(stack):
                marks = viewing.marks(z)
                title = f"z {z + 1}: {stack.label}, image {index + 1} of {len(stack)}"
                errors = marks.errors_mm()
                if errors is not None and np.isfinite(errors).any():
                    title += f"  MRE {np.nanmean(errors):.2f} mm"
                gray = display_gray(image, marks)
                render(gray, marks, title, height).save(folder / PICTURES / f"z{z + 1:0{digits}d}.png",
                                                        compress_level=PNG_COMPRESSION)
                thumbnails[z] = thumbnail(gray, marks, viewing.caption(z), THUMBNAIL_HEIGHT)
                z += 1
                bar.update()
    order = viewing.least_confident_first()
    for number, sheet in enumerate(contact_sheets([thumbnails[i] for i in order], SHEET_COLUMNS, per_sheet), 1):
        sheet.save(folder / f"{SHEET_PREFIX}{number:02d}.png", compress_level=PNG_COMPRESSION)


def score(viewing: Viewing, args: argparse.Namespace, folder: Path) -> None:
    """training.evaluate's metrics files and table for the container's output against the ground truth."""
    errors = radial_errors_mm(viewing.points, viewing.truth, viewing.spacing)
    name = source_name(args.input)
    per_image = [(name, f"z {z + 1}", image_errors, ()) for z, image_errors in enumerate(errors)]  # no notes in the JSON
    results = {name: set_result(args.input, args.ground_truth, "all", errors, viewing.names, viewing.probability)}
    result = pooled_result(str(args.landmarks), "the container's output", results, [errors], [viewing.probability],
                           viewing.names)
    write_results(folder, result, {name: errors}, per_image, viewing.names)
    print_report(result)


def move_into(scratch: Path, output: Path) -> None:
    """The finished files into `output`, replacing an earlier view's pictures and contact sheets."""
    output.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output / PICTURES, ignore_errors=True)
    for sheet in output.glob(f"{SHEET_PREFIX}*.png"):
        sheet.unlink()
    for item in scratch.iterdir():
        os.replace(item, output / item.name)
    scratch.rmdir()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True,
                        help="what the container read: its input folder (every stack in it, in its order) or one stack")
    parser.add_argument("--landmarks", type=Path, required=True,
                        help="what it wrote: orthodontic-landmarks.json")
    parser.add_argument("--ground-truth", type=Path,
                        help="a ground-truth JSON with z = slice and `scale` (mm per pixel) per point, as "
                        "`python -m training.pack --gt-output` writes: score the output and draw each error")
    parser.add_argument("--model", type=Path,
                        help="the model folder whose metadata names the landmarks (default: the one the container "
                        f"loads without --model: {MOUNTED_MODEL_DIR} if it holds one, else {DEFAULT_MODEL_DIR})")
    parser.add_argument("--output", type=Path,
                        help="folder for the pictures (default: a new runs/view/NNN); an existing one that holds "
                        "files needs --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="write into an --output folder that holds files")
    parser.add_argument("--height", type=int, default=PICTURE_HEIGHT,
                        help="pixels of the whole image's height in each picture; the image's own height draws it "
                        "1:1 (default: %(default)s)")
    parser.add_argument("--per-sheet", type=int, default=50, help="images per contact sheet (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or new_output_folder(Path("runs/view"))
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        print(f"error: {output} already holds files; choose another --output or add --overwrite", file=sys.stderr)
        return 1
    try:
        viewing = load_viewing(args)
        output.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
        try:
            draw(viewing, scratch, args.height, args.per_sheet)
            if viewing.truth is not None:
                score(viewing, args, scratch)
            move_into(scratch, output)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except (InputError, ModelError, ValueError) as error:
        print(f"error: {describe(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error.filename or output}: {describe(error)}", file=sys.stderr)
        return 1
    print(f"{len(viewing.points)} pictures in {output / PICTURES}, contact sheets (least confident first) in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
