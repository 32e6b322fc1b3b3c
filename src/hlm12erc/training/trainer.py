"""The one training loop, for every objective, and the prediction path that matches it.

:func:`train_loop` trains any network through a :class:`Task` (what a batch is and how it is
scored): AdamW with an optional separate learning rate for the fresh classifier, optional
linear warm-up + decay, gradient accumulation and clipping, AMP on CUDA, DistributedDataParallel
under torchrun, early stopping on valid weighted-F1 with the best weights restored. Every
evaluation runs under ``eval()`` + ``no_grad``.

Two tasks use it: :class:`EncoderTask` (a text encoder on tokenised dialogue-context pairs,
length-bucketed batches) and :class:`HeadTask` (a fusion head on per-utterance vectors, batches
of utterances or of whole dialogues). :func:`fit` composes them into an
:class:`~hlm12erc.models.erc.ErcModel`; :func:`predict_proba` scores any table with it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from hlm12erc.config import ConfigError, ObjectiveConfig, Params, TextEncoderParams, resolve_jobs
from hlm12erc.data import context
from hlm12erc.data.meld import check_labels
from hlm12erc.models.erc import (
    DialogueInputs,
    EncoderConfig,
    ErcModel,
    FusionHead,
    HeadConfig,
    ModelConfig,
    TextEncoder,
    build_text_encoder,
    collate_pairs,
    default_model_path,
    load_tokenizer,
)
from hlm12erc.models.losses import Criterion, LossConfig
from hlm12erc.training import distributed
from hlm12erc.training.metrics import scores_from_logits

HISTORY_COLUMNS = ("part", "epoch", "train_loss", "valid_loss", "valid_accuracy", "valid_weighted_f1",
                   "valid_macro_f1")
MODALITIES = ("text", "audio", "visual")  # the feature store's mask columns


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads for CPU work (0 = all cores). The fusion heads are tiny: one thread avoids sync cost."""
    torch.set_num_threads(resolve_jobs(threads))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    deterministic_kernels()


def deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of the inductor
    compiler (about 2 s per process, to set a compile flag; nothing here compiles)."""
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def label_ids(table: pd.DataFrame, labels: Sequence[str], source: str = "table") -> np.ndarray:
    """Class ids of the rows; a label outside ``labels`` is a DataError naming the row."""
    check_labels(table, labels, source)
    lookup = {label: i for i, label in enumerate(labels)}
    return np.array([lookup[label] for label in table["label"].astype(str)], dtype=np.int64)


# ----------------------------------------------------------------------------- the loop
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
    average_epochs: float = 0.0  # > 0: valid scores (and the kept weights are) an exponential moving average
                                 # of the weights over about this many epochs of steps; 0 = the raw weights


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


class WeightAverage:
    """Exponential moving average of the trainable weights, bias-corrected (no pull towards the start).

    Step ``t`` moves the average towards the weights by ``(1 - d) / (1 - d**t)``: the result is a
    properly normalised weighted mean of every iterate, recent ones weighted most, over a horizon of
    about ``1 / (1 - d)`` steps. Fine-tuning on a small valid split picks an epoch by noise; the
    average is smoother than any single iterate.
    """

    def __init__(self, module: nn.Module, horizon_steps: float):
        self.decay = 1.0 - 1.0 / max(1.0, horizon_steps)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay ** self.steps)  # decay < 1: the horizon is >= 1 step
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)

    @contextlib.contextmanager
    def applied(self):
        """The module holds the averaged weights inside the block, its own weights again after."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for param, shadow in zip(self.params, self.shadow):
            param.data, shadow.data = shadow.data, param.data


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
    if settings.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(round(total_steps * settings.warmup_ratio))

    def factor(step: int) -> float:
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
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    history: list[dict[str, Any]] = []
    best_f1, best_epoch, stale, stopped_by_budget = -1.0, 0, 0, False
    average = WeightAverage(module, settings.average_epochs * steps_per_epoch) if settings.average_epochs > 0 \
        else None
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
                with _autocast(device):
                    output, target = task.forward(net, rows, device)
                loss = criterion(output.logits, output.embedding, target)
                weight = 0.0 if empty else criterion.denominator(target)
                share = 0.0 if empty else 1.0
                if dist.enabled:  # DDP averages gradients: weight each rank by its share of the batch's loss
                    share = dist.world_size * weight / criterion.denominator(torch.as_tensor(task.y[whole]))
                scaler.scale(loss * share / settings.grad_accum).backward()
            total += float(loss.item()) * weight
            count += weight
            if sync:
                if settings.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if average is not None:
                    average.update()
        total, count = dist.all_reduce_sum([total, count], device)
        with average.applied() if average is not None else contextlib.nullcontext():  # the weights scored are kept
            scores = scores_from_logits(task.valid_logits(dist), task.valid_y, len(labels))
            improved = scores["weighted_f1"] > best_f1  # the same gathered logits on every rank: the same decision
            if improved:
                best_state = _state_copy(module)
        row = {"part": part, "epoch": epoch, "train_loss": total / max(1.0, count), "valid_loss": scores["loss"],
               "valid_accuracy": scores["accuracy"], "valid_weighted_f1": scores["weighted_f1"],
               "valid_macro_f1": scores["macro_f1"]}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", f1=f"{row['valid_weighted_f1']:.3f}")
        if improved:
            best_f1, best_epoch, stale = scores["weighted_f1"], epoch, 0
        else:
            stale += 1
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


# ----------------------------------------------------------------------------- tasks
def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                     bucket_size: int = 50) -> list[np.ndarray]:
    """Seeded length buckets: shuffle, sort by length within chunks of ``bucket_size`` batches,
    cut into batches, shuffle the batches. Similar lengths share a batch; order stays random."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    chunk = max(batch_size, batch_size * bucket_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Inference batches in length order (least padding); callers scatter results back."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def encode_pairs(encoder: TextEncoder, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, pooled)`` of every pair, in order, in eval mode, batched by length."""
    was_training = encoder.training
    encoder.eval()
    logits = np.zeros((len(examples), encoder.head.out_features), dtype=np.float32)
    pooled = np.zeros((len(examples), encoder.width), dtype=np.float32)
    for idx in sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs([examples[i] for i in idx], pad_id).items()}
        with _autocast(device):
            output = encoder(**batch)
        logits[idx], pooled[idx] = output.logits.float().cpu().numpy(), output.embedding.float().cpu().numpy()
    encoder.train(was_training)
    return logits, pooled


class EncoderTask(Task):
    """A text encoder on dialogue-context pairs; the encoder body at ``lr``, its classifier at ``head_lr``.

    ``examples`` holds one list of pairs per context window (the same rows each); an epoch reads
    every row once, through a window drawn at random (a single window: always that one)."""

    def __init__(self, encoder: TextEncoder, examples: list[list[dict[str, list[int]]]], y: np.ndarray,
                 valid_examples: list[dict[str, list[int]]], valid_y: np.ndarray, pad_id: int,
                 eval_batch_size: int, device: torch.device):
        self.module, self.n_rows = encoder, len(y)
        self.examples = [e for window in examples for e in window]  # row i of window w at w * n_rows + i
        self.y = np.tile(y, len(examples))
        self.valid_examples, self.valid_y = valid_examples, valid_y
        self.pad_id, self.eval_batch_size, self.device = pad_id, eval_batch_size, device
        self.lengths = np.array([len(e["input_ids"]) for e in self.examples])

    def is_head(self, name: str) -> bool:
        return name.startswith("head.")

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        n_windows = len(self.examples) // self.n_rows
        rows = np.arange(self.n_rows)
        if n_windows > 1:
            rows = rows + self.n_rows * rng.integers(n_windows, size=self.n_rows)
        return [rows[b] for b in bucketed_batches(self.lengths[rows], batch_size, rng)]

    def forward(self, net: nn.Module, rows: np.ndarray, device: torch.device):
        batch = {k: v.to(device) for k, v in collate_pairs([self.examples[i] for i in rows], self.pad_id).items()}
        return net(**batch), torch.as_tensor(self.y[rows], device=device)

    def valid_logits(self, dist: distributed.Dist) -> np.ndarray:
        """Each rank scores its shard of valid; the shards are gathered (all ranks get all logits)."""
        rows = distributed.shard(len(self.valid_examples), dist)
        part, _ = encode_pairs(self.module, [self.valid_examples[i] for i in rows], self.pad_id,
                               self.eval_batch_size, self.device)
        if not dist.enabled:
            return part
        out = np.zeros((len(self.valid_examples), part.shape[1]), dtype=np.float32)
        for rank_rows, rank_logits in dist.all_gather((rows, part)):
            out[rank_rows] = rank_logits
        return out


@dataclass
class HeadInputs:
    """Per-utterance vectors of one table for a fusion head: ``arrays[m]`` (N, d), ``mask`` (N, M)
    in the head's modality order, and the dialogue layout (dialogue id, turn, speaker role)."""

    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    dialogue: np.ndarray
    turn: np.ndarray
    speaker: np.ndarray
    prior: np.ndarray | None = None  # (N, C) the text classifier's logits, for residual heads

    def with_text(self, text: np.ndarray, prior: np.ndarray | None = None) -> HeadInputs:
        """The same rows read through one text encoder: its pooled vectors and classifier logits."""
        return replace(self, arrays={**self.arrays, "text": text}, prior=prior)

    def over_views(self, pooled: list[np.ndarray], logits: list[np.ndarray],
                   allowed: np.ndarray) -> tuple[HeadInputs, np.ndarray]:
        """One row per (row, encoder k) pair that ``allowed`` (K, N) permits, in row order, with encoder
        k's pooled vector and logits; each encoder's reading of a dialogue is a dialogue of its own.
        Returns them and the source row of each (to repeat the labels)."""
        rows, view = np.nonzero(allowed.T)
        dialogue = np.array([f"{d}#{k}" for d, k in zip(self.dialogue[rows], view)], dtype=object)
        arrays = {**{m: x[rows] for m, x in self.arrays.items()}, "text": np.stack(pooled)[view, rows]}
        return HeadInputs(arrays, self.mask[rows], dialogue, self.turn[rows], self.speaker[rows],
                          np.stack(logits)[view, rows]), rows

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                     DialogueInputs, torch.Tensor | None]:
        features = {m: torch.as_tensor(x[rows], dtype=torch.float32, device=device) for m, x in self.arrays.items()}
        local = pd.factorize(self.dialogue[rows])[0]
        where = DialogueInputs(torch.as_tensor(local), torch.as_tensor(self.turn[rows]),
                               torch.as_tensor(self.speaker[rows])).to(device)
        prior = None if self.prior is None else torch.as_tensor(self.prior[rows], dtype=torch.float32, device=device)
        return features, torch.as_tensor(self.mask[rows], device=device), where, prior

    def dialogue_batches(self, batch_size: int, order: Sequence[int] | None = None) -> list[np.ndarray]:
        """Whole dialogues packed into batches of about ``batch_size`` utterances, turns in order."""
        groups = pd.Series(np.arange(len(self.dialogue))).groupby(self.dialogue, sort=False)
        dialogues = [g.to_numpy()[np.argsort(self.turn[g.to_numpy()], kind="stable")] for _, g in groups]
        order = range(len(dialogues)) if order is None else order
        batches, current = [], []
        for i in order:
            current.append(dialogues[i])
            if sum(len(d) for d in current) >= batch_size:
                batches.append(np.concatenate(current))
                current = []
        if current:
            batches.append(np.concatenate(current))
        return batches


def head_inputs(table: pd.DataFrame, arrays: dict[str, np.ndarray], mask: np.ndarray,
                config: HeadConfig) -> HeadInputs:
    positions = context.dialogue_positions(table)
    turn = np.array([place for _rows, place in positions], dtype=np.int64)
    return HeadInputs({m: arrays[m] for m in config.modalities if m in arrays}, mask, context.dialogue_ids(table), turn,
                      context.speaker_slots(table, config.max_speakers))


@torch.no_grad()
def head_logits(head: FusionHead, inputs: HeadInputs, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits of every row, in order, in eval mode; whole dialogues per batch when the head reads context."""
    head.eval()
    out = np.zeros((len(inputs.mask), head.head[-1].out_features if head.config.hidden else
                    head.linear.out_features), dtype=np.float32)
    if head.config.dialogue != "none":
        batches = inputs.dialogue_batches(batch_size)
    else:
        batches = [np.arange(i, min(i + batch_size, len(out))) for i in range(0, len(out), batch_size)]
    for rows in batches:
        out[rows] = head(*inputs.batch(rows, device)).logits.float().cpu().numpy()
    return out


class HeadTask(Task):
    """A fusion head on per-utterance vectors: random utterance batches, or whole dialogues when it
    reads dialogue context. Valid is scored by ``valid_scorer`` (it may average several views)."""

    def __init__(self, head: FusionHead, inputs: HeadInputs, y: np.ndarray,
                 valid_scorer: Callable[[], np.ndarray], valid_y: np.ndarray):
        self.module, self.inputs, self.y = head, inputs, y
        self.valid_scorer, self.valid_y = valid_scorer, valid_y

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        if self.module.config.dialogue != "none":
            n = len(set(self.inputs.dialogue.tolist()))
            return self.inputs.dialogue_batches(batch_size, rng.permutation(n))
        order = rng.permutation(len(self.y))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def forward(self, net: nn.Module, rows: np.ndarray, device: torch.device):
        return net(*self.inputs.batch(rows, device)), torch.as_tensor(self.y[rows], device=device)

    def valid_logits(self, dist: distributed.Dist) -> np.ndarray:
        return self.valid_scorer()


# ----------------------------------------------------------------------------- the model
def new_model(objective: ObjectiveConfig, params: Params, feature_dims: dict[str, int] | None = None) -> ErcModel:
    """An untrained :class:`ErcModel` for ``objective`` (encoders and head built by :func:`fit`)."""
    enc = params.text_encoder
    needs_encoders = objective.text == "finetuned"
    encoder = EncoderConfig(enc.model_path, enc.max_tokens, enc.past_turns, enc.future_turns, enc.pooling,
                            enc.dropout) if needs_encoders else None
    head = None
    if objective.fusion != "none":
        dims = dict(feature_dims or {})
        if needs_encoders:
            dims["text"] = _encoder_width(enc.model_path)
        missing = [m for m in objective.modalities if m not in dims]
        if missing:
            raise ConfigError(f"objective {objective.name}: no feature widths for {missing}; run `dvc repro featurize`")
        head = HeadConfig(modalities=list(objective.modalities), input_dims={m: int(dims[m]) for m in
                                                                             objective.modalities},
                          hidden=objective.hidden, fusion=objective.fusion, heads=objective.heads,
                          dropout=objective.dropout, dialogue=objective.dialogue,
                          dialogue_layers=objective.dialogue_layers, residual=objective.residual)
    config = ModelConfig(labels=list(params.labels), encoder=encoder, folds=enc.folds if needs_encoders else 1,
                         members=enc.members if needs_encoders else 1, text=objective.text, head=head,
                         windows=[list(w) for w in objective.windows] if needs_encoders else [])
    return ErcModel(config, meta={"objective": asdict(objective), "features": asdict(params.features)})


def _encoder_width(model_path: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_path or default_model_path()).hidden_size)


def encoder_settings(enc: TextEncoderParams, seed: int) -> LoopSettings:
    return LoopSettings(epochs=enc.epochs, batch_size=enc.batch_size, lr=enc.lr, head_lr=enc.head_lr,
                        patience=enc.patience, seed=seed, weight_decay=enc.weight_decay, schedule="linear",
                        warmup_ratio=enc.warmup_ratio, min_steps=enc.min_steps, grad_accum=enc.grad_accum,
                        max_grad_norm=enc.max_grad_norm, max_minutes=enc.max_minutes,
                        average_epochs=enc.average_epochs)


def head_settings(objective: ObjectiveConfig, params: Params) -> LoopSettings:
    train = params.train
    return LoopSettings(epochs=objective.epochs or train.epochs, batch_size=train.batch_size,
                        lr=objective.lr or train.lr, patience=train.patience, seed=train.seed,
                        weight_decay=train.weight_decay, start_is_candidate=objective.residual)


def _subset(table: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of whole dialogues with about ``max_rows`` rows (context stays intact)."""
    if max_rows is None or len(table) <= max_rows:
        return table
    ids = context.dialogue_ids(table)
    keep: set[str] = set()
    count = 0
    unique = sorted(set(ids))
    for i in np.random.default_rng(seed).permutation(len(unique)):
        if count >= max_rows:
            break
        keep.add(unique[i])
        count += int((ids == unique[i]).sum())
    return table[np.isin(ids, list(keep))]


def fit_encoders(model: ErcModel, train: pd.DataFrame, valid: pd.DataFrame, params: Params,
                 device: torch.device, on_epoch: Callable[[dict], None] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model.config.n_encoders`` text encoders, each selected on valid; their histories.

    Encoder k holds out fold ``k % folds`` (cross-fitting when folds > 1) and is seeded
    ``train.seed + k``, so member k of seed s is the single encoder of seed s + k."""
    enc, labels = params.text_encoder, model.labels
    cfg = model.config.encoder
    tokenizer = load_tokenizer(cfg.model_path or default_model_path())
    train = _subset(train, enc.max_train_rows, params.train.seed)
    ids = context.dialogue_ids(train)
    folds = context.fold_of_dialogues(ids, model.config.folds, params.train.seed)
    fold = np.array([folds[i] for i in ids])
    valid_examples = context.text_pairs(valid, tokenizer, cfg.max_tokens, cfg.past_turns, cfg.future_turns)
    windows = replace(model.config, windows=enc.train_windows).reading_windows  # training window first, no repeats
    valid_y = label_ids(valid, labels, "valid")
    histories: list[dict[str, Any]] = []
    encoders, seen = [], []
    with distributed.process_group(device) as dist:
        device = distributed.device_for(dist, device)
        if device.type == "cpu":  # the cores are shared by this machine's ranks
            torch.set_num_threads(max(1, resolve_jobs(0) // dist.local_world_size))
        for k in range(model.config.n_encoders):
            part = train[fold != k % model.config.folds] if model.config.folds > 1 else train
            seed_everything(params.train.seed + k)  # same on every rank: same classifier init, same batches
            encoder = build_text_encoder(cfg, len(labels))
            examples = [context.text_pairs(part, tokenizer, cfg.max_tokens, past, future) for past, future in windows]
            task = EncoderTask(encoder, examples, label_ids(part, labels, "train"), valid_examples, valid_y,
                               tokenizer.pad_token_id, enc.eval_batch_size, device)
            settings = encoder_settings(enc, params.train.seed + k)
            criterion = Criterion(LossConfig.of(enc), task.y, len(labels))
            result = train_loop(task, settings, criterion, labels, device, dist, f"encoder{k}", on_epoch, progress)
            histories += result.history
            encoders.append(encoder.cpu())
            seen.append(sorted(set(context.dialogue_ids(part))))
            model.timings[f"encoder{k}_epoch_seconds"] = result.seconds / max(1, len(result.history))
            model.info[f"encoder{k}"] = {"best_epoch": result.best_epoch, "n_train": len(part),
                                         "best_valid_weighted_f1": result.best_valid_weighted_f1,
                                         "stopped_by_budget": result.stopped_by_budget}
        dist.barrier()
    model.encoders, model.tokenizer, model.encoder_dialogues = encoders, tokenizer, seen
    return histories


def text_views(model: ErcModel, table: pd.DataFrame, batch_size: int, device: torch.device,
               every_window: bool = True) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The text views of ``table``: ``(logits, pooled)`` of each (encoder, context window) pair, encoder-major,
    and ``allowed`` (views, N): that view's encoder never trained on the row's dialogue (rows every encoder
    saw may use all of them). ``every_window=False`` reads the training window alone (a head's train rows)."""
    cfg = model.config.encoder
    windows = model.config.reading_windows if every_window else model.config.reading_windows[:1]
    examples = [context.text_pairs(table, model.tokenizer, cfg.max_tokens, past, future) for past, future in windows]
    logits, pooled = [], []
    for encoder in model.encoders:
        encoder.to(device)
        for window_examples in examples:
            lg, pl = encode_pairs(encoder, window_examples, model.tokenizer.pad_token_id, batch_size, device)
            logits.append(lg)
            pooled.append(pl)
    ids = context.dialogue_ids(table)
    allowed = np.stack([~np.isin(ids, seen) for seen in model.encoder_dialogues]) if model.encoder_dialogues \
        else np.ones((len(model.encoders), len(table)), dtype=bool)
    allowed[:, ~allowed.any(0)] = True
    return logits, pooled, np.repeat(allowed, len(windows), axis=0)


def _average(probabilities: list[np.ndarray], allowed: np.ndarray) -> np.ndarray:
    weights = allowed.astype(np.float64)[:, :, None]
    return (np.stack(probabilities) * weights).sum(0) / weights.sum(0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


def _feature_arrays(model: ErcModel, table: pd.DataFrame, features: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cached feature arrays (in the head's modalities) and the head's mask columns."""
    head = model.config.head
    n = len(table)
    arrays: dict[str, np.ndarray] = {}
    mask = np.ones((n, len(head.modalities)), dtype=bool)
    for i, m in enumerate(head.modalities):
        if m == "text" and model.config.text == "finetuned":
            mask[:, i] = np.array([bool(str(t).strip()) for t in table["x_text"]], dtype=bool)
            continue
        if features is None:
            raise ConfigError(f"this model reads cached {m} features; featurize the table first")
        if features.arrays[m].shape[1] != head.input_dims[m]:
            raise ConfigError(f"{m} features are {features.arrays[m].shape[1]}-d but the model expects "
                              f"{head.input_dims[m]}-d: the feature params or encoders differ from the ones it "
                              "was trained with; retrain it (`dvc repro`)")
        arrays[m] = features.arrays[m]
        mask[:, i] = features.mask[:, MODALITIES.index(m)]
    return arrays, mask


def predict_proba(model: ErcModel, table: pd.DataFrame, features: Any = None, batch_size: int = 64,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Class probabilities of every row of ``table`` (and its cached ``features`` when the model reads any)."""
    device = torch.device(device) if device is not None else next(model.modules()[0].parameters()).device
    n_labels = len(model.labels)
    if len(table) == 0:
        return np.zeros((0, n_labels), dtype=np.float32)
    views = text_views(model, table, batch_size, device) if model.encoders else None
    if model.head is None:
        logits, _pooled, allowed = views
        return _average([_softmax(lg) for lg in logits], allowed).astype(np.float32)
    model.head.to(device)
    arrays, mask = _feature_arrays(model, table, features)
    base = head_inputs(table, arrays, mask, model.config.head)
    if views is None or model.config.text != "finetuned":
        return _softmax(head_logits(model.head, base, batch_size, device)).astype(np.float32)
    logits, pooled, allowed = views
    probs = [_softmax(head_logits(model.head, base.with_text(p, lg), batch_size, device))
             for p, lg in zip(pooled, logits)]
    return _average(probs, allowed).astype(np.float32)


def fit(model: ErcModel, train: pd.DataFrame, valid: pd.DataFrame, train_features: Any, valid_features: Any,
        params: Params, encoders_from: ErcModel | None = None, device: torch.device | None = None,
        on_epoch: Callable[[dict], None] | None = None, progress: bool = True,
        views: dict[str, tuple] | None = None) -> ErcModel:
    """Train ``model`` (from :func:`new_model`) on ``train``, selecting on ``valid``; returns it, in eval mode.

    Encoders (``text: finetuned``) are copied from ``encoders_from`` when given (the pipeline's
    ``text_encoder`` stage), else trained here. The head is then trained on cached features and,
    with fine-tuned text, on each train row's out-of-fold encoder vector. ``views`` may hold
    :func:`text_views` of ``"train"`` and ``"valid"`` already computed with these encoders (a
    benchmark sweeping heads over one set of encoders computes them once).
    """
    device = device or select_device(params.train.device)
    for name, table in (("train", train), ("valid", valid)):
        if len(table) == 0:
            raise ValueError(f"{name} split is empty; check data/tables")
    histories: list[dict[str, Any]] = []
    if model.config.encoder is not None:
        if encoders_from is not None:
            built = (encoders_from.config.encoder, encoders_from.config.folds, encoders_from.config.members)
            if built != (model.config.encoder, model.config.folds, model.config.members):
                raise ConfigError("the trained text encoders were built with other text_encoder params than this "
                                  "objective expects; rerun `dvc repro text_encoder`")
            model.encoders = [copy.deepcopy(e) for e in encoders_from.encoders]
            model.tokenizer, model.encoder_dialogues = encoders_from.tokenizer, encoders_from.encoder_dialogues
            model.info.update({k: v for k, v in encoders_from.info.items() if k.startswith("encoder")})
        else:
            histories += fit_encoders(model, train, valid, params, device, on_epoch, progress)
    if model.config.head is not None:
        set_cpu_threads(params.train.threads)
        seed_everything(params.train.seed)
        histories += _fit_head(model, train, valid, train_features, valid_features, params, device, on_epoch,
                               progress, views or {})
    model.info["history"] = histories
    return model.eval()


def _fit_head(model: ErcModel, train: pd.DataFrame, valid: pd.DataFrame, train_features: Any, valid_features: Any,
              params: Params, device: torch.device, on_epoch: Callable[[dict], None] | None,
              progress: bool, views: dict[str, tuple]) -> list[dict[str, Any]]:
    objective = ObjectiveConfig(**model.meta["objective"])
    config, labels = model.config.head, model.labels
    train_arrays, train_mask = _feature_arrays(model, train, train_features)
    valid_arrays, valid_mask = _feature_arrays(model, valid, valid_features)
    eval_batch = params.train.eval_batch_size
    train_inputs = head_inputs(train, train_arrays, train_mask, config)
    y = label_ids(train, labels, f"{objective.train_table} table")
    valid_views = valid_logits = None
    if model.config.text == "finetuned":
        logits, pooled, allowed = views.get("train") or text_views(model, train, eval_batch, device,
                                                                   every_window=False)
        train_inputs, source = train_inputs.over_views(pooled, logits, allowed)
        y = y[source]
        valid_logits, valid_views, valid_allowed = views.get("valid") or text_views(model, valid, eval_batch, device)
    valid_base = head_inputs(valid, {**valid_arrays, **({"text": valid_views[0]} if valid_views else {})},
                             valid_mask, config)
    head = FusionHead(config, labels)
    head.set_normalization(train_inputs.arrays, train_inputs.mask)
    model.head = head

    def valid_scorer() -> np.ndarray:
        if valid_views is None:
            return head_logits(head, valid_base, eval_batch, device)
        probs = [_softmax(head_logits(head, valid_base.with_text(v, lg), eval_batch, device))
                 for v, lg in zip(valid_views, valid_logits)]
        return np.log(np.clip(_average(probs, valid_allowed), 1e-12, None)).astype(np.float32)

    task = HeadTask(head, train_inputs, y, valid_scorer, label_ids(valid, labels, "valid table"))
    result = train_loop(task, head_settings(objective, params), Criterion(LossConfig.of(objective), y, len(labels)),
                        labels, device, None, "head", on_epoch, progress)
    model.info["head"] = {"best_epoch": result.best_epoch, "best_valid_weighted_f1": result.best_valid_weighted_f1}
    model.info["best_valid_weighted_f1"] = result.best_valid_weighted_f1
    return result.history
