"""Training on several processes, started by `torchrun`: DistributedDataParallel, gloo on CPU, nccl on CUDA.

`train.train` asks `start()` once; outside torchrun it answers `None` and the loop runs as one
process, unchanged. Under torchrun every rank walks the same seeded order of the same global batches
(`Config.batch_size` images) and trains on its share of each (`shard`); DDP averages the gradients,
so N processes take the steps one process would, with the same learning rate. Metrics are summed
across ranks (`all_sum`), and only rank 0 writes anything (`Rank.main`).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Rank:
    rank: int  # 0 .. world - 1 over all machines
    world: int  # processes in the job
    device: torch.device  # this rank's device: its own GPU under CUDA

    @property
    def main(self) -> bool:
        """Whether this process prints, measures and saves (rank 0)."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device: torch.device) -> Rank | None:
    """Join torchrun's process group on `device` (cpu: gloo, cuda: nccl, one GPU per local rank); None alone."""
    if not launched():
        return None
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def stop(rank: Rank | None) -> None:
    if rank is not None and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, rank: Rank | None) -> nn.Module:
    """The module the training step calls: DDP (gradients averaged across ranks in backward) or `model`."""
    if rank is None:
        return model
    net = DistributedDataParallel(model, device_ids=[rank.device.index] if rank.device.type == "cuda" else None)
    HELD.append(net)  # never torn down: see HELD
    return net


def shard(indices: torch.Tensor, rank: Rank | None) -> torch.Tensor:
    """This rank's share of a global batch (or of the validation set): every world-th index from its rank."""
    return indices if rank is None else indices[rank.rank::rank.world]


def steps_per_epoch(n: int, batch_size: int, rank: Rank | None) -> int:
    """Global batches in an epoch; a last partial batch too small to give every rank an image is left out."""
    steps = math.ceil(n / batch_size)
    world = rank.world if rank else 1
    return steps - 1 if 0 < n % batch_size < world else steps


def own_generator(shared: torch.Generator, seed: int, rank: Rank | None) -> torch.Generator:
    """The generator a rank augments its share with: `shared` alone, its own seeded stream under DDP.

    Every rank draws the data order from `shared`, so all must draw the same numbers from it."""
    if rank is None:
        return shared
    return torch.Generator(device=shared.device).manual_seed((seed * rank.world + rank.rank + 1) % 2**64)


def all_sum(values: list[float], rank: Rank | None) -> list[float]:
    """Each value summed over the ranks (float64, on the rank's device as nccl needs)."""
    if rank is None:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=rank.device)
    dist.all_reduce(total)
    return total.tolist()


# The DDP modules, kept for the life of the process: a module's reducer holds the process group, and
# were it freed in the main thread, the group's teardown would join gloo's worker threads while holding
# the GIL, which a worker freeing a tensor Python knows needs: a rank hung for good after its run was
# saved, three times in 2026-12's test suites (py-spy: the main thread in ~ProcessGroupGloo joining,
# the worker in ~AsyncAllreduceWork waiting for the GIL). Keeping all_sum's tensors, or a barrier
# before teardown, made it no better. So the group is never torn down: a rank ends with `leave`.
HELD: list[nn.Module] = []


def leave() -> NoReturn:
    """End a torchrun rank once its work is done (rank 0: its run saved and printed), without the
    interpreter's teardown, which would free what HELD keeps: standard streams flushed, exit code 0."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def sync_buffers(model: nn.Module, rank: Rank | None) -> None:
    """BatchNorm's running statistics from rank 0: each rank updated its own in the last step, and the
    model every rank validates (and rank 0 saves) must be one model."""
    if rank is not None:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
