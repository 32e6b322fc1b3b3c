"""Stage report: the metrics of every objective -> one markdown table, a CSV and a bar plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hlm12erc.config import ConfigError, Params
from hlm12erc.plots import plot_objectives

REPORT_COLUMNS = ("objective", "modalities", "fusion", "loss", "accuracy", "weighted_f1", "weighted_f1_low",
                  "weighted_f1_high", "macro_f1")  # low-high: the 95 % dialogue-bootstrap interval (evaluate)

def _describe(objective, params: Params) -> tuple[str, str, str]:
    """(modalities, fusion, loss) of an objective, as the report table shows them."""
    text = "fine-tuned text" if objective.text == "finetuned" else "text"
    modalities = "+".join(text if m == "text" else m for m in objective.modalities)
    if objective.fusion == "none":
        enc = params.text_encoder
        return modalities, f"{enc.members} encoder(s)", enc.loss
    loss = objective.loss
    if objective.aux_loss != "none":
        loss = f"{loss} + {objective.aux_weight:g} {objective.aux_loss}"
    fusion = "linear" if objective.hidden == 0 else objective.fusion
    if objective.dialogue != "none":
        fusion += f" + {objective.dialogue} dialogue"
    return modalities, fusion, loss


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
        modalities, fusion, loss = _describe(objective, params) if objective else ("?", "?", "?")
        low, high = metrics.get("weighted_f1_ci95") or (float("nan"), float("nan"))  # metrics of older evaluates
        rows.append({"objective": name, "modalities": modalities, "fusion": fusion, "loss": loss,
                     **{k: round(float(metrics[k]), 4) for k in ("accuracy", "weighted_f1", "macro_f1")},
                     "weighted_f1_low": round(float(low), 4), "weighted_f1_high": round(float(high), 4)})
    table = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    for path in (out_md, out_csv, out_plot):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    Path(out_md).write_text(markdown_table(table) + "\n", encoding="utf-8")
    plot_objectives(table, out_plot)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + " |"
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
