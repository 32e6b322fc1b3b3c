"""The MLflow pyfunc model: `hlm12erc register` logs + registers it; load round trip; `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ERC_LABELS
from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT
from hlm12erc.predict import Predictor
from hlm12erc.pyfunc import model_fingerprint, register_model
from predict_support import CONVERSATION, train_tiny_model

pytestmark = pytest.mark.slow  # minutes: whole stages, subprocesses or servers (`make test-fast` skips them)

P_COLUMNS = [f"p_{label}" for label in ERC_LABELS]
SERVE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def registered(erc_features_dir, erc_tables, tmp_path_factory):
    """(store URI, model dir, version, metrics): `final` (tiny-BERT fine-tuned text + audio + visual, dialogue
    context) trained, evaluated by evaluate.py, then registered as hlm12erc."""
    import importlib.util

    root = tmp_path_factory.mktemp("pyfunc")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("HLM12ERC_MLFLOW_URI", uri)
    try:
        model_dir = train_tiny_model(root / "models" / "headline", erc_features_dir, erc_tables)
        spec = importlib.util.spec_from_file_location("stage_evaluate", PROJECT_ROOT / "pipeline" / "evaluate.py")
        evaluate = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(evaluate)
        metrics_path = root / "metrics" / "headline.json"
        assert evaluate.main(["--params", str(PARAMS_FILE), "--model", str(model_dir), "--tables", str(erc_tables),
                              "--features", str(erc_features_dir), "--split", "test", "--metrics", str(metrics_path),
                              "--plots", str(root / "plots")]) == 0
        metrics = json.loads(metrics_path.read_text())
        version, created = register_model(model_dir, metrics, "hlm12erc")
        assert created and version == "1"
        yield uri, model_dir, version, metrics
    finally:
        patch.undo()


def _turns(clip: Path | None) -> list[dict]:
    turns = [dict(t, dialogue="7") for t in CONVERSATION]
    turns[0]["clip"] = str(clip) if clip else ""
    return turns


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from hlm12erc.data.demo import write_clip

    return write_clip(tmp_path_factory.mktemp("clips") / "joy.mp4", "joy", "joy", seconds=1.0, seed=2)


def test_registered_version_carries_the_test_metrics(registered):
    from mlflow.tracking import MlflowClient

    uri, _, version, metrics = registered
    client = MlflowClient(uri, registry_uri=uri)
    model_version = client.get_model_version("hlm12erc", version)
    assert model_version.tags["objective"] == "final" and model_version.tags["split"] == "test"
    assert model_version.tags["model_sha256"] == model_fingerprint(registered[1])
    assert float(model_version.tags["test_weighted_f1"]) == pytest.approx(metrics["weighted_f1"], abs=1e-6)
    run = client.get_run(model_version.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.tags["kind"] == "register" and run.info.status == "FINISHED"
    runs = client.search_runs([run.info.experiment_id])
    assert sorted(r.data.tags["kind"] for r in runs) == ["evaluate", "register"]


def test_pyfunc_load_round_trip_matches_the_library(registered, clip):
    import mlflow

    uri, model_dir, version, _ = registered
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/hlm12erc/{version}")
    frame = pd.DataFrame(_turns(clip))
    served = model.predict(frame)
    local = Predictor.load(model_dir).predict(frame)
    assert served.columns.tolist() == local.columns.tolist()
    assert {"predicted", *P_COLUMNS} <= set(served.columns)
    np.testing.assert_allclose(served[P_COLUMNS].to_numpy(), local[P_COLUMNS].to_numpy(), atol=1e-6)
    assert served["predicted"].tolist() == local["predicted"].tolist()
    assert served["used"].tolist() == ["text+audio+visual", "text", "text"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"missing column\(s\) \['text'\]") as raised:
        model.predict(pd.DataFrame({"speaker": ["Ross"]}))
    assert raised.value.get_http_status_code() == 400


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(registered, clip, tmp_path):
    uri, model_dir, version, _ = registered
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH (as with an activated venv)
    env = {**os.environ, "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": uri, "HLM12ERC_MLFLOW_URI": uri, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", f"models:/hlm12erc/{version}",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                                  cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /ping answer within {SERVE_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        body = json.dumps({"dataframe_records": _turns(clip)}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        records = {"dataframe_records": [{"speaker": "Ross", "txt": "hi"}]}
        bad = urllib.request.Request(f"{base}/invocations", headers={"Content-Type": "application/json"},
                                     data=json.dumps(records).encode())
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(bad, timeout=60)
        assert raised.value.code == 400 and "unknown column(s) ['txt']" in raised.value.read().decode()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
    expected = Predictor.load(model_dir).predict(pd.DataFrame(_turns(clip)))
    assert [p["predicted"] for p in predictions] == expected["predicted"].tolist()
    assert [p["speaker"] for p in predictions] == ["Ross", "Rachel", "Joey"]
    assert [p["used"] for p in predictions] == ["text+audio+visual", "text", "text"]
    np.testing.assert_allclose([[p[c] for c in P_COLUMNS] for p in predictions], expected[P_COLUMNS].to_numpy(),
                               atol=1e-5)


def test_predict_command_takes_a_model_uri(registered, clip, tmp_path, monkeypatch, capsys):
    from hlm12erc import cli

    uri, model_dir, version, _ = registered
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", uri)
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps({"turns": _turns(clip)}))
    assert cli.main(["predict", str(conversation), "--model-uri", f"models:/hlm12erc/{version}",
                     "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "note: 2 of 3 turn(s)" in err and "Traceback" not in err
    from_uri = pd.read_csv(tmp_path / "p.csv", dtype={"dialogue": str})
    local = Predictor.load(model_dir).predict(pd.DataFrame(_turns(clip)))
    np.testing.assert_allclose(from_uri[P_COLUMNS].to_numpy(), local[P_COLUMNS].to_numpy(), atol=1e-6)
    assert from_uri["dialogue"].tolist() == ["7", "7", "7"]


def test_failed_registration_is_one_line_and_keeps_the_metrics(registered, tmp_path, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    import hlm12erc.pyfunc

    uri, model_dir, _version, metrics = registered
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", uri)

    def refuse(*_args, **_kwargs):
        raise MlflowException("registry is read-only\nTraceback (most recent call last): ...")

    monkeypatch.setattr(hlm12erc.pyfunc, "register_model", refuse)
    metrics_path = tmp_path / "headline.json"
    metrics_path.write_text(json.dumps(metrics))
    assert _register("--model", str(model_dir), "--metrics", str(metrics_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["register: registry is read-only"]
    assert json.loads(metrics_path.read_text()) == metrics


def _register(*args: str) -> int:
    from hlm12erc import cli

    return cli.main(["register", "--params", str(PARAMS_FILE), *args])


def test_register_command_adds_each_model_once(registered, tmp_path, monkeypatch, capsys):
    """`hlm12erc register` (make demo's last step): a new model gets a version, the same files never twice."""
    import shutil

    from mlflow.tracking import MlflowClient

    _, model_dir, _, metrics = registered
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a fresh store, as on a fresh clone where DVC skipped evaluate
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", uri)
    metrics_path = tmp_path / "headline.json"
    metrics_path.write_text(json.dumps(metrics))
    model = ["--model", str(model_dir), "--metrics", str(metrics_path)]
    assert _register(*model) == 0
    assert f"registered {model_dir} as hlm12erc version 1 (models:/hlm12erc/1)" in capsys.readouterr().out
    assert _register(*model) == 0
    assert "is already hlm12erc version 1 (models:/hlm12erc/1); nothing registered" in capsys.readouterr().out

    retrained = tmp_path / "retrained"  # other weights: same folder layout, other bytes
    shutil.copytree(model_dir, retrained)
    assert (retrained / "head.pt").is_file() and (retrained / "encoder_0.pt").is_file()
    state = torch.load(retrained / "head.pt", weights_only=True)
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}, retrained / "head.pt")
    assert _register("--model", str(retrained), "--metrics", str(metrics_path)) == 0
    assert "as hlm12erc version 2" in capsys.readouterr().out
    client = MlflowClient(uri, registry_uri=uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'hlm12erc'")}
    assert sorted(versions) == ["1", "2"]
    assert versions["1"].tags["model_sha256"] == model_fingerprint(model_dir) != model_fingerprint(retrained)
    assert float(versions["2"].tags["test_weighted_f1"]) == pytest.approx(metrics["weighted_f1"], abs=1e-6)


def test_register_finds_the_version_evaluate_registered(registered, tmp_path, monkeypatch, capsys):
    uri, model_dir, version, metrics = registered
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", uri)
    metrics_path = tmp_path / "headline.json"
    metrics_path.write_text(json.dumps(metrics))
    assert _register("--model", str(model_dir), "--metrics", str(metrics_path)) == 0
    assert f"is already hlm12erc version {version}" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["no_metrics", "bad_json", "other_objective", "no_model"])
def test_register_bad_input_is_one_line(case, registered, tmp_path, monkeypatch, capsys):
    _, model_dir, _, metrics = registered
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics_path = tmp_path / "headline.json"
    metrics_path.write_text({"bad_json": "{not json", "other_objective": json.dumps(dict(metrics, objective="text"))}
                            .get(case, json.dumps(metrics)))
    args = {"no_metrics": ["--model", str(model_dir), "--metrics", str(tmp_path / "missing.json")],
            "no_model": ["--model", str(tmp_path / "nowhere"), "--metrics", str(metrics_path)]}.get(
        case, ["--model", str(model_dir), "--metrics", str(metrics_path)])
    assert _register(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"no_metrics": "missing.json not found; evaluate the model first",
                "bad_json": "is not a metrics JSON",
                "other_objective": "the metrics are for objective 'text' but",
                "no_model": "config.json not found; run the train stage"}[case]
    assert len(err) == 1 and err[0].startswith("register: ") and expected in err[0], err
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is touched
