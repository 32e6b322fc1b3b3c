"""One line (what, why, how to fix) and exit code 2 for every bad value the issue found, one test each."""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from hlm12erc import cli
from hlm12erc.config import ConfigError, params_from_dict
from hlm12erc.data import sources

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "pipeline" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _params_file(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in sections.items():
        *parents, key = dotted.split("__")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _tables(tmp_path: Path, capsys, params: Path | None = None) -> tuple[int, str]:
    code = _script("tables").main(["--params", str(params or ROOT / "params.yaml"), "--raw", str(tmp_path / "raw"),
                                        "--media", str(tmp_path / "media"), "--out", str(tmp_path / "tables")])
    return code, _one_line(capsys) if code else ""


def _csv_only(tmp_path: Path, files: dict[str, bytes]) -> None:
    """A CSV-only MELD folder + its descriptor + an empty manifest, ready for the tables stage."""
    from hlm12erc import media_manifest

    meld = tmp_path / "meld"
    meld.mkdir()
    for name, data in files.items():
        (meld / name).write_bytes(data)
    sources.download(sources.DataParams(source="local", local_path=str(meld)), tmp_path / "raw")
    (tmp_path / "media").mkdir()
    media_manifest.write_manifest(media_manifest.pd.DataFrame(columns=list(media_manifest.MANIFEST_COLUMNS)),
                                  tmp_path / "media")


def _rows(n: int, dialogue: str = "0", start: int = 0) -> str:
    return "".join(f"{i + 1},Hello there {i},Ross,joy,positive,{dialogue},{start + i},1,1,0,0\n" for i in range(n))


GOOD_TRAIN = (HEADER + _rows(4, "0") + _rows(4, "1") + _rows(4, "2")).encode()


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("train__lr", "abc", "params: train.lr='abc' must be a number"),
    ("extract__frames", "three", "params: extract.frames='three' must be a whole number"),
    ("data__valid_fraction", 1.5, "params: data.valid_fraction=1.5 must be above 0 and below 1"),
    ("data__valid_fraction", 0, "params: data.valid_fraction=0.0 must be above 0 and below 1"),
    ("train__threads", 4, "params: unknown key(s) ['threads'] in 'train'"),  # runtime.threads sets it
    ("model", "nope", "params: model='nope' is not an objective; known: mock, baseline"),
    ("labels", "anger", "params: labels='anger' must be a list of strings"),
    ("objectives__final__aux_weight", "high", "params: objectives.final.aux_weight='high' must be a number"),
])
def test_a_bad_param_is_one_line_from_the_first_stage(tmp_path, capsys, dotted, value, expected) -> None:
    params = _params_file(tmp_path, **{dotted: value})
    assert _script("download").main(["--params", str(params), "--out", str(tmp_path / "raw")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"download: {expected}"), line
    assert "params.yaml" in line  # and where to fix it
    assert not (tmp_path / "raw").exists()  # nothing started


def test_a_float_written_as_5e_5_says_how_to_write_it() -> None:
    raw = json.loads(json.dumps(PARAMS))
    raw["train"]["lr"] = "5e-5"
    with pytest.raises(ConfigError, match=r"YAML reads 5e-5 as a string: write it with a dot"):
        params_from_dict(raw)


def test_runtime_env_overrides_and_a_bad_value_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("HLM12ERC_THREADS", "3")
    params = params_from_dict(json.loads(json.dumps(PARAMS)))
    assert params.runtime.threads == 3
    monkeypatch.setenv("HLM12ERC_JOBS", "many")
    with pytest.raises(ConfigError, match=r"^environment: HLM12ERC_JOBS='many' must be a whole number"):
        params_from_dict(json.loads(json.dumps(PARAMS)))


def test_no_stage_tracks_a_runtime_setting() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracked = [p for stage in stages.values() for p in stage.get("do", stage).get("params", [])]
    assert not [p for p in tracked if p.startswith("runtime") or p in ("train.threads", "train.eval_batch_size",
                                                                        "extract.jobs")]
    assert "runtime" in PARAMS and "threads" not in PARAMS["train"] and "jobs" not in PARAMS["extract"]


# ----------------------------------------------------------------------------- CSVs and zips


def test_csv_bytes_neither_utf8_nor_cp1252(tmp_path, capsys) -> None:
    bad = HEADER.encode() + b"1,Hello \x81 there,Ross,joy,positive,0,0,1,1,0,0\n"
    _csv_only(tmp_path, {"train_sent_emo.csv": bad + GOOD_TRAIN[len(HEADER):], "dev_sent_emo.csv": GOOD_TRAIN})
    code, line = _tables(tmp_path, capsys)
    assert code == 2
    assert line.startswith("tables: ") and "train_sent_emo.csv: byte 0x81 on line 2 is neither UTF-8 nor cp1252; " \
        "re-save the file as UTF-8" in line


def test_csv_with_a_blank_dialogue_id(tmp_path, capsys) -> None:
    bad = (HEADER + _rows(2, "0") + "3,Where is it?,Joey,fear,negative,,2,1,1,0,0\n").encode()
    _csv_only(tmp_path, {"train_sent_emo.csv": GOOD_TRAIN, "dev_sent_emo.csv": bad})
    code, line = _tables(tmp_path, capsys)
    assert code == 2
    assert "dev_sent_emo.csv: row 3 has blank Dialogue_ID; it must be a whole number (fix or delete that row)" in line


def test_csv_with_a_header_only_is_refused_at_tables(tmp_path, capsys) -> None:
    _csv_only(tmp_path, {"train_sent_emo.csv": GOOD_TRAIN, "dev_sent_emo.csv": HEADER.encode()})
    code, line = _tables(tmp_path, capsys)
    assert code == 2
    assert "dev_sent_emo.csv: has a header but no rows" in line
    assert not (tmp_path / "tables").exists()


def test_an_empty_split_is_refused_at_tables(tmp_path, capsys) -> None:
    """One train dialogue and no test CSV: holding out valid would leave train empty."""
    _csv_only(tmp_path, {"train_sent_emo.csv": (HEADER + _rows(3, "0")).encode(), "dev_sent_emo.csv": GOOD_TRAIN})
    code, line = _tables(tmp_path, capsys)
    assert code == 2
    assert line == "tables: the train split would be empty (from train); every split needs rows: hold-out of " \
        "train dialogues: add dialogues to train_sent_emo.csv or change data.valid_fraction", line


def test_a_zip_member_with_a_bad_crc_leaves_no_part_file(tmp_path) -> None:
    archive = tmp_path / "meld.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("MELD.Raw/train_sent_emo.csv", GOOD_TRAIN)
    data = bytearray(archive.read_bytes())
    at = data.index(b"Hello there 0")
    data[at] ^= 0xFF  # flip one stored byte: the CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(sources.SourceError) as info:
        sources.safe_extract_zip(archive, tmp_path / "out")
    message = str(info.value)
    assert "member 'MELD.Raw/train_sent_emo.csv' is damaged" in message and "download it again" in message
    assert "\n" not in message
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no .part, no half file


# ----------------------------------------------------------------------------- register --metrics


@pytest.mark.parametrize(("content", "expected"), [
    ("[0.5, 0.6]", "holds a JSON list, not the metrics object of an evaluate stage"),
    ("{}", "has no valid accuracy, weighted_f1, macro_f1 (numbers in [0, 1] expected)"),
    ('{"accuracy": 0.5, "weighted_f1": "high", "macro_f1": 0.4}', "has no valid weighted_f1"),
    ("not json", "is not a metrics JSON"),
])
def test_register_metrics_that_are_not_a_metrics_object(tmp_path, capsys, content, expected) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(content)
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert cli.main(["register", "--model", str(model), "--metrics", str(metrics),
                     "--params", str(tmp_path / "params.yaml")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"register: {metrics} ") and expected in line, line


# ----------------------------------------------------------------------------- pipes


@pytest.mark.slow  # a CLI subprocess
def test_predict_into_a_closed_pipe_exits_quietly(erc_features_dir, erc_tables, tmp_path) -> None:
    """`hlm12erc predict conv.csv | head -1`: no "Broken pipe" line, no traceback, the SIGPIPE status."""
    import os
    import subprocess
    import sys

    from predict_support import train_tiny_model, write_conversation

    model = train_tiny_model(tmp_path / "model", erc_features_dir, erc_tables, objective="text", epochs=1)
    conversation = write_conversation(tmp_path / "conv", "csv")
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line is written
    try:
        result = subprocess.run([sys.executable, "-m", "hlm12erc", "predict", str(conversation), "--model", str(model)],
                                stdout=writer, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, timeout=300)
    finally:
        os.close(writer)
    assert result.returncode == 141, result.stderr
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr
