"""Error-analysis pages: where a model errs, shown as the conversations it read.

Stage ``pages`` writes ``reports/<objective>/index.html`` per evaluated objective (the split's
transcripts with gold and predicted emotions, probabilities, centre frames and audio; every page
holds the other objectives' predictions, so "where they disagree" needs no second file) and
``reports/index.html``; ``hlm12erc predict --out page.html`` writes the same view without gold.
A page is one self-contained file (media embedded, see :mod:`hlm12erc.page_media`) because it
must open from ``file://`` and inside MLflow's artifact view, where relative links do not resolve.

Bad input never stops a page: predictions sharing no turn with the table are refused in one line
(:class:`PageError`); anything partial or missing is one line per kind, also shown on the page.
Sorted JSON keys, fixed JPEG settings and hand-written wav headers: same inputs, same bytes.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from hlm12erc.data.context import dialogues
from hlm12erc.data.meld import DataError, load_table
from hlm12erc.metrics import compute_metrics, confusion
from hlm12erc.page_media import AUDIO_BUDGET, Media, collect_media, warn
from hlm12erc.page_template import INDEX, PAGE

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"  # a predicted label index as one character ("." = none)


class PageError(DataError):
    """Input a page cannot be built from; the message says what, why and how to fix it."""


def _label_ids(values: Sequence[object], labels: Sequence[str]) -> np.ndarray:
    """Each value's index in ``labels``, -1 for anything else."""
    lookup = {label: i for i, label in enumerate(labels)}
    return np.array([lookup.get(str(v), -1) for v in values], dtype=np.int64)


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """An evaluate stage's ``predictions.csv`` (``clip_id, label, predicted, p_<label>...``)."""
    path = Path(path)
    if not path.is_file():
        raise PageError(f"{path}: predictions not found; evaluate the objective first (`dvc repro evaluate@<name>`)")
    try:
        frame = pd.read_csv(path, dtype={"clip_id": str, "label": str, "predicted": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise PageError(f"{path}: not a predictions CSV ({first}); re-run its evaluate stage") from None
    missing = [c for c in ("clip_id", "predicted") if c not in frame.columns]
    if missing:
        raise PageError(f"{path}: missing column(s) {missing} (found {list(frame.columns)}); it must be an "
                        "evaluate stage's predictions.csv: re-run it")
    return frame


@dataclass
class Aligned:
    """One objective's predictions in table row order: label index (-1: none) and probabilities (NaN: none)."""

    predicted: np.ndarray
    probs: np.ndarray


def align(table: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], source: str,
          notes: list[str] | None = None) -> Aligned:
    """Match predictions to table rows by ``clip_id``; none in common is a :class:`PageError`, a partial
    match or unknown labels are one warning each."""
    labels = list(labels)
    frame = predictions.drop_duplicates("clip_id", keep="first").set_index("clip_id")
    clips = table["clip_id"].astype(str)
    found = clips.isin(frame.index).to_numpy()
    if not found.any():
        raise PageError(f"{source}: none of its {len(frame)} clip_id(s) is a turn of the table ({len(table)} turns, "
                        f"e.g. {clips.iloc[0] if len(clips) else '-'} vs {frame.index[0] if len(frame) else '-'}): "
                        "predictions of another split or an older table; re-run evaluate for this table")
    predicted = np.full(len(table), -1, dtype=np.int64)
    probs = np.full((len(table), len(labels)), np.nan)
    rows = frame.reindex(clips[found])
    predicted[found] = _label_ids(rows["predicted"], labels)
    columns = [f"p_{label}" for label in labels]
    if all(c in frame.columns for c in columns):
        probs[found] = rows[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    else:
        warn(f"{source}: no probability column(s) {[c for c in columns if c not in frame.columns]}; "
             "the page shows no probability bars (re-run evaluate)", notes)
    extra = len(frame) - int(found.sum())
    if not found.all() or extra:
        example = clips[~found].iloc[0] if not found.all() else frame.index[~frame.index.isin(clips)][0]
        warn(f"{source}: {int((~found).sum())} of {len(table)} turns have no prediction and {extra} prediction(s) "
             f"match no turn (e.g. {example}); those turns show none: re-run evaluate for this table", notes)
    unknown = int(((predicted < 0) & found).sum())
    if unknown:
        warn(f"{source}: {unknown} prediction(s) outside the labels {labels}; shown as none (labels changed? "
             "re-run evaluate)", notes)
    return Aligned(predicted, probs)


def used_modalities(table: pd.DataFrame, media: Media, modalities: Sequence[str]) -> list[str]:
    """Per row, the model's modalities that turn has (text: non-empty; audio/visual: readable media)."""
    out = []
    for text, thumb, wav in zip(table["x_text"].astype(str), media.thumbs, media.wavs):
        have = {"text": bool(text.strip()), "audio": wav is not None, "visual": bool(thumb)}
        out.append("+".join(m for m in modalities if have.get(m, False)) or "none")
    return out


def page_data(table: pd.DataFrame, media: Media, labels: Sequence[str], aligned: Aligned, used: Sequence[str],
              page_dir: Path, *, title: str, split: str | None, modalities: Sequence[str], gold: bool = True,
              reported: dict | None = None, compare: dict[str, Aligned] | None = None,
              notes: Sequence[str] = ()) -> dict:
    """The JSON the page template renders: header, dialogues in table order, turns in sequence order."""
    labels = list(labels)
    gold_ids = _label_ids(table["label"], labels) if gold else np.full(len(table), -1)
    notes = list(media.notes) + list(notes)
    metrics = matrix = None
    scored = (gold_ids >= 0) & (aligned.predicted >= 0)
    if gold and scored.any():
        actual = [labels[i] for i in gold_ids[scored]]
        guessed = [labels[i] for i in aligned.predicted[scored]]
        scores = compute_metrics(actual, guessed, labels)
        reported = reported or {}
        ci = [reported.get("weighted_f1_low"), reported.get("weighted_f1_high")]
        ci = ci if all(isinstance(v, float) and np.isfinite(v) for v in ci) else None
        if reported and abs(float(reported.get("weighted_f1", -1)) - scores["weighted_f1"]) > 5e-5:
            warn(f"{title}: the report says weighted-F1 {float(reported.get('weighted_f1', -1)):.4f}, these "
                 f"predictions give {scores['weighted_f1']:.4f} (stale file?); the page shows the latter without "
                 "a bootstrap range: re-run evaluate and report", notes)
            ci = None
        metrics = {"n": scores["n"], "accuracy": round(scores["accuracy"], 6),
                   "weighted_f1": round(scores["weighted_f1"], 6), "macro_f1": round(scores["macro_f1"], 6),
                   "ci": [round(float(v), 6) for v in ci] if ci else None,
                   "f1": [round(scores["per_class"][lab]["f1"], 6) for lab in labels],
                   "support": [scores["per_class"][lab]["support"] for lab in labels]}
        matrix = confusion(actual, guessed, labels).tolist()
    compare = compare or {}
    order = dialogues(table)
    flat = [int(row) for rows in order for row in rows]
    blocks, speakers, texts = [], table["speaker"].astype(str).tolist(), table["x_text"].astype(str).tolist()
    statuses = table["media_status"].astype(str).tolist() if "media_status" in table else ["text_only"] * len(table)
    for rows in order:
        last: dict[str, int] = {}
        turns = []
        for row in (int(r) for r in rows):
            g = int(gold_ids[row])
            shift = int(speakers[row] in last and g >= 0 and last[speakers[row]] != g)
            if g >= 0:
                last[speakers[row]] = g
            probs = aligned.probs[row]
            wav = media.wavs[row]
            ref = ""
            if wav is not None and media.embedded is not None:
                ref = media.embedded[row]
            elif wav is not None and media.linked:
                ref = quote(Path(os.path.relpath(wav.resolve(), page_dir.resolve())).as_posix())
            status = statuses[row] + (f" · {media.problems[row]}" if media.problems[row] else "")
            turns.append({"k": str(table["clip_id"].iat[row]), "s": speakers[row], "t": texts[row], "g": g,
                          "y": int(aligned.predicted[row]), "sh": shift, "m": status, "u": used[row],
                          "p": [] if np.isnan(probs).any() else [int(round(float(v) * 1000)) for v in probs],
                          "img": media.thumbs[row], "frame": media.why[row], "wav": ref})
        blocks.append({"id": str(table["dialogue"].iat[int(rows[0])]), "turns": turns})
    pred = {name: "".join(CHARS[i] if 0 <= i < len(CHARS) else "." for i in other.predicted[flat])
            for name, other in compare.items()}
    return {"title": title, "split": split, "labels": labels, "modalities": list(modalities),
            "metrics": metrics, "confusion": matrix, "audio": media.audio_note, "notes": notes,
            "compare": {"names": list(compare), "pred": pred}, "dialogues": blocks}


def render(data: dict, template: str = PAGE) -> str:
    blob = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).replace("<", "\\u003c")
    return template.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", blob)


def write_text(path: Path, text: str) -> Path:
    """Write atomically (a killed stage leaves no half page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Evaluated:
    """One evaluated objective: its predictions and the modalities its model reads."""

    name: str
    predictions: Path
    modalities: tuple[str, ...]


def _report(objectives_csv: str | os.PathLike[str] | None) -> pd.DataFrame:
    """The report stage's objectives table (weighted-F1 and its bootstrap range per objective), or an empty one."""
    empty = pd.DataFrame({"objective": pd.Series(dtype=str)})
    if not objectives_csv or not Path(objectives_csv).is_file():
        return empty
    try:
        table = pd.read_csv(objectives_csv, dtype={"objective": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return empty
    return table if "objective" in table else empty


def build_pages(table_path: str | os.PathLike[str], objectives: Sequence[Evaluated], out_dir: str | os.PathLike[str],
                labels: Sequence[str], split: str = "test", reference: str | None = None,
                objectives_csv: str | os.PathLike[str] | None = None,
                audio_budget: int = AUDIO_BUDGET) -> tuple[list[Path], dict[str, str]]:
    """Write ``<out>/<objective>/index.html`` per objective and ``<out>/index.html`` (linking each page's
    disagreements with ``reference``); returns (the page folders written, ``{objective: why}`` of those refused)."""
    out = Path(out_dir)
    report = _report(objectives_csv)
    reported = {str(row["objective"]): row for row in report.to_dict("records")}
    table = load_table(table_path, labels)
    media = collect_media(table, audio_budget)
    aligned: dict[str, Aligned] = {}
    notes: dict[str, list[str]] = {}
    refused: dict[str, str] = {}
    for objective in objectives:
        notes[objective.name] = []
        try:
            aligned[objective.name] = align(table, read_predictions(objective.predictions), labels,
                                            objective.predictions.as_posix(), notes[objective.name])
        except PageError as error:
            refused[objective.name] = str(error)
            warn(str(error))
    written = []
    for objective in objectives:
        if objective.name not in aligned:
            continue
        page_dir = out / objective.name
        others = {name: a for name, a in aligned.items() if name != objective.name}
        data = page_data(table, media, labels, aligned[objective.name],
                         used_modalities(table, media, objective.modalities), page_dir,
                         title=f"{objective.name} on {split}", split=split, modalities=objective.modalities,
                         reported=reported.get(objective.name), compare=others, notes=notes[objective.name])
        write_text(page_dir / "index.html", render(data))
        written.append(page_dir)
    write_index(out, [o.name for o in objectives], refused, reference, report, split)
    return written, refused


def _td(value: object) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
    return f'<td class="num">{text}</td>' if isinstance(value, (int, float)) else f"<td>{text}</td>"


def write_index(out: Path, names: Sequence[str], refused: dict[str, str], reference: str | None,
                report: pd.DataFrame, split: str) -> Path:
    """``<out>/index.html``: the objectives table with a link to each page, and a comparison picker."""
    table = report[report["objective"].isin(names)] if len(report) else pd.DataFrame({"objective": list(names)})
    present = [n for n in names if n not in refused]
    head = reference if reference in present else (present[0] if present else "")
    columns = [c for c in table.columns if c != "objective"]
    lines = ["<table><tr><th>objective</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
             + f"<th>vs {html.escape(head)}</th></tr>"]
    for row in table.itertuples(index=False):
        name = str(row.objective)
        link = (f'<a href="{quote(name)}/index.html">{html.escape(name)}</a>' if name not in refused
                else f'{html.escape(name)} <span title="{html.escape(refused[name])}">(no page)</span>')
        versus = (f'<a href="{quote(name)}/index.html#compare={quote(head)}">disagreements</a>'
                  if name not in refused and head and name != head else "")
        cells = "".join(_td(getattr(row, c)) for c in columns)
        lines.append(f'<tr{" class=head" if name == head else ""}><td>{link}</td>{cells}<td>{versus}</td></tr>')
    lines.append("</table>")
    second = next((n for n in ("text_finetune", *present) if n in present and n != head), head)

    def options(chosen: str) -> str:
        return "".join(f'<option{" selected" if n == chosen else ""}>{html.escape(n)}</option>' for n in present)

    page = (INDEX.replace("__TITLE__", html.escape(f"Error analysis on {split}"))
            .replace("__OPTIONS_A__", options(head)).replace("__OPTIONS_B__", options(second))
            .replace("__TABLE__", "\n".join(lines)))
    return write_text(out / "index.html", page)


def write_predict_page(result: pd.DataFrame, table: pd.DataFrame, labels: Sequence[str], modalities: Sequence[str],
                       out: str | os.PathLike[str], title: str, audio_budget: int = AUDIO_BUDGET) -> Path:
    """The page for ``hlm12erc predict``'s result (no gold) and its 1NF table (media paths still on disk)."""
    out = Path(out)
    media = collect_media(table, audio_budget, can_link=False, fix="check the clips")
    probs = result[[f"p_{label}" for label in labels]].to_numpy(dtype=float)
    aligned = Aligned(_label_ids(result["predicted"], labels), probs)
    shown = table.assign(media_status=result["media_status"].to_numpy())
    data = page_data(shown, media, labels, aligned, result["used"].astype(str).tolist(), out.parent, title=title,
                     split=None, modalities=modalities, gold=False)
    return write_text(out, render(data))
