"""The product as users run it: `dvc repro` on the demo corpus in a fresh clone.

One module-scoped clone runs the whole DAG once (a few minutes on 2 cores); the tests then read
its outputs and drive `dvc` the way the README tells users to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIMODAL = ("text", "audio", "visual")


def _dvc(clone: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), *args], cwd=clone, text=True, capture_output=True,
                            env=os.environ | {"DVC_NO_ANALYTICS": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def demo_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean clone of this checkout's tracked files (with uncommitted edits), reproduced once."""
    clone = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    for name in ("dvc.lock",):  # reproduce from scratch, as on a machine without the cache
        (clone / name).unlink(missing_ok=True)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run([*git, "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=clone, check=True)
    os.environ["HLM12ERC_MLFLOW_URI"] = f"sqlite:///{clone / 'mlflow.db'}"
    started = time.perf_counter()
    _dvc(clone, "repro")
    print(f"full DAG: {time.perf_counter() - started:.0f} s")
    return clone


def _metrics(clone: Path, name: str) -> dict:
    return json.loads((clone / "metrics" / f"{name}.json").read_text())


@pytest.mark.slow
def test_repro_writes_every_objective_and_the_table(demo_clone: Path) -> None:
    for name in ("mock", "baseline", *UNIMODAL, "text_finetune", "fusion", "multimodal", "loss", "final",
                 "headline"):
        metrics = _metrics(demo_clone, name)
        assert 0.0 <= metrics["weighted_f1"] <= 1.0 and metrics["n"] > 0, name
    table = (demo_clone / "metrics" / "objectives.md").read_text()
    assert "final" in table and "weighted" in table.lower()
    assert (demo_clone / "plots" / "final" / "confusion.png").stat().st_size > 0


@pytest.mark.slow
def test_fusion_beats_every_unimodal_model_on_demo_test(demo_clone: Path) -> None:
    best_unimodal = max(_metrics(demo_clone, name)["weighted_f1"] for name in UNIMODAL)
    chance = 1 / 7
    for name in UNIMODAL:
        assert _metrics(demo_clone, name)["weighted_f1"] > chance, name
    for name in ("final", "multimodal"):
        assert _metrics(demo_clone, name)["weighted_f1"] > best_unimodal, name


@pytest.mark.slow
def test_second_repro_is_up_to_date(demo_clone: Path) -> None:
    result = _dvc(demo_clone, "repro")
    assert "Stage 'download' didn't change" in result.stdout or "up to date" in result.stdout.lower()
    assert "Running stage" not in result.stdout


@pytest.mark.slow
def test_dag_shows_the_chain(demo_clone: Path) -> None:
    dot = _dvc(demo_clone, "dag", "--dot").stdout.replace('"', "").replace(" ", "")
    chain = ["download", "extract", "tabulate", "featurize", "train@final", "evaluate@final", "report"]
    for source, target in zip(chain, chain[1:]):
        assert f"{source}->{target}" in dot, (source, target)


@pytest.mark.slow
def test_exp_run_retrains_only_the_headline(demo_clone: Path) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "add", "-A"],
                   cwd=demo_clone, check=True)
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit",
                    "-qm", "demo outputs"], cwd=demo_clone, check=True)
    result = _dvc(demo_clone, "exp", "run", "-S", "model=multimodal")
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran and all("headline" in line for line in ran), ran
    diff = _dvc(demo_clone, "metrics", "diff", "--json").stdout
    assert "metrics/headline.json" in diff
    shown = _dvc(demo_clone, "exp", "show", "--csv").stdout
    assert "multimodal" in shown


@pytest.mark.slow
def test_unknown_model_name_fails_listing_known_names(demo_clone: Path) -> None:
    result = subprocess.run(
        [sys.executable, "pipeline/train.py", "--params", "params.yaml", "--objective", "nope",
         "--tables", "data/tables", "--features", "data/features", "--out", "/tmp/nope",
         "--plots", "/tmp/nope-plots"], cwd=demo_clone, text=True, capture_output=True)
    assert result.returncode == 2
    assert "nope" in result.stderr and "multimodal" in result.stderr and "Traceback" not in result.stderr
