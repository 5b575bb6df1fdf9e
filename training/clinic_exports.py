"""Test images re-framed as clinics send them, and the model scored on each framing.

    python -m training.clinic_exports [--model algorithm/model] [--split test] [--no-shape-check]
    python -m training.clinic_exports --model MODEL --data IMAGES ANNOTATIONS   # a centre the model never saw

Each transform turns one un-padded 8-bit cephalogram and its landmarks into what a clinic might
export instead: a landscape detector frame, a viewer screenshot with black side borders and overlay
text, a ruler in front of the face, a copy downscaled to 1000 px high and saved as JPEG 70, a crop
tight about the skull, a negative (bone dark, as some viewers display and export it), two viewer windows burned in
(grey levels 32-224 and 100-255 stretched to 0-255, the rest clipped), a stray ear-rod ring in front of the ear
(another cephalostat's, or the far-side rod of a turned head), a mirrored copy (the patient facing left), one
turned a quarter clockwise (a portrait film stored on its side), one upside down, one flipped top to bottom (rows
stored bottom-up) and two tilted (15 degrees anticlockwise and 25 clockwise: a film scanned askew). The landmarks
move with the pixels, and the mm per pixel with the scale, so every framing is scored against the
same doctors. A data set given with --data that the model never trained on is re-framed whole: a new
centre's images as its clinics send them, the closest this project comes to the hidden unseen centre.
Nothing is written but the table, a line naming the image and landmark of each gross error, and
--output's JSON (with each framing's per-landmark figures too): the images of the data sets stay where
they are.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from algorithm.inference import LandmarkDetector
from algorithm.metadata import DEFAULT_MODEL_DIR, ModelMetadata
from algorithm.preprocessing import turn_points
from training.config import TrainConfig
from training.data import LandmarkData, load_sources, to_uint8
from training.metrics import (GROSS_COUNT, GROSS_ERROR_MM, SDR_THRESHOLDS_MM, confidence_report, format_table,
                              gross_errors, per_landmark, radial_errors_mm, summarize)
from training.split import part_or_all


@dataclass
class Framed:
    """One re-framed image: its pixels, its landmarks in them and its mm per pixel."""

    image: np.ndarray
    points: np.ndarray
    spacing: float


# a framing: an image, its landmarks and its mm per pixel to the re-framed image
Framing = Callable[[np.ndarray, np.ndarray, float], Framed]


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` scaled by `scale` (area filter when shrinking), as uint8."""
    height, width = image.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX if scale < 1 else
                                                    Image.Resampling.BILINEAR))


def _scaled_points(points: np.ndarray, scale_xy: np.ndarray, offset_xy: np.ndarray) -> np.ndarray:
    """Pixel-centre convention of PIL's resize: x' = (x + 0.5) * s - 0.5, then shifted."""
    return (points + 0.5) * scale_xy - 0.5 + offset_xy


def _on_canvas(image: np.ndarray, points: np.ndarray, spacing: float, height: int, width: int) -> Framed:
    """`image` fitted to `height` x `width` (aspect kept) and centred on black."""
    scale = min(height / image.shape[0], width / image.shape[1])
    small = _resized(image, scale)
    top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    canvas = np.zeros((height, width), np.uint8)
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    scale_xy = np.array([small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]])
    return Framed(canvas, _scaled_points(points, scale_xy, np.array([left, top])), spacing / scale_xy.mean())


def landscape(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """On the challenge's landscape detector frame, 2880 x 2304 (width x height)."""
    return _on_canvas(image, points, spacing, 2304, 2880)


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own font, not `training.pictures.font`: the overlay text is part of the test image, and the
    README's figures were measured with these glyphs."""
    return ImageFont.load_default(size=size)


def viewer_screenshot(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """A 1920 x 1080 viewer window: black side borders, patient text over the image and the borders."""
    framed = _on_canvas(image, points, spacing, 1080, 1920)
    picture = Image.fromarray(framed.image)
    draw = ImageDraw.Draw(picture)
    font = _font(28)
    for x, y, text in ((20, 20, "PATIENT 0000123  DOB 01.01.2000"), (20, 60, "CEPH LAT  72 kV 10 mA"),
                       (1500, 20, "2026-11-30 10:42"), (1500, 1030, "W 4095 L 2048"), (700, 1040, "R  ->  L"),
                       (20, 1030, "Zoom 56 %")):
        draw.text((x, y), text, fill=235, font=font)
    return Framed(np.asarray(picture), framed.points, framed.spacing)


def ruler(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """A bright ruler with mm ticks held in front of the face (the side the landmarks face)."""
    picture = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(picture)
    height, width = image.shape
    face = np.nanmax(points[:, 0])
    x = int(min(width - 40, face + 0.35 * (width - face)))
    top, bottom = int(0.08 * height), int(0.62 * height)
    draw.rectangle((x, top, x + 18, bottom), fill=250)
    step = max(2, round(1.0 / spacing))  # a tick each mm
    for number, y in enumerate(range(top, bottom, step)):
        length = 36 if number % 10 == 0 else 26 if number % 5 == 0 else 20
        draw.line((x - length + 18, y, x + 18, y), fill=255, width=max(1, step // 4))
    return Framed(np.asarray(picture), points, spacing)


# Porion: landmark 4 of the challenge's list, in its 38 landmarks and in the 19 of the public sets alike.
PORION = 3
# The stray ear rod: a ring of this radius and stroke (mm), with a dot at its centre, drawn this far (mm,
# x towards the face, y down) from Porion: where a second ring pulled Porion onto it in the first test.
EAR_ROD_RADIUS_MM, EAR_ROD_STROKE_MM = 6.0, 0.7
EAR_ROD_OFFSET_MM = np.array([15.0, 5.0])


def stray_ear_rod(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """A bright ear-rod ring with a centre dot 15 mm in front of Porion and 5 mm below it, beside the
    image's own ear rod."""
    if np.isnan(points[PORION]).any():
        return Framed(image, points, spacing)
    picture = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(picture)
    x, y = points[PORION] + EAR_ROD_OFFSET_MM / spacing
    radius, stroke = EAR_ROD_RADIUS_MM / spacing, max(1, round(EAR_ROD_STROKE_MM / spacing))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=250, width=stroke)
    draw.ellipse((x - stroke, y - stroke, x + stroke, y + stroke), fill=250)
    return Framed(np.asarray(picture), points, spacing)


def downscaled_jpeg(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Downscaled to 1000 px high and saved as JPEG quality 70."""
    scale = 1000 / image.shape[0]
    small = _resized(image, scale)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="JPEG", quality=70)
    scale_xy = np.array([small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]])
    return Framed(np.asarray(Image.open(buffer)), _scaled_points(points, scale_xy, np.zeros(2)),
                  spacing / scale_xy.mean())


def tight_crop(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Cut to 8 % about the landmarks' bounding box (the back of the skull and the neck go)."""
    low, high = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    margin = 0.08 * (high - low)
    left, top = np.maximum(0, np.floor(low - margin)).astype(int)
    right, bottom = np.minimum(np.array(image.shape[::-1]) - 1, np.ceil(high + margin)).astype(int)
    return Framed(np.ascontiguousarray(image[top:bottom + 1, left:right + 1]), points - [left, top], spacing)


def inverted(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """A negative: grey levels reversed, bone dark on a bright background."""
    return Framed(255 - image, points, spacing)


def windowed(low: int, high: int) -> Framing:
    """A viewer's window burned in: grey levels `low` to `high` stretched to 0-255, those beyond clipped (a
    screenshot, or an export of what the viewer shows)."""
    def window(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
        stretched = (image.astype(np.float64) - low) * 255 / (high - low)
        return Framed(np.clip(np.round(stretched), 0, 255).astype(np.uint8), points, spacing)

    return window


def mirrored(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Mirrored left-right: the patient faces left, as some cephalostats and viewers show the other side."""
    return Framed(np.ascontiguousarray(image[:, ::-1]), np.stack([image.shape[1] - 1 - points[:, 0], points[:, 1]], 1),
                  spacing)


def rotated(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Turned a quarter clockwise: a portrait film scanned or stored on its side, the face pointing down."""
    return Framed(np.ascontiguousarray(np.rot90(image, k=-1)),
                  np.stack([image.shape[0] - 1 - points[:, 1], points[:, 0]], 1), spacing)


def upside_down(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Turned a half: a film digitised upside down."""
    height, width = image.shape
    return Framed(np.ascontiguousarray(image[::-1, ::-1]),
                  np.stack([width - 1 - points[:, 0], height - 1 - points[:, 1]], 1), spacing)


def flipped(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    """Flipped top to bottom: rows stored bottom-up (as BMP files and some converters store them)."""
    return Framed(np.ascontiguousarray(image[::-1]), np.stack([points[:, 0], image.shape[0] - 1 - points[:, 1]], 1),
                  spacing)


def tilted(degrees: float) -> Framing:
    """A framing turned `degrees` anticlockwise on screen (clockwise where negative) about the image's centre on the
    same canvas (corners cut, black fill): a film scanned askew, or a head tipped in the cephalostat. Training turns
    images by up to 10 degrees."""
    def tilt(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
        turned = Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=0)
        return Framed(np.asarray(turned), turn_points(points, (np.array(image.shape[::-1]) - 1) / 2, -degrees),
                      spacing)

    return tilt


def unchanged(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
    return Framed(image, points, spacing)


def composed(*steps: Framing) -> Framing:
    """The framings `steps` one after another, as an export passes through several hands (a ruler on the film, the
    clinic's downscaling, a screenshot of its viewer)."""
    def chain(image: np.ndarray, points: np.ndarray, spacing: float) -> Framed:
        framed = Framed(image, points, spacing)
        for step in steps:
            framed = step(framed.image, framed.points, framed.spacing)
        return framed

    return chain


TRANSFORMS: dict[str, Framing] = {
    "unchanged": unchanged, "landscape 2880 x 2304": landscape, "viewer borders + text": viewer_screenshot,
    "ruler": ruler, "1000 px + JPEG 70": downscaled_jpeg, "tight crop": tight_crop,
    "inverted contrast": inverted, "window 32-224": windowed(32, 224), "window 100-255": windowed(100, 255),
    "stray ear rod": stray_ear_rod, "mirrored": mirrored,
    "rotated a quarter": rotated, "upside down": upside_down, "flipped top to bottom": flipped,
    "tilted 15 degrees": tilted(15.0), "tilted 25 degrees clockwise": tilted(-25.0),
    "ruler, 1000 px + JPEG 70, in a viewer": composed(ruler, downscaled_jpeg, viewer_screenshot),
    "tight crop in a viewer": composed(tight_crop, viewer_screenshot),
}


def score_framings(detector: LandmarkDetector, datasets: list[LandmarkData], splits: dict[str, list[int]],
                   transforms: list[str]) -> dict[str, dict]:
    """Each framing's summary (its count of gross errors too), per landmark, and its gross errors one by one,
    over the chosen images of every data set."""
    errors: dict[str, list[np.ndarray]] = {name: [] for name in transforms}
    confidences: dict[str, list[np.ndarray]] = {name: [] for name in transforms}
    images: list[str] = []
    total = sum(len(splits[d.name]) for d in datasets)
    with tqdm(total=total * len(transforms), desc="clinic exports", unit="image") as progress:
        for data in datasets:
            for index, image in zip(splits[data.name], data.read_images(splits[data.name])):
                images.append(f"{data.name} {data.image_name(index)}")
                gray = to_uint8(image)
                for name in transforms:
                    framed = TRANSFORMS[name](gray, data.landmarks[index], float(data.spacing[index]))
                    detection = next(detector.predict([framed.image]))
                    errors[name].append(radial_errors_mm(detection.points[None], framed.points[None],
                                                         np.array([framed.spacing]))[0])
                    confidences[name].append(detection.confidence)
                    progress.update()
    names = detector.metadata.landmark_names
    results = {}
    for name in transforms:
        stacked, confidence = np.stack(errors[name]), np.stack(confidences[name])
        gross_found = confidence_report(confidence, stacked)["gross_among_least_confident"]
        results[name] = {**summarize(stacked), "gross_among_least_confident": gross_found,
                         "per_landmark": per_landmark(stacked, names),
                         "gross_errors": gross_errors(stacked, images, names)}
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.clinic_exports", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="an exported model folder")
    parser.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "ANNOTATIONS"),
                        help="a data set to re-frame (repeatable), all its images if the model never trained on it "
                             "(default: the model's training data sets)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                        help="which images of each of the model's training data sets")
    parser.add_argument("--transforms", nargs="+", choices=list(TRANSFORMS), default=list(TRANSFORMS),
                        metavar="NAME", help=f"framings to score, of: {'; '.join(TRANSFORMS)}")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="run the model's second stage")
    parser.add_argument("--shape-check", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the landmarks on a plausible skull with the model's shape model")
    parser.add_argument("--output", type=Path,
                        help="also write the results as JSON here, with each framing's per-landmark figures and "
                             "gross errors")
    return parser.parse_args(argv)


def images_to_score(data: LandmarkData, part: str, metadata: ModelMetadata, config: TrainConfig,
                    model: Path) -> list[int]:
    """A data set's images: `part` of the model's recorded split for one it trained on, all of any other."""
    scored_part = part if data.name in config.data_set_names() else "all"
    return part_or_all(data, scored_part, metadata.training.get("split"), str(model), config.split_run)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metadata = ModelMetadata.load(args.model)
        config = TrainConfig.from_dict(metadata.training.get("config", {}))
        sources = [tuple(pair) for pair in args.data] if args.data else config.sources()
        if not sources:
            raise ValueError(f"{args.model} records no training data: give --data IMAGES ANNOTATIONS")
        datasets = load_sources(sources, metadata.landmark_names)
        splits = {d.name: images_to_score(d, args.split, metadata, config, args.model) for d in datasets}
        detector = LandmarkDetector(args.model, device="cpu", refine=args.refine, shape_check=args.shape_check)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results = score_framings(detector, datasets, splits, args.transforms)
    columns = ["framing", "MRE", "SD", *(f"SDR@{t:g}" for t in SDR_THRESHOLDS_MM), GROSS_COUNT,
               "gross_among_least_confident"]
    scored = ", ".join(f"{d.name} ({len(splits[d.name])} of {len(d)} images)" for d in datasets)
    print(f"{args.model}, {scored}; shape check {'on' if args.shape_check else 'off'}, "
          f"{'both stages' if detector.refinement else 'first stage'}:")
    print(format_table([{"framing": name, **row} for name, row in results.items()], columns))
    print("gross_among_least_confident: the share of errors beyond 5 mm among the 10 % least confident landmarks")
    for name, row in results.items():
        if row["gross_errors"]:
            print(f"{name}, beyond {GROSS_ERROR_MM:g} mm: " + "; ".join(
                f"{error['image']} {error['landmark']} {error['error_mm']:.1f} mm" for error in row["gross_errors"]))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"each framing's summary, per landmark figures and gross errors: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
