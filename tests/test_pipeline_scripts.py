"""The model-side stage scripts end to end on synthetic tables: featurize -> train -> evaluate -> report."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ERC_LABELS

from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT

PIPELINE = PROJECT_ROOT / "pipeline"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", PIPELINE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fast_params(tmp_path_factory) -> Path:
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["train"].update(epochs=3, patience=2, device="cpu")
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_stages_end_to_end(erc_tables, fast_params, erc_mlflow_uri, tmp_path, capsys):
    features = tmp_path / "features"
    assert script("featurize").main(["--params", str(fast_params), "--tables", str(erc_tables),
                                     "--out", str(features)]) == 0
    assert {p.name for p in features.iterdir()} == {"train", "valid", "test", "sample"}
    for name in ("mock", "final"):
        model, plots = tmp_path / "models" / name, tmp_path / "plots" / name
        assert script("train").main(["--params", str(fast_params), "--objective", name, "--tables", str(erc_tables),
                                     "--features", str(features), "--out", str(model), "--plots", str(plots)]) == 0
        config = json.loads((model / "config.json").read_text())
        assert config["objective"]["name"] == name and config["model"]["labels"] == ERC_LABELS
        assert config["feature_dims"]["text"] == 768 and (model / "model.pt").is_file()
        history = pd.read_csv(plots / "history.csv")
        assert history.columns.tolist() == ["epoch", "train_loss", "valid_loss", "valid_accuracy",
                                            "valid_weighted_f1"]
        assert 1 <= len(history) <= (2 if name == "mock" else 3)  # mock: objective.epochs=2
        metrics_path = tmp_path / "metrics" / f"{name}.json"
        assert script("evaluate").main(["--params", str(fast_params), "--model", str(model), "--tables",
                                        str(erc_tables), "--features", str(features), "--split", "test",
                                        "--metrics", str(metrics_path), "--plots", str(plots)]) == 0
        metrics = json.loads(metrics_path.read_text())
        assert set(metrics) == {"objective", "split", "n", "accuracy", "weighted_f1", "macro_f1", "per_class"}
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
                                      "macro_f1"]
    assert table["objective"].tolist() == ["mock", "final"]
    assert table.loc[1, "loss"] == "weighted_ce + 0.1 triplet" and table.loc[1, "fusion"] == "attention"
    assert md.read_text().startswith("| objective | modalities |") and png.stat().st_size > 1000

    from mlflow.tracking import MlflowClient

    from hlm12erc import tracking
    runs = MlflowClient(erc_mlflow_uri).search_runs([tracking.ensure_store()])
    assert sorted(r.info.run_name for r in runs) == ["evaluate-final", "evaluate-mock", "train-final", "train-mock"]
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
    """kind=finetune goes through the same train/evaluate scripts, metrics JSON and MLflow runs."""
    import mlflow

    raw = yaml.safe_load(fast_params.read_text())
    raw["objectives"]["text_finetune"]["finetune"].update(epochs=1, max_tokens=32, batch_size=8)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    model, plots = tmp_path / "models" / "tf", tmp_path / "plots" / "tf"
    assert script("train").main(["--params", str(params), "--objective", "text_finetune", "--tables",
                                 str(erc_tables), "--features", str(tmp_path / "unused"), "--out", str(model),
                                 "--plots", str(plots)]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["kind"] == "finetune" and config["objective"]["name"] == "text_finetune"
    assert pd.read_csv(plots / "history.csv")["epoch"].tolist() == [1]
    metrics_path = tmp_path / "metrics" / "tf.json"
    assert script("evaluate").main(["--params", str(params), "--model", str(model), "--tables", str(erc_tables),
                                    "--features", str(tmp_path / "unused"), "--split", "test",
                                    "--metrics", str(metrics_path), "--plots", str(plots)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["objective"] == "text_finetune" and metrics["n"] == 14
    predictions = pd.read_csv(plots / "predictions.csv")
    assert predictions[[f"p_{label}" for label in ERC_LABELS]].sum(axis=1).round(4).eq(1.0).all()
    mlflow.set_tracking_uri(erc_mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["hlm12erc"])
    assert {"train-text_finetune", "evaluate-text_finetune"} <= set(runs["tags.mlflow.runName"])


def test_finetune_objective_must_be_text_only(erc_tables, fast_params, tmp_path, capsys):
    raw = yaml.safe_load(fast_params.read_text())
    raw["objectives"]["text_finetune"]["modalities"] = ["text", "audio"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert script("train").main(["--params", str(params), "--objective", "text_finetune", "--tables",
                                 str(erc_tables), "--features", str(tmp_path), "--out", str(tmp_path / "m"),
                                 "--plots", str(tmp_path / "p")]) == 2
    assert "modalities: [text]" in capsys.readouterr().err
