"""A run's configuration: one dataclass, its command-line options and its JSON form (config.json)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from algorithm.codec import DECODERS, HeatmapCodec
from algorithm.crops import CropSpec
from algorithm.devices import DEVICES
from algorithm.preprocessing import NORMALIZATIONS
from training.augment import AugmentConfig
from training.data import source_name
from training.model import UNet
from training.stages import STAGES

SELECTIONS = ("source_mean", "pooled")
# what the validation score that picks best.pt is, by --selection (the epoch line and the summary say it)
SELECTION_SCORES = {"source_mean": "the mean of the per-data-set validation MREs",
                    "pooled": "the validation MRE pooled over all landmarks"}


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json beside its checkpoints."""

    images: str = _option("", "one data set's image folder (with a JSON listing `files`) or challenge stack")
    annotations: str = _option("", "the ground-truth JSON of --images")
    data: list[list[str]] = field(default_factory=list, metadata={"help": "[images, annotations] pairs"})
    output: str = _option("runs/unet", "run folder: config.json, split.json, last.pt, best.pt, curves")
    stage: str = _option("detect", "detect: the first stage, on the whole image; refine: the second stage, on a "
                         "full-resolution crop about each landmark", tuple(STAGES))
    first_stage: str = _option("algorithm/model", "refine: the exported first stage whose landmarks the crops are "
                               "centred on (validation, export)")
    crop_fraction: float = _option(0.08, "refine: crop side as a share of the image content's height")
    crop_size: int = _option(96, "refine: crop pixels per side")
    crop_jitter: float = _option(0.1, "refine: standard deviation of the training crops' offset from the ground "
                                 "truth, as a share of the crop side")
    input_height: int = _option(512, "model input height in pixels")
    input_width: int = _option(416, "model input width in pixels")
    normalization: str = _option("zscore", "intensity normalisation of the input: zscore (the image's mean and "
                                 "standard deviation) or rank (histogram equalisation: blind to any increasing tone "
                                 "curve)", NORMALIZATIONS)
    width: int = _option(16, "UNet channels at full resolution (doubling per level)")
    depth: int = _option(5, "UNet pooling levels")
    stride: int = _option(2, "heatmap stride: input pixels per heatmap pixel")
    sigma: float = _option(2.0, "target Gaussian sigma in heatmap pixels")
    decoder: str = _option("centroid", "heatmap decoding used for validation and stored for the container",
                           DECODERS)
    epochs: int = _option(100, "planned epochs (the cosine schedule ends there)")
    batch_size: int = _option(4, "images per step (per process under torchrun)")
    learning_rate: float = _option(2e-3, "AdamW peak learning rate")
    weight_decay: float = _option(1e-4, "AdamW weight decay")
    warmup_epochs: int = _option(3, "linear warm-up epochs")
    patience: int = _option(25, "stop after this many epochs without a better validation score")
    seed: int = _option(0, "seed of the split, the initial weights and the augmentation")
    split_seed: int = _option(-1, "seed of the split alone (-1: --seed's); members of an ensemble differ in --seed "
                              "and hold out the same images with one --split-seed")
    selection: str = _option("source_mean", "validation score that picks best.pt: the mean of the per-data-set "
                             "MREs (every centre alike) or the MRE pooled over all landmarks", SELECTIONS)
    val_fraction: float = _option(0.15, "share of each data set for validation (0: none; every epoch is kept, the "
                                  "model is last.pt)")
    test_fraction: float = _option(0.15, "share of each data set held out for testing (0: none)")
    split_run: str = _option("", "a run on every image (--all-images): the run trained on a split whose recipe "
                             "and epoch count it repeats and whose held-out figures estimate it")
    threads: int = _option(0, "CPU threads for torch (0: torch's default)")
    device: str = _option("auto", "training device: auto (CUDA when available), cuda or cpu", DEVICES)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        augment = AugmentConfig(**values.pop("augment", {}))
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        config = cls(**values, augment=augment)
        for item in fields(cls):
            choices = item.metadata.get("choices")
            if choices and getattr(config, item.name) not in choices:
                raise ValueError(f"{item.name} {getattr(config, item.name)!r}: choose one of {', '.join(choices)}")
        return config

    def sources(self) -> list[tuple[str, str]]:
        """Every (images, annotations) data set of the run: the `data` list, then `images` with `annotations`."""
        pairs = [(str(images), str(annotations)) for images, annotations in self.data]
        if self.images or self.annotations:
            pairs.append((self.images, self.annotations))
        return pairs

    def data_set_names(self) -> set[str]:
        """The short names of the run's data sets, as `LandmarkData.name` gives them."""
        return {source_name(Path(images)) for images, _ in self.sources()}

    def codec(self) -> HeatmapCodec:
        """The stage's codec: the whole model input (detect) or one crop (refine)."""
        return STAGES[self.stage].codec(self)

    def crop_spec(self) -> CropSpec:
        return CropSpec(self.crop_fraction, self.crop_size, self.normalization)

    def build_model(self, num_landmarks: int) -> UNet:
        return UNet(num_landmarks, self.width, self.depth, self.stride)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


class _DataSetOnce(argparse.Action):
    """--images or --annotations given twice would silently train on the last one: refuse it."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice; for several data sets repeat --data IMAGES ANNOTATIONS")
        setattr(namespace, self.dest, values)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per configuration field (augmentation settings go in a --config JSON)."""
    defaults = TrainConfig()
    for item in fields(TrainConfig):
        if item.name in ("augment", "data"):
            continue
        default = getattr(defaults, item.name)
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(default), default=None,
                            action=_DataSetOnce if item.name in ("images", "annotations") else "store",
                            choices=item.metadata.get("choices"),
                            help=f"{item.metadata['help']} (default: {default if default != '' else 'none'})")


def config_from_args(args: argparse.Namespace, base: dict) -> TrainConfig:
    """The defaults, updated by `base` (a --config file or the run's saved config.json), then by the options."""
    values = asdict(TrainConfig())
    values.update(base)
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if f.name not in ("augment", "data") and getattr(args, f.name) is not None})
    if getattr(args, "data", None):
        values["data"] = list(values.get("data", [])) + [list(pair) for pair in args.data]
    return TrainConfig.from_dict(values)
