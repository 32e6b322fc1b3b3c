"""Sources: demo, fake Kaggle, local (tarball / Kaggle / CSV-only), zip-slip, credentials, CLIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from hlm12erc.config import DataParams, DemoParams
from hlm12erc.data import sources
from hlm12erc.data.sources import SourceError

ROOT = Path(__file__).resolve().parents[1]
MELD_TEXT = Path("/work/shared/meld-text")
SPLIT_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def test_demo_source_writes_descriptor(tmp_path):
    params = DataParams(source="demo", demo=DemoParams(seed=5, dialogues={"train": 2, "dev": 1, "test": 1}))
    desc = sources.download(params, tmp_path / "raw")
    assert desc["source"] == "demo" and desc["layout"] == "tarball"
    assert Path(desc["root"]) == (tmp_path / "raw" / "MELD.Raw").resolve()
    on_disk = sources.read_descriptor(tmp_path / "raw")
    assert set(on_disk["splits"]) == {"train", "dev", "test"}
    for entry in on_disk["splits"].values():
        assert Path(entry["csv"]).is_file() and any(Path(entry["clips"]).glob("*.mp4"))
    # a moved checkout still resolves (demo/kaggle files live under the raw folder)
    shutil.move(tmp_path / "raw", tmp_path / "moved")
    moved = sources.read_descriptor(tmp_path / "moved")
    assert Path(moved["splits"]["train"]["csv"]).is_file()


def _kaggle_zip(path: Path, corpus: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A small zip in the real Kaggle layout: MELD-RAW/MELD.Raw/{train/train_splits,...} + CSVs."""
    with zipfile.ZipFile(path, "w") as zf:
        for split, folder in SPLIT_DIRS.items():
            base = f"MELD-RAW/MELD.Raw/{split}"
            zf.write(corpus / f"{split}_sent_emo.csv", f"{base}/{split}_sent_emo.csv")
            for clip in sorted((corpus / folder).glob("*.mp4"))[:3]:
                zf.write(clip, f"{base}/{folder}/{clip.name}")
        zf.writestr("MELD-RAW/MELD.Raw/README.txt", b"not needed")
        zf.writestr("MELD-RAW/MELD.Features/audio_features.pkl", b"x" * 100)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


class FakeKaggleApi:
    """Stands in for KaggleApi: serves a prepared zip, as dataset_download_files does."""

    def __init__(self, archive: Path):
        self.archive, self.calls = archive, []

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        self.calls.append((dataset, unzip))
        shutil.copy(self.archive, Path(path) / (dataset.split("/")[-1] + ".zip"))


def test_fake_kaggle_source(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    api = FakeKaggleApi(_kaggle_zip(tmp_path / "meld.zip", corpus))
    desc = sources.download(DataParams(source="kaggle"), tmp_path / "raw", api_factory=lambda: api)
    assert api.calls == [("zaber666/meld-dataset", False)]
    assert desc["source"] == "kaggle" and desc["layout"] == "kaggle"
    for split, folder in SPLIT_DIRS.items():
        entry = desc["splits"][split]
        assert Path(entry["csv"]).name == f"{split}_sent_emo.csv"
        assert Path(entry["clips"]).name == folder and len(list(Path(entry["clips"]).glob("*.mp4"))) == 3
    extracted = {p.name for p in (tmp_path / "raw").rglob("*") if p.is_file()}
    assert "README.txt" not in extracted and "audio_features.pkl" not in extracted
    assert not (tmp_path / "raw" / ".download").exists()  # the zip is not kept
    assert json.loads((tmp_path / "raw" / "meld.json").read_text())["layout"] == "kaggle"


@pytest.mark.parametrize("member", ["../evil.txt", "MELD-RAW/../../evil.csv", "/tmp/evil_abs.txt"])
def test_zip_slip_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MELD-RAW/MELD.Raw/train/train_sent_emo.csv", b"a,b\n")
        zf.writestr(member, b"pwned")
    target = tmp_path / "out" / "x"
    with pytest.raises(SourceError, match="zip-slip"):
        sources.safe_extract_zip(archive, target)
    assert not list(target.rglob("*"))  # nothing extracted, not even the good member
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def _no_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "kaggle-config"
    empty.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_missing_kaggle_credentials_message(monkeypatch, tmp_path):
    _no_credentials(monkeypatch, tmp_path)
    with pytest.raises(SourceError) as info:
        sources.make_kaggle_api()
    message = str(info.value)
    for hint in ("kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "data.source=demo",
                 "data.source=local"):
        assert hint in message


def _params_file(tmp_path, **data):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _stage(script, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "pipeline" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_download_cli_kaggle_without_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    (tmp_path / "cfg").mkdir()
    env.update(KAGGLE_CONFIG_DIR=str(tmp_path / "cfg"), HOME=str(tmp_path))
    proc = _stage("download.py", "--params", _params_file(tmp_path, source="kaggle"), "--out", tmp_path / "raw",
                  env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "KAGGLE_USERNAME" in proc.stderr


def test_download_cli_bad_local_path(tmp_path):
    proc = _stage("download.py", "--params", _params_file(tmp_path, source="local", local_path=str(tmp_path / "nope")),
                  "--out", tmp_path / "raw")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr and "data.local_path" in proc.stderr


def test_local_empty_path_and_no_csvs(tmp_path):
    with pytest.raises(SourceError, match="local_path is empty"):
        sources.download(DataParams(source="local", local_path=""), tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no MELD CSVs"):
        sources.download(DataParams(source="local", local_path=str(tmp_path / "empty")), tmp_path / "raw")


def test_local_tarball_layout_nested_one_level(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    outer = tmp_path / "download"
    outer.mkdir()
    (outer / "MELD.Raw").symlink_to(corpus, target_is_directory=True)
    desc = sources.download(DataParams(source="local", local_path=str(outer)), tmp_path / "raw")
    assert desc["layout"] == "tarball" and set(desc["splits"]) == {"train", "dev", "test"}
    assert Path(desc["splits"]["dev"]["clips"]).name == "dev_splits_complete"
    assert not (tmp_path / "raw" / "MELD.Raw").exists()  # nothing copied: the descriptor points there
    assert sources.read_descriptor(tmp_path / "raw")["root"] == str(outer.resolve())
    assert "local source: tarball layout" in sources.describe(desc)


def test_local_kaggle_layout(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    sources.safe_extract_zip(_kaggle_zip(tmp_path / "k.zip", corpus), tmp_path / "kaggle")
    desc = sources.download(DataParams(source="local", local_path=str(tmp_path / "kaggle")), tmp_path / "raw")
    assert desc["layout"] == "kaggle"
    assert Path(desc["splits"]["test"]["clips"]).parent.name == "test"


def test_local_csv_only(data_demo_corpus, tmp_path):
    corpus, _ = data_demo_corpus
    folder = tmp_path / "text"
    folder.mkdir()
    for split in ("train", "dev"):
        shutil.copy(corpus / f"{split}_sent_emo.csv", folder)
    desc = sources.download(DataParams(source="local", local_path=str(folder)), tmp_path / "raw")
    assert desc["layout"] == "csv_only" and set(desc["splits"]) == {"train", "dev"}
    assert all(e["clips"] is None for e in desc["splits"].values())
    assert sources.describe(desc) == f"local source: csv_only layout at {folder.resolve()} (train, dev; no clips)"


@pytest.mark.skipif(not MELD_TEXT.is_dir(), reason="/work/shared/meld-text not on this machine")
def test_local_csv_only_real_meld_text(tmp_path):
    desc = sources.download(DataParams(source="local", local_path=str(MELD_TEXT)), tmp_path / "raw")
    assert desc["layout"] == "csv_only" and set(desc["splits"]) == {"train", "dev"}
