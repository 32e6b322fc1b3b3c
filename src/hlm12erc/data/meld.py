"""The MELD CSV schema, text normalisation and the 1NF table every later stage reads.

A MELD CSV row is one utterance; its clip is ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``.
The 1NF table (one row per utterance, one value per cell) has the columns of
:data:`TABLE_COLUMNS`; media paths are stored relative to the table file's folder so a
table folder can be moved together with ``data/media``.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

MELD_COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                "Utterance_ID", "Season", "Episode", "StartTime", "EndTime")
# MELD's three source splits: CSV name stem -> the table split they feed by default.
SOURCE_SPLITS = {"train": "train", "dev": "valid", "test": "test"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}  # MELD.Raw

TABLE_COLUMNS = (
    "split",  # train | valid | test (the table this row is in)
    "source_split",  # train | dev | test (MELD's split the clip comes from)
    "dialogue",  # Dialogue_ID
    "sequence",  # Utterance_ID: position in the dialogue
    "clip_id",  # dia{dialogue}_utt{sequence}
    "speaker",
    "x_text",  # normalised utterance
    "x_text_raw",  # the utterance as the CSV has it
    "x_visual",  # folder of K frames, relative to the table file ("" when media failed)
    "x_audio",  # 16 kHz mono wav, relative to the table file ("" when media failed)
    "label",  # emotion
    "sentiment",
    "media_status",  # ok | missing | corrupt | no_audio | no_video | too_long | text_only
)


class DataError(ValueError):
    """Bad input data; the message names the file/row and how to fix it."""


def clip_id(dialogue: int, utterance: int) -> str:
    return f"dia{int(dialogue)}_utt{int(utterance)}"


# cp1252 bytes decoded as latin-1 leave C1 control characters (U+0080-U+009F) in the text;
# map them back to what cp1252 meant (U+0092 -> right single quote -> ').
_C1_RE = re.compile("[\u0080-\u009f]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2013": "-",
                         "\u2014": " - ", "\u2026": "...", "\u00a0": " "})
_SPACE_RE = re.compile(r"\s+")


def _repair_c1(match: re.Match[str]) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:
        return ""


def _repair_mojibake(text: str) -> str:
    """Undo UTF-8 read as cp1252/latin-1 (e.g. 'â€™' -> '’') when that round-trips cleanly."""
    if not any(marker in text for marker in ("â€", "Ã", "Â")):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


def normalize_text(text: object) -> str:
    """Clean one utterance: mojibake and C1 controls repaired, quotes ASCII, whitespace collapsed."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    out = _repair_mojibake(str(text))
    out = _C1_RE.sub(_repair_c1, out)
    out = unicodedata.normalize("NFC", out).translate(_QUOTES)
    return _SPACE_RE.sub(" ", out).strip()


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 (BOM allowed), else cp1252 (MELD's own files); else a DataError naming the byte and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}: byte 0x{data[error.start]:02x} on line {line} is neither UTF-8 nor cp1252; "
                        "re-save the file as UTF-8") from None


def _int_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Whole-number ids; a blank or non-integer cell fails naming its 1-based data row."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values % 1 != 0)
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        cell = frame[column].iloc[index]
        shown = "blank" if cell is None or (isinstance(cell, float) and np.isnan(cell)) or not str(cell).strip() \
            else f"'{cell}'"
        raise DataError(f"{path}: row {index + 1} has {shown} {column}; it must be a whole number "
                        f"(fix or delete that row)")
    return values.astype(int)


def read_meld_csv(path: str | Path) -> pd.DataFrame:
    """Read one ``*_sent_emo.csv``, checking MELD's columns and every id cell; ids become ints.
    Any bad input is a :class:`DataError` naming the file (and row), never a pandas traceback."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; point data.local_path at a MELD.Raw folder")
    text = _decode(path, path.read_bytes())
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"Utterance": str, "Speaker": str, "Emotion": str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV; expected MELD columns {list(MELD_COLUMNS)}") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: not a well-formed CSV ({' '.join(str(error).split())}); fix the quoting "
                        "on that line") from None
    missing = [c for c in ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
               if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing MELD column(s) {missing}; found {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows; every MELD split needs utterances "
                        "(remove the file to run without that split)")
    for column in ("Dialogue_ID", "Utterance_ID"):
        frame[column] = _int_column(frame, column, path)
    return frame


def check_labels(table: pd.DataFrame, labels: Sequence[str], source: str) -> None:
    """Fail on the first label outside ``labels``, naming its row (1-based data row)."""
    bad = ~table["label"].isin(list(labels))
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        row = table.iloc[index]
        raise DataError(
            f"{source}: row {index + 1} ({row.get('clip_id', '?')}) has label '{row['label']}' "
            f"outside the label set {list(labels)}; fix the row or set `labels` in params.yaml")


def holdout_dialogues(table: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask holding out ``fraction`` of the dialogues (whole dialogues only)."""
    dialogues = np.array(sorted(table["dialogue"].unique()))
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(len(dialogues) * fraction)))
    held = set(rng.choice(dialogues, size=n_hold, replace=False).tolist())
    return table["dialogue"].isin(held).to_numpy()


def load_table(path: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a 1NF table; media paths come back absolute; labels are checked when given."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: table not found; run `dvc repro tables` first")
    table = pd.read_csv(path, dtype={"x_visual": str, "x_audio": str, "speaker": str,
                                     "x_text": str, "x_text_raw": str}, keep_default_na=False)
    missing = [c for c in ("split", "dialogue", "sequence", "speaker", "x_text", "label")
               if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not a 1NF table, missing column(s) {missing}")
    for column in ("x_visual", "x_audio"):
        if column in table.columns:
            table[column] = [str((path.parent / v).resolve()) if v else "" for v in table[column]]
    if labels is not None:
        check_labels(table, labels, str(path))
    return table


def to_table(meld: pd.DataFrame, split: str, source_split: str) -> pd.DataFrame:
    """MELD CSV rows -> 1NF table rows (media columns empty, status ``text_only`` until the manifest fills them)."""
    table = pd.DataFrame({
        "split": split,
        "source_split": source_split,
        "dialogue": meld["Dialogue_ID"].astype(int).to_numpy(),
        "sequence": meld["Utterance_ID"].astype(int).to_numpy(),
        "speaker": meld["Speaker"].map(normalize_text).to_numpy(),
        "x_text": meld["Utterance"].map(normalize_text).to_numpy(),
        "x_text_raw": meld["Utterance"].fillna("").astype(str).to_numpy(),
        "x_visual": "",
        "x_audio": "",
        "label": meld["Emotion"].astype(str).str.strip().str.lower().to_numpy(),
        "sentiment": meld.get("Sentiment", pd.Series([""] * len(meld))).astype(str).to_numpy(),
        "media_status": "text_only",
    })
    table.insert(4, "clip_id", [clip_id(d, u) for d, u in zip(table["dialogue"], table["sequence"])])
    return table.sort_values(["dialogue", "sequence"], kind="stable").reset_index(drop=True)[list(TABLE_COLUMNS)]


MEDIA_COLUMNS = {"audio": "x_audio", "visual": "x_visual"}  # text is in every row


def absent_modalities(table: pd.DataFrame, modalities: Sequence[str]) -> list[str]:
    """The media modalities in ``modalities`` that no row of ``table`` has (e.g. CSV-only MELD): a model
    trained on one can only learn the majority class, so the train stage warns and records them."""

    def present(column: str) -> bool:
        return column in table.columns and bool(table[column].fillna("").astype(str).ne("").any())

    return [m for m in modalities if m in MEDIA_COLUMNS and not present(MEDIA_COLUMNS[m])]


def absent_warning(objective: str, absent: Sequence[str], source: str) -> str:
    """The one warning line for :func:`absent_modalities` (stderr, and the run's metrics)."""
    return (f"warning: objective {objective} uses {', '.join(absent)}, but no row of {source} has "
            f"{'it' if len(absent) == 1 else 'them'} (CSV-only data?): its scores are those of the other "
            "modalities or of the majority class; use data with clips, or drop the modality from the objective")
