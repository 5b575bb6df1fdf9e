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
from training.augment import AugmentConfig, augment
from training.data import LandmarkData, PreparedData, concatenate, load_sources, make_split, prepare_data
from training.loss import heatmap_loss
from training.metrics import radial_errors_mm, summarize
from training.model import SpatialSoftmax, UNet
from training.targets import encode_batch


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json beside its checkpoints."""

    images: str = ""
    annotations: str = ""
    data: list[list[str]] = field(default_factory=list)
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
    selection: str = "source_mean"
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

    def sources(self) -> list[tuple[str, str]]:
        """Every (images, annotations) data set of the run: the `data` list, then `images` with `annotations`."""
        pairs = [(str(images), str(annotations)) for images, annotations in self.data]
        if self.images or self.annotations:
            pairs.append((self.images, self.annotations))
        return pairs

    def codec(self) -> HeatmapCodec:
        return HeatmapCodec(self.input_height, self.input_width, self.stride, self.sigma, self.decoder)

    def build_model(self, num_landmarks: int) -> UNet:
        return UNet(num_landmarks, self.width, self.depth, self.stride)


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


SELECTIONS = ("source_mean", "pooled")


@dataclass
class ValidationSet:
    """One data set's validation images, prepared once."""

    data: LandmarkData
    indices: list[int]
    prepared: PreparedData


def validate(model: torch.nn.Module, codec: HeatmapCodec, sets: list[ValidationSet], device: torch.device,
             batch_size: int, selection: str) -> dict:
    """Summaries per data set and pooled, and the score that model selection minimises.

    `source_mean` (the mean of the per-set MREs) weighs every centre alike; `pooled` weighs every
    landmark alike, so the larger set dominates.
    """
    errors = {}
    for item in sets:
        predicted = to_original(item.prepared, predict_model_space(model, codec, item.prepared.inputs, device,
                                                                   batch_size))
        errors[item.data.name] = radial_errors_mm(predicted, item.data.landmarks[item.indices],
                                                  item.data.spacing[item.indices])
    per_source = {name: summarize(value) for name, value in errors.items()}
    pooled = summarize(np.concatenate(list(errors.values())))
    score = pooled["MRE"] if selection == "pooled" else float(np.mean([s["MRE"] for s in per_source.values()]))
    return {"pooled": pooled, "sources": per_source, "score": score}


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
    mre_axis.plot(epochs, [row["val_MRE"] for row in history], label="validation MRE, pooled", color="black")
    for name in history[-1].get("val_sources", {}):
        mre_axis.plot(epochs, [row["val_sources"][name]["MRE"] for row in history], label=name, linewidth=0.8)
    mre_axis.xaxis.get_major_locator().set_params(integer=True)
    loss_axis.xaxis.get_major_locator().set_params(integer=True)
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

    if config.selection not in SELECTIONS:
        raise ValueError(f"unknown selection {config.selection!r}; choose one of {SELECTIONS}")
    datasets = load_sources(config.sources())
    splits = {d.name: make_split(len(d), config.seed, config.val_fraction, config.test_fraction) for d in datasets}
    if is_main:
        (output / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        (output / "split.json").write_text(json.dumps(splits, indent=2) + "\n")
    prep = dict(input_height=config.input_height, input_width=config.input_width, normalization=config.normalization)
    train_data = concatenate([prepare_data(d, splits[d.name]["train"], **prep) for d in datasets])
    val_sets = [ValidationSet(d, splits[d.name]["val"], prepare_data(d, splits[d.name]["val"], **prep))
                for d in datasets]
    names = datasets[0].landmark_names
    if is_main:
        sizes = ", ".join(f"{d.name} {len(d)} images ({len(splits[d.name]['train'])} train / "
                          f"{len(splits[d.name]['val'])} val / {len(splits[d.name]['test'])} test)" for d in datasets)
        print(f"training on {device} ({torch.get_num_threads()} threads): {sizes}; {len(names)} landmarks; "
              f"selection by {config.selection}; output {output}", flush=True)
    codec = config.codec()

    torch.manual_seed(config.seed)
    model = config.build_model(len(names)).to(device)
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
                save_best(model, config, names, state, best_path)  # killed between the two saves
    trained_model = DistributedDataParallel(model) if world_size > 1 else model

    generator = torch.Generator(device).manual_seed(config.seed * 1000 + state["epoch"] * world_size + rank)
    images = torch.from_numpy(train_data.inputs)[:, None].to(device)
    points = torch.from_numpy(train_data.model_landmarks).float().to(device)
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
            index = order[start:start + config.batch_size].to(device)
            batch, batch_points = augment(images[index], points[index], config.augment, generator)
            targets, weights = encode_batch(codec, batch_points)
            with torch.autocast(device.type, enabled=use_amp):
                loss = heatmap_loss(trained_model(batch), targets, weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())

        if is_main:
            result = validate(model, codec, val_sets, device, config.batch_size, config.selection)
            summary = result["pooled"]
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": learning_rate_at(config, epoch),
                   "val_MRE": summary["MRE"], "val_SDR@2": summary["SDR@2"], "val_score": result["score"],
                   "val_sources": {name: {"MRE": s["MRE"], "SDR@2": s["SDR@2"]} for name, s in result["sources"].items()},
                   "time": time.time()}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            improved = result["score"] < state["best_mre"]
            if improved:
                state["best_mre"], state["best_epoch"] = result["score"], epoch + 1
                state["best_summary"] = {**summary, "sources": result["sources"]}
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "state": state, "config": asdict(config),
                         "landmark_names": names}, checkpoint_path)
            if improved:
                save_best(model, config, names, state, output / "best.pt")
            (output / "history.json").write_text(json.dumps(state["history"], indent=2) + "\n")
            plot_curves(state["history"], output / "learning_curves.png")
            per_source = "".join(f"  {name} {s['MRE']:.3f}" for name, s in row["val_sources"].items())
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  val MRE {summary['MRE']:.3f} mm  "
                  f"SDR@2mm {summary['SDR@2']:.1f} %{per_source if len(datasets) > 1 else ''}"
                  f"{'  (best)' if improved else ''}", flush=True)
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
    parser.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "ANNOTATIONS"),
                        help="a data set: an image folder with a JSON that lists its files, or a challenge stack "
                        "with its train-gt.json; repeat for several centres (added to the configuration's list)")
    for item in fields(TrainConfig):
        if item.name in ("augment", "data"):
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
                   if f.name not in ("augment", "data") and getattr(args, f.name) is not None})
    if args.data and not args.resume:
        values["data"] = list(values.get("data", [])) + [list(pair) for pair in args.data]
    config = TrainConfig.from_dict(values)
    if bool(config.images) != bool(config.annotations):
        parser.error("--images and --annotations go together")
    if not config.sources():
        parser.error("give the training data: --data IMAGES ANNOTATIONS (repeatable), or --images and --annotations")
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
