"""The model's stages: one object per stage that training, evaluation and export all ask, so a new stage is
one class here and one entry in STAGES.

detect: whole images resized to the model input (the first stage).
refine: crops of the full-resolution image about each landmark (the second stage); it trains on
crops about jittered ground truth and validates exactly as the container runs it, on the crops
about the exported first stage's landmarks.

Each stage says how to split the data, what it trains on each epoch, how it predicts a set of images as the
container would (validation and evaluation share it), what its export is compared on, which graph file it
writes and how the model folder's metadata describes it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from algorithm.codec import HeatmapCodec
from algorithm.crops import MAX_CROP_OFFSET, refine_landmarks
from algorithm.inference import LandmarkDetector
from algorithm.metadata import MODEL_FILE, REFINE_MODEL_FILE, ModelMetadata, RefinementStage
from algorithm.preprocessing import prepare, strip_padding
from training.data import LandmarkData, PreparedData, concatenate, prepare_data
from training.metrics import radial_errors_mm, summarize
from training.model import SpatialSoftmax
from training.split import Split, new_split, recorded_split
from training.validation import ValidationSet, predict_with_torch, to_original

if TYPE_CHECKING:  # config.py asks this module for the stage names
    from training.config import TrainConfig


@dataclass
class Predictions:
    """A set's (N, K, 2) original-pixel landmarks, their (N, K) confidences, for two stages the first's, and
    each image's warnings from the container's path (none from torch's)."""

    points: np.ndarray
    confidence: np.ndarray
    first_stage: np.ndarray | None = None
    notes: list[tuple[str, ...]] | None = None


@dataclass
class TrainingData:
    """What a run trains on (`epoch_data`, drawn anew each epoch where the stage jitters) and validates on."""

    val_sets: list[ValidationSet]

    def epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) model inputs and (N, K, 2) model-pixel landmarks to train on this epoch."""
        raise NotImplementedError


@dataclass
class WholeImages(TrainingData):
    """The first stage's: every training image once per epoch, resized as the container resizes it."""

    train: PreparedData

    def epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.train.inputs, self.train.model_landmarks


@dataclass
class FullResolution:
    """Un-padded grayscale images at their own resolution, and what the crops are centred on."""

    contents: list[np.ndarray]
    centres: np.ndarray  # (N, K, 2) original pixels: ground truth (training) or first-stage landmarks


@dataclass
class JitteredCrops(TrainingData):
    """The second stage's: a crop about every annotated landmark of every training image, moved by a random
    offset drawn anew each epoch."""

    config: TrainConfig
    train: list[FullResolution]

    def epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(M, S, S) crops about jittered ground truth and (M, K, 2) every landmark's crop-pixel position."""
        rng = np.random.default_rng([self.config.seed, epoch])
        spec = self.config.crop_spec()
        crops, points = [], []
        for part in self.train:
            for content, truth in zip(part.contents, part.centres):
                annotated = truth[np.isfinite(truth).all(axis=1)]
                side = spec.fraction * content.shape[0]
                jitter = np.clip(rng.normal(0, self.config.crop_jitter * side, annotated.shape),
                                 -MAX_CROP_OFFSET * side, MAX_CROP_OFFSET * side)
                image_crops, geometry = spec.extract(content, annotated + jitter)
                crops.append(image_crops)
                points.append(geometry.every_landmark_in_every_crop(truth))
        return np.concatenate(crops), np.concatenate(points)


def read_contents(data: LandmarkData, indices: list[int], what: str, progress: bool = True) -> list[np.ndarray]:
    """The chosen images as 2D arrays without their zero padding (copies, so a colour image's planes and the
    padding go; map, unlike a comprehension, keeps no raw image while reading the next)."""
    images = tqdm(data.read_images(indices), total=len(indices), disable=not progress, leave=False,
                  desc=f"{data.name}: reading the {what} images at full resolution")
    return list(map(unpadded_copy, images))


def unpadded_copy(image: np.ndarray) -> np.ndarray:
    """An image's un-padded grayscale content as an array of its own, which does not keep the raw image."""
    return np.array(strip_padding(image))


def first_stage_detector(model_dir: Path | str) -> LandmarkDetector:
    """The exported first stage that a second stage trains and is validated on: the network alone, without the
    shape check, so that a checkpoint's scores are those of its export run with `--no-shape-check`."""
    return LandmarkDetector(model_dir, device="cpu", refine=False, shape_check=False)


def first_stage_inputs(first_stage: LandmarkDetector, data: LandmarkData, indices: list[int], what: str,
                       progress: bool = True) -> FullResolution:
    """What the second stage refines on the chosen images: their content and the first stage's landmarks, from
    one reading of each image."""
    contents, points = [], []
    images = tqdm(data.read_images(indices), total=len(indices), disable=not progress, leave=False,
                  desc=f"{data.name}: the first stage's landmarks on the {what} images")
    for image in images:
        points.append(next(first_stage.predict([image])).points)
        contents.append(unpadded_copy(image))
    return FullResolution(contents, np.stack(points))


class DetectStage:
    """The first stage: every landmark on the whole image, resized to the model input."""

    name = "detect"
    graph_file = MODEL_FILE
    refines = False  # whether it refines another stage's landmarks (a checkpoint of it scores both stages)
    builds_shape_model = True  # the shape model corrects this stage's landmarks, so it is made with it

    def codec(self, config: TrainConfig) -> HeatmapCodec:
        return HeatmapCodec(config.input_height, config.input_width, config.stride, config.sigma, config.decoder)

    def split(self, config: TrainConfig, datasets: list[LandmarkData]) -> Split:
        """A new run's split: each data set's, from the split's seed (else the run's) and fractions."""
        seed = config.seed if config.split_seed < 0 else config.split_seed
        return new_split(datasets, seed, config.val_fraction, config.test_fraction)

    def validation_set(self, config: TrainConfig, data: LandmarkData, indices: list[int],
                       progress: bool = True) -> ValidationSet:
        return ValidationSet(data, indices, self.model_inputs(config, data, indices))

    def training_data(self, config: TrainConfig, datasets: list[LandmarkData], split: Split,
                      is_main: bool) -> TrainingData:
        train = concatenate([self.model_inputs(config, d, split[d.name]["train"]) for d in datasets])
        return WholeImages([self.validation_set(config, d, split[d.name]["val"]) for d in validated(datasets, split)],
                           train)

    @staticmethod
    def model_inputs(config: TrainConfig, data: LandmarkData, indices: list[int]) -> PreparedData:
        """The chosen images preprocessed by the container's own code, at the configured input size."""
        return prepare_data(data, indices, config.input_height, config.input_width, config.normalization)

    def predict(self, config: TrainConfig, model: torch.nn.Module, val_set: ValidationSet,
                device: torch.device) -> Predictions:
        """The set's landmarks in original pixels, decoded as the container decodes."""
        points, confidence = predict_with_torch(model, self.codec(config), val_set.prepared.inputs, device,
                                                config.batch_size)
        return Predictions(to_original(val_set.prepared, points), confidence)

    def comparison_inputs(self, config: TrainConfig, images: list[np.ndarray]) -> np.ndarray:
        """Images preprocessed as the container does, to compare torch and ONNX Runtime on."""
        return np.stack([prepare(image, config.input_height, config.input_width, config.normalization)[0]
                         for image in images])

    def metadata(self, config: TrainConfig, names: list[str], trained_on: str, accuracy: dict,
                 training: dict) -> ModelMetadata:
        return ModelMetadata(landmark_names=names, codec=self.codec(config), normalization=config.normalization,
                             trained_on=trained_on, accuracy=accuracy, training=training)

    def install(self, config: TrainConfig, graph: Path, output_dir: Path) -> None:
        """The graph into the model folder; a second stage left there refined another first stage's landmarks."""
        shutil.copyfile(graph, output_dir / self.graph_file)
        (output_dir / REFINE_MODEL_FILE).unlink(missing_ok=True)

    def trained_on(self, config: TrainConfig) -> str:
        data = "; ".join(f"{images} with {annotations}" for images, annotations in config.sources())
        return f"{data}; every image, as its split run {config.split_run}" if config.split_run else data

    def next_steps(self, output: Path) -> list[str]:
        return [f"python -m training.train --config training/configs/refine.json --first-stage {output} "
                "--data ...   # a second stage on it"]


class RefineStage:
    """The second stage: a full-resolution crop about each first-stage landmark, decoded in its own channel."""

    name = "refine"
    graph_file = REFINE_MODEL_FILE
    refines = True
    builds_shape_model = False

    def codec(self, config: TrainConfig) -> HeatmapCodec:
        return HeatmapCodec(config.crop_size, config.crop_size, config.stride, config.sigma, config.decoder)

    def split(self, config: TrainConfig, datasets: list[LandmarkData]) -> Split:
        """The first stage's own split (its validation and test images must not become training crops here); a run
        on every image (--all-images) needs a first stage trained on every image, or it would train on a split."""
        metadata = ModelMetadata.load(Path(config.first_stage))
        check_landmarks(metadata, config, datasets[0].landmark_names)
        split = recorded_split(metadata.training.get("split"), datasets, f"{config.first_stage} (the first stage)")
        if config.split_run and any(part["val"] or part["test"] for part in split.values()):
            raise ValueError(f"{config.first_stage}: this first stage holds validation and test images out, so its "
                             "second stage cannot train on every image: give --first-stage the export of the first "
                             "stage trained on every image (python -m training.train --all-images ITS_SPLIT_RUN)")
        return split

    def validation_set(self, config: TrainConfig, data: LandmarkData, indices: list[int],
                       progress: bool = True) -> ValidationSet:
        """The set's content and the exported first stage's landmarks, which the crops are centred on."""
        first_stage = first_stage_detector(config.first_stage)
        return ValidationSet(data, indices, first_stage_inputs(first_stage, data, indices, "validation", progress))

    def training_data(self, config: TrainConfig, datasets: list[LandmarkData], split: Split,
                      is_main: bool) -> TrainingData:
        train = [FullResolution(read_contents(d, split[d.name]["train"], "training", is_main),
                                d.landmarks[split[d.name]["train"]]) for d in datasets]
        val_sets = [self.validation_set(config, d, split[d.name]["val"], is_main) for d in validated(datasets, split)]
        for val_set in val_sets if is_main else []:
            data, indices = val_set.data, val_set.indices
            errors = radial_errors_mm(val_set.prepared.centres, data.landmarks[indices], data.spacing[indices])
            print(f"  {data.name}: first stage alone, validation MRE {summarize(errors)['MRE']:.3f} mm", flush=True)
        return JitteredCrops(val_sets, config, train)

    def predict(self, config: TrainConfig, model: torch.nn.Module, val_set: ValidationSet,
                device: torch.device) -> Predictions:
        """A torch second stage on the crops about the set's first-stage landmarks, as the container refines."""
        exported_form = SpatialSoftmax(model).eval()

        def heatmaps_of(crops: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return exported_form(torch.from_numpy(crops)[:, None].to(device)).float().cpu().numpy()

        spec, codec, first = config.crop_spec(), self.codec(config), val_set.prepared
        refined = [refine_landmarks(content, points, spec, codec, heatmaps_of)
                   for content, points in zip(first.contents, first.centres)]
        return Predictions(np.stack([points for points, _ in refined]),
                           np.stack([confidence for _, confidence in refined]), first.centres)

    def comparison_inputs(self, config: TrainConfig, images: list[np.ndarray]) -> np.ndarray:
        """The crops about the first stage's landmarks on the first image."""
        first = next(first_stage_detector(config.first_stage).predict(images[:1]))
        return config.crop_spec().extract(strip_padding(images[0]), first.points)[0]

    def metadata(self, config: TrainConfig, names: list[str], trained_on: str, accuracy: dict,
                 training: dict) -> ModelMetadata:
        """The first stage's metadata with this second stage added."""
        metadata = ModelMetadata.load(Path(config.first_stage))
        metadata.refinement = RefinementStage(crops=config.crop_spec(), codec=self.codec(config), training=training)
        metadata.accuracy = accuracy or metadata.accuracy
        metadata.trained_on = trained_on or metadata.trained_on
        return metadata

    def install(self, config: TrainConfig, graph: Path, output_dir: Path) -> None:
        """The graph beside a copy of its first stage, unless the model folder is the first stage's own."""
        first_stage = Path(config.first_stage) / MODEL_FILE
        if first_stage.resolve() != (output_dir / MODEL_FILE).resolve():
            shutil.copyfile(first_stage, output_dir / MODEL_FILE)
        shutil.copyfile(graph, output_dir / self.graph_file)

    def trained_on(self, config: TrainConfig) -> str:
        return ""  # the first stage's description stays

    def next_steps(self, output: Path) -> list[str]:
        return []


def validated(datasets: list[LandmarkData], split: Split) -> list[LandmarkData]:
    """The data sets with validation images (a run on every image has none)."""
    return [data for data in datasets if split[data.name]["val"]]


def check_landmarks(meta: ModelMetadata, config: TrainConfig, names: list[str]) -> None:
    """The first stage must find the landmarks the second stage is trained on."""
    if [n.lower() for n in meta.landmark_names] != [n.lower() for n in names]:
        raise ValueError(f"{config.first_stage}: the first stage finds {meta.num_landmarks} landmarks "
                         f"({meta.landmark_names[:2]}...), the data has {len(names)} ({names[:2]}...)")


STAGES = {stage.name: stage for stage in (DetectStage(), RefineStage())}
