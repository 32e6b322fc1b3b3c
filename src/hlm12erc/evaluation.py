"""Stage evaluate: a checkpoint + its split's table (and cached features) -> metrics JSON, confusion
CSV/PNG, predictions CSV, one MLflow run. Loads the model and its inference only: no training code."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc import tracking
from hlm12erc.config import Params
from hlm12erc.data import context
from hlm12erc.data.meld import absent_modalities, absent_warning, load_table
from hlm12erc.features.store import load_split
from hlm12erc.metrics import bootstrap_weighted_f1, compute_metrics, confusion, report_text
from hlm12erc.models.erc import ErcModel
from hlm12erc.plots import plot_confusion
from hlm12erc.runtime import select_device, set_cpu_threads


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
    set_cpu_threads(params.runtime.threads)
    model = ErcModel.load(model_dir, select_device(params.train.device))
    name = (model.meta.get("objective") or {}).get("name") or Path(model_dir).name
    labels = model.labels
    table = load_table(Path(tables_dir) / f"{split}.csv", labels)
    features = load_split(features_dir, tables_dir, split) if model.uses_cached_features else None
    probs = model.predict_proba(table, features, batch_size=params.runtime.eval_batch_size)
    predicted = [labels[i] for i in probs.argmax(1)]
    actual = table["label"].astype(str).tolist()
    absent = absent_modalities(table, model.modalities)
    if absent:
        print(absent_warning(name, absent, f"{split}.csv"), file=sys.stderr)
    metrics = {"objective": name, "split": split, **compute_metrics(actual, predicted, labels),
               "weighted_f1_ci95": weighted_f1_interval(table, probs.argmax(1), labels),
               "absent_modalities": absent}
    report = report_text(actual, predicted, labels)

    metrics_path, plots_dir = Path(metrics_path), Path(plots_dir)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(plots_dir / "confusion.csv", index=False)
    predictions = pd.DataFrame({"clip_id": table["clip_id"].astype(str), "label": actual, "predicted": predicted,
                                **{f"p_{label}": probs[:, i] for i, label in enumerate(labels)}})
    predictions.to_csv(plots_dir / "predictions.csv", index=False, float_format="%.6f")
    plot_confusion(confusion(actual, predicted, labels), labels, plots_dir / "confusion.png", f"{name} on {split}")

    with tracking.start_run("evaluate", name, {"objective": model.meta.get("objective") or {}, "split": split,
                                                "model_dir": str(model_dir)}):
        tracking.log_metrics({f"{split}_{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")})
        tracking.log_metrics({f"{split}_f1_{label}": v["f1"] for label, v in metrics["per_class"].items()})
        tracking.log_artifact(plots_dir / "confusion.png")
        tracking.log_artifact(metrics_path)
        tracking.log_text(report, "classification_report.txt")
        tracking.log_artifacts(model_dir, "model")
    return metrics, report
