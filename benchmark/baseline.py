"""The organisers' CL-Detection 2023 UNet baseline, re-created to measure its speed and memory.

    python -m benchmark.baseline --input DIR --output FILE [--threads N]

Only speed and memory are measured, so the weights are random (seeded). What it re-creates
(from the challenge's description and the layer sizes of the organisers' published baseline;
the code is written anew):
- evalutils `DetectionAlgorithm` with its default SimpleITK loader and the validators
  `UniqueImagesValidator` and `UniquePathIndicesValidator`: every stack is read whole with
  `sitk.ReadImage` when the cases are loaded (and hashed through `GetArrayFromImage(...).tobytes()`),
  read whole again for processing (hash checked again), then converted with `GetArrayFromImage`;
- per image: a copy of the slice, the zero padding stripped (row and column sums of all three
  channels), the (H, W, 3) image resized to 512 x 512 x 3 as float64 with
  `skimage.transform.resize(..., mode="constant")` (anti-aliased, as skimage does by default
  when shrinking), a torch forward pass on the CPU, 38 sigmoid heatmaps decoded by argmax
  (the mean of the positions equal to the maximum) and scaled back by width/512 and height/512;
- the JSON written with `json.dumps(indent=4)` at the end.

The UNet: 3 input channels; encoder levels of 64, 128, 256 and 512 channels (two conv-BN-ReLU
each, the first conv of a level at half its width), max-pooling between them; the 512-channel
level is the bottleneck (no 1024 level); three decoder levels (2 x 2 transposed convolution, skip
concatenation, two conv-BN-ReLU) of 256, 128 and 64 channels; a 1 x 1 convolution to 38 maps
and a sigmoid, all at 512 x 512.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import SimpleITK
import torch
from evalutils import DetectionAlgorithm
from evalutils.validators import UniqueImagesValidator, UniquePathIndicesValidator
from skimage import transform as sk_transform
from torch import nn

from algorithm.preprocessing import CHALLENGE_LANDMARKS

logger = logging.getLogger("baseline")

INPUT_SIZE = 512


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _level(in_channels: int, middle: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn_relu(in_channels, middle), _conv_bn_relu(middle, out_channels))


class BaselineUNet(nn.Module):
    """64-128-256-512 encoder (512 is the bottleneck), 256-128-64 decoder, 38 sigmoid heatmaps."""

    def __init__(self, in_channels: int = 3, num_landmarks: int = CHALLENGE_LANDMARKS) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(_level(previous, width // 2, width))
            previous = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, skip in ((512, 256), (256, 128), (128, 64)):
            self.upsample.append(nn.ConvTranspose2d(deep, deep, 2, stride=2))
            self.decoder.append(_level(deep + skip, skip, skip))
        self.head = nn.Conv2d(64, num_landmarks, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        features = image
        for index, level in enumerate(self.encoder):
            features = level(features if index == 0 else self.pool(features))
            skips.append(features)
        features = skips.pop()
        for upsample, level in zip(self.upsample, self.decoder):
            features = level(torch.cat([upsample(features), skips.pop()], dim=1))
        return torch.sigmoid(self.head(features))


def strip_padding(image: np.ndarray) -> np.ndarray:
    """The image without its zero rows at the bottom and zero columns at the right (all channels summed)."""
    rows = np.flatnonzero(image.sum(axis=(1, 2)))
    columns = np.flatnonzero(image.sum(axis=(0, 2)))
    return image[: int(rows[-1]) + 1, : int(columns[-1]) + 1, :]


def argmax_landmarks(heatmaps: np.ndarray, width: int, height: int) -> list[list[float]]:
    """(K, 512, 512) heatmaps to K [x, y] in original pixels: mean of the maxima, times size / 512."""
    landmarks = []
    for heatmap in heatmaps:
        ys, xs = np.where(heatmap == heatmap.max())
        landmarks.append([float(xs.mean()) * width / INPUT_SIZE, float(ys.mean()) * height / INPUT_SIZE])
    return landmarks


class OrganisersBaseline(DetectionAlgorithm):
    def __init__(self, input_dir: Path, output_file: Path) -> None:
        super().__init__(
            validators={"input_image": (UniqueImagesValidator(), UniquePathIndicesValidator())},
            input_path=Path(input_dir),
            output_file=Path(output_file),
        )
        torch.manual_seed(2023)
        self.model = BaselineUNet().eval()

    def process_case(self, *, idx, case):
        input_image, path = self._load_input_image(case=case)
        logger.info("%s: read and hash-checked", Path(path).name)
        return self.predict(input_image=input_image)

    def predict(self, *, input_image: SimpleITK.Image) -> list[list[list[float]]]:
        stack = SimpleITK.GetArrayFromImage(input_image)
        results = []
        with torch.no_grad():
            for index in range(stack.shape[0]):
                image = strip_padding(np.array(stack[index]))
                height, width = image.shape[:2]
                resized = sk_transform.resize(image, (INPUT_SIZE, INPUT_SIZE), mode="constant", preserve_range=False)
                batch = torch.from_numpy(np.transpose(resized, (2, 0, 1))[None]).float()
                heatmaps = self.model(batch).numpy()[0]
                results.append(argmax_landmarks(heatmaps, width, height))
                logger.info("image %d of %d done", index + 1, stack.shape[0])
        return results

    def save(self) -> None:
        points = [
            {"name": str(k + 1), "point": [x, y, z]}
            for z, landmarks in enumerate((image for stack in self._case_results for image in stack), start=1)
            for k, (x, y) in enumerate(landmarks)
        ]
        value = {"name": "Orthodontic landmarks", "type": "Multiple points", "points": points,
                 "version": {"major": 1, "minor": 0}}
        Path(self._output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(self._output_file).write_text(json.dumps(value, indent=4))
        logger.info("wrote %d landmarks to %s", len(points), self._output_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of stacks")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    logger.info("torch %s on the CPU with %d thread(s)", torch.__version__, torch.get_num_threads())
    OrganisersBaseline(args.input, args.output).process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
