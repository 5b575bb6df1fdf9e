"""Train a stage of the landmark model: `python -m training.train --data IMAGES GT.json [--data ...]`.

The first stage (`--stage detect`, the default) finds every landmark on the whole image; the second
(`--stage refine`) looks again at a full-resolution crop about each one (see training/stages.py).

CPU by default; CUDA with mixed precision when present; several GPUs (or CPU processes)
under `torchrun`. Every epoch validates each data set (MRE in mm through the container's
decoding), writes `last.pt` atomically, keeps `best.pt`, and `--resume` continues a stopped run.
A folder that already holds a run is never written over unless `--resume` or `--overwrite` says how.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from algorithm.metadata import METADATA_FILE
from algorithm.reader import InputError
from training import checkpoint, distributed
from training.augment import augment
from training.config import SELECTION_SCORES, TrainConfig, add_config_options, config_from_args
from training.data import load_sources
from training.loss import heatmap_loss
from training.plots import plot_curves
from training.schedule import learning_rate_at
from training.split import SPLIT_FILE, Split, run_split, write_split
from training.stages import STAGES, TrainingData
from training.validation import validate

CONFIG_FILE, HISTORY_FILE, CURVES_FILE = "config.json", "history.json", "learning_curves.png"
# what a run writes into its folder: a folder holding any of these holds a run
RUN_FILES = (CONFIG_FILE, SPLIT_FILE, HISTORY_FILE, CURVES_FILE, checkpoint.LAST, checkpoint.BEST)


@dataclass
class Run:
    """What one training process holds: its stage's data, the model, its optimiser and the history."""

    config: TrainConfig
    output: Path
    device: torch.device
    names: list[str]
    data: TrainingData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: dict


def load_run_data(config: TrainConfig, resume: bool, is_main: bool) -> tuple[list[str], Split, TrainingData]:
    """Every data set, its split (the stage's for a new run, the run's split.json when resuming), and the stage's
    training and validation data."""
    stage = STAGES[config.stage]
    datasets = load_sources(config.sources())
    if resume:
        split = run_split(Path(config.output), datasets)
    else:
        split = stage.split(config, datasets)
    if is_main:
        for d in datasets:
            part = split[d.name]
            print(f"  {d.name}: {len(d)} images, {len(part['train'])} train / {len(part['val'])} val / "
                  f"{len(part['test'])} test", flush=True)
    return datasets[0].landmark_names, split, stage.training_data(config, datasets, split, is_main)


def run_files(folder: Path) -> list[Path]:
    """The files of an earlier run in `folder` (empty when it holds none)."""
    return [folder / name for name in RUN_FILES if (folder / name).exists()]


def remove_run(folder: Path) -> None:
    """Delete an earlier run's files (asked for with --overwrite), so none of them outlives the new run's start."""
    for path in run_files(folder):
        path.unlink()
        print(f"  --overwrite: removed {path}", flush=True)
    for metadata in sorted(folder.glob(f"*/{METADATA_FILE}")):
        print(f"  note: {metadata.parent} holds a model exported from an earlier run; it is not this run's",
              flush=True)


def start_run(config: TrainConfig, resume: bool, rank: int, device: torch.device) -> Run:
    """Load the data, build the model and optimiser, and restore last.pt when resuming."""
    is_main = rank == 0
    output = Path(config.output)
    if is_main:
        print(f"training the {config.stage} stage on {device} ({torch.get_num_threads()} threads), output {output}",
              flush=True)
    names, split, data = load_run_data(config, resume, is_main)
    if is_main:
        print(f"  best.pt is the epoch of the lowest validation score, {SELECTION_SCORES[config.selection]}"
              if data.val_sets else f"  no validation images: all {config.epochs} epochs run, the model is the last "
              f"({checkpoint.LAST})", flush=True)
        output.mkdir(parents=True, exist_ok=True)
        if not resume:
            remove_run(output)
            write_split(split, output)
        config.save(output / CONFIG_FILE)
        print(f"  {len(names)} landmarks; configuration written to {output / CONFIG_FILE}", flush=True)
    torch.manual_seed(config.seed)
    model = config.build_model(len(names)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    state = {"epoch": 0, "best_score": float("inf"), "best_epoch": -1, "history": []}
    if resume:
        state = checkpoint.resume(output, model, optimizer, scaler, config, names, device, is_main)
        if is_main:
            print(f"resuming {output} at epoch {state['epoch'] + 1}", flush=True)
    return Run(config, output, device, names, data, model, optimizer, scaler, state)


def train_one_epoch(run: Run, trained_model: torch.nn.Module, epoch: int, rank: int, world_size: int) -> float:
    """One pass over the stage's training data (this process's share): augment, encode, step. Returns the mean loss."""
    config, device, codec = run.config, run.device, run.config.codec()
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate_at(config, epoch)
    inputs, landmarks = run.data.epoch_data(epoch)
    images = torch.from_numpy(inputs)[:, None].to(device)
    points = torch.from_numpy(landmarks).float().to(device)
    generator = torch.Generator(device).manual_seed(config.seed * 1000 + epoch * world_size + rank)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed + epoch))
    order = order[: len(order) - len(order) % world_size][rank::world_size].to(device)  # same batch count each
    trained_model.train()
    losses = []
    batches = range(0, len(order), config.batch_size)
    for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=rank != 0, leave=False):
        index = order[start:start + config.batch_size]
        batch, batch_points = augment(images[index], points[index], config.augment, generator,
                                       config.normalization)
        targets, weights = codec.encode(batch_points, xp=torch)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = heatmap_loss(trained_model(batch), targets, weights)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        losses.append(loss.item())
    return float(np.mean(losses))


def validate_and_save(run: Run, epoch: int, train_loss: float) -> None:
    """Score each validation set (if any), record the epoch, write last.pt (and best.pt if it improved) and the
    curves."""
    config, state = run.config, run.state
    row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": learning_rate_at(config, epoch)}
    result = validate_epoch(run) if run.data.val_sets else None
    if result is not None:
        pooled = result["pooled"]
        row.update({"val_MRE": pooled["MRE"], "val_SDR@2": pooled["SDR@2"], "val_score": result["score"],
                    "val_sources": {name: {"MRE": s["MRE"], "SDR@2": s["SDR@2"]}
                                    for name, s in result["sources"].items()}})
    state["history"].append({**row, "time": time.time()})
    state["epoch"] = epoch + 1
    improved = result is not None and result["score"] < state["best_score"]
    if improved:
        state["best_score"], state["best_epoch"] = result["score"], epoch + 1
        state["best_summary"] = {**result["pooled"], "sources": result["sources"]}
    checkpoint.save_last(run.output, run.model, run.optimizer, run.scaler, state, config, run.names)
    if improved:
        checkpoint.save_best(run.output, run.model, state, config, run.names)
    (run.output / HISTORY_FILE).write_text(json.dumps(state["history"], indent=2) + "\n")
    plot_curves(state["history"], run.output / CURVES_FILE, state["best_epoch"])
    print(f"epoch {epoch + 1}: loss {train_loss:.4f}{describe_validation(result)}{'  (best)' if improved else ''}",
          flush=True)


def validate_epoch(run: Run) -> dict:
    """The validation sets scored by the stage's own prediction, as the container would find the landmarks."""
    stage = STAGES[run.config.stage]
    return validate(lambda val_set: stage.predict(run.config, run.model, val_set, run.device).points,
                    run.data.val_sets, run.config.selection)


def describe_validation(result: dict | None) -> str:
    """An epoch line's validation part: pooled MRE and SDR, and each set's MRE with the score when several."""
    if result is None:
        return "  (no validation images)"
    pooled, sources = result["pooled"], result["sources"]
    per_set = "".join(f"  {name} {s['MRE']:.3f}" for name, s in sources.items())
    per_set = f"  per set:{per_set}  score {result['score']:.3f} mm" if len(sources) > 1 else ""
    return f"  val MRE (pooled) {pooled['MRE']:.3f} mm  SDR@2mm {pooled['SDR@2']:.1f} %{per_set}"


def out_of_patience(epochs_done: int, best_epoch: int, config: TrainConfig) -> bool:
    """Whether a validated run has gone `patience` epochs without a better score (a run without validation images,
    whose best epoch is -1, never stops early)."""
    return best_epoch > 0 and epochs_done - best_epoch >= config.patience


def train(config: TrainConfig, resume: bool = False, max_epochs_this_run: int | None = None) -> dict:
    """Run (or resume) training; returns the best validation score, its epoch and the epochs done."""
    rank, world_size, device = distributed.setup(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = start_run(config, resume, rank, device)
    trained_model = DistributedDataParallel(run.model) if world_size > 1 else run.model
    first = run.state["epoch"]
    last = config.epochs if max_epochs_this_run is None else min(config.epochs, first + max_epochs_this_run)
    for epoch in range(first, last):
        train_loss = train_one_epoch(run, trained_model, epoch, rank, world_size)
        if rank == 0:
            validate_and_save(run, epoch, train_loss)
        run.state["epoch"] = epoch + 1
        stale = out_of_patience(run.state["epoch"], run.state["best_epoch"], config)
        if distributed.broadcast_flag(rank == 0 and stale, world_size):
            if rank == 0:
                print(f"early stop: no improvement for {config.patience} epochs")
            break
    del trained_model  # before teardown: a DDP wrapper keeps the process group alive
    distributed.teardown(world_size)
    return {"best_score": run.state["best_score"], "best_epoch": run.state["best_epoch"],
            "epochs_done": run.state["epoch"]}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the landmark heatmap UNet on one or more data sets. Options override the --config "
        "file, which overrides the defaults; the resulting configuration is saved as OUTPUT/config.json.")
    parser.add_argument("--data", nargs=2, action="append", metavar=("IMAGES", "ANNOTATIONS"),
                        help="a data set: an image folder with a JSON that lists its files, or a challenge stack "
                        "with its train-gt.json; repeat for several centres (added to the configuration's list)")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--config", type=Path, help="a JSON configuration (e.g. a run's config.json, or "
                        "training/configs/cross-centre.json); augmentation settings are set here")
    recipe.add_argument("--all-images", type=Path, metavar="SPLIT_RUN",
                        help="train once more on every image of SPLIT_RUN's data sets (no validation or test part), "
                        "with its configuration and its number of epochs, as challenge entries ship; the model is "
                        "OUTPUT/last.pt (default OUTPUT: SPLIT_RUN-all-images) and SPLIT_RUN's held-out figures "
                        "are its honest estimate; for a second stage, add --first-stage with the export of its first "
                        "stage trained on every image")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue OUTPUT/last.pt where it stopped")
    start.add_argument("--overwrite", action="store_true",
                       help="start again in an OUTPUT that holds a run, deleting its checkpoints, history and "
                       "configuration (without --resume or --overwrite such an OUTPUT is refused)")
    parser.add_argument("--max-epochs-this-run", type=int, help="stop after this many epochs (resume later)")
    add_config_options(parser)
    args = parser.parse_args(argv)
    base = {}
    try:
        if args.config:
            base = json.loads(args.config.read_text())
        if args.all_images:
            if args.resume:
                parser.error("resume a run on every image with --output ITS_FOLDER --resume")
            if args.data:
                parser.error("--all-images trains on its split run's data sets; --data cannot change them")
            base = all_images_config(args.all_images)
        if args.resume:
            folder = Path(args.output or TrainConfig().output)
            if not (folder / checkpoint.LAST).is_file():
                parser.error(f"--resume: no checkpoint in {folder} (start a run there without --resume)")
            if args.data:
                parser.error("--resume continues the run's own data sets; --data cannot change them")
            base = base or json.loads((folder / CONFIG_FILE).read_text())
        config = config_from_args(args, base)
        earlier = run_files(Path(config.output))
        if earlier and not (args.resume or args.overwrite) and distributed.is_main_process():
            parser.error(f"{config.output} holds a run ({', '.join(p.name for p in earlier)}): add --resume to "
                         "continue it or --overwrite to start again, or choose another --output")
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if bool(config.images) != bool(config.annotations):
        parser.error("--images and --annotations go together")
    if not config.sources():
        parser.error("give the training data: --data IMAGES ANNOTATIONS (repeatable), or --images and --annotations")
    return config, args


def all_images_config(split_run: Path) -> dict:
    """A split run's configuration, made to train on every image for as many epochs as the split run trained."""
    base = json.loads((split_run / CONFIG_FILE).read_text())
    history = json.loads((split_run / HISTORY_FILE).read_text())
    if not history or "val_score" not in history[-1]:
        raise ValueError(f"{split_run}: not a run trained on a split (its history has no validated epoch)")
    return {**base, "epochs": len(history), "val_fraction": 0.0, "test_fraction": 0.0, "split_run": str(split_run),
            "output": f"{split_run}-all-images"}


def report_end(config: TrainConfig, result: dict) -> None:
    """What the run left and what to run next: the best epoch of a validated run, the last of one on every image."""
    output, validated = Path(config.output), result["best_epoch"] > 0
    if result["epochs_done"] < config.epochs and not out_of_patience(result["epochs_done"], result["best_epoch"],
                                                                     config):
        print(f"paused after epoch {result['epochs_done']} of {config.epochs}: resume with "
              f"python -m training.train --output {config.output} --resume")
    if not validated:
        model = output / checkpoint.LAST
        estimate = f"; the held-out figures of {config.split_run} estimate it" if config.split_run else ""
        print(f"trained {result['epochs_done']} epochs without validation images: the model is the last epoch, "
              f"{model}{estimate}\nnext: ", end="")
    else:
        model = output / checkpoint.BEST
        print(f"best epoch {result['best_epoch']} (validation score {result['best_score']:.3f} mm, "
              f"{SELECTION_SCORES[config.selection]}): {model}\n"
              f"next: python -m training.evaluate --checkpoint {model}\n      ", end="")
    print(f"python -m training.export --checkpoint {model} --output OUTPUT_MODEL_FOLDER")


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    is_main = distributed.is_main_process()
    try:
        result = train(config, resume=args.resume, max_epochs_this_run=args.max_epochs_this_run)
    except KeyboardInterrupt:
        if is_main:
            print(f"\nstopped: resume with python -m training.train --output {config.output} --resume",
                  file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_main:
        report_end(config, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
