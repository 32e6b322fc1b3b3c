"""What each model-side DVC stage does, called by the short scripts in ``pipeline/``.

train: tables + features (+ the text_encoder stage's encoders) -> a model folder + history
(stage text_encoder is train without encoders: it fine-tunes them);
evaluate: a checkpoint + features -> metrics JSON, confusion/prediction CSVs and a PNG;
Train and evaluate are each one MLflow run. (featurize: :mod:`hlm12erc.features.featurize`;
report: :mod:`hlm12erc.report`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc import tracking
from hlm12erc.config import ConfigError, ObjectiveConfig, Params
from hlm12erc.data import context
from hlm12erc.data.meld import absent_modalities, absent_warning
from hlm12erc.features.store import FeatureSet
from hlm12erc.models.erc import ErcModel
from hlm12erc.training.metrics import bootstrap_weighted_f1, compute_metrics, confusion, report_text
from hlm12erc.training.trainer import HISTORY_COLUMNS, new_model, select_device, set_cpu_threads


def load_split(features_dir: str | Path, tables_dir: str | Path, split: str) -> FeatureSet:
    """Cached features of ``split``, checked against its table (same clips, same order)."""
    features = FeatureSet.load(Path(features_dir) / split)
    table_path = Path(tables_dir) / f"{split}.csv"
    if table_path.exists():
        clips = pd.read_csv(table_path, usecols=["clip_id"], dtype=str, keep_default_na=False)["clip_id"]
        if clips.tolist() != features.index["clip_id"].tolist():
            raise ConfigError(f"{features_dir}/{split} is stale: its clips differ from {table_path}; "
                              "rerun `dvc repro featurize`")
    return features


def _load_tables(tables_dir: str | Path, splits: Sequence[str], labels: Sequence[str]) -> list[pd.DataFrame]:
    from hlm12erc.data.meld import load_table

    return [load_table(Path(tables_dir) / f"{split}.csv", labels) for split in splits]


def _features_or_none(model: ErcModel, features_dir: str | Path, tables_dir: str | Path, split: str):
    return load_split(features_dir, tables_dir, split) if model.uses_cached_features else None


def _write_history(history: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.6f")
    os.replace(tmp, path)


def save_whole(model: ErcModel, out_dir: str | Path) -> None:
    """``model.save`` into a sibling ``.NAME.part`` folder that then replaces ``out_dir``: a stage killed
    mid-save leaves the previous folder (or none), never half of one."""
    out_dir = Path(out_dir)
    part, old = out_dir.with_name(f".{out_dir.name}.part"), out_dir.with_name(f".{out_dir.name}.old")
    for stale in (part, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        model.save(part)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(part, out_dir)
    finally:
        shutil.rmtree(part, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _log_epoch(row: dict) -> None:
    part = row["part"]
    tracking.log_metrics({f"{part}_{k}": v for k, v in row.items() if k not in ("part", "epoch")},
                         step=int(row["epoch"]))


def train_stage(params: Params, objective: ObjectiveConfig, tables_dir: str | Path, features_dir: str | Path,
                out_dir: str | Path, plots_dir: str | Path, encoders_dir: str | Path | None = None,
                progress: bool = True) -> dict:
    """Train one objective (``params.objective(name)``, or ``TEXT_ENCODERS``); write its model folder and
    history.csv; log one MLflow run.

    An objective with ``text: finetuned`` copies the encoders of ``encoders_dir`` (stage
    ``text_encoder``), or without it fine-tunes its own: stage ``text_encoder`` does that for
    ``TEXT_ENCODERS``. Under torchrun every rank trains; only rank 0 opens the MLflow run and writes the outputs.
    """
    from hlm12erc.training.distributed import is_main_process

    train, valid = _load_tables(tables_dir, [objective.train_table, "valid"], params.labels)
    dims = load_split(features_dir, tables_dir, objective.train_table).dims if objective.fusion != "none" else {}
    model = new_model(objective, params, dims)
    train_set = _features_or_none(model, features_dir, tables_dir, objective.train_table)
    valid_set = _features_or_none(model, features_dir, tables_dir, "valid")
    encoders = ErcModel.load(encoders_dir) if model.config.encoder is not None and encoders_dir else None
    device = select_device(params.train.device)
    main = is_main_process()
    absent = absent_modalities(train, objective.modalities)
    if absent and main:
        print(absent_warning(objective.name, absent, f"{objective.train_table}.csv"), file=sys.stderr)
    logged = {"objective": asdict(objective), "train": asdict(params.train), "labels": params.labels,
              "features": asdict(params.features), "device": str(device),
              "absent_modalities": ",".join(absent) or "none",
              **({"text_encoder": asdict(params.text_encoder)} if model.config.encoder else {})}
    with tracking.start_run("train", objective.name, logged) if main else contextlib.nullcontext():
        model.fit(train, valid, train_set, valid_set, params, encoders_from=encoders, device=device,
                  on_epoch=_log_epoch if main else None, progress=progress)
        history = model.info.pop("history")
        parts = {k: v for k, v in model.info.items() if isinstance(v, dict)}
        best = model.info.get("best_valid_weighted_f1") or max(v["best_valid_weighted_f1"] for v in parts.values())
        if main:
            _write_history(history, Path(plots_dir) / "history.csv")
            save_whole(model, out_dir)
            tracking.log_metrics({"best_valid_weighted_f1": best, **model.timings,
                                  **{f"{k}_best_valid_weighted_f1": v["best_valid_weighted_f1"]
                                     for k, v in parts.items()}})
            tracking.log_artifacts(out_dir, "model")
            tracking.log_artifact(Path(plots_dir) / "history.csv")
    return {"objective": objective.name, "main": main, "best_valid_weighted_f1": best,
            "best_epoch": {k: v["best_epoch"] for k, v in parts.items()}, "epochs_run": len(history)}


def weighted_f1_interval(table: pd.DataFrame, predicted: np.ndarray, labels: Sequence[str]) -> list[float]:
    """The 95 % interval of weighted-F1 over 1,000 seeded bootstrap resamples of the split's dialogues:
    how far the score could move on another sample of conversations (small test splits move a lot)."""
    lookup = {label: i for i, label in enumerate(labels)}
    y = np.array([lookup[str(v)] for v in table["label"]])
    scores = bootstrap_weighted_f1(y, [predicted], context.dialogue_ids(table), len(labels))[:, 0]
    return [round(float(v), 6) for v in np.percentile(scores, [2.5, 97.5])]


def evaluate_stage(params: Params, model_dir: str | Path, tables_dir: str | Path, features_dir: str | Path,
                   split: str, metrics_path: str | Path, plots_dir: str | Path) -> tuple[dict, str]:
    """Score a model folder on ``split``; write the metrics JSON and plots; log one MLflow run."""
    set_cpu_threads(params.train.threads)
    model = ErcModel.load(model_dir, select_device(params.train.device))
    name = (model.meta.get("objective") or {}).get("name") or Path(model_dir).name
    labels = model.labels
    (table,) = _load_tables(tables_dir, [split], labels)
    features = _features_or_none(model, features_dir, tables_dir, split)
    probs = model.predict_proba(table, features, batch_size=params.train.eval_batch_size)
    predicted = [labels[i] for i in probs.argmax(1)]
    actual = table["label"].astype(str).tolist()
    absent = absent_modalities(table, model.modalities)
    if absent:
        print(absent_warning(name, absent, f"{split}.csv"), file=sys.stderr)
    metrics = {"objective": name, "split": split, **compute_metrics(actual, predicted, labels),
               "weighted_f1_ci95": weighted_f1_interval(table, probs.argmax(1), labels),
               "absent_modalities": absent}
    report = report_text(actual, predicted, labels)
    counts = confusion(actual, predicted, labels)

    metrics_path, plots_dir = Path(metrics_path), Path(plots_dir)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(plots_dir / "confusion.csv", index=False)
    predictions = pd.DataFrame({"clip_id": table["clip_id"].astype(str), "label": actual, "predicted": predicted})
    for i, label in enumerate(labels):
        predictions[f"p_{label}"] = probs[:, i]
    predictions.to_csv(plots_dir / "predictions.csv", index=False, float_format="%.6f")
    from hlm12erc.plots import plot_confusion

    plot_confusion(counts, labels, plots_dir / "confusion.png", f"{name} on {split}")

    with tracking.start_run("evaluate", name, {"objective": model.meta.get("objective") or {}, "split": split,
                                                "model_dir": str(model_dir)}):
        tracking.log_metrics({f"{split}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")})
        tracking.log_metrics({f"{split}_f1_{label}": v["f1"] for label, v in metrics["per_class"].items()})
        tracking.log_artifact(plots_dir / "confusion.png")
        tracking.log_artifact(metrics_path)
        tracking.log_text(report, "classification_report.txt")
        tracking.log_artifacts(model_dir, "model")
    return metrics, report
