"""Images per second of the training data pipeline alone (augmentation and target encoding), no model.

    python -m benchmark.data_pipeline [--device auto|cpu|cuda] [--batch-size 4] [--repeats 40]

Compares the pipeline as it was (augmentation on the CPU, targets from `HeatmapCodec.encode`
one image at a time in numpy, then copied to the device) with the batched torch pipeline that
training runs now (augmentation and `encode_batch` on the training device). The two are timed
alternately, batch by batch, so a busy machine slows both alike; medians are printed as a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from algorithm.devices import DEVICES
from training.augment import augment
from training.config import TrainConfig
from training.distributed import choose_device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_numpy(images, points, config, generator, device):
    """Augment on the CPU, encode each image's targets with the numpy codec, copy to the device."""
    batch, moved = augment(images, points, config.augment, generator)
    encoded = [config.codec().encode(p) for p in moved.numpy()]
    targets = torch.from_numpy(np.stack([t for t, _ in encoded])).to(device)
    weights = torch.from_numpy(np.stack([w for _, w in encoded])).to(device)
    return batch.to(device), targets, weights


def batched_torch(images, points, config, generator, device):
    """Augment and encode the whole batch with torch on the device (what training does)."""
    batch, moved = augment(images, points, config.augment, generator)
    targets, weights = config.codec().encode(moved, xp=torch)
    return batch, targets, weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.data_pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=DEVICES, default="auto", help="(default: auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="(default: 4, training's)")
    parser.add_argument("--repeats", type=int, default=40, help="timed batches per variant (default: 40)")
    args = parser.parse_args(argv)
    config = TrainConfig()
    device = choose_device(args.device)
    landmarks = 19
    pool = 16
    cpu_images = torch.randn(pool, 1, config.input_height, config.input_width)
    cpu_points = torch.rand(pool, landmarks, 2) * torch.tensor([config.input_width, config.input_height])
    variants = {
        "before: augment on CPU, numpy targets per image, copy": (per_image_numpy, cpu_images, cpu_points,
                                                                 torch.Generator().manual_seed(0)),
        f"now: augment and targets batched in torch on {device.type}": (
            batched_torch, cpu_images.to(device), cpu_points.to(device), torch.Generator(device).manual_seed(0)),
    }
    times = {name: [] for name in variants}
    order = torch.Generator().manual_seed(1)
    for repeat in range(args.repeats + 3):  # the first three warm up
        index = torch.randperm(pool, generator=order)[:args.batch_size]
        for name, (step, images, points, generator) in variants.items():
            _synchronize(device)
            start = time.perf_counter()
            step(images[index.to(images.device)], points[index.to(points.device)], config, generator, device)
            _synchronize(device)
            if repeat >= 3:
                times[name].append(time.perf_counter() - start)
    print(f"data pipeline, batch {args.batch_size} of {config.input_height} x {config.input_width} inputs, "
          f"{landmarks} landmarks, {args.repeats} batches each, torch threads {torch.get_num_threads()}")
    print("| pipeline | ms per batch (median) | images/s |")
    print("|---|---|---|")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(f"| {name} | {medians[name] * 1000:.1f} | {args.batch_size / medians[name]:.1f} |")
    before, now = medians.values()
    print(f"now / before throughput: {before / now:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
