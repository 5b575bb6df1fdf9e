"""Pictures of one image's landmarks, drawn pixel-exactly with Pillow, and contact sheets of many images.

One picture: the whole image with every landmark numbered (a ring coloured by its probability, the
ground truth as a cross, the first stage's point as an x, a line from the truth to the prediction),
a legend that names each landmark, and a zoomed tile about each landmark in which a 1 mm error is
several screen pixels. `training.view` (the container's output) and `training.evaluate` (its worst
images) both draw with this module.

Landmark (x, y) is in image pixels with pixel centres at whole numbers (as in the output JSON); in
a picture scaled by s it is drawn at ((x + 0.5) s - 0.5, (y + 0.5) s - 0.5), so at s = 1 a ring is
centred on the very pixel, with the pixel itself left showing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import matplotlib
import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from algorithm.preprocessing import content_extent, to_grayscale
from training.metrics import landmark_label, radial_errors_mm

TRUTH_COLOUR = (0, 210, 255)
FIRST_STAGE_COLOUR = (255, 0, 255)
NO_PROBABILITY_COLOUR = (255, 150, 0)
LEAST_CONFIDENT_COLOUR = (255, 30, 30)
TEXT_COLOUR, BACKGROUND = (255, 255, 255), (24, 24, 24)
PROBABILITY_COLOURS = matplotlib.colormaps["RdYlGn"]  # red (0) through yellow to green (1)
TILE_MM = 12.0  # a tile's side when mm per pixel is known: errors up to about 6 mm stay in it
TILE_CONTENT_SHARE = 0.05  # otherwise, its share of the content height (12 mm of a 240 mm tall cephalogram)
TILE_PIXELS = 150
TITLE_HEIGHT = 30  # a picture's title line; the whole image sits below it at the left
PNG_COMPRESSION = 1  # zlib's fastest: encoding at the default level took longer than drawing
PICTURE_HEIGHT = 1200  # the whole image's height in a picture: 0.2 mm a screen pixel on a 240 mm cephalogram
DISPLAY_PERCENTILES = (0.5, 99.5)  # the grey levels stretched to black and white


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Matplotlib's DejaVu Sans at `size` pixels: the same glyphs on every machine."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


@dataclass
class Marks:
    """One image's landmarks to draw, in its own pixels: (K, 2) arrays with NaN where a landmark is absent."""

    names: list[str]
    predicted: np.ndarray
    probability: np.ndarray | None = None  # (K,) in [0, 1]
    truth: np.ndarray | None = None
    first_stage: np.ndarray | None = None
    spacing: float | None = None  # mm per pixel, from the ground truth

    def only(self, k: int) -> "Marks":
        """Landmark k alone."""
        def part(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[k:k + 1]
        return Marks([self.names[k]], part(self.predicted), part(self.probability), part(self.truth),
                     part(self.first_stage), self.spacing)

    def errors_mm(self) -> np.ndarray | None:
        """(K,) radial errors in mm, NaN where the truth is absent; None without truth and spacing."""
        if self.truth is None or self.spacing is None:
            return None
        return radial_errors_mm(self.predicted[None], self.truth[None], np.array([self.spacing]))[0]

    def least_confident(self) -> int | None:
        """The index of the landmark with the lowest probability (None without probabilities)."""
        if self.probability is None or np.isnan(self.probability).all():
            return None
        return int(np.nanargmin(self.probability))

    def colour(self, k: int) -> tuple[int, int, int]:
        """Landmark k's colour: its probability on the red-yellow-green scale."""
        if self.probability is None or np.isnan(self.probability[k]):
            return NO_PROBABILITY_COLOUR
        return tuple(int(round(255 * c)) for c in PROBABILITY_COLOURS(float(self.probability[k]))[:3])


def display_gray(image: np.ndarray, marks: Marks) -> np.ndarray:
    """(h, w) uint8 of the image's content (extended to any landmark in the padding), grey levels stretched:
    what `render` and `thumbnail` draw on."""
    gray = to_grayscale(image)
    height, width = content_extent(gray)
    points = np.concatenate([p for p in (marks.predicted, marks.truth, marks.first_stage) if p is not None])
    points = points[np.isfinite(points).all(axis=1)]
    if len(points):
        width = min(gray.shape[1], max(width, math.ceil(points[:, 0].max()) + 1))
        height = min(gray.shape[0], max(height, math.ceil(points[:, 1].max()) + 1))
    content = gray[:height, :width]
    low, high = np.percentile(content[::4, ::4], DISPLAY_PERCENTILES)  # a sixteenth of the pixels is plenty
    if high <= low:
        low, high = float(content.min()), float(content.max())
    scale = 255.0 / (high - low if high > low else 1.0)
    return (np.clip((content.astype(np.float32) - low) * scale, 0, 255) + 0.5).astype(np.uint8)


def to_picture(points: np.ndarray, scale: float, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(K, 2) image pixels to pixels of a picture of the region starting at `origin`, scaled by `scale`."""
    return (np.asarray(points, dtype=np.float64) - origin + 0.5) * scale - 0.5


def cross(draw: ImageDraw.ImageDraw, x: int, y: int, radius: int, colour: tuple, diagonal: bool) -> None:
    """A + (or an x, `diagonal`) of arms `radius` long centred on pixel (x, y)."""
    if diagonal:
        arms = [(x - radius, y - radius, x + radius, y + radius), (x - radius, y + radius, x + radius, y - radius)]
    else:
        arms = [(x - radius, y, x + radius, y), (x, y - radius, x, y + radius)]
    for arm in arms:
        draw.line(arm, fill=colour, width=1)


def draw_marks(draw: ImageDraw.ImageDraw, marks: Marks, at: dict[str, np.ndarray], radius: int, numbers: bool,
               least: int | None) -> None:
    """Truth crosses, first-stage x's, lines to the prediction and prediction rings (landmark `least` wider)."""
    for k in range(len(marks.names)):
        if not np.isfinite(at["predicted"][k]).all():
            continue
        px, py = (int(round(v)) for v in at["predicted"][k])
        for kind, colour in (("truth", TRUTH_COLOUR), ("first_stage", FIRST_STAGE_COLOUR)):
            if kind in at and np.isfinite(at[kind][k]).all():
                x, y = (int(round(v)) for v in at[kind][k])
                draw.line([(x, y), (px, py)], fill=colour, width=1)
                cross(draw, x, y, radius, colour, diagonal=kind == "first_stage")
        ring = radius + (radius // 2 + 2 if k == least else 0)
        draw.ellipse([px - ring, py - ring, px + ring, py + ring], outline=marks.colour(k),
                     width=max(1, radius // 3) + (1 if k == least else 0))
        if numbers:
            draw.text((px + ring + 2, py - ring - 2), str(k + 1), font=font(max(10, 3 * radius)), anchor="ls",
                      fill=LEAST_CONFIDENT_COLOUR if k == least else TEXT_COLOUR, stroke_width=2, stroke_fill=(0, 0, 0))


def placed(marks: Marks, scale: float, origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, np.ndarray]:
    """Each kind of point that the marks hold, in picture pixels."""
    kinds = {"predicted": marks.predicted, "truth": marks.truth, "first_stage": marks.first_stage}
    return {kind: to_picture(points, scale, origin) for kind, points in kinds.items() if points is not None}


def whole_image(gray: np.ndarray, marks: Marks, height: int, numbers: bool = True) -> Image.Image:
    """The content at `height` pixels (1:1 when that is its own height) with every landmark drawn."""
    scale = height / gray.shape[0]
    picture = Image.fromarray(gray)
    if scale != 1:
        picture = picture.resize((max(1, round(gray.shape[1] * scale)), height), Image.Resampling.BOX)
    picture = picture.convert("RGB")
    draw_marks(ImageDraw.Draw(picture), marks, placed(marks, scale), max(2, height // 200), numbers,
               marks.least_confident())
    return picture


def tile(gray: np.ndarray, marks: Marks, k: int) -> Image.Image:
    """A zoomed square about landmark k (about the midpoint of truth and prediction when both are known)."""
    side = TILE_MM / marks.spacing if marks.spacing else TILE_CONTENT_SHARE * gray.shape[0]
    points = [p[k] for p in (marks.predicted, marks.truth) if p is not None and np.isfinite(p[k]).all()]
    centre = np.mean(points, axis=0) if points else np.array(gray.shape[::-1]) / 2
    x0, y0 = centre - side / 2
    crop = Image.fromarray(gray).transform((TILE_PIXELS, TILE_PIXELS), Image.Transform.EXTENT,
                                           (x0 + 0.5, y0 + 0.5, x0 + 0.5 + side, y0 + 0.5 + side),
                                           Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(crop)
    one = marks.only(k)
    draw_marks(draw, one, placed(one, TILE_PIXELS / side, (x0, y0)), 6, False,
               0 if k == marks.least_confident() else None)
    if marks.spacing:
        millimetre = TILE_PIXELS / side / marks.spacing
        draw.line([(6, TILE_PIXELS - 8), (6 + millimetre, TILE_PIXELS - 8)], fill=TEXT_COLOUR, width=3)
        draw.text((10 + millimetre, TILE_PIXELS - 4), "1 mm", font=font(11), anchor="ls", fill=TEXT_COLOUR,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    draw.rectangle([0, 0, TILE_PIXELS - 1, TILE_PIXELS - 1], outline=marks.colour(k),
                   width=3 if k == marks.least_confident() else 1)
    return crop


def landmark_caption(marks: Marks, k: int) -> str:
    """'k name', then its probability and error where known."""
    errors = marks.errors_mm()
    parts = [landmark_label(k, marks.names[k])]
    if marks.probability is not None and np.isfinite(marks.probability[k]):
        parts.append(f"p {marks.probability[k]:.2f}")
    if errors is not None and np.isfinite(errors[k]):
        parts.append(f"{errors[k]:.2f} mm")
    return "  ".join(parts)


def legend(marks: Marks, height: int) -> Image.Image:
    """Every landmark's number, name, probability and error, then what each symbol means."""
    size = 14
    lines = [(landmark_caption(marks, k), LEAST_CONFIDENT_COLOUR if k == marks.least_confident() else marks.colour(k))
             for k in range(len(marks.names))]
    lines += [("", TEXT_COLOUR), ("o prediction, coloured by probability:", TEXT_COLOUR),
              ("   red 0, yellow 0.5, green 1", TEXT_COLOUR)]
    if marks.least_confident() is not None:
        lines.append((f"wide ring, red number: least confident ({marks.least_confident() + 1})",
                      LEAST_CONFIDENT_COLOUR))
    if marks.truth is not None:
        lines.append(("+ ground truth, a line to the prediction", TRUTH_COLOUR))
    if marks.first_stage is not None:
        lines.append(("x first stage (before refinement)", FIRST_STAGE_COLOUR))
    width = 12 + max(int(font(size).getlength(text)) for text, _ in lines)
    picture = Image.new("RGB", (width, max(height, 8 + (size + 4) * len(lines))), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for row, (text, colour) in enumerate(lines):
        draw.text((6, 6 + row * (size + 4)), text, font=font(size), fill=colour)
    return picture


def fitted(text: str, width: int, face: ImageFont.FreeTypeFont) -> str:
    """`text`, cut short with an ellipsis where it would be wider than `width` pixels."""
    while len(text) > 1 and face.getlength(text) > width:
        text = text[:-2] + "…"
    return text


def render(gray: np.ndarray, marks: Marks, title: str, height: int) -> Image.Image:
    """The whole image (`display_gray`'s) at `height` pixels, the legend and a zoomed tile per landmark, under a
    title line."""
    whole = whole_image(gray, marks, height)
    key = legend(marks, height)
    caption_height = 34
    columns = math.ceil(len(marks.names) / max(1, height // (TILE_PIXELS + caption_height)))
    rows = math.ceil(len(marks.names) / columns)
    size = (whole.width + key.width + columns * TILE_PIXELS,
            TITLE_HEIGHT + max(whole.height, key.height, rows * (TILE_PIXELS + caption_height)))
    picture = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    draw.text((6, 6), title, font=font(18), fill=TEXT_COLOUR)
    picture.paste(whole, (0, TITLE_HEIGHT))
    picture.paste(key, (whole.width, TITLE_HEIGHT))
    for k in range(len(marks.names)):
        x = whole.width + key.width + (k % columns) * TILE_PIXELS
        y = TITLE_HEIGHT + (k // columns) * (TILE_PIXELS + caption_height)
        picture.paste(tile(gray, marks, k), (x, y))
        for line, text in enumerate(landmark_caption(marks, k).split("  ", 1)):
            draw.text((x + 3, y + TILE_PIXELS + 2 + 15 * line), fitted(text, TILE_PIXELS - 6, font(12)), font=font(12),
                      fill=marks.colour(k))
    return picture


def thumbnail(gray: np.ndarray, marks: Marks, caption: str, height: int) -> Image.Image:
    """A small picture for a contact sheet: the whole image (`display_gray`'s) with rings, the caption under it."""
    whole = whole_image(gray, marks, height, numbers=False)
    lines = caption.splitlines()
    picture = Image.new("RGB", (whole.width, height + 4 + 15 * len(lines)), BACKGROUND)
    picture.paste(whole, (0, 0))
    for row, line in enumerate(lines):
        ImageDraw.Draw(picture).text((3, height + 2 + 15 * row), line, font=font(12), fill=TEXT_COLOUR)
    return picture


def contact_sheets(thumbnails: list[Image.Image], columns: int, per_sheet: int) -> list[Image.Image]:
    """The thumbnails, in the order given, on sheets of at most `per_sheet`, `columns` to a row."""
    cell_width = max(t.width for t in thumbnails) + 6
    cell_height = max(t.height for t in thumbnails) + 6
    sheets = []
    for start in range(0, len(thumbnails), per_sheet):
        page = thumbnails[start:start + per_sheet]
        rows = math.ceil(len(page) / columns)
        sheet = Image.new("RGB", (min(columns, len(page)) * cell_width, rows * cell_height), BACKGROUND)
        for position, item in enumerate(page):
            sheet.paste(item, ((position % columns) * cell_width + 3, (position // columns) * cell_height + 3))
        sheets.append(sheet)
    return sheets
