"""Stages train and text_encoder: tables + features (+ the text_encoder stage's encoders) -> a model
folder + history.csv, one MLflow run (stage text_encoder is train without encoders: it fine-tunes them).
Stage evaluate is :mod:`hlm12erc.evaluation`."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from hlm12erc import tracking, workers
from hlm12erc.config import ObjectiveConfig, Params
from hlm12erc.data.meld import absent_modalities, absent_warning, load_table
from hlm12erc.features.store import load_split
from hlm12erc.models.erc import ErcModel
from hlm12erc.runtime import effective_precision, select_device
from hlm12erc.training.distributed import is_main_process
from hlm12erc.training.fit import fit, new_model
from hlm12erc.training.loop import HISTORY_COLUMNS


def _write_history(history: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False, float_format="%.6f")
    os.replace(tmp, path)


def _log_epoch(row: dict) -> None:
    tracking.log_metrics({f"{row['part']}_{k}": v for k, v in row.items() if k not in ("part", "epoch")},
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
    train, valid = (load_table(Path(tables_dir) / f"{split}.csv", params.labels)
                    for split in (objective.train_table, "valid"))
    dims = load_split(features_dir, tables_dir, objective.train_table).dims if objective.fusion != "none" else {}
    model = new_model(objective, params, dims)
    train_set, valid_set = (load_split(features_dir, tables_dir, split) if model.uses_cached_features else None
                            for split in (objective.train_table, "valid"))
    encoders = ErcModel.load(encoders_dir) if model.config.encoder is not None and encoders_dir else None
    device = select_device(params.train.device)
    main = is_main_process()
    absent = absent_modalities(train, objective.modalities)
    if absent and main:
        print(absent_warning(objective.name, absent, f"{objective.train_table}.csv"), file=sys.stderr)
    logged = {"objective": asdict(objective), "train": asdict(params.train), "labels": params.labels,
              "features": asdict(params.features), "device": str(device),
              "absent_modalities": ",".join(absent) or "none",
              **({"text_encoder": asdict(params.text_encoder),
                  "precision": effective_precision(model.config.encoder.precision, device)}  # what runs here
                 if model.config.encoder else {})}
    with tracking.start_run("train", objective.name, logged) if main else contextlib.nullcontext():
        fit(model, train, valid, train_set, valid_set, params, encoders_from=encoders, device=device,
            on_epoch=_log_epoch if main else None, progress=progress)
        history = model.info.pop("history")
        parts = {k: v for k, v in model.info.items() if isinstance(v, dict)}
        best = model.info.get("best_valid_weighted_f1") or max(v["best_valid_weighted_f1"] for v in parts.values())
        if main:
            _write_history(history, Path(plots_dir) / "history.csv")
            workers.write_aside(out_dir, model.save)
            tracking.log_metrics({"best_valid_weighted_f1": best, **model.timings,
                                  **{f"{k}_best_valid_weighted_f1": v["best_valid_weighted_f1"]
                                     for k, v in parts.items()}})
            tracking.log_artifacts(out_dir, "model")
            tracking.log_artifact(Path(plots_dir) / "history.csv")
    return {"objective": objective.name, "main": main, "best_valid_weighted_f1": best,
            "best_epoch": {k: v["best_epoch"] for k, v in parts.items()}, "epochs_run": len(history)}
