"""The headline stage: a byte copy of models/<model> + metrics/<model>.json, nothing retrained, and an
unknown `model` fails in one line before anything of the previous headline is removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    dvc = Path(sys.executable).with_name("dvc")
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([str(dvc), *args], cwd=repo, text=True, capture_output=True, env=env, timeout=300)


def _fake_model(repo: Path, name: str) -> None:
    (repo / "models" / name).mkdir(parents=True)
    (repo / "models" / name / "config.json").write_text(json.dumps({"objective": {"name": name}}))
    (repo / "models" / name / "model.pt").write_bytes(name.encode() * 100)
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / f"{name}.json").write_text(json.dumps(
        {"objective": name, "split": "test", "n": 9, "accuracy": 0.5, "weighted_f1": 0.25, "macro_f1": 0.125}))


def test_headline_copies_the_trained_model_and_a_bad_name_keeps_the_old_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["headline"]
    assert "--register" not in stage["cmd"]  # the stage copies; `hlm12erc register` registers
    for dep in stage["deps"]:
        if dep.startswith(("src/", "pipeline/")):
            (repo / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / dep, repo / dep)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"headline": stage}}, sort_keys=False))
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    for name in ("final", "multimodal"):
        _fake_model(repo, name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _dvc(repo, "init", "-q").returncode == 0

    first = _dvc(repo, "repro", "headline")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (repo / "models/headline/model.pt").read_bytes() == (repo / "models/final/model.pt").read_bytes()
    assert (repo / "metrics/headline.json").read_bytes() == (repo / "metrics/final.json").read_bytes()
    assert "Running stage 'headline'" in first.stdout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "model": "nope"}, sort_keys=False))
    bad = _dvc(repo, "repro", "headline")
    assert bad.returncode != 0  # DVC stops at the missing models/nope, before it runs or removes anything
    assert "models/nope" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    script = subprocess.run([sys.executable, "pipeline/headline.py", "--model", "models/nope", "--metrics",
                             "metrics/nope.json"], cwd=repo, text=True, capture_output=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert script.returncode == 2  # the same check without DVC: the script's own line
    assert script.stderr.startswith("headline: params: model='nope' is not an objective; known: mock, baseline")
    assert len(script.stderr.strip().splitlines()) == 1, script.stderr
    assert (repo / "models/headline/model.pt").read_bytes() == (repo / "models/final/model.pt").read_bytes()
    assert json.loads((repo / "metrics/headline.json").read_text())["objective"] == "final"

    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "model": "multimodal"}, sort_keys=False))
    switched = _dvc(repo, "repro", "headline")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert (repo / "models/headline/model.pt").read_bytes() == b"multimodal" * 100
    assert not list((repo / "models").glob(".headline*"))  # no temp folder left behind
