"""Train the UNet heatmap model: `python -m training.train --images DIR_OR_STACK --annotations GT.json`.

CPU by default; CUDA with mixed precision when present; several GPUs (or CPU processes)
under `torchrun`. Every epoch validates (MRE in mm through the container's decoding),
writes `last.pt` atomically, keeps `best.pt`, and `--resume` continues a killed run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from algorithm.codec import HeatmapCodec
from training.augment import AugmentConfig, random_affine, random_flip, random_intensity
from training.data import PreparedData, load_data, make_split, prepare_data
from training.metrics import radial_errors_mm, summarize
from training.model import SpatialSoftmax, UNet


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json beside its checkpoints."""

    images: str = ""
    annotations: str = ""
    output: str = "runs/unet"
    input_height: int = 512
    input_width: int = 416
    normalization: str = "zscore"
    width: int = 16
    depth: int = 5
    stride: int = 2
    sigma: float = 2.0
    decoder: str = "centroid"
    epochs: int = 100
    batch_size: int = 4
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    patience: int = 25
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    threads: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        augment = AugmentConfig(**values.pop("augment", {}))
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        return cls(**values, augment=augment)

    def codec(self) -> HeatmapCodec:
        return HeatmapCodec(self.input_height, self.input_width, self.stride, self.sigma, self.decoder)

    def build_model(self, num_landmarks: int) -> UNet:
        return UNet(num_landmarks, self.width, self.depth, self.stride)


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between each landmark's spatial softmax and its normalised Gaussian target.

    Landmarks without a target (missing, or moved out of the image) are masked out.
    """
    log_probs = torch.log_softmax(logits.float().flatten(2), dim=2)
    mass = targets.flatten(2).sum(dim=2)
    present = mass > 1e-3
    target = targets.flatten(2) / mass.clamp_min(1e-6)[..., None]
    per_landmark = -(target * log_probs).sum(dim=2)
    return (per_landmark * present).sum() / present.sum().clamp_min(1)


def encode_targets(codec: HeatmapCodec, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Heatmap targets for (B, K, 2) model-pixel landmarks; a landmark outside the frame gets none."""
    points = points.clone()
    outside = ((points[..., 0] < -0.5) | (points[..., 0] > width - 0.5)
               | (points[..., 1] < -0.5) | (points[..., 1] > height - 0.5))
    points[outside] = float("nan")
    return torch.from_numpy(np.stack([codec.encode(p) for p in points.numpy()]))


def predict_model_space(model: torch.nn.Module, codec: HeatmapCodec, inputs: np.ndarray, device: torch.device,
                        batch_size: int) -> np.ndarray:
    """(N, H, W) inputs to (N, K, 2) model-pixel landmarks, decoded by the container's codec."""
    exported_form = SpatialSoftmax(model).eval()  # the graph the container runs
    points = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(inputs[start:start + batch_size])[:, None].to(device)
            points.append(codec.decode(exported_form(batch).float().cpu().numpy())[0])
    return np.concatenate(points)


def to_original(prepared: PreparedData, model_points: np.ndarray) -> np.ndarray:
    return np.stack([g.to_original(p) for g, p in zip(prepared.geometries, model_points)])


def atomic_save(state: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def save_best(model: torch.nn.Module, config: TrainConfig, names: list[str], state: dict, path: Path) -> None:
    atomic_save({"model": model.state_dict(), "config": asdict(config), "landmark_names": names,
                 "summary": state.get("best_summary"), "epoch": state["best_epoch"]}, path)


def learning_rate_at(config: TrainConfig, epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the planned epochs."""
    if epoch < config.warmup_epochs:
        return config.learning_rate * (epoch + 1) / config.warmup_epochs
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, mre_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    loss_axis.set_xlabel("epoch"), loss_axis.set_ylabel("heatmap cross-entropy"), loss_axis.legend()
    mre_axis.plot(epochs, [row["val_MRE"] for row in history], label="validation MRE")
    mre_axis.set_yscale("log")
    mre_axis.set_xlabel("epoch"), mre_axis.set_ylabel("MRE (mm, log scale)"), mre_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device; under torchrun one process per GPU (nccl) or per CPU slot (gloo)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def train(config: TrainConfig, resume: bool = False, max_epochs_this_run: int | None = None) -> dict:
    """Run (or resume) training; returns the best validation summary."""
    rank, world_size, device = setup_distributed()
    is_main = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output)
    checkpoint_path = output / "last.pt"
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")

    data = load_data(Path(config.images), Path(config.annotations))
    split = make_split(len(data), config.seed, config.val_fraction, config.test_fraction)
    if is_main:
        (output / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        (output / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    prep = dict(input_height=config.input_height, input_width=config.input_width, normalization=config.normalization)
    train_data = prepare_data(data, split["train"], **prep)
    val_data = prepare_data(data, split["val"], **prep)
    codec = config.codec()

    torch.manual_seed(config.seed)
    model = config.build_model(data.landmarks.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state = {"epoch": 0, "best_mre": float("inf"), "best_epoch": -1, "history": []}
    if resume:
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        if is_main:
            print(f"resuming {output} at epoch {state['epoch'] + 1}")
            best_path = output / "best.pt"
            if state["best_epoch"] == state["epoch"] and (
                    not best_path.is_file() or torch.load(best_path, weights_only=False)["epoch"] != state["epoch"]):
                save_best(model, config, data.landmark_names, state, best_path)  # killed between the two saves
    trained_model = DistributedDataParallel(model) if world_size > 1 else model

    generator = torch.Generator().manual_seed(config.seed * 1000 + state["epoch"] * world_size + rank)
    images = torch.from_numpy(train_data.inputs)[:, None]
    points = torch.from_numpy(train_data.model_landmarks).float()
    val_truth = data.landmarks[split["val"]]
    val_spacing = data.spacing[split["val"]]
    last_epoch = config.epochs if max_epochs_this_run is None else min(config.epochs, state["epoch"] + max_epochs_this_run)

    for epoch in range(state["epoch"], last_epoch):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(config, epoch)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed + epoch))
        order = order[: len(order) - len(order) % world_size][rank::world_size]  # same batch count per process
        trained_model.train()
        losses = []
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not is_main, leave=False):
            index = order[start:start + config.batch_size]
            batch, batch_points = random_flip(images[index], points[index], config.augment.horizontal_flip, generator)
            batch, batch_points = random_affine(batch, batch_points, config.augment, generator)
            batch = random_intensity(batch, config.augment, generator)
            targets = encode_targets(codec, batch_points, config.input_height, config.input_width)
            with torch.autocast(device.type, enabled=use_amp):
                loss = heatmap_loss(trained_model(batch.to(device)), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())

        if is_main:
            predicted = to_original(val_data, predict_model_space(model, codec, val_data.inputs, device,
                                                                  config.batch_size))
            summary = summarize(radial_errors_mm(predicted, val_truth, val_spacing))
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": learning_rate_at(config, epoch),
                   "val_MRE": summary["MRE"], "val_SDR@2": summary["SDR@2"], "time": time.time()}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            improved = summary["MRE"] < state["best_mre"]
            if improved:
                state["best_mre"], state["best_epoch"], state["best_summary"] = summary["MRE"], epoch + 1, summary
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "state": state, "config": asdict(config),
                         "landmark_names": data.landmark_names}, checkpoint_path)
            if improved:
                save_best(model, config, data.landmark_names, state, output / "best.pt")
            (output / "history.json").write_text(json.dumps(state["history"], indent=2) + "\n")
            plot_curves(state["history"], output / "learning_curves.png")
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  val MRE {summary['MRE']:.3f} mm  "
                  f"SDR@2mm {summary['SDR@2']:.1f} %{'  (best)' if improved else ''}", flush=True)
        stop = torch.tensor([state["epoch"] - state["best_epoch"] >= config.patience if is_main else False])
        if world_size > 1:
            dist.broadcast(stop, src=0)
            state["epoch"] = epoch + 1
        if stop.item():
            if is_main:
                print(f"early stop: no improvement for {config.patience} epochs")
            break
    if world_size > 1:
        dist.destroy_process_group()
    return {"best_MRE": state["best_mre"], "best_epoch": state["best_epoch"], "epochs_done": state["epoch"]}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the landmark heatmap UNet. Options override the --config file, which "
        "overrides the defaults; the resulting configuration is saved as OUTPUT/config.json.")
    parser.add_argument("--config", type=Path, help="a JSON configuration (e.g. a run's config.json)")
    parser.add_argument("--resume", action="store_true", help="continue OUTPUT/last.pt where it stopped")
    parser.add_argument("--max-epochs-this-run", type=int, help="stop after this many epochs (resume later)")
    for item in fields(TrainConfig):
        if item.name == "augment":
            continue
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(getattr(defaults, item.name)),
                            default=None, help=f"(default: {getattr(defaults, item.name)})")
    args = parser.parse_args(argv)
    values = asdict(defaults)
    if args.config:
        values.update(json.loads(args.config.read_text()))
    if args.resume and not args.config:
        saved = Path(args.output or defaults.output) / "config.json"
        if saved.is_file():
            values.update(json.loads(saved.read_text()))
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if f.name != "augment" and getattr(args, f.name) is not None})
    config = TrainConfig.from_dict(values)
    if not config.images or not config.annotations:
        parser.error("--images and --annotations are required (or a --config that sets them)")
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        result = train(config, resume=args.resume, max_epochs_this_run=args.max_epochs_this_run)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
