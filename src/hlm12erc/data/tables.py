"""Descriptor + extract manifest -> the 1NF tables ``train/valid/test/sample.csv``.

MELD train -> train, dev -> valid, test -> test; without a test CSV (the text-only train+dev release)
dev -> test. When dev is missing or is the test split, valid is ``data.valid_fraction`` of the train
*dialogues* (seeded). Rows whose media failed are kept with that modality empty and ``media_status`` saying why,
so media models mask them and text models still use them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from hlm12erc.config import DataParams, TablesParams
from hlm12erc.data import meld
from hlm12erc.data.meld import DataError


def split_plan(descriptor: dict[str, Any]) -> dict[str, str]:
    """``{table split: source}`` where source is a MELD split or ``holdout:train``."""
    splits = descriptor["splits"]
    if "train" not in splits:
        raise DataError("the MELD descriptor has no train split; re-run the download stage")
    test = "test" if "test" in splits else "dev" if "dev" in splits else None
    if test is None:
        raise DataError("the MELD descriptor has only a train split; the pipeline needs dev or test too "
                        "(add dev_sent_emo.csv or test_sent_emo.csv next to train_sent_emo.csv)")
    valid = "dev" if "dev" in splits and test != "dev" else "holdout:train"
    return {"train": "train", "valid": valid, "test": test}


def describe_plan(plan: dict[str, str], data: DataParams) -> str:
    if plan["valid"] == "dev":
        return "splits: MELD train -> train, dev -> valid, test -> test"
    return (f"splits: no MELD {'test' if plan['test'] == 'dev' else 'dev'} split: valid = "
            f"{data.valid_fraction:.0%} of train dialogues held out (seed {data.seed}), {plan['test']} -> test")


def attach_media(table: pd.DataFrame, manifest: pd.DataFrame | None, media_dir: str | os.PathLike[str],
                 table_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Fill ``x_visual``/``x_audio``/``media_status`` from the manifest (paths relative to ``table_dir``)."""
    table = table.copy()
    if manifest is None or manifest.empty:
        return table
    rel = os.path.relpath(Path(media_dir).resolve(), Path(table_dir).resolve())
    index = {(s, c): row for s, c, row in zip(manifest["source_split"], manifest["clip_id"],
                                               manifest.itertuples(index=False))}
    no_media = SimpleNamespace(frames_dir="", wav="", status="text_only")  # a row the manifest lacks
    visual, audio, status = [], [], []
    for source_split, cid in zip(table["source_split"], table["clip_id"]):
        row = index.get((source_split, cid), no_media)
        visual.append(Path(rel, row.frames_dir).as_posix() if row.frames_dir else "")
        audio.append(Path(rel, row.wav).as_posix() if row.wav else "")
        status.append(row.status)
    table["x_visual"], table["x_audio"], table["media_status"] = visual, audio, status
    return table


def stratified_sample(table: pd.DataFrame, size: int, seed: int, labels: Sequence[str]) -> pd.DataFrame:
    """``size`` rows, seeded, every label present when possible, the rest proportional."""
    size = min(int(size), len(table))
    if size <= 0:
        return table.iloc[:0].copy()
    rng = np.random.default_rng(seed)
    column = table["label"].to_numpy()
    groups = {lab: idx for lab in labels if len(idx := np.flatnonzero(column == lab))}
    first = set(sorted(groups, key=lambda lab: -len(groups[lab]))[:size])  # one row of each, largest first
    counts = {lab: int(lab in first) for lab in groups}
    remaining = size - sum(counts.values())
    total = sum(len(v) for v in groups.values())
    if remaining > 0:
        quota = {lab: remaining * len(idx) / total for lab, idx in groups.items()}
        for lab in groups:
            counts[lab] = min(len(groups[lab]), counts[lab] + int(np.floor(quota[lab])))
        order = sorted(groups, key=lambda lab: -(quota[lab] - np.floor(quota[lab])))
        i = 0
        while sum(counts.values()) < size and i < 10 * len(order) + size:
            lab = order[i % len(order)]
            if counts[lab] < len(groups[lab]):
                counts[lab] += 1
            i += 1
    picks = np.concatenate([rng.choice(groups[lab], size=n, replace=False)
                            for lab, n in counts.items() if n] or [np.array([], int)])
    return table.iloc[np.sort(picks)].reset_index(drop=True)


def build_tables(descriptor: dict[str, Any], manifest: pd.DataFrame | None, data: DataParams,
                 settings: TablesParams, labels: Sequence[str],
                 media_dir: str | os.PathLike[str] = "data/media",
                 table_dir: str | os.PathLike[str] = "data/tables") -> dict[str, pd.DataFrame]:
    """``{"train", "valid", "test", "sample"}`` -> 1NF tables (:data:`meld.TABLE_COLUMNS`)."""
    plan = split_plan(descriptor)
    sources: dict[str, pd.DataFrame] = {}
    for name, entry in descriptor["splits"].items():
        frame = meld.read_meld_csv(entry["csv"])
        table = meld.to_table(frame, split=name, source_split=name)
        meld.check_labels(table, labels, entry["csv"])
        sources[name] = attach_media(table, manifest, media_dir, table_dir)
    tables: dict[str, pd.DataFrame] = {}
    train = sources["train"]
    if plan["valid"] == "holdout:train":
        held = meld.holdout_dialogues(train, data.valid_fraction, data.seed)
        tables["train"], tables["valid"] = train[~held], train[held]
    else:
        tables["train"], tables["valid"] = train, sources[plan["valid"]]
    tables["test"] = sources[plan["test"]]
    tables = {name: t.assign(split=name).reset_index(drop=True)[list(meld.TABLE_COLUMNS)]
              for name, t in tables.items()}
    for name, table in tables.items():
        if table.empty:
            source = plan[name]
            held_out = plan["valid"] == "holdout:train" and name in ("train", "valid")
            fix = ("hold-out of train dialogues: add dialogues to train_sent_emo.csv or change data.valid_fraction"
                   if held_out else f"check {descriptor['splits'][source]['csv']}")
            raise DataError(f"the {name} split would be empty (from {source}); every split needs rows: {fix}")
    tables["sample"] = stratified_sample(tables["train"], settings.sample_size, settings.seed, labels)
    return tables


def write_tables(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = out / f"{name}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        table.to_csv(tmp, index=False, lineterminator="\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def summarise(tables: dict[str, pd.DataFrame], labels: Sequence[str]) -> str:
    width = max(len(lab) for lab in labels)
    head = "  " + "split".ljust(7) + "rows".rjust(7) + "".join(lab[:width].rjust(width + 1) for lab in labels)
    lines = [head]
    for name, table in tables.items():
        counts = table["label"].value_counts()
        lines.append("  " + name.ljust(7) + str(len(table)).rjust(7) +
                     "".join(str(int(counts.get(lab, 0))).rjust(width + 1) for lab in labels))
    media = pd.concat([t for n, t in tables.items() if n != "sample"])["media_status"].value_counts()
    lines.append("  media_status: " + ", ".join(f"{k}={v}" for k, v in media.items()))
    return "\n".join(lines)
