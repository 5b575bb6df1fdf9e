"""Landmark data sets: the challenge's stack + train-gt.json, or a folder of images + a JSON with `files`.

Both give the same thing: images read one at a time, an (N, K, 2) array of pixel
coordinates with NaN where a landmark is missing, and each image's mm per pixel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from algorithm.preprocessing import ResizeGeometry, prepare, strip_padding
from algorithm.reader import ImageStack


@dataclass
class LandmarkData:
    """Images plus ground truth; `landmarks[i, k]` is (x, y) of landmark k+1 in image i, NaN if absent."""

    images: list[Path] | ImageStack
    landmarks: np.ndarray
    spacing: np.ndarray
    landmark_names: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.landmarks)

    def image_name(self, index: int) -> str:
        """The image's file name (folder data sets) or its slice number in the stack."""
        return self.images[index].name if isinstance(self.images, list) else f"slice {index + 1}"

    def image_names(self) -> list[str]:
        return [self.image_name(index) for index in range(len(self))]

    def read_images(self, indices: list[int] | None = None) -> Iterator[np.ndarray]:
        """Yield the images (as arrays) with the given indices, in the order given, one at a time: a stack
        is read image by image (`ImageStack.read`), so no more than one raw image is held here."""
        wanted = range(len(self)) if indices is None else indices
        if isinstance(self.images, ImageStack):
            yield from self.images.read(wanted)
        else:
            for i in wanted:
                yield sitk.GetArrayFromImage(sitk.ReadImage(str(self.images[i])))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 2D 8-bit copy of one data-set image (16-bit ones scaled by their maximum)."""
    gray = strip_padding(image)
    if gray.dtype == np.uint8:
        return np.ascontiguousarray(gray)
    return np.clip(gray.astype(np.float64) * (255.0 / max(1.0, float(gray.max()))), 0, 255).astype(np.uint8)


def read_ground_truth(path: Path, num_images: int | None = None):
    """Parse a CL-Detection style JSON into (landmarks (N, K, 2), spacing (N,), names, files or None)."""
    try:
        value = json.loads(Path(path).read_text())
        points = value["points"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a landmark ground-truth JSON ({error})") from None
    files = value.get("files")
    count = num_images or (len(files) if files else max(int(p["point"][2]) for p in points))
    named = value.get("landmarks") or []
    num_landmarks = max(max(int(p["name"]) for p in points), len(named))  # the last may be annotated nowhere
    if named and len(named) < num_landmarks:
        raise ValueError(f"{path}: {len(named)} landmark names but points of landmark {num_landmarks}")
    names = named or [str(k + 1) for k in range(num_landmarks)]
    landmarks = np.full((count, num_landmarks, 2), np.nan)
    spacing = np.full(count, np.nan)
    for point in points:
        x, y, z = point["point"]
        image = int(round(z)) - 1
        if not 0 <= image < count:
            raise ValueError(f"{path}: point with z={z} outside 1..{count}")
        landmarks[image, int(point["name"]) - 1] = (x, y)
        if "scale" in point:
            spacing[image] = float(point["scale"])
    if np.isnan(spacing).any():
        raise ValueError(f"{path}: some images have no 'scale' (mm per pixel)")
    return landmarks, spacing, list(names), files


def load_data(images: Path, annotations: Path) -> LandmarkData:
    """A folder of images with `files` in the JSON, or a challenge stack (.mha) with z = slice."""
    images = Path(images)
    for path, what in ((images, "images"), (Path(annotations), "annotations")):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found at {path}")
    if images.is_dir():
        landmarks, spacing, names, files = read_ground_truth(annotations)
        if not files:
            raise ValueError(f"{annotations}: a folder of images needs a 'files' list in the JSON")
        paths = [images / name for name in files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {annotations} not in {images}: {missing[:3]}")
        return LandmarkData(paths, landmarks, spacing, names, source_name(images))
    stack = ImageStack(images)
    landmarks, spacing, names, _ = read_ground_truth(annotations, num_images=len(stack))
    return LandmarkData(stack, landmarks, spacing, names, source_name(images))


def source_name(images: Path) -> str:
    """A data set's short name: its folder (the parent of one called `images`), or its stack file's stem."""
    images = Path(images).absolute()
    if images.is_dir():
        return images.parent.name if images.name == "images" else images.name
    return images.stem


def load_sources(sources: list[tuple[str, str]], landmark_names: list[str] | None = None) -> list[LandmarkData]:
    """Several data sets for one run, each named uniquely, all with the same landmark list
    (`landmark_names`, a model's, or else the longest of the sets').

    A set that annotates only the first landmarks of a longer list (the 19 ISBI landmarks of the
    challenge's 38) gets NaN for the rest, which the loss and the metrics mask out.
    """
    datasets = [load_data(Path(images), Path(annotations)) for images, annotations in sources]
    if not datasets:
        raise ValueError("no data set given: use --data IMAGES ANNOTATIONS (or --images and --annotations)")
    names = landmark_names or max((d.landmark_names for d in datasets), key=len)
    seen: dict[str, int] = {}
    for data, (_, ground_truth) in zip(datasets, sources):
        data.landmarks = fit_landmarks(data.landmarks, data.landmark_names, names,
                                       f"{ground_truth}: landmarks", "of the other data sets")
        data.landmark_names = list(names)
        seen[data.name] = seen.get(data.name, 0) + 1
        if seen[data.name] > 1:
            data.name = f"{data.name}-{seen[data.name]}"
    return datasets


def fit_landmarks(landmarks: np.ndarray, own: list[str], names: list[str], what: str, whose: str) -> np.ndarray:
    """(N, k, 2) landmarks named `own` as (N, K, 2) landmarks of the list `names`, NaN for the ones not annotated;
    refused (naming `what` and `whose` list) when `own` is not the start of `names` (numbers alone always are)."""
    if len(own) > len(names) or ([n.lower() for n in own] != [n.lower() for n in names[:len(own)]]
                                 and not all(n.isdigit() for n in own)):
        raise ValueError(f"{what} {own[:3]}... do not match {names[:3]}... {whose}")
    missing = len(names) - landmarks.shape[1]
    return np.concatenate([landmarks, np.full((len(landmarks), missing, 2), np.nan)], axis=1)


@dataclass
class PreparedData:
    """Model inputs (N, H, W), landmarks in model pixels (N, K, 2) and each image's resize geometry."""

    inputs: np.ndarray
    model_landmarks: np.ndarray
    geometries: list[ResizeGeometry]


def prepare_data(data: LandmarkData, indices: list[int], input_height: int, input_width: int,
                 normalization: str) -> PreparedData:
    """Run the container's own preprocessing on the chosen images, keeping only each one's model input."""
    inputs, points, geometries = [], [], []
    prepared = map(partial(prepare, input_height=input_height, input_width=input_width, normalization=normalization),
                   data.read_images(indices))  # map, unlike a loop, keeps no raw image while reading the next
    for index, (model_input, geometry) in zip(indices, prepared):
        inputs.append(model_input)
        points.append(geometry.to_model(data.landmarks[index]))
        geometries.append(geometry)
    return PreparedData(np.stack(inputs), np.stack(points), geometries)


def concatenate(parts: list[PreparedData]) -> PreparedData:
    """One PreparedData of several (the training images of every data set)."""
    return PreparedData(np.concatenate([p.inputs for p in parts]), np.concatenate([p.model_landmarks for p in parts]),
                        [g for p in parts for g in p.geometries])
