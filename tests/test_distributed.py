"""Training on several processes: `torchrun --nproc-per-node 2 -m digitpi train` on this machine's CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from digitpi import distributed, rundir


def test_ranks_share_each_global_batch_between_them() -> None:
    """Together the ranks train on exactly the batch one process would, each image once."""
    batch = torch.randperm(128)
    ranks = [distributed.Rank(r, 3, torch.device("cpu")) for r in range(3)]
    shares = [distributed.shard(batch, rank) for rank in ranks]
    assert sorted(torch.cat(shares).tolist()) == list(range(128))
    assert [len(s) for s in shares] == [43, 43, 42]
    assert distributed.shard(batch, None) is batch


def test_a_last_batch_too_small_for_every_rank_is_left_out() -> None:
    two = distributed.Rank(0, 2, torch.device("cpu"))
    assert distributed.steps_per_epoch(54_000, 128, None) == 422  # 421 full batches and one of 112
    assert distributed.steps_per_epoch(54_000, 128, two) == 422
    assert distributed.steps_per_epoch(129, 128, None) == 2
    assert distributed.steps_per_epoch(129, 128, two) == 1  # one image cannot be split between two ranks


def test_torchrun_two_cpu_processes_train_one_run(mnist_dir: Path, tmp_path: Path) -> None:
    """Two gloo ranks, the full training set, one epoch of `fast`: one run folder, as accurate as one process.

    One process trains this config to 99.13 % (seed 0); the two ranks measured 99.07 %."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "digitpi", "train", "--recipe", "fast", "--epochs", "1", "--quiet", "--device", "cpu",
               "--out", str(runs / "ddp")]
    env = {**os.environ, "DIGITPI_DATA_DIR": str(mnist_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("saved run to") == 1  # rank 1 trains but says nothing
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    assert rundir.is_complete(runs / "ddp")
    assert not list((runs / "ddp").glob(".*"))  # no probe or temporary file left by either rank
    metrics = rundir.load_metrics(runs / "ddp")
    history = json.loads((runs / "ddp" / rundir.HISTORY).read_text())
    assert len(history["val_accuracy"]) == 1 and history["val_accuracy"][0] > 0.985
    assert metrics["test_accuracy"] >= 0.985
    assert metrics["processes"] == 2 and metrics["device"] == "cpu"  # what a rerun needs to train the same weights
    assert rundir.load_config(runs / "ddp").batch_size == 128  # the global batch, as one process trains it
