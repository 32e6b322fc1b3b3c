"""Fitting an :class:`~hlm12erc.models.erc.ErcModel`: its text encoders, then its fusion head.

:func:`new_model` builds the untrained model an objective describes; :func:`fit` trains it with
the one loop (:mod:`hlm12erc.training.loop`): the text encoders on dialogue-context pairs (or
copies of the text_encoder stage's), then the head on cached features and, with fine-tuned text,
on every train row read through each encoder (each encoder's reading of a dialogue a dialogue of
its own). Both are selected on valid weighted-F1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch

from hlm12erc.config import ConfigError, ObjectiveConfig, Params, TextEncoderParams, resolve_jobs
from hlm12erc.data import context
from hlm12erc.models.erc import ErcModel, ModelConfig, feature_arrays, mean_probabilities, softmax, text_views
from hlm12erc.models.fusion import FusionHead, HeadConfig, head_inputs, head_logits
from hlm12erc.models.losses import Criterion, LossConfig
from hlm12erc.models.text_encoder import EncoderConfig, build_text_encoder, encoder_path, load_tokenizer
from hlm12erc.runtime import seed_everything, select_device, set_cpu_threads
from hlm12erc.training import distributed
from hlm12erc.training.loop import LoopSettings, train_loop
from hlm12erc.training.tasks import EncoderTask, HeadTask, label_ids


def new_model(objective: ObjectiveConfig, params: Params, feature_dims: dict[str, int] | None = None) -> ErcModel:
    """An untrained :class:`ErcModel` for ``objective`` (encoders and head built by :func:`fit`)."""
    enc = params.text_encoder
    needs_encoders = objective.text == "finetuned"
    encoder = EncoderConfig(enc.encoder, enc.max_tokens, enc.past_turns, enc.future_turns, enc.dropout,
                            enc.precision) if needs_encoders else None
    head = None
    if objective.fusion != "none":
        dims = dict(feature_dims or {})
        if needs_encoders:
            dims["text"] = _encoder_width(enc.encoder)
        missing = [m for m in objective.modalities if m not in dims]
        if missing:
            raise ConfigError(f"objective {objective.name}: no feature widths for {missing}; run `dvc repro featurize`")
        head = HeadConfig(modalities=list(objective.modalities),
                          input_dims={m: int(dims[m]) for m in objective.modalities},
                          hidden=objective.hidden, fusion=objective.fusion, heads=objective.heads,
                          dropout=objective.dropout, dialogue=objective.dialogue,
                          dialogue_layers=objective.dialogue_layers, residual=objective.residual)
    config = ModelConfig(labels=list(params.labels), encoder=encoder, members=enc.members if needs_encoders else 1,
                         text=objective.text, head=head,
                         windows=[list(w) for w in objective.windows] if needs_encoders else [])
    return ErcModel(config, meta={"objective": asdict(objective), "features": asdict(params.features)})


def _encoder_width(name: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(encoder_path(name)).hidden_size)


def encoder_settings(enc: TextEncoderParams, seed: int) -> LoopSettings:
    return LoopSettings(epochs=enc.epochs, batch_size=enc.batch_size, lr=enc.lr, head_lr=enc.head_lr,
                        patience=enc.patience, seed=seed, weight_decay=enc.weight_decay, schedule="linear",
                        warmup_ratio=enc.warmup_ratio, min_steps=enc.min_steps, grad_accum=enc.grad_accum,
                        max_grad_norm=enc.max_grad_norm, max_minutes=enc.max_minutes)


def head_settings(objective: ObjectiveConfig, params: Params) -> LoopSettings:
    train = params.train
    return LoopSettings(epochs=objective.epochs or train.epochs, batch_size=train.batch_size,
                        lr=objective.lr or train.lr, patience=train.patience, seed=train.seed,
                        weight_decay=train.weight_decay, start_is_candidate=objective.residual)


def dialogue_subset(table: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of whole dialogues with about ``max_rows`` rows (context stays intact)."""
    if max_rows is None or len(table) <= max_rows:
        return table
    ids = context.dialogue_ids(table)
    keep: set[str] = set()
    count, unique = 0, sorted(set(ids))
    for i in np.random.default_rng(seed).permutation(len(unique)):
        if count >= max_rows:
            break
        keep.add(unique[i])
        count += int((ids == unique[i]).sum())
    return table[np.isin(ids, list(keep))]


def fit_encoders(model: ErcModel, train: pd.DataFrame, valid: pd.DataFrame, params: Params,
                 device: torch.device, on_epoch: Callable[[dict], None] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model.config.members`` text encoders, each selected on valid; their histories.

    Member k is seeded ``train.seed + k``, so member k of seed s is the single encoder of seed s + k."""
    enc, cfg, labels = params.text_encoder, model.config.encoder, model.labels
    tokenizer = load_tokenizer(encoder_path(cfg.encoder))
    train = dialogue_subset(train, enc.max_train_rows, params.train.seed)
    examples, valid_examples = (context.text_pairs(t, tokenizer, cfg.max_tokens, cfg.past_turns, cfg.future_turns)
                                for t in (train, valid))
    y, valid_y = label_ids(train, labels, "train"), label_ids(valid, labels, "valid")
    histories: list[dict[str, Any]] = []
    encoders = []
    with distributed.process_group(device) as dist:
        device = distributed.device_for(dist, device)
        if device.type == "cpu":  # the cores are shared by this machine's ranks
            torch.set_num_threads(max(1, resolve_jobs(0) // dist.local_world_size))
        for k in range(model.config.n_encoders):
            seed_everything(params.train.seed + k)  # same on every rank: same classifier init, same batches
            encoder = build_text_encoder(cfg, len(labels))
            task = EncoderTask(encoder, examples, y, valid_examples, valid_y, tokenizer.pad_token_id,
                               enc.eval_batch_size, device)
            settings = encoder_settings(enc, params.train.seed + k)
            criterion = Criterion(LossConfig.of(enc), task.y, len(labels))
            result = train_loop(task, settings, criterion, labels, device, dist, f"encoder{k}", on_epoch, progress)
            histories += result.history
            encoders.append(encoder.cpu())
            model.timings[f"encoder{k}_epoch_seconds"] = result.seconds / max(1, len(result.history))
            model.info[f"encoder{k}"] = {"best_epoch": result.best_epoch, "n_train": len(train),
                                         "best_valid_weighted_f1": result.best_valid_weighted_f1,
                                         "stopped_by_budget": result.stopped_by_budget}
        dist.barrier()
    model.encoders, model.tokenizer = encoders, tokenizer
    return histories


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
            built = (encoders_from.config.encoder, encoders_from.config.members)
            if built != (model.config.encoder, model.config.members):
                raise ConfigError("the trained text encoders were built with other text_encoder params than this "
                                  "objective expects; rerun `dvc repro text_encoder`")
            model.encoders = [copy.deepcopy(e) for e in encoders_from.encoders]
            model.tokenizer = encoders_from.tokenizer
            model.info.update({k: v for k, v in encoders_from.info.items() if k.startswith("encoder")})
        else:
            histories += fit_encoders(model, train, valid, params, device, on_epoch, progress)
    if model.config.head is not None:
        set_cpu_threads(params.runtime.threads)
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
    train_arrays, train_mask = feature_arrays(model, train, train_features)
    valid_arrays, valid_mask = feature_arrays(model, valid, valid_features)
    eval_batch = params.runtime.eval_batch_size
    train_inputs = head_inputs(train, train_arrays, train_mask, config)
    y = label_ids(train, labels, f"{objective.train_table} table")
    valid_views = valid_logits = None
    if model.config.text == "finetuned":
        logits, pooled = views.get("train") or text_views(model, train, eval_batch, device, every_window=False)
        train_inputs, source = train_inputs.over_views(pooled, logits)
        y = y[source]
        valid_logits, valid_views = views.get("valid") or text_views(model, valid, eval_batch, device)
    valid_base = head_inputs(valid, {**valid_arrays, **({"text": valid_views[0]} if valid_views else {})},
                             valid_mask, config)
    model.head = head = FusionHead(config, labels)
    head.set_normalization(train_inputs.arrays, train_inputs.mask)

    def valid_scorer() -> np.ndarray:
        if valid_views is None:
            return head_logits(head, valid_base, eval_batch, device)
        probs = [softmax(head_logits(head, valid_base.with_text(v, lg), eval_batch, device))
                 for v, lg in zip(valid_views, valid_logits)]
        return np.log(np.clip(mean_probabilities(probs), 1e-12, None)).astype(np.float32)

    task = HeadTask(head, train_inputs, y, valid_scorer, label_ids(valid, labels, "valid table"))
    result = train_loop(task, head_settings(objective, params), Criterion(LossConfig.of(objective), y, len(labels)),
                        labels, device, None, "head", on_epoch, progress)
    model.info["head"] = {"best_epoch": result.best_epoch, "best_valid_weighted_f1": result.best_valid_weighted_f1}
    model.info["best_valid_weighted_f1"] = result.best_valid_weighted_f1
    return result.history
