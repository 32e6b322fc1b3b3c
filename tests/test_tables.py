"""Tables: split protocols, media columns from the manifest, the stratified sample, label checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hlm12erc.config import MELD_LABELS, DataParams, TablesParams
from hlm12erc.data import meld, sources, tables
from hlm12erc.data.meld import DataError

ROOT = Path(__file__).resolve().parents[1]
MELD_TEXT = Path("/work/shared/meld-text")


def _build(descriptor, manifest, media_dir, table_dir, **tab):
    return tables.build_tables(descriptor, manifest, DataParams(), TablesParams(**tab), MELD_LABELS,
                               media_dir=media_dir, table_dir=table_dir)


def test_demo_tables(data_demo_media, data_demo_corpus):
    descriptor, media_dir, manifest = data_demo_media
    _, broken = data_demo_corpus
    table_dir = media_dir.parent / "tables"
    built = _build(descriptor, manifest, media_dir, table_dir)
    tables.write_tables(built, table_dir)
    root = Path(descriptor["root"])
    for split, source in (("train", "train"), ("valid", "dev"), ("test", "test")):
        assert len(built[split]) == len(pd.read_csv(root / f"{source}_sent_emo.csv"))
        assert set(built[split]["source_split"]) == {source}
        loaded = meld.load_table(table_dir / f"{split}.csv", MELD_LABELS)
        assert tuple(loaded.columns) == meld.TABLE_COLUMNS and (loaded["split"] == split).all()
        ok = loaded[loaded["media_status"] == "ok"]
        assert all(Path(p, "0.png").is_file() for p in ok["x_visual"])
        assert all(Path(p).is_file() for p in ok["x_audio"])
    train = built["train"].set_index("clip_id")
    assert train["x_visual"].iloc[0].startswith("../media/frames/train/")
    for cid, kind in broken["train"].items():  # failed rows are kept, failed modality empty
        row = train.loc[cid]
        assert row["media_status"] == kind
        assert (row["x_visual"] != "") == (kind == "no_audio") and (row["x_audio"] != "") == (kind == "no_video")


def test_sample_is_stratified_and_seeded(data_demo_media):
    descriptor, media_dir, manifest = data_demo_media
    a = _build(descriptor, manifest, media_dir, media_dir.parent / "t", sample_size=20, seed=1)["sample"]
    b = _build(descriptor, manifest, media_dir, media_dir.parent / "t", sample_size=20, seed=1)["sample"]
    c = _build(descriptor, manifest, media_dir, media_dir.parent / "t", sample_size=20, seed=2)["sample"]
    assert len(a) == 20 and set(a["label"]) == set(MELD_LABELS)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["clip_id"]) != list(c["clip_id"])
    assert set(a["source_split"]) == {"train"}


def test_train_dev_only_protocol(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    for split in ("train", "dev"):
        shutil.copy(corpus / f"{split}_sent_emo.csv", tmp_path)
    descriptor = {"source": "local", **sources.detect_layout(tmp_path)}
    plan = tables.split_plan(descriptor)
    assert plan == {"train": "train", "valid": "holdout:train", "test": "dev"}
    assert "held out" in tables.describe_plan(plan, DataParams())
    built = _build(descriptor, None, tmp_path / "media", tmp_path / "tables")
    n_train = len(pd.read_csv(tmp_path / "train_sent_emo.csv"))
    assert len(built["train"]) + len(built["valid"]) == n_train and len(built["valid"]) > 0
    assert set(built["train"]["dialogue"]).isdisjoint(built["valid"]["dialogue"])
    assert set(built["valid"]["source_split"]) == {"train"} and set(built["test"]["source_split"]) == {"dev"}
    assert len(built["test"]) == len(pd.read_csv(tmp_path / "dev_sent_emo.csv"))
    assert set(built["test"]["media_status"]) == {"text_only"} and (built["test"]["x_audio"] == "").all()


@pytest.mark.skipif(not MELD_TEXT.is_dir(), reason="/work/shared/meld-text not on this machine")
def test_real_meld_text_protocol(tmp_path):
    descriptor = {"source": "local", **sources.detect_layout(MELD_TEXT)}
    built = _build(descriptor, None, tmp_path / "media", tmp_path / "tables")
    assert len(built["train"]) + len(built["valid"]) == len(meld.read_meld_csv(MELD_TEXT / "train_sent_emo.csv"))
    assert set(built["train"]["dialogue"]).isdisjoint(built["valid"]["dialogue"])
    held, kept = built["valid"]["dialogue"].nunique(), built["train"]["dialogue"].nunique()
    share = held / (held + kept)
    assert abs(share - 0.1) < 0.01
    assert set(built["sample"]["label"]) == set(MELD_LABELS)


def test_label_outside_set_names_the_row(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    for split in ("train", "dev", "test"):
        shutil.copy(corpus / f"{split}_sent_emo.csv", tmp_path)
    frame = pd.read_csv(tmp_path / "dev_sent_emo.csv")
    frame.loc[2, "Emotion"] = "contempt"
    frame.to_csv(tmp_path / "dev_sent_emo.csv", index=False)
    descriptor = {"source": "local", **sources.detect_layout(tmp_path)}
    clip = f"dia{frame.loc[2, 'Dialogue_ID']}_utt{frame.loc[2, 'Utterance_ID']}"
    with pytest.raises(DataError, match=rf"dev_sent_emo.csv: row 3 \({clip}\) has label 'contempt'"):
        _build(descriptor, None, tmp_path / "media", tmp_path / "tables")


def test_tables_cli_without_manifest(tmp_path):
    (tmp_path / "raw").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "raw" / "unrelated.yaml")  # no meld.json, no manifest
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline" / "tables.py"),
                           "--params", str(ROOT / "params.yaml"),
                           "--raw", str(tmp_path / "raw"), "--media", str(tmp_path / "media"),
                           "--out", str(tmp_path / "tables")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "run the" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_absent_modalities_names_the_media_no_row_has() -> None:
    rows = pd.DataFrame({"x_text": ["a", "b"], "x_audio": ["", ""], "x_visual": ["", "frames/x"]})
    assert meld.absent_modalities(rows, ["text", "audio", "visual"]) == ["audio"]
    assert meld.absent_modalities(rows.drop(columns=["x_visual"]), ["visual"]) == ["visual"]
    line = meld.absent_warning("final", ["audio"], "train.csv")
    assert line.startswith("warning: objective final uses audio, but no row of train.csv has it") and "\n" not in line
