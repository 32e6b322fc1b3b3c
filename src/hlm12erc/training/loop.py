"""The one training loop, for every network the project trains.

:func:`train_loop` trains any module through a :class:`Task` (what a batch is and how valid is
scored): AdamW with an optional separate learning rate for the fresh classifier, optional linear
warm-up + decay, gradient accumulation and clipping, DistributedDataParallel under torchrun, early
stopping on valid weighted-F1 with the best weights restored. Every evaluation runs under
``eval()`` + ``no_grad``. Precision is the module's own (a text encoder autocasts its forward).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hlm12erc.metrics import scores_from_logits
from hlm12erc.models.losses import Criterion
from hlm12erc.training import distributed

HISTORY_COLUMNS = ("part", "epoch", "train_loss", "valid_loss", "valid_accuracy", "valid_weighted_f1",
                   "valid_macro_f1")


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    lr: float
    patience: int
    seed: int
    head_lr: float | None = None  # parameters of the fresh classifier (``Task.is_head``); None = lr
    weight_decay: float = 0.01  # AdamW; never on biases and LayerNorm weights
    schedule: str = "constant"  # constant | linear (warm-up then linear decay to 0 at the last epoch)
    warmup_ratio: float = 0.0
    min_steps: int = 0  # at least this many optimiser steps: epochs are raised to reach them, and early
                        # stopping waits for them
    grad_accum: int = 1
    max_grad_norm: float = 0.0  # 0 = no clipping
    max_minutes: float | None = None  # no new epoch that would end past this budget
    start_is_candidate: bool = False  # the untrained module competes as "epoch 0" (it keeps a prior's score)


class Task:
    """What the loop trains: ``module``, its train batches, the loss of a batch, valid scoring."""

    module: nn.Module
    y: np.ndarray  # train class ids

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        raise NotImplementedError

    def forward(self, net: nn.Module, rows: np.ndarray, device: torch.device):
        """``(ERCOutput, targets)`` of train rows ``rows``."""
        raise NotImplementedError

    valid_y: np.ndarray  # valid class ids

    def valid_logits(self, dist: distributed.Dist) -> np.ndarray:
        """Logits of every valid row (all ranks get all of them)."""
        raise NotImplementedError

    def is_head(self, name: str) -> bool:
        """Parameters trained at ``head_lr`` (the rest at ``lr``)."""
        return True


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights that later steps cannot change (``.cpu()`` alone would alias them)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_valid_weighted_f1: float
    stopped_by_budget: bool
    seconds: float


def _optimizer(task: Task, settings: LoopSettings) -> torch.optim.Optimizer:
    """AdamW; body/head learning rates; no weight decay on biases and LayerNorm weights."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in task.module.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "LayerNorm" in name or ".norm" in name or name.startswith("norm")
            groups.setdefault((task.is_head(name), no_decay), []).append(param)
    head_lr = settings.head_lr if settings.head_lr is not None else settings.lr
    return torch.optim.AdamW([{"params": params, "lr": head_lr if is_head else settings.lr,
                               "weight_decay": 0.0 if no_decay else settings.weight_decay}
                              for (is_head, no_decay), params in sorted(groups.items())])


def _schedule(optimizer: torch.optim.Optimizer, settings: LoopSettings, total_steps: int):
    warmup = int(round(total_steps * settings.warmup_ratio))

    def factor(step: int) -> float:
        if settings.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_loop(task: Task, settings: LoopSettings, criterion: Criterion, labels: Sequence[str],
               device: torch.device, dist: distributed.Dist | None = None, part: str = "model",
               on_epoch: Callable[[dict], None] | None = None, progress: bool = True) -> LoopResult:
    """Train ``task.module`` in place; it ends holding the best-valid-weighted-F1 weights, in eval mode.

    Under torchrun every rank takes its share of the same seeded global batches (the effective
    batch stays ``batch_size``); each rank's loss is scaled by its share of the batch's loss
    denominator, so the all-reduced gradient is the one-process gradient of the whole batch.
    """
    dist = dist or distributed.Dist()
    module = task.module.to(device)
    net: nn.Module = module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    rng = np.random.default_rng(settings.seed)
    sampler = distributed.DistributedBatchSampler(lambda: task.batches(rng, settings.batch_size),
                                                  dist.rank, dist.world_size)
    steps_per_epoch = math.ceil(len(task.batches(np.random.default_rng(settings.seed), settings.batch_size))
                                / settings.grad_accum)
    epochs = max(settings.epochs, math.ceil(settings.min_steps / max(1, steps_per_epoch)))
    optimizer = _optimizer(task, settings)
    scheduler = _schedule(optimizer, settings, steps_per_epoch * epochs)
    history: list[dict[str, Any]] = []
    best_f1, best_epoch, stale, stopped_by_budget = -1.0, 0, 0, False
    best_state = _state_copy(module)
    if settings.start_is_candidate:  # epoch 0: a residual head starts exactly at its prior
        module.eval()
        best_f1 = scores_from_logits(task.valid_logits(dist), task.valid_y, len(labels))["weighted_f1"]
    started = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=f"train {part}", disable=not progress or not dist.is_main, leave=False)
    for epoch in bar:
        net.train()
        total, count = 0.0, 0.0  # sum of (batch loss x its denominator), and the denominators
        batches = sampler.draw()
        optimizer.zero_grad(set_to_none=True)
        for step, (whole, idx) in enumerate(zip(batches, sampler), start=1):
            empty = not idx  # a short last batch left nothing for this rank: join the all-reduce at weight 0
            rows = np.asarray(idx if idx else whole[:1])
            sync = step % settings.grad_accum == 0 or step == len(batches)
            with (net.no_sync() if dist.enabled and not sync else contextlib.nullcontext()):
                output, target = task.forward(net, rows, device)
                loss = criterion(output.logits, output.embedding, target)
                weight = 0.0 if empty else criterion.denominator(target)
                share = 0.0 if empty else 1.0
                if dist.enabled:  # DDP averages gradients: weight each rank by its share of the batch's loss
                    share = dist.world_size * weight / criterion.denominator(torch.as_tensor(task.y[whole]))
                (loss * share / settings.grad_accum).backward()
            total += float(loss.item()) * weight
            count += weight
            if sync:
                if settings.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        total, count = dist.all_reduce_sum([total, count], device)
        scores = scores_from_logits(task.valid_logits(dist), task.valid_y, len(labels))
        if scores["weighted_f1"] > best_f1:  # the same gathered logits on every rank: the same decision
            best_state, best_f1, best_epoch, stale = _state_copy(module), scores["weighted_f1"], epoch, 0
        else:
            stale += 1
        row = {"part": part, "epoch": epoch, "train_loss": total / max(1.0, count),
               **{f"valid_{k}": scores[k] for k in ("loss", "accuracy", "weighted_f1", "macro_f1")}}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", f1=f"{row['valid_weighted_f1']:.3f}")
        if on_epoch is not None and dist.is_main:
            on_epoch(dict(row))
        if stale >= settings.patience and epoch * steps_per_epoch >= settings.min_steps:
            break
        elapsed = time.perf_counter() - started
        over_budget = settings.max_minutes is not None and epoch < epochs and \
            elapsed * (epoch + 1) / epoch > settings.max_minutes * 60
        if dist.broadcast(over_budget):  # rank 0's clock decides for all
            stopped_by_budget = True
            break
    module.load_state_dict(best_state)
    module.eval()
    return LoopResult(history, best_epoch, best_f1, stopped_by_budget, time.perf_counter() - started)
