"""Error-analysis pages without a browser: the data a page holds, bad inputs (one line each, the page still
written), byte-reproducibility, the pages stage script and its MLflow artifact."""

from __future__ import annotations

import base64
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ERC_LABELS
from hlm12erc.data.meld import load_table
from hlm12erc.metrics import compute_metrics
from hlm12erc.pages import Evaluated, PageError, align, build_pages, read_predictions, write_predict_page
from pages_support import page_json, write_predictions

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("text", "audio", "visual")


def turns(data: dict) -> list[dict]:
    return [t for d in data["dialogues"] for t in d["turns"]]


@pytest.fixture
def corpus(erc_tables, tmp_path) -> Path:
    """A private copy of the synthetic tables and media (tests here break media files) + two objectives'
    predictions; returns the copy's root (tables/, media/, plots/)."""
    root = tmp_path / "repo"
    shutil.copytree(erc_tables, root / "tables")
    shutil.copytree(erc_tables.parent / "media", root / "media")
    table = load_table(root / "tables" / "test.csv", ERC_LABELS)
    for seed, name in enumerate(("final", "text_finetune")):
        write_predictions(table, root / "plots" / name / "predictions.csv", seed, labels=ERC_LABELS)
    return root


def objectives(root: Path, names=("final", "text_finetune")) -> list[Evaluated]:
    return [Evaluated(n, root / "plots" / n / "predictions.csv", MODALITIES) for n in names]


def build(root: Path, out: Path, **kwargs):
    return build_pages(root / "tables" / "test.csv", objectives(root), out, ERC_LABELS, reference="final", **kwargs)


def test_a_page_holds_every_turn_with_its_prediction_media_and_comparison(corpus, capsys):
    written, refused = build(corpus, corpus / "reports")
    assert refused == {} and [p.name for p in written] == ["final", "text_finetune"]
    data = page_json(corpus / "reports" / "final" / "index.html")
    table = pd.read_csv(corpus / "tables" / "test.csv", keep_default_na=False)
    predictions = pd.read_csv(corpus / "plots" / "final" / "predictions.csv")
    shown = turns(data)
    assert [t["k"] for t in shown] == table["clip_id"].tolist()  # sorted by dialogue then sequence already
    assert [ERC_LABELS[t["y"]] for t in shown] == predictions["predicted"].tolist()
    assert [ERC_LABELS[t["g"]] for t in shown] == table["label"].tolist()
    assert [len(d["turns"]) for d in data["dialogues"]] == table.groupby("dialogue", sort=False).size().tolist()
    errors = int((predictions["predicted"] != predictions["label"]).sum())
    assert data["metrics"]["n"] == len(table)
    assert round(data["metrics"]["accuracy"], 6) == round(1 - errors / len(table), 6)
    assert sum(map(sum, data["confusion"])) == len(table)
    assert all(t["img"].startswith("data:image/jpeg;base64,") for t in shown if t["k"] != "dia200_utt4")
    assert shown[4]["img"] == "" and shown[4]["u"] == "text+audio"  # row 4 has no frames (no_video)
    assert shown[2]["wav"] == "" and shown[2]["u"] == "text+visual"  # row 2 has no audio
    assert "wav missing" in shown[6]["m"] and shown[6]["wav"] == ""  # row 6 names a wav that does not exist
    assert "embedded" in data["audio"] and shown[0]["wav"].startswith("data:audio/wav;base64,")
    wav = base64.b64decode(shown[0]["wav"].split(",", 1)[1])
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and int.from_bytes(wav[24:28], "little") == 8000
    other = pd.read_csv(corpus / "plots" / "text_finetune" / "predictions.csv")["predicted"]
    assert data["compare"]["names"] == ["text_finetune"]
    assert [ERC_LABELS[int(c)] for c in data["compare"]["pred"]["text_finetune"]] == other.tolist()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pages: 1 turn(s) with wav missing (dia201_utt1): shown with that media marked missing; "
                   "re-run the extract stage (`dvc repro extract`)"]
    index = (corpus / "reports" / "index.html").read_text()
    assert 'href="final/index.html"' in index and 'href="text_finetune/index.html#compare=final"' in index


def test_the_page_takes_its_range_from_the_report_and_drops_a_stale_one(corpus, capsys):
    """weighted-F1's bootstrap range comes from metrics/objectives.csv; a report that disagrees with the
    predictions is named in one line and the page shows no range."""
    table = pd.read_csv(corpus / "tables" / "test.csv", keep_default_na=False)
    scores = {}
    for name in ("final", "text_finetune"):
        predictions = pd.read_csv(corpus / "plots" / name / "predictions.csv")
        scores[name] = round(compute_metrics(table["label"].tolist(), predictions["predicted"].tolist(),
                                             ERC_LABELS)["weighted_f1"], 4)
    report = corpus / "objectives.csv"
    pd.DataFrame({"objective": ["final", "text_finetune"], "weighted_f1": [scores["final"], 0.9999],
                  "weighted_f1_low": [0.25, 0.5], "weighted_f1_high": [0.75, 0.6]}).to_csv(report, index=False)
    build(corpus, corpus / "reports", objectives_csv=report)
    assert page_json(corpus / "reports" / "final" / "index.html")["metrics"]["ci"] == [0.25, 0.75]
    stale = page_json(corpus / "reports" / "text_finetune" / "index.html")
    assert stale["metrics"]["ci"] is None
    warned = [line for line in capsys.readouterr().err.splitlines() if "the report says" in line]
    assert len(warned) == 1 and "0.9999" in warned[0] and f"{scores['text_finetune']:.4f}" in warned[0]
    assert any("the report says" in note for note in stale["notes"])
    assert "<td>final</td>" not in (corpus / "reports" / "index.html").read_text()  # linked, with its scores
    assert "0.9999" in (corpus / "reports" / "index.html").read_text()


def test_two_writes_give_identical_bytes_and_no_absolute_paths(corpus):
    for folder, budget in (("a", 0), ("b", 0), ("c", 10**9)):
        build(corpus, corpus / folder, audio_budget=budget)
    files = sorted(p.relative_to(corpus / "a").as_posix() for p in (corpus / "a").rglob("*") if p.is_file())
    assert files == ["final/index.html", "index.html", "text_finetune/index.html"]
    for name in files:
        assert (corpus / "a" / name).read_bytes() == (corpus / "b" / name).read_bytes()
        for folder in ("a", "c"):
            text = (corpus / folder / name).read_text()
            assert str(corpus) not in text and str(Path.home()) not in text
    assert (corpus / "a" / "final/index.html").read_bytes() != (corpus / "c" / "final/index.html").read_bytes()
    linked = turns(page_json(corpus / "a" / "final" / "index.html"))
    assert linked[0]["wav"] == "../../media/audio/test_dia200_utt0.wav"  # relative to the page
    assert (corpus / "a" / "final" / linked[0]["wav"]).resolve().is_file()


def test_predictions_of_another_table_are_refused_in_one_line_and_the_rest_still_written(corpus, capsys):
    other = corpus / "plots" / "final" / "predictions.csv"
    frame = pd.read_csv(other)
    frame["clip_id"] = "x" + frame["clip_id"]
    frame.to_csv(other, index=False)
    written, refused = build(corpus, corpus / "reports")
    assert [p.name for p in written] == ["text_finetune"] and list(refused) == ["final"]
    assert not (corpus / "reports" / "final").exists()
    err = [line for line in capsys.readouterr().err.splitlines() if "predictions.csv" in line]
    assert len(err) == 1 and "none of its 14 clip_id(s) is a turn of the table" in err[0] and "re-run" in err[0]
    assert "(no page)" in (corpus / "reports" / "index.html").read_text()
    assert page_json(corpus / "reports" / "text_finetune" / "index.html")["compare"]["names"] == []


def test_partial_predictions_warn_once_and_leave_those_turns_unpredicted(corpus, capsys):
    path = corpus / "plots" / "final" / "predictions.csv"
    pd.read_csv(path).drop(index=[3, 9]).to_csv(path, index=False)
    build(corpus, corpus / "reports")
    data = page_json(corpus / "reports" / "final" / "index.html")
    shown = turns(data)
    assert [i for i, t in enumerate(shown) if t["y"] < 0] == [3, 9] and shown[3]["p"] == []
    assert data["metrics"]["n"] == 12
    lines = [line for line in capsys.readouterr().err.splitlines() if "no prediction" in line]
    assert len(lines) == 1 and "2 of 14 turns have no prediction and 0 prediction(s) match no turn" in lines[0]
    assert any("no prediction" in n for n in data["notes"])


def test_a_missing_frame_and_an_unreadable_wav_mark_that_turn_missing(corpus, capsys):
    table = pd.read_csv(corpus / "tables" / "test.csv", keep_default_na=False)
    shutil.rmtree((corpus / "tables" / table["x_visual"][1]).resolve())
    (corpus / "tables" / table["x_audio"][3]).resolve().write_bytes(b"RIFF\x00\x00not a wav at all")
    build(corpus, corpus / "reports")
    shown = turns(page_json(corpus / "reports" / "final" / "index.html"))
    assert shown[1]["img"] == "" and shown[1]["frame"] == "frame missing" and "frame missing" in shown[1]["m"]
    assert shown[3]["wav"] == "" and "wav unreadable" in shown[3]["m"] and shown[3]["u"] == "text+visual"
    assert shown[0]["img"] and shown[0]["wav"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pages: 1 turn(s) with ") for line in err)


def test_bad_predictions_files_are_one_line_errors(tmp_path, erc_tables):
    table = load_table(erc_tables / "test.csv", ERC_LABELS)
    with pytest.raises(PageError, match="predictions not found; evaluate the objective first"):
        read_predictions(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PageError, match="not a predictions CSV"):
        read_predictions(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PageError, match=r"missing column\(s\) \['clip_id', 'predicted'\]"):
        read_predictions(tmp_path / "cols.csv")
    frame = pd.DataFrame({"clip_id": table["clip_id"], "predicted": ["happy"] + ["joy"] * (len(table) - 1)})
    notes: list[str] = []
    aligned = align(table, frame, ERC_LABELS, "p.csv", notes)
    assert aligned.predicted[0] == -1 and (aligned.predicted[1:] == ERC_LABELS.index("joy")).all()
    assert np.isnan(aligned.probs).all() and len(notes) == 2  # no probability columns; one unknown label


def test_emotion_shifts_follow_each_speakers_previous_gold_label(corpus):
    path = corpus / "tables" / "test.csv"
    table = pd.read_csv(path, keep_default_na=False)
    table.loc[:4, "speaker"] = ["Ross", "Rachel", "Ross", "Ross", "Rachel"]
    table.loc[:4, "label"] = ["joy", "anger", "joy", "sadness", "anger"]
    table.to_csv(path, index=False)
    build(corpus, corpus / "reports")
    assert [t["sh"] for t in turns(page_json(corpus / "reports" / "final" / "index.html"))[:5]] == [0, 0, 0, 1, 0]


def test_a_predict_page_has_no_gold_and_no_metrics(erc_tables, tmp_path):
    table = load_table(erc_tables / "test.csv", ERC_LABELS).iloc[:5].reset_index(drop=True)
    result = pd.DataFrame({"dialogue": table["dialogue"], "turn": table["sequence"] + 1, "speaker": table["speaker"],
                           "text": table["x_text"], "predicted": "joy"})
    for label in ERC_LABELS:
        result[f"p_{label}"] = 1.0 / len(ERC_LABELS)
    result["used"], result["media_status"] = "text+audio+visual", "ok"
    out = write_predict_page(result, table, ERC_LABELS, MODALITIES, tmp_path / "page.html", "Predictions of m")
    data = page_json(out)
    assert data["metrics"] is None and data["confusion"] is None and data["split"] is None
    assert all(t["g"] == -1 and t["y"] == ERC_LABELS.index("joy") and t["sh"] == 0 for t in turns(data))
    assert turns(data)[0]["img"] and turns(data)[0]["wav"].startswith("data:audio/wav")
    over = page_json(write_predict_page(result, table, ERC_LABELS, MODALITIES, tmp_path / "small.html", "m",
                                        audio_budget=0))  # a predict page's media is temporary: nothing to link
    assert over["audio"].startswith("not embedded") and all(t["wav"] == "" for t in turns(over))


def test_the_stage_script_writes_every_page_and_logs_each_into_its_evaluate_run(corpus, erc_mlflow_uri):
    import yaml

    from hlm12erc import tracking

    spec = importlib.util.spec_from_file_location("stage_pages", ROOT / "pipeline" / "pages.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = list(params["objectives"])
    table = load_table(corpus / "tables" / "test.csv", ERC_LABELS)
    for seed, name in enumerate(names):
        write_predictions(table, corpus / "plots" / name / "predictions.csv", seed, labels=ERC_LABELS)
    with tracking.start_run("evaluate", "final") as run:
        evaluate_id = run.info.run_id
    code = stage.main(["--params", str(ROOT / "params.yaml"), "--tables", str(corpus / "tables"),
                       "--plots", str(corpus / "plots"), "--report", str(corpus / "metrics" / "objectives.csv"),
                       "--out", str(corpus / "reports")])
    assert code == 0
    assert sorted(p.name for p in (corpus / "reports").iterdir()) == sorted([*names, "index.html"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(erc_mlflow_uri)
    assert [a.path for a in client.list_artifacts(evaluate_id, "page")] == ["page/index.html"]
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    pages_runs = client.search_runs([experiment.experiment_id], "tags.kind = 'pages'")
    assert sorted(r.data.tags["objective"] for r in pages_runs) == sorted(n for n in names if n != "final")
