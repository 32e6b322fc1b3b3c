"""The MLflow store follows the user, never the install; a killed run is ended FAILED by the next opener."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hlm12erc import tracking
from hlm12erc.config import PROJECT_ROOT

SRC = str(Path(tracking.__file__).resolve().parents[1])  # the one install both clones share


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (tracking.URI_ENV, "DVC_ROOT", "MLFLOW_TRACKING_URI")}
    return env | {"PYTHONPATH": SRC, "MLFLOW_DISABLE_TELEMETRY": "true"} | extra


def test_a_second_clone_sharing_the_install_logs_into_its_own_store(tmp_path: Path) -> None:
    clone = tmp_path / "second-clone"
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    (clone / "sub").mkdir()
    code = "from hlm12erc import tracking; tracking.ensure_store(); print(tracking.tracking_uri())"
    before = (PROJECT_ROOT / "mlflow.db").stat().st_mtime_ns if (PROJECT_ROOT / "mlflow.db").exists() else None
    result = subprocess.run([sys.executable, "-c", code], cwd=clone / "sub", env=_env(), text=True,
                            capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sqlite:///{clone.resolve() / 'mlflow.db'}"
    assert (clone / "mlflow.db").is_file() and not (clone / "sub" / "mlflow.db").exists()
    after = (PROJECT_ROOT / "mlflow.db").stat().st_mtime_ns if (PROJECT_ROOT / "mlflow.db").exists() else None
    assert before == after  # the install's checkout was not touched
    # DVC_ROOT (a stage, or a queued experiment's temp copy) wins over the working directory,
    # and HLM12ERC_MLFLOW_URI over both.
    code = "from hlm12erc import tracking; print(tracking.tracking_uri())"
    staged = subprocess.run([sys.executable, "-c", code], cwd=clone, env=_env(DVC_ROOT=str(tmp_path)),
                            text=True, capture_output=True, timeout=60)
    assert staged.stdout.strip() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}", staged.stderr
    explicit = subprocess.run([sys.executable, "-c", code], cwd=clone,
                              env=_env(DVC_ROOT=str(tmp_path), HLM12ERC_MLFLOW_URI="sqlite:////x/y.db"),
                              text=True, capture_output=True, timeout=60)
    assert explicit.stdout.strip() == "sqlite:////x/y.db", explicit.stderr


RUN_AND_HANG = """
import sys, time
from hlm12erc import tracking
with tracking.start_run("train", "final") as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def test_a_run_killed_with_sigkill_is_ended_failed_by_the_next_stage(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = subprocess.Popen([sys.executable, "-c", RUN_AND_HANG], env=_env(HLM12ERC_MLFLOW_URI=uri),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().strip()
        assert run_id, child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody ended it
    os.environ[tracking.URI_ENV] = uri
    try:
        live = subprocess.Popen([sys.executable, "-c", RUN_AND_HANG], env=_env(HLM12ERC_MLFLOW_URI=uri),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            live_id = live.stdout.readline().strip()  # its start_run already ended the orphan
            assert live_id, live.stderr.read()
            deadline = time.monotonic() + 30
            while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert tracking.end_orphaned_runs() == []  # the live run is left alone
            assert client.get_run(live_id).info.status == "RUNNING"
        finally:
            os.kill(live.pid, signal.SIGKILL)
            live.wait(timeout=30)
    finally:
        del os.environ[tracking.URI_ENV]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "was gone" in run.data.tags["hlm12erc.end_reason"]
