"""Classification metrics over a fixed label list, so classes absent from a split still appear."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """accuracy, weighted/macro F1 and per-class precision/recall/F1/support (zero_division=0)."""
    labels = list(labels)
    if len(y_true) == 0:
        raise ValueError("no rows to score: the split is empty")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                              "f1": float(f1[i]), "support": int(support[i])}
                      for i, label in enumerate(labels)},
    }


def report_text(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> str:
    """scikit-learn's classification report over the fixed label list."""
    return classification_report(y_true, y_pred, labels=list(labels), zero_division=0, digits=3)


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts, rows = true label, columns = predicted label, in ``labels`` order."""
    return confusion_matrix(y_true, y_pred, labels=list(labels))


def scores_from_logits(logits: np.ndarray, y: np.ndarray, n_labels: int) -> dict[str, float]:
    """Plain cross-entropy (comparable across objectives), accuracy, weighted and macro F1 of class-id logits."""
    import torch

    pred = np.asarray(logits).argmax(1)
    loss = float(torch.nn.functional.cross_entropy(torch.as_tensor(logits, dtype=torch.float32),
                                                   torch.as_tensor(y)).item()) if len(y) else float("nan")
    labels = list(range(n_labels))
    return {"loss": loss, "accuracy": float(accuracy_score(y, pred)),
            "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
            "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))}
