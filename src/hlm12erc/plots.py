"""Matplotlib figures written by the stages (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write at 120 dpi and close ``fig``."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return Path(path)


def plot_confusion(counts: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Rows normalised per true class (colour), raw counts annotated in each cell."""
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    fig, ax = _pyplot().subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title or "confusion (row-normalised, counts annotated)")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(int(count)), ha="center", va="center",
                color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_objectives(table: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars of accuracy / weighted-F1 / macro-F1 per objective; weighted-F1 with its 95 % interval
    (columns ``weighted_f1_low`` / ``weighted_f1_high``) as an error bar where the table has it."""
    metrics = ["accuracy", "weighted_f1", "macro_f1"]
    x = np.arange(len(table))
    fig, ax = _pyplot().subplots(figsize=(max(6.0, 0.9 * len(table) + 2), 4))
    for k, metric in enumerate(metrics):
        error = None
        if metric == "weighted_f1" and {"weighted_f1_low", "weighted_f1_high"} <= set(table.columns):
            error = np.nan_to_num(np.stack([table[metric] - table["weighted_f1_low"],
                                            table["weighted_f1_high"] - table[metric]]).astype(float))
        label = f"{metric} (95% dialogue-bootstrap range)" if error is not None else metric
        ax.bar(x + (k - 1) * 0.27, table[metric], width=0.27, label=label, yerr=error, capsize=2)
    ax.set_xticks(x, table["objective"], rotation=30, ha="right")
    ax.set_ylim(0, 1.12)  # headroom for the legend row above bars and error bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.set_title("objectives on the test split")
    ax.legend(loc="upper center", ncol=3, fontsize="small", frameon=False)
    return _save(fig, path)
