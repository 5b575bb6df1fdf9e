"""Several processes under torchrun: one per GPU (NCCL) or per CPU slot (gloo)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def choose_device(name: str) -> torch.device:
    """auto: CUDA when torch sees a GPU, else the CPU; cuda fails clearly without one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no GPU (use --device cpu or auto)")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def setup(device_name: str) -> tuple[int, int, torch.device]:
    """Rank, world size and this process's device; a single process outside torchrun."""
    device = choose_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return dist.get_rank(), dist.get_world_size(), device


def broadcast_flag(value: bool, world_size: int) -> bool:
    """Rank 0's decision (e.g. early stop), shared with every process."""
    flag = torch.tensor([value])
    if world_size > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def teardown(world_size: int) -> None:
    """Every process reaches the end before any closes its connections, then the group goes while Python is whole.

    Call it after the DistributedDataParallel wrapper is gone: its reducer holds the group, which would otherwise
    outlive destroy_process_group (gloo once aborted a finished CI run at exit, rank 0 with SIGABRT)."""
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or the only process outside torchrun (usable before the process group starts)."""
    return int(os.environ.get("RANK", 0)) == 0
