"""Data-parallel training across processes: torchrun's environment, one process group, a sampler.

``torchrun --nproc_per_node=N script.py`` starts N copies of a script with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set. :func:`init` turns that into a
:class:`Dist` (gloo on CPU, nccl on CUDA); without those variables it is a world of one, so
the same training code runs alone or under torchrun. :func:`relaunch` lets a stage script
re-run itself under torchrun when ``train.nproc > 1`` so ``dvc repro`` needs no other command.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist


def under_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_*`` on this machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and MLflow runs."""
        return self.rank == 0

    def all_reduce_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64, so counts stay exact)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (decisions that must not diverge, e.g. a time budget)."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def init(device: torch.device) -> Dist:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); a world of one otherwise."""
    if not under_torchrun():
        return Dist()
    dist = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                local_rank=int(os.environ["LOCAL_RANK"]),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    if device.type == "cuda" and dist.local_world_size > torch.cuda.device_count():
        raise ValueError(f"train.nproc={dist.local_world_size} processes but {torch.cuda.device_count()} GPU(s) here: "
                         "use one process per GPU, or device: cpu")
    if dist.enabled and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(dist.local_rank)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """One GPU per process on CUDA (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda" and dist.enabled:
        return torch.device("cuda", dist.local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """:func:`init` for the body; the group is destroyed afterwards if this call created it."""
    created = under_torchrun() and not torch_dist.is_initialized()
    try:
        yield init(device)
    finally:
        if created and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a process on its own (usable before the group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


class DistributedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Each rank's share of the same seeded global batches: rank ``r`` takes ``batch[r::world]``, so the
    effective batch stays ``batch_size`` whatever the world (unlike ``DistributedSampler``). A rank whose
    share of a short last batch is empty gets ``[]`` (the trainer runs a zero-weight step for it)."""

    def __init__(self, make_batches, rank: int = 0, world_size: int = 1):
        self.make_batches = make_batches  # () -> list of index arrays; called once per epoch
        self.rank, self.world_size = rank, world_size
        self._global: list[np.ndarray] = []

    def draw(self) -> list[np.ndarray]:
        """This epoch's global batches (call once per epoch, on every rank)."""
        self._global = list(self.make_batches())
        return self._global

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global:
            yield [int(i) for i in batch[self.rank::self.world_size]]

    def __len__(self) -> int:  # what len(DataLoader) reports for a batch sampler
        return len(self._global)


def shard(n: int, dist: Dist) -> np.ndarray:
    """Row indices of ``range(n)`` this rank scores (strided, so lengths spread evenly)."""
    return np.arange(n)[dist.rank::dist.world_size]


def relaunch(nproc: int, script: str, argv: Sequence[str]) -> int:
    """Run ``script argv`` under ``torchrun --standalone --nproc_per_node nproc``; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *argv]
    print(f"launching: torchrun --standalone --nproc_per_node={nproc} {script} {' '.join(argv)}", flush=True)
    return subprocess.run(command, check=False).returncode
