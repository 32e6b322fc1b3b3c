"""What each model-side DVC stage does, called by the short scripts in ``pipeline/``.

featurize: tables -> cached feature arrays; train: features -> a checkpoint + history;
evaluate: a checkpoint + features -> metrics JSON, confusion/prediction CSVs and a PNG;
report: metrics of several objectives -> one table and one bar plot. Train and evaluate are
each one MLflow run.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from hlm12erc import tracking
from hlm12erc.config import ConfigError, Params
from hlm12erc.features.store import MODALITIES, TABLE_SPLITS, FeatureSet, featurize_tables
from hlm12erc.training.metrics import compute_metrics, confusion, report_text
from hlm12erc.training.trainer import (load_model, predict_proba, save_model, select_device, set_cpu_threads,
                                       train_model)


def featurize_stage(params: Params, tables_dir: str | Path, out_dir: str | Path) -> dict[str, FeatureSet]:
    from hlm12erc.data.meld import load_table

    for split in TABLE_SPLITS:  # bad rows fail before any slow work
        if (Path(tables_dir) / f"{split}.csv").exists():
            load_table(Path(tables_dir) / f"{split}.csv", params.labels)
    tracking.ensure_store()  # once, before train/evaluate runs may start in parallel
    return featurize_tables(tables_dir, out_dir, params.features, params.labels)


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


def _check_objective(params: Params, name: str):
    objective = params.objective(name)
    if objective.kind not in ("features", "finetune"):
        raise ConfigError(f"objective {name}: kind '{objective.kind}' is not features or finetune")
    if objective.kind == "finetune" and list(objective.modalities) != ["text"]:
        raise ConfigError(f"objective {name}: kind finetune fine-tunes the text encoder; set modalities: [text]")
    unknown = [m for m in objective.modalities if m not in MODALITIES]
    if unknown or not objective.modalities:
        raise ConfigError(f"objective {name}: modalities {objective.modalities} must be a non-empty subset of "
                          f"{list(MODALITIES)}")
    return objective


def train_stage(params: Params, objective_name: str, tables_dir: str | Path, features_dir: str | Path,
                out_dir: str | Path, plots_dir: str | Path, progress: bool = True) -> dict:
    """Train one objective; write model.pt/config.json and history.csv; log one MLflow run."""
    objective = _check_objective(params, objective_name)
    if objective.kind == "finetune":
        return _train_finetune_stage(params, objective, tables_dir, out_dir, plots_dir)
    train_set = load_split(features_dir, tables_dir, objective.train_table)
    valid_set = load_split(features_dir, tables_dir, "valid")
    device = select_device(params.train.device)
    logged = {"objective": asdict(objective), "train": asdict(params.train),
              "features": asdict(params.features), "labels": params.labels, "device": str(device)}
    with tracking.start_run("train", objective.name, logged):
        result = train_model(objective, train_set, valid_set, params.labels, params.train, device,
                             on_epoch=lambda row: tracking.log_metrics(
                                 {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])),
                             progress=progress)
        save_model(result.model, out_dir, objective, {
            "feature_dims": train_set.dims, "features": asdict(params.features),
            "best_epoch": result.best_epoch, "best_valid_weighted_f1": result.best_valid_weighted_f1})
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        result.history.to_csv(Path(plots_dir) / "history.csv", index=False)
        tracking.log_metrics({"best_valid_weighted_f1": result.best_valid_weighted_f1,
                              "best_epoch": result.best_epoch, "epochs_run": len(result.history)})
        tracking.log_artifacts(out_dir, "model")
        tracking.log_artifact(Path(plots_dir) / "history.csv")
    return {"objective": objective.name, "best_epoch": result.best_epoch,
            "best_valid_weighted_f1": result.best_valid_weighted_f1, "epochs_run": len(result.history)}


def evaluate_stage(params: Params, model_dir: str | Path, tables_dir: str | Path, features_dir: str | Path,
                   split: str, metrics_path: str | Path, plots_dir: str | Path) -> tuple[dict, str]:
    """Score a checkpoint on ``split``; write the metrics JSON and plots; log one MLflow run."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found; run the train stage for this model first")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = (config.get("objective") or {}).get("name") or Path(model_dir).name
    if config.get("kind") == "finetune":
        probs, labels, index = _predict_finetuned(params, model_dir, tables_dir, split, config)
    else:
        probs, labels, index = _predict_features(params, model_dir, tables_dir, features_dir, split)
    predicted = [labels[i] for i in probs.argmax(1)]
    actual = index["label"].astype(str).tolist()
    metrics = {"objective": name, "split": split, **compute_metrics(actual, predicted, labels)}
    report = report_text(actual, predicted, labels)
    counts = confusion(actual, predicted, labels)

    metrics_path, plots_dir = Path(metrics_path), Path(plots_dir)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(plots_dir / "confusion.csv", index=False)
    predictions = pd.DataFrame({"clip_id": index["clip_id"], "label": actual, "predicted": predicted})
    for i, label in enumerate(labels):
        predictions[f"p_{label}"] = np.round(probs[:, i], 6)
    predictions.to_csv(plots_dir / "predictions.csv", index=False)
    from hlm12erc.plots import plot_confusion

    plot_confusion(counts, labels, plots_dir / "confusion.png", f"{name} on {split}")

    with tracking.start_run("evaluate", name, {"objective": config.get("objective") or {}, "split": split,
                                                "model_dir": str(model_dir)}):
        tracking.log_metrics({f"{split}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")})
        tracking.log_metrics({f"{split}_f1_{label}": v["f1"] for label, v in metrics["per_class"].items()})
        tracking.log_artifact(plots_dir / "confusion.png")
        tracking.log_artifact(metrics_path)
        tracking.log_text(report, "classification_report.txt")
        tracking.log_artifacts(model_dir, "model")
    return metrics, report


def _predict_features(params: Params, model_dir: str | Path, tables_dir: str | Path, features_dir: str | Path,
                      split: str) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """Probabilities of a fusion model on the cached features of ``split``."""
    set_cpu_threads(params.train.threads)
    device = select_device(params.train.device)
    model, _config = load_model(model_dir, device)
    features = load_split(features_dir, tables_dir, split)
    probs = predict_proba(model, features, params.train.eval_batch_size, device, f"{features_dir}/{split}")
    return probs, model.config.labels, features.index


def _predict_finetuned(params: Params, model_dir: str | Path, tables_dir: str | Path, split: str,
                       config: dict) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """Probabilities of a fine-tuned text model on the table of ``split`` (context as in training)."""
    from hlm12erc.data.meld import load_table
    from hlm12erc.training.finetune import load_finetuned, predict_proba

    labels = list(config["labels"])
    table = load_table(Path(tables_dir) / f"{split}.csv", labels)
    loaded = load_finetuned(model_dir, params.train.device)
    return predict_proba(loaded, table, batch_size=params.train.eval_batch_size), labels, table


def _train_finetune_stage(params: Params, objective, tables_dir: str | Path, out_dir: str | Path,
                          plots_dir: str | Path) -> dict:
    """kind=finetune: fine-tune MiniLM on the text tables (features are not used).

    Under torchrun every rank trains; only rank 0 opens the MLflow run and writes the outputs.
    """
    from hlm12erc.data.meld import load_table
    from hlm12erc.training.distributed import is_main_process
    from hlm12erc.training.finetune import FinetuneConfig, train_finetune

    cfg = FinetuneConfig.from_dict({"seed": params.train.seed, "device": params.train.device,
                                    **objective.finetune})
    train = load_table(Path(tables_dir) / f"{objective.train_table}.csv", params.labels)
    valid = load_table(Path(tables_dir) / "valid.csv", params.labels)
    out_dir, plots_dir = Path(out_dir), Path(plots_dir)
    main = is_main_process()
    logged = {"objective": asdict(objective), "finetune": asdict(cfg), "labels": params.labels,
              "nproc": params.train.nproc}
    with tracking.start_run("train", objective.name, logged) if main else contextlib.nullcontext():
        summary = train_finetune(cfg, train, valid, list(params.labels), out_dir,
                                 on_epoch=lambda row: tracking.log_metrics(
                                     {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])))
        if main:
            config_path = out_dir / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["objective"] = asdict(objective)
            config_path.write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
            plots_dir.mkdir(parents=True, exist_ok=True)
            pd.read_csv(out_dir / "history.csv").to_csv(plots_dir / "history.csv", index=False)
            tracking.log_metrics({"best_valid_weighted_f1": summary["best_valid_weighted_f1"],
                                  "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                                  "train_seconds": summary["train_seconds"], "nproc": summary["nproc"]})
            tracking.log_artifacts(out_dir, "model")
    return {"objective": objective.name, "best_epoch": summary["best_epoch"],
            "best_valid_weighted_f1": summary["best_valid_weighted_f1"], "epochs_run": summary["epochs_run"],
            "main": main}


def _describe(objective) -> tuple[str, str, str]:
    """(modalities, fusion, loss) of an objective, as the report table shows them."""
    if objective.kind == "finetune":
        from hlm12erc.training.finetune import FinetuneConfig

        return "text", "fine-tuned MiniLM", FinetuneConfig.from_dict(dict(objective.finetune)).loss
    loss = objective.loss
    if objective.aux_loss != "none":
        loss = f"{loss} + {objective.aux_weight:g} {objective.aux_loss}"
    return "+".join(objective.modalities), "linear" if objective.hidden == 0 else objective.fusion, loss


REPORT_COLUMNS = ("objective", "modalities", "fusion", "loss", "accuracy", "weighted_f1", "macro_f1")


def report_stage(params: Params, metrics_dir: str | Path, objectives: Sequence[str], out_md: str | Path,
                 out_csv: str | Path, out_plot: str | Path) -> pd.DataFrame:
    """One row per objective from ``metrics_dir/<objective>.json``; markdown, CSV and a bar plot."""
    rows = []
    for name in objectives:
        path = Path(metrics_dir) / f"{name}.json"
        if not path.exists():
            raise ConfigError(f"{path} not found: evaluate objective '{name}' first (`dvc repro evaluate@{name}`)")
        metrics = json.loads(path.read_text(encoding="utf-8"))
        objective = params.objectives.get(name)
        modalities, fusion, loss = _describe(objective) if objective else ("?", "?", "?")
        rows.append({"objective": name, "modalities": modalities, "fusion": fusion, "loss": loss,
                     **{k: round(float(metrics[k]), 4) for k in ("accuracy", "weighted_f1", "macro_f1")}})
    table = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    for path in (out_md, out_csv, out_plot):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    Path(out_md).write_text(markdown_table(table) + "\n", encoding="utf-8")
    from hlm12erc.plots import plot_objectives

    plot_objectives(table, out_plot)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + " |"
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
