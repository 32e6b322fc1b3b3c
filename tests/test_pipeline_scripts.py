"""The model-side stage scripts end to end on synthetic tables: featurize -> text_encoder (train.py for
text_finetune without --encoders) -> train -> evaluate -> report.

The fine-tuned text encoders are a tiny random BERT (tests/finetune_support.save_tiny_bert), one epoch each."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ERC_LABELS
from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT

pytestmark = pytest.mark.slow  # minutes: whole stages, subprocesses or servers (`make test-fast` skips them)

PIPELINE = PROJECT_ROOT / "pipeline"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", PIPELINE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fast_params(tmp_path_factory) -> Path:
    from finetune_support import save_tiny_bert
    from hlm12erc.models.text_encoder import encoder_path, load_tokenizer

    tiny = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), load_tokenizer(encoder_path("minilm")))
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["train"].update(epochs=3, patience=2, device="cpu")
    # the default seed ensemble (members: 2) of tiny encoders
    raw["text_encoder"].update(encoder=tiny, epochs=1, min_steps=0, max_tokens=32, batch_size=8)
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_stages_end_to_end(erc_tables, fast_params, erc_mlflow_uri, tmp_path, capsys):
    features = tmp_path / "features"
    assert script("featurize").main(["--params", str(fast_params), "--tables", str(erc_tables),
                                     "--out", str(features)]) == 0
    assert {p.name for p in features.iterdir()} == {"train", "valid", "test", "sample"}
    encoders = tmp_path / "models" / "text_encoder"
    assert script("train").main(["--params", str(fast_params), "--text-encoders", "--tables",
                                 str(erc_tables), "--features", str(tmp_path / "unused"), "--out", str(encoders),
                                 "--plots", str(tmp_path / "plots" / "text_encoder")]) == 0  # stage text_encoder
    assert sorted(p.name for p in encoders.glob("encoder_*.pt")) == ["encoder_0.pt", "encoder_1.pt"]
    encoder_history = pd.read_csv(tmp_path / "plots" / "text_encoder" / "history.csv")
    assert encoder_history["part"].tolist() == ["encoder0", "encoder1"]
    for name in ("mock", "final"):
        model, plots = tmp_path / "models" / name, tmp_path / "plots" / name
        assert script("train").main(["--params", str(fast_params), "--objective", name, "--tables", str(erc_tables),
                                     "--features", str(features), "--encoders", str(encoders), "--out", str(model),
                                     "--plots", str(plots)]) == 0
        config = json.loads((model / "config.json").read_text())
        assert config["format"] == 4 and config["objective"]["name"] == name
        assert config["model"]["labels"] == ERC_LABELS and (model / "head.pt").is_file()
        # mock reads the cached 768-d frozen text features; final the 32-wide tiny encoders' vectors
        assert config["model"]["head"]["input_dims"]["text"] == (768 if name == "mock" else 32)
        assert len(list(model.glob("encoder_*.pt"))) == (0 if name == "mock" else 2)
        if name == "final":  # the text_encoder stage's encoders, not new ones
            for k in (0, 1):
                assert (model / f"encoder_{k}.pt").read_bytes() == (encoders / f"encoder_{k}.pt").read_bytes()
        history = pd.read_csv(plots / "history.csv")
        assert history.columns.tolist() == ["part", "epoch", "train_loss", "valid_loss", "valid_accuracy",
                                            "valid_weighted_f1", "valid_macro_f1"]
        assert set(history["part"]) == {"head"}
        assert 1 <= len(history) <= (2 if name == "mock" else 3)  # mock: objective.epochs=2
        metrics_path = tmp_path / "metrics" / f"{name}.json"
        assert script("evaluate").main(["--params", str(fast_params), "--model", str(model), "--tables",
                                        str(erc_tables), "--features", str(features), "--split", "test",
                                        "--metrics", str(metrics_path), "--plots", str(plots)]) == 0
        metrics = json.loads(metrics_path.read_text())
        assert set(metrics) == {"objective", "split", "n", "accuracy", "weighted_f1", "macro_f1", "per_class",
                                "weighted_f1_ci95", "absent_modalities"}
        low, high = metrics["weighted_f1_ci95"]  # the dialogue bootstrap: 14 rows move the score a lot
        assert 0.0 <= low <= metrics["weighted_f1"] <= high <= 1.0 and high - low > 0.05
        assert metrics["absent_modalities"] == []  # the synthetic tables have clips
        assert metrics["objective"] == name and metrics["split"] == "test" and metrics["n"] == 14
        assert list(metrics["per_class"]) == ERC_LABELS
        assert set(metrics["per_class"]["joy"]) == {"precision", "recall", "f1", "support"}
        assert 0.0 <= metrics["weighted_f1"] <= 1.0
        confusion = pd.read_csv(plots / "confusion.csv")
        assert confusion.columns.tolist() == ["actual", "predicted"] and len(confusion) == 14
        predictions = pd.read_csv(plots / "predictions.csv")
        assert predictions.columns.tolist() == ["clip_id", "label", "predicted"] + [f"p_{l}" for l in ERC_LABELS]
        assert (predictions[[f"p_{l}" for l in ERC_LABELS]].sum(axis=1) - 1).abs().max() < 1e-4
        assert (confusion["predicted"] == predictions["predicted"]).all()
        assert (plots / "confusion.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "precision" in out and "weighted avg" in out  # the classification report is printed

    md, csv, png = tmp_path / "metrics/objectives.md", tmp_path / "metrics/objectives.csv", tmp_path / "objectives.png"
    assert script("report").main(["--params", str(fast_params), "--metrics", str(tmp_path / "metrics"),
                                  "--objectives", "mock", "final", "--out", str(md), "--csv", str(csv),
                                  "--plot", str(png)]) == 0
    table = pd.read_csv(csv)
    assert table.columns.tolist() == ["objective", "modalities", "fusion", "loss", "accuracy", "weighted_f1",
                                      "weighted_f1_low", "weighted_f1_high", "macro_f1"]
    final = json.loads((tmp_path / "metrics" / "final.json").read_text())
    assert [table.loc[1, "weighted_f1_low"], table.loc[1, "weighted_f1_high"]] == \
        pytest.approx(final["weighted_f1_ci95"], abs=1e-4)
    assert table["objective"].tolist() == ["mock", "final"]
    assert table.loc[1, "loss"] == "weighted_ce + 0.1 triplet"
    assert table.loc[1, "fusion"] == "attention + past dialogue"  # params.yaml final: attention, dialogue: past
    assert table.loc[1, "modalities"] == "fine-tuned text+audio+visual" and table.loc[0, "modalities"] == "text"
    assert md.read_text().startswith("| objective | modalities |") and png.stat().st_size > 1000

    from mlflow.tracking import MlflowClient

    from hlm12erc import tracking
    runs = MlflowClient(erc_mlflow_uri).search_runs([tracking.ensure_store()])
    assert sorted(r.info.run_name for r in runs) == ["evaluate-final", "evaluate-mock", "train-final", "train-mock",
                                                     "train-text_encoder"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """A stage script in a subprocess, tracking into a tmp store (never the repo's mlflow.db)."""
    env = {**os.environ, "HLM12ERC_MLFLOW_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env=env)


def test_unknown_objective_is_one_line_listing_the_names(tmp_path):
    result = _run("pipeline/train.py", "--objective", "nope", "--out", str(tmp_path / "x"), "--plots",
                  str(tmp_path / "y"), tmp=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nope'" in lines[0]
    assert all(name in lines[0] for name in ("mock", "baseline", "multimodal", "final"))


def test_missing_inputs_are_one_line_errors(tmp_path):
    result = _run("pipeline/evaluate.py", "--model", str(tmp_path / "none"), "--metrics", str(tmp_path / "m.json"),
                  "--plots", str(tmp_path), tmp=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "run the train stage" in result.stderr
    result = _run("pipeline/report.py", "--metrics", str(tmp_path), "--objectives", "text", tmp=tmp_path)
    assert result.returncode == 2 and "evaluate objective 'text' first" in result.stderr


def test_featurize_rejects_a_label_outside_the_set(erc_tables, tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    frame = pd.read_csv(erc_tables / "train.csv", keep_default_na=False)
    frame.loc[3, "label"] = "contempt"
    frame.to_csv(tables / "train.csv", index=False)
    result = _run("pipeline/featurize.py", "--tables", str(tables), "--out", str(tmp_path / "f"), tmp=tmp_path)
    assert result.returncode == 2
    assert "row 4" in result.stderr and "contempt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_finetune_objective_trains_and_evaluates_through_the_stage_scripts(erc_tables, fast_params, erc_mlflow_uri,
                                                                          tmp_path):
    """text_finetune (fusion: none) reads the text_encoder stage's encoders through the same train/evaluate
    scripts, metrics JSON and MLflow runs; without --encoders it fine-tunes its own."""
    import mlflow

    encoders = tmp_path / "models" / "text_encoder"
    assert script("train").main(["--params", str(fast_params), "--text-encoders", "--tables",
                                 str(erc_tables), "--features", str(tmp_path / "unused"), "--out", str(encoders),
                                 "--plots", str(tmp_path / "plots" / "text_encoder")]) == 0  # stage text_encoder
    model, plots = tmp_path / "models" / "tf", tmp_path / "plots" / "tf"
    assert script("train").main(["--params", str(fast_params), "--objective", "text_finetune", "--tables",
                                 str(erc_tables), "--features", str(tmp_path / "unused"), "--encoders", str(encoders),
                                 "--out", str(model), "--plots", str(plots)]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["model"]["head"] is None and config["objective"]["name"] == "text_finetune"
    # the stage's encoders depend on no objective; text_finetune reads them through its own context windows
    stage = json.loads((encoders / "config.json").read_text())
    assert stage["objective"]["name"] == "text_encoder" and stage["model"]["windows"] == []
    assert config["model"]["windows"] == yaml.safe_load(fast_params.read_text())["objectives"]["text_finetune"][
        "windows"] != []
    assert not (model / "head.pt").exists() and len(list(model.glob("encoder_*.pt"))) == 2
    assert pd.read_csv(plots / "history.csv").empty  # nothing trained here: the encoders came trained
    metrics_path = tmp_path / "metrics" / "tf.json"
    assert script("evaluate").main(["--params", str(fast_params), "--model", str(model), "--tables", str(erc_tables),
                                    "--features", str(tmp_path / "unused"), "--split", "test",
                                    "--metrics", str(metrics_path), "--plots", str(plots)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["objective"] == "text_finetune" and metrics["n"] == 14
    predictions = pd.read_csv(plots / "predictions.csv")
    assert predictions[[f"p_{label}" for label in ERC_LABELS]].sum(axis=1).round(4).eq(1.0).all()
    own, own_plots = tmp_path / "models" / "own", tmp_path / "plots" / "own"
    assert script("train").main(["--params", str(fast_params), "--objective", "text_finetune", "--tables",
                                 str(erc_tables), "--features", str(tmp_path / "unused"), "--out", str(own),
                                 "--plots", str(own_plots)]) == 0
    assert pd.read_csv(own_plots / "history.csv")["part"].tolist() == ["encoder0", "encoder1"]
    mlflow.set_tracking_uri(erc_mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["hlm12erc"])
    assert {"train-text_encoder", "train-text_finetune", "evaluate-text_finetune"} <= set(runs["tags.mlflow.runName"])


def test_finetune_objective_must_be_text_only(erc_tables, fast_params, tmp_path, capsys):
    raw = yaml.safe_load(fast_params.read_text())
    raw["objectives"]["text_finetune"]["modalities"] = ["text", "audio"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert script("train").main(["--params", str(params), "--objective", "text_finetune", "--tables",
                                 str(erc_tables), "--features", str(tmp_path), "--out", str(tmp_path / "m"),
                                 "--plots", str(tmp_path / "p")]) == 2
    assert "modalities: [text]" in capsys.readouterr().err


def test_report_reads_metrics_written_before_the_interval_existed(tmp_path):
    """An older metrics JSON (no weighted_f1_ci95) reports an empty range and no error bar, not a crash."""
    from hlm12erc.config import load_params
    from hlm12erc.report import report_stage

    per_class = {label: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for label in ERC_LABELS}
    base = {"split": "test", "n": 7, "accuracy": 0.5, "weighted_f1": 0.5, "macro_f1": 0.5, "per_class": per_class}
    (tmp_path / "text.json").write_text(json.dumps({"objective": "text", **base}))
    (tmp_path / "final.json").write_text(json.dumps({"objective": "final", **base, "weighted_f1_ci95": [0.3, 0.7]}))
    table = report_stage(load_params(PARAMS_FILE), tmp_path, ["text", "final"], tmp_path / "o.md", tmp_path / "o.csv",
                         tmp_path / "o.png")
    assert table["weighted_f1_low"].isna().tolist() == [True, False]
    assert table.loc[1, ["weighted_f1_low", "weighted_f1_high"]].tolist() == [0.3, 0.7]
    assert "| 0.3000 | 0.7000 |" in (tmp_path / "o.md").read_text() and (tmp_path / "o.png").stat().st_size > 1000


# What `dvc repro` does: `$SHELL -c CMD` (the shell execs the one command), waiting on it.
DVC_LIKE_PARENT = """
import subprocess, sys
stage = subprocess.Popen(["/bin/bash", "--noprofile", "--norc", "-c", sys.argv[1]])
print(stage.pid, flush=True)
stage.wait()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_stage_ends_cleanly_when_dvc_is_killed(erc_tables, fast_params, tmp_path):
    """kill -9 of the process running the stage (dvc): the stage ends within seconds, its MLflow run is
    closed (its cleanup ran: not left RUNNING), and no model folder, whole or half, is left."""
    import shlex
    import sqlite3
    import time

    raw = yaml.safe_load(fast_params.read_text())
    raw["text_encoder"].update(epochs=10_000, patience=10_000)  # still training when dvc dies
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out, db = tmp_path / "models" / "text_encoder", tmp_path / "mlflow.db"
    command = shlex.join([sys.executable, "pipeline/train.py", "--params", str(params), "--text-encoders",
                          "--tables", str(erc_tables), "--out", str(out), "--plots", str(tmp_path / "plots")])
    env = {**os.environ, "HLM12ERC_MLFLOW_URI": f"sqlite:///{db}", "PYTHONPATH": str(PROJECT_ROOT / "src")}
    dvc = subprocess.Popen([sys.executable, "-c", DVC_LIKE_PARENT, command], cwd=PROJECT_ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stage = int(dvc.stdout.readline())

    def runs() -> list[str]:
        try:
            with contextlib.closing(sqlite3.connect(db)) as connection:
                return [status for (status,) in connection.execute("SELECT status FROM runs")]
        except sqlite3.Error:
            return []

    deadline = time.monotonic() + 120
    while not runs() and time.monotonic() < deadline and _alive(stage):
        time.sleep(0.2)
    assert runs() == ["RUNNING"], "the stage never started training"
    time.sleep(1.0)
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(stage):
        os.kill(stage, signal.SIGKILL)
        pytest.fail("the stage was still running 10 s after its parent was killed")
    assert runs() == ["FAILED"]
    assert not out.exists() and list(out.parent.glob(".text_encoder*")) == []  # nor a .part beside it
