"""`hlm12erc predict`: conversations (CSV/JSON, with and without clips) -> per-turn emotions; bad input -> one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ERC_LABELS
from hlm12erc import cli
from hlm12erc.config import PROJECT_ROOT
from hlm12erc.predict import PredictError, Predictor, check_conversation, read_conversation
from predict_support import CONVERSATION, train_tiny_model, write_conversation

pytestmark = pytest.mark.slow  # minutes: whole stages, subprocesses or servers (`make test-fast` skips them)

P_COLUMNS = [f"p_{label}" for label in ERC_LABELS]


@pytest.fixture(scope="module")
def model_dir(erc_features_dir, erc_tables, tmp_path_factory):
    """`final` (fine-tuned tiny-BERT text + audio + visual, attention fusion, dialogue transformer), a few epochs."""
    return train_tiny_model(tmp_path_factory.mktemp("model") / "final", erc_features_dir, erc_tables)


@pytest.fixture(scope="module")
def conversation_dir(tmp_path_factory):
    """A folder with clips/joy.mp4 (H.264 + AAC, made by the demo generator) and a corrupt clip."""
    from hlm12erc.data.demo import write_clip

    folder = tmp_path_factory.mktemp("conversation")
    write_clip(folder / "clips" / "joy.mp4", "joy", "joy", seconds=1.0, seed=1)
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 4)
    return folder


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_csv_conversation_with_and_without_clip(model_dir, conversation_dir, capsys):
    path = write_conversation(conversation_dir / "csv", "csv", conversation_dir / "clips" / "joy.mp4")
    assert pd.read_csv(path, keep_default_na=False)["clip"].tolist() == ["../clips/joy.mp4", "", ""]
    code, out, err = _run(["predict", str(path), "--model", str(model_dir), "--params", "params.yaml"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["dialogue", "turn", "speaker", "text", "predicted", *P_COLUMNS, "used",
                                "media_status"]
    assert len(lines) == 1 + len(CONVERSATION)
    rows = [line.split() for line in lines[1:]]
    assert [r[-2:] for r in rows] == [["text+audio+visual", "ok"], ["text", "no_clip"], ["text", "no_clip"]]
    assert all(r[-10] in ERC_LABELS for r in rows)  # predicted, then 7 probabilities, used, media_status
    notes = err.strip().splitlines()
    assert notes == ["note: 2 of 3 turn(s) used text only, not text+audio+visual (no_clip: no clip given): "
                     "dialogue 0 turn 2, dialogue 0 turn 3"]


def test_predict_out_html_writes_the_page_of_the_conversation(model_dir, conversation_dir, tmp_path, capsys):
    from pages_support import page_json

    path = write_conversation(conversation_dir / "page", "csv", conversation_dir / "clips" / "joy.mp4")
    out = tmp_path / "page.html"
    argv = ["predict", str(path), "--model", str(model_dir), "--params", "params.yaml"]
    code, stdout, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.strip() == f"wrote {len(CONVERSATION)} prediction(s) to {out}"
    data = page_json(out)
    turns = data["dialogues"][0]["turns"]
    assert [(t["s"], t["t"]) for t in turns] == [(c["speaker"], c["text"]) for c in CONVERSATION]
    assert data["metrics"] is None and all(t["g"] == -1 for t in turns)
    assert turns[0]["img"].startswith("data:image/jpeg") and turns[0]["wav"].startswith("data:audio/wav")
    assert [t["u"] for t in turns] == ["text+audio+visual", "text", "text"] and turns[1]["img"] == ""
    code, table, _ = _run(argv, capsys)
    predicted = [line.split()[-10] for line in table.strip().splitlines()[1:]]
    assert [ERC_LABELS[t["y"]] for t in turns] == predicted


def test_a_long_text_only_conversation_gets_one_short_note(model_dir, tmp_path, capsys):
    """Hundreds of clipless turns: one line with the count and a few examples, not one entry per turn;
    --verbose names every turn, and the output file's columns always do."""
    turns = [{"dialogue": f"dev{i // 10}", "speaker": "Ross", "text": f"Line number {i}, how are you?"}
             for i in range(240)]
    path = tmp_path / "long.csv"
    pd.DataFrame(turns).to_csv(path, index=False)
    code, out, err = _run(["predict", str(path), "--model", str(model_dir), "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    notes = err.strip().splitlines()
    assert len(notes) == 1 and len(notes[0]) < 300, notes
    assert notes[0].startswith("note: 240 of 240 turn(s) used text only, not text+audio+visual (no_clip: no clip")
    assert "dialogue dev0 turn 1, dialogue dev0 turn 2, dialogue dev0 turn 3 and 237 more" in notes[0]
    assert "--verbose" in notes[0] and "turn 4" not in notes[0]
    written = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(written) == 240 and set(written["used"]) == {"text"} and set(written["media_status"]) == {"no_clip"}
    code, _, err = _run(["predict", str(path), "--model", str(model_dir), "--out", str(tmp_path / "v.csv"),
                         "--verbose"], capsys)
    assert code == 0, err
    (full,) = err.strip().splitlines()
    named = full.split("): ", 1)[1].split(", ")
    assert named == [f"dialogue dev{i // 10} turn {i % 10 + 1}" for i in range(240)]


def test_the_note_has_one_line_per_reason():
    from hlm12erc.predict import fallback_note

    statuses = ["ok"] * 5 + ["no_clip"] * 1100 + ["corrupt"] * 4
    result = pd.DataFrame({"dialogue": [f"dev{i // 20}" for i in range(len(statuses))],
                           "turn": [i % 20 + 1 for i in range(len(statuses))],
                           "used": ["text+audio+visual" if s == "ok" else "text" for s in statuses],
                           "media_status": statuses})
    lines = fallback_note(result, ["text", "audio", "visual"]).splitlines()
    assert len(lines) == 2 and all(len(line) < 300 for line in lines)
    assert lines[0].startswith("note: 1100 of 1109 turn(s) used text only, not text+audio+visual (no_clip: ")
    assert lines[0].endswith("dialogue dev0 turn 6, dialogue dev0 turn 7, dialogue dev0 turn 8 and 1097 more")
    assert lines[1].startswith("note: 4 of 1109 turn(s) used text only, not text+audio+visual (corrupt: clip failed")
    assert "dialogue dev55 turn 6, dialogue dev55 turn 7, dialogue dev55 turn 8 and 1 more" in lines[1]
    assert fallback_note(result[result["media_status"] == "ok"], ["text", "audio", "visual"]) is None
    verbose = fallback_note(result, ["text", "audio", "visual"], verbose=True).splitlines()
    assert len(verbose) == 2 and verbose[0].count("dialogue ") == 1100 and "more" not in verbose[0]


def test_predict_json_conversation_matches_csv_and_writes_csv_json(model_dir, conversation_dir, tmp_path, capsys):
    clip = conversation_dir / "clips" / "joy.mp4"
    csv_path = write_conversation(conversation_dir / "csv2", "csv", clip)
    json_path = write_conversation(conversation_dir / "json", "json", clip, wrap=True)
    assert json.loads(json_path.read_text())["turns"][0]["clip"] == "../clips/joy.mp4"
    code, _, err = _run(["predict", str(csv_path), "--model", str(model_dir), "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    code, out, err = _run(["predict", str(json_path), "--model", str(model_dir), "--out", str(tmp_path / "p.json")],
                          capsys)
    assert code == 0 and "wrote 3 prediction(s)" in out, err
    from_csv = pd.read_csv(tmp_path / "p.csv", dtype={"dialogue": str})
    from_json = pd.DataFrame(json.loads((tmp_path / "p.json").read_text()))
    assert from_json.columns.tolist() == ["dialogue", "turn", "speaker", "text", "predicted", *P_COLUMNS, "used",
                                          "media_status"]
    np.testing.assert_allclose(from_csv[P_COLUMNS].to_numpy(), from_json[P_COLUMNS].to_numpy(), atol=1e-6)
    assert (from_json[P_COLUMNS].sum(axis=1) - 1).abs().max() < 1e-4
    assert from_json["predicted"].isin(ERC_LABELS).all()
    assert from_json["predicted"].tolist() == [ERC_LABELS[i] for i in from_json[P_COLUMNS].to_numpy().argmax(1)]
    assert from_json["used"].tolist() == ["text+audio+visual", "text", "text"]


def test_console_command_runs_as_a_module(model_dir, conversation_dir, tmp_path):
    """`python -m hlm12erc predict` (what the `hlm12erc` console script calls) in a fresh process."""
    path = write_conversation(conversation_dir / "cmd", "json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, "-m", "hlm12erc", "predict", str(path), "--model", str(model_dir),
                             "--out", str(tmp_path / "p.json")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["speaker"] for r in rows] == ["Ross", "Rachel", "Joey"]
    assert {r["used"] for r in rows} == {"text"} and {r["media_status"] for r in rows} == {"no_clip"}
    assert "note: 3 of 3 turn(s)" in result.stderr and "Traceback" not in result.stderr


def test_a_clip_that_fails_to_decode_falls_back_to_text(model_dir, conversation_dir):
    turns = pd.DataFrame([{"speaker": "Ross", "text": "Hi.", "clip": str(conversation_dir / "clips" / "broken.mp4")},
                          {"speaker": "Joey", "text": "What? No way, really?",
                           "clip": str(conversation_dir / "clips" / "joy.mp4")}])
    result = Predictor.load(model_dir).predict(turns)
    assert result["media_status"].tolist() == ["corrupt", "ok"]
    assert result["used"].tolist() == ["text", "text+audio+visual"]


def _conversation(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"dialogue": table["dialogue"], "speaker": table["speaker"], "text": table["x_text"]})


def test_dialogue_context_is_built_as_in_training(erc_features_dir, erc_tables, tmp_path):
    """A text model on the test table's turns gives the evaluate stage's probabilities (same context window)."""
    from hlm12erc.data.meld import load_table
    from hlm12erc.features.store import FeatureSet

    model_dir = train_tiny_model(tmp_path / "text", erc_features_dir, erc_tables, objective="text")
    predictor = Predictor.load(model_dir)
    table = load_table(erc_tables / "test.csv", ERC_LABELS)
    result = predictor.predict(_conversation(table))
    expected = predictor.model.predict_proba(table, FeatureSet.load(erc_features_dir / "test"))
    np.testing.assert_allclose(result[P_COLUMNS].to_numpy(), expected, atol=1e-5)
    assert result["turn"].tolist() == (table["sequence"] + 1).tolist()
    alone = predictor.predict(_conversation(table).iloc[[3]])  # the same turn without its dialogue: other context
    assert not np.allclose(alone[P_COLUMNS].to_numpy(), result[P_COLUMNS].to_numpy()[[3]], atol=1e-4)


def test_bad_inputs_are_one_line_errors(model_dir, tmp_path, capsys, erc_mlflow_uri):
    cases = {
        "empty.csv": ("", "empty file"),
        "header.csv": ("speaker,text\n", "no turns"),
        "unknown.csv": ("speaker,text,emotion\nRoss,hi,joy\n", "unknown column(s) ['emotion']"),
        "missing.csv": ("speaker\nRoss\n", "missing column(s) ['text']"),
        "badclip.csv": ("speaker,text,clip\nRoss,hi,nowhere.mp4\n", "clip nowhere.mp4 does not exist"),
        "empty.json": ("", "empty file"),
        "broken.json": ('[{"speaker": "Ross"', "invalid JSON"),
        "object.json": ('{"speakers": []}', "needs a 'turns' list"),
        "strings.json": ('["hello"]', "turn 1 is a str"),
        "turns.txt": ("speaker,text\nRoss,hi\n", "unsupported file type '.txt'"),
        "twice.csv": ("speaker,Speaker,text\nRoss,Joey,hi\n", "given more than once"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_text(content)
        code, out, err = _run(["predict", str(tmp_path / name), "--model", str(model_dir)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0] and lines[0].startswith("predict: "), (name, err)
    ok = tmp_path / "ok.csv"
    ok.write_text("speaker,text\nRoss,hi\n")
    for argv, expected in (([str(ok), "--model", str(tmp_path / "no_model")], "does not exist; train it first"),
                           ([str(ok), "--model", str(tmp_path)], "has no config.json"),
                           ([str(ok), "--model", str(model_dir), "--out", str(tmp_path / "p.xlsx")],
                            "unsupported suffix"),
                           ([str(tmp_path / "absent.csv"), "--model", str(model_dir)], "conversation file not found"),
                           ([str(ok), "--model-uri", "models:/hlm12erc/99"], "cannot load model URI")):
        code, _, err = _run(["predict", *argv], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, err)
        assert "Traceback" not in err


def test_unreadable_clip_is_bad_input(tmp_path):
    with pytest.raises(PredictError, match="is not a file"):
        check_conversation(pd.DataFrame({"speaker": ["A"], "text": ["hi"], "clip": [str(tmp_path)]}))
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(b"x")
    clip.chmod(0)
    try:
        if os.access(clip, os.R_OK):  # root reads everything
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(PredictError, match="is not readable"):
            check_conversation(pd.DataFrame({"speaker": ["A"], "text": ["hi"], "clip": [str(clip)]}))
    finally:
        clip.chmod(0o644)


def test_read_conversation_accepts_a_list_and_dialogues(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"Speaker": "A", "Text": "hi", "dialogue": 1},
                                {"speaker": "B", "text": "yo", "dialogue": 2},
                                {"speaker": "A", "text": "bye", "dialogue": 1}]))
    turns = read_conversation(path)
    assert turns.columns.tolist() == ["speaker", "text", "clip", "dialogue"]
    assert turns["dialogue"].tolist() == ["1", "2", "1"] and turns["clip"].tolist() == ["", "", ""]


@pytest.mark.parametrize("objective,overrides", [
    ("final", {"modalities": ["text"], "fusion": "concat"}),  # fine-tuned text + dialogue context (params' final)
    ("text_finetune", {}),  # the encoders alone (fusion: none)
])
def test_finetuned_model_builds_its_inputs_as_in_training(objective, overrides, erc_features_dir, erc_tables, tmp_path):
    """`text: finetuned` (+ dialogue context): the conversation's turns give ErcModel.predict_proba's
    probabilities on the same turns (the evaluate stage's path), for several dialogues in any row order."""
    from hlm12erc.data.meld import load_table
    from hlm12erc.models.erc import ErcModel

    model_dir = train_tiny_model(tmp_path / objective, erc_features_dir, erc_tables, objective=objective, epochs=2,
                                 **overrides)
    model = ErcModel.load(model_dir)
    assert model.config.text == "finetuned" and not model.uses_cached_features and len(model.encoders) == 2
    if objective == "final":
        from hlm12erc.config import load_params

        assert model.config.head.dialogue == load_params().objective("final").dialogue != "none"
    test = load_table(erc_tables / "test.csv", ERC_LABELS)
    conversation = _conversation(test)
    conversation["clip"] = ""
    conversation.loc[0, "clip"] = "ignored.mp4"  # a text-only model never opens clips, but the path must exist
    with pytest.raises(PredictError, match="does not exist"):
        Predictor.load(model_dir).predict(conversation)
    conversation["clip"] = ""
    predictor = Predictor.load(model_dir)
    assert not predictor.needs_media
    result = predictor.predict(conversation)
    expected = model.predict_proba(test)
    np.testing.assert_allclose(result[P_COLUMNS].to_numpy(), expected, atol=1e-5)
    assert set(result["used"]) == {"text"} and set(result["media_status"]) == {"no_clip"}
    # dialogues interleaved round-robin (each dialogue's turns keep their order): the same per-turn answers
    within = conversation.groupby("dialogue", sort=False).cumcount().to_numpy()
    order = np.lexsort((-conversation["dialogue"].astype(int).to_numpy(), within))
    assert not (np.diff(order) == 1).all()
    shuffled = predictor.predict(conversation.iloc[order])
    np.testing.assert_allclose(shuffled[P_COLUMNS].to_numpy(), result[P_COLUMNS].to_numpy()[order], atol=1e-5)
    if objective == "final":  # the dialogue context matters: a turn alone is predicted otherwise
        alone = predictor.predict(conversation.iloc[[3]])
        assert not np.allclose(alone[P_COLUMNS].to_numpy(), result[P_COLUMNS].to_numpy()[[3]], atol=1e-4)


def test_predict_with_a_clip_reads_it_with_the_training_encoders(model_dir, conversation_dir):
    """The features of a conversation with a clip come from the encoders (and settings) the model was
    trained with: the FeatureParams saved in its folder, the same Featurizer as the featurize stage."""
    from dataclasses import asdict

    from hlm12erc.features.featurize import Featurizer

    predictor = Predictor.load(model_dir)
    seen = {}
    path = write_conversation(conversation_dir / "encoders", "csv", conversation_dir / "clips" / "joy.mp4")
    turns = read_conversation(path)
    original = Featurizer.__call__

    def spy(self, table):  # a fresh Featurizer of the same params, while predict's temp media still exist
        seen["params"], seen["features"] = self.params, original(self, table)
        seen["again"] = original(Featurizer(self.params, progress=False), table)
        return seen["features"]

    Featurizer.__call__ = spy
    try:
        predictor.predict(turns)
    finally:
        Featurizer.__call__ = original
    saved = json.loads((model_dir / "config.json").read_text())["features"]
    assert asdict(seen["params"]) == saved
    assert saved["audio"]["encoder"] == "whisper" and saved["visual"]["faces"] == "mtcnn"  # the defaults
    assert seen["features"].mask[0].tolist() == [True, True, True]  # turn 1's clip was read
    for modality, values in seen["features"].arrays.items():
        np.testing.assert_allclose(values, seen["again"].arrays[modality], atol=1e-5, err_msg=modality)
