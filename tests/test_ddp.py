"""Data-parallel training under torchrun: two CPU processes (gloo) for one epoch on the tiny data set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import DATASET_LANDMARKS, REPO, TINY_CONFIG

from training.split import make_split


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_with_two_cpu_processes_trains_and_checkpoints(tmp_path, synthetic_dataset):
    output = tmp_path / "ddp-run"
    # 12 images leave 9 for training: an odd count, which must still give both processes the
    # same number of batches of 2 (else gloo fails with a collective mismatch, NCCL hangs)
    assert len(make_split(len(synthetic_dataset.images), 0, 0.15, 0.1)["train"]) == 9
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", "--config", str(TINY_CONFIG), "--images", str(synthetic_dataset.images_dir),
         "--annotations", str(synthetic_dataset.annotations), "--output", str(output), "--epochs", "1",
         "--test-fraction", "0.1", "--batch-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("best epoch 1 (") == 1  # the closing summary, printed by rank 0 only
    assert [row["epoch"] for row in json.loads((output / "history.json").read_text())] == [1]
    checkpoint = torch.load(output / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["state"]["epoch"] == 1
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # loadable without DDP
    assert checkpoint["model"]["head.weight"].shape[0] == DATASET_LANDMARKS
    assert (output / "best.pt").is_file()
