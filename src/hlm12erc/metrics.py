"""Classification metrics over a fixed label list, so classes absent from a split still appear.

Plain numpy on one confusion matrix (scikit-learn's definitions, ``zero_division=0``): every stage
process scores something, and importing scikit-learn costs it about a second. :func:`read_metrics`
reads back (and checks) what the evaluate stage wrote.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _confusion_ids(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts of (true, predicted) class-id pairs; ids outside ``range(n_labels)`` are left out."""
    keep = (y_true >= 0) & (y_true < n_labels) & (y_pred >= 0) & (y_pred < n_labels)
    counts = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(counts, (y_true[keep], y_pred[keep]), 1)
    return counts


def _per_class(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, F1 and support per class; 0 where a ratio has nothing to divide by."""
    tp = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(0).astype(np.float64), counts.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1_den = predicted + support
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, 0.0)
    return precision, recall, f1, support


def _mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean; 0 when the weights sum to 0."""
    total = weights.sum()
    return float((values * weights).sum() / total) if total else 0.0


def _summary(y_true: Sequence[str], y_pred: Sequence[str],
             labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-class precision, recall, F1, support, and accuracy; an empty split is an error."""
    if len(y_true) == 0:
        raise ValueError("no rows to score: the split is empty")
    accuracy = float(np.mean([str(t) == str(p) for t, p in zip(y_true, y_pred)]))
    return (*_per_class(confusion(y_true, y_pred, labels)), accuracy)


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, weighted/macro F1 and per-class precision/recall/F1/support (zero_division=0)."""
    labels = list(labels)
    precision, recall, f1, support, accuracy = _summary(y_true, y_pred, labels)
    weighted, macro = _mean(f1, support), float(f1.mean())
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy,
        "weighted_f1": weighted,
        "macro_f1": macro,
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                              "f1": float(f1[i]), "support": int(support[i])}
                      for i, label in enumerate(labels)},
    }


def report_text(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> str:
    """A classification report over the fixed label list (scikit-learn's layout, 3 digits)."""
    labels = list(labels)
    precision, recall, f1, support, accuracy = _summary(y_true, y_pred, labels)
    n, width = len(y_true), max(len(label) for label in [*labels, "weighted avg"])
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for i, label in enumerate(labels):
        lines.append(f"{label:>{width}} {precision[i]:>9.3f} {recall[i]:>9.3f} {f1[i]:>9.3f} {support[i]:>9}")
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {accuracy:>9.3f} {n:>9}"]
    for name, weights in (("macro avg", np.ones(len(labels))), ("weighted avg", support)):
        lines.append(f"{name:>{width}} {_mean(precision, weights):>9.3f} {_mean(recall, weights):>9.3f} "
                     f"{_mean(f1, weights):>9.3f} {n:>9}")
    return "\n".join(lines) + "\n"


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts, rows = true label, columns = predicted label, in ``labels`` order."""
    labels = list(labels)
    lookup = {label: i for i, label in enumerate(labels)}
    true, pred = (np.array([lookup.get(str(v), -1) for v in values], dtype=np.int64) for values in (y_true, y_pred))
    return _confusion_ids(true, pred, len(labels))


def scores_from_logits(logits: np.ndarray, y: np.ndarray, n_labels: int) -> dict[str, float]:
    """Plain cross-entropy (comparable across objectives), accuracy, weighted and macro F1 of class-id logits."""
    import torch

    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(logits).argmax(1)
    loss = float(torch.nn.functional.cross_entropy(torch.as_tensor(logits, dtype=torch.float32),
                                                   torch.as_tensor(y)).item()) if len(y) else float("nan")
    _precision, _recall, f1, support = _per_class(_confusion_ids(y, pred, n_labels))
    weighted, macro = _mean(f1, support), float(f1.mean())
    return {"loss": loss, "accuracy": float(np.mean(pred == y)) if len(y) else 0.0,
            "weighted_f1": weighted, "macro_f1": macro}


def bootstrap_weighted_f1(y: np.ndarray, predictions: Sequence[np.ndarray], groups: Sequence[object], n_labels: int,
                          resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Weighted F1 of each class-id prediction vector on ``resamples`` bootstrap resamples of whole
    ``groups`` (dialogues: the turns of one dialogue are not independent draws); shape
    (resamples, len(predictions)). Every vector is scored on the same resamples, so differences
    between columns are paired."""
    y = np.asarray(y, dtype=np.int64)
    _names, group = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups, rng = int(group.max()) + 1, np.random.default_rng(seed)
    cells = [y * n_labels + np.asarray(p, dtype=np.int64) for p in predictions]
    out = np.empty((resamples, len(cells)))
    for r in range(resamples):
        weight = np.bincount(rng.integers(n_groups, size=n_groups), minlength=n_groups)[group]
        for j, cell in enumerate(cells):
            counts = np.bincount(cell, weights=weight, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
            _precision, _recall, f1, support = _per_class(counts)
            out[r, j] = _mean(f1, support)
    return out


SCORES = ("accuracy", "weighted_f1", "macro_f1")


def read_metrics(path: str | os.PathLike[str]) -> dict:
    """An evaluate stage's metrics JSON: an object with ``accuracy``, ``weighted_f1``, ``macro_f1`` in [0, 1].

    Anything else (a list, ``{}``, a score missing or out of range) is one ValueError, so no model
    is registered without its scores.
    """
    metrics_path = Path(path)
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found; evaluate the model first (`dvc repro`)")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{metrics_path} is not a metrics JSON ({error}); re-run its evaluate stage") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path} holds a JSON {type(metrics).__name__}, not the metrics object of an "
                         f"evaluate stage ({{\"accuracy\": ..., \"weighted_f1\": ..., \"macro_f1\": ...}}); "
                         "pass --metrics metrics/<model>.json")
    bad = [k for k in SCORES if isinstance(metrics.get(k), bool) or not isinstance(metrics.get(k), (int, float))
           or not math.isfinite(metrics[k]) or not 0 <= metrics[k] <= 1]
    if bad:
        raise ValueError(f"{metrics_path} has no valid {', '.join(bad)} (numbers in [0, 1] expected); a model is "
                         "registered with its scores: re-run its evaluate stage or pass the right --metrics")
    return metrics
