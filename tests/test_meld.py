"""MELD schema, text normalisation, to_table, holdout and label checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hlm12erc.config import MELD_LABELS
from hlm12erc.data import meld
from hlm12erc.data.meld import DataError


@pytest.mark.parametrize("raw, clean", [
    ("You must\u2019ve had your hands full.", "You must've had your hands full."),
    ("I don\u0092t know", "I don't know"),
    ("  Oh   my\tGod \n ", "Oh my God"),
    ("It\u00e2\u20ac\u2122s fine", "It's fine"),  # UTF-8 read as cp1252
    ("\u201cQuote\u201d\u2026", '"Quote"...'),
    (float("nan"), ""),
    (None, ""),
])
def test_normalize_text(raw, clean):
    assert meld.normalize_text(raw) == clean


def _csv(tmp_path, rows, name="train_sent_emo.csv"):
    frame = pd.DataFrame(rows, columns=list(meld.MELD_COLUMNS))
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _row(i, dia, utt, emotion="joy", text="Hi there"):
    return [i, text, "Joey", emotion, "positive", dia, utt, 1, 1, "00:00:01,000", "00:00:02,000"]


def test_to_table_columns_and_clip_ids(tmp_path):
    path = _csv(tmp_path, [_row(1, 1, 1, text="b"), _row(2, 0, 0, text="a\u2019s")])
    table = meld.to_table(meld.read_meld_csv(path), "train", "train")
    assert tuple(table.columns) == meld.TABLE_COLUMNS
    assert list(table["clip_id"]) == ["dia0_utt0", "dia1_utt1"]  # sorted by dialogue, sequence
    assert list(table["x_text"]) == ["a's", "b"]
    assert list(table["x_text_raw"]) == ["a\u2019s", "b"]
    assert set(table["media_status"]) == {"text_only"}


def test_read_meld_csv_missing_column(tmp_path):
    path = tmp_path / "train_sent_emo.csv"
    pd.DataFrame({"Utterance": ["x"], "Speaker": ["y"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing MELD column"):
        meld.read_meld_csv(path)


def test_check_labels_names_the_row(tmp_path):
    path = _csv(tmp_path, [_row(1, 0, 0), _row(2, 0, 1, emotion="angry")])
    table = meld.to_table(meld.read_meld_csv(path), "train", "train")
    with pytest.raises(DataError, match=r"row 2 \(dia0_utt1\).*'angry'"):
        meld.check_labels(table, MELD_LABELS, str(path))


def test_holdout_dialogues_whole_and_seeded():
    table = pd.DataFrame({"dialogue": np.repeat(np.arange(50), 3)})
    mask = meld.holdout_dialogues(table, 0.1, seed=1)
    held = set(table["dialogue"][mask])
    assert len(held) == 5
    assert set(table["dialogue"][~mask]).isdisjoint(held)  # whole dialogues only
    assert (mask == meld.holdout_dialogues(table, 0.1, seed=1)).all()
    assert not (mask == meld.holdout_dialogues(table, 0.1, seed=2)).all()
