"""MLflow: the one place that knows the tracking URI, the experiment, run names and tags.

URI: env ``HLM12ERC_MLFLOW_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` where ``<repo>`` is
the DVC repository the stage runs for (``DVC_ROOT``, which DVC sets for every stage and points at
the user's repo, not its temp copy, for ``dvc exp run --queue``/``--temp`` experiments), else the
repository containing the working directory (the nearest folder with ``.dvc`` or ``.git``), else
the working directory: never where the package is installed. Artifacts of a sqlite store go to
``mlartifacts/`` beside the database file.
Run names come from DVC (``DVC_STAGE``, e.g. ``train@text``), else ``<kind>-<objective>``;
tags carry the git commit and the DVC experiment name. mlflow is imported lazily (slow import).
Every run also records its process (pid, host, pid start time), so :func:`end_orphaned_runs`, called
whenever the store is opened, can end FAILED the RUNNING runs of a stage killed with ``kill -9``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

EXPERIMENT = "hlm12erc"
URI_ENV = "HLM12ERC_MLFLOW_URI"
PID_TAG, HOST_TAG, START_TAG = "hlm12erc.pid", "hlm12erc.host", "hlm12erc.pid_start"


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``.dvc`` or
    ``.git``; ``start`` itself when there is none."""
    here = Path(start or os.getcwd()).resolve()
    for marker in (".dvc", ".git"):
        for folder in (here, *here.parents):
            if (folder / marker).exists():
                return folder
    return here


def store_root() -> Path:
    """Folder of the default ``mlflow.db``: the DVC repo running the stage, else the user's repo; never the
    package's install location (``DVC_ROOT`` also covers queued experiments in ``.dvc/tmp/exps/...``)."""
    return Path(os.environ.get("DVC_ROOT") or repo_root())


def tracking_uri() -> str:
    return os.environ.get(URI_ENV) or f"sqlite:///{(store_root() / 'mlflow.db').resolve()}"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite store; None for a server store."""
    return Path(unquote(urlparse(uri).path)) if uri.startswith("sqlite:///") else None


def _artifact_location(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` for a sqlite store (else the server decides)."""
    database = _sqlite_file(uri)
    return None if database is None else (database.parent / "mlartifacts").resolve().as_uri()


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive ``flock`` held while a sqlite store is opened/created (a server store needs none):
    MLflow creates a sqlite schema on first use unlocked, so parallel first opens would clash."""
    database = _sqlite_file(uri)
    if database is None or sys.platform == "win32":
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    try:  # one lock file per database, in the temp folder (nothing new appears in the repo)
        digest = hashlib.sha1(str(database.resolve()).encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"hlm12erc-mlflow-{digest}.lock"
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # e.g. another user's lock file in a shared /tmp: go on unlocked
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def ensure_store() -> str:
    """Create the store and the experiment if missing, end orphaned runs; returns the experiment id.
    Safe to call from many processes at once (stages of parallel queued experiments)."""
    mlflow = _mlflow()
    uri = tracking_uri()
    with _store_lock(uri):
        experiment_id = _ensure_experiment(mlflow, uri)
        end_orphaned_runs(experiment_id)
    return experiment_id


def _process_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart; "" elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid
        return not start or _process_start(pid) == start
    if start and Path("/proc").is_dir():
        return _process_start(pid) == start
    return True


def process_tags() -> dict[str, str]:
    """Who runs this run: read back by :func:`end_orphaned_runs`."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), START_TAG: _process_start(os.getpid())}


def end_orphaned_runs(experiment_id: str | None = None) -> list[str]:
    """End FAILED every RUNNING run of this host whose recorded process is gone; returns their ids.
    Runs from other hosts, and runs without the process tags, are left alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    if experiment_id is None:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return []
        experiment_id = experiment.experiment_id
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or _alive(int(pid), tags.get(START_TAG, "")):
            continue
        client.set_tag(run.info.run_id, "hlm12erc.end_reason",
                       f"process {pid} on {host} was gone (killed?); ended by process {os.getpid()}")
        client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    return ended


def _ensure_experiment(mlflow: Any, uri: str) -> str:
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))
    except Exception:  # another process created it first
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def run_name(kind: str, objective: str) -> str:
    return os.environ.get("DVC_STAGE") or f"{kind}-{objective}"


def git_commit() -> str:
    root = str(store_root())
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run_tags(kind: str, objective: str) -> dict[str, str]:
    commit = git_commit()
    tags = {"kind": kind, "objective": objective, "mlflow.source.git.commit": commit, "git_commit": commit}
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_STAGE", "dvc_stage"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/dataclass dicts -> ``{"a.b": v}``; lists become comma-joined strings."""
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(values, (list, tuple)):
        return {prefix: ",".join(map(str, values))}
    return {prefix: values}


@contextlib.contextmanager
def start_run(kind: str, objective: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """An MLflow run in experiment ``hlm12erc``; ends FINISHED, or FAILED when the body raises."""
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=ensure_store(), run_name=run_name(kind, objective),
                          tags={**run_tags(kind, objective), **process_tags()}) as run:
        if params:
            mlflow.log_params({k: ("" if v is None else v) for k, v in flatten(params).items()})
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    _mlflow().log_artifacts(str(folder), artifact_path)


def log_text(text: str, name: str) -> None:
    _mlflow().log_text(text, name)


def log_page(objective: str, folder: str | Path, artifact_path: str = "page") -> str:
    """Log an error-analysis page folder into the objective's latest evaluate run (of the same DVC
    experiment, when in one), so `mlflow ui` shows it next to that run's metrics; into a new ``pages``
    run tagged with the objective when there is none (a store made after the evaluate stages ran).
    Returns the run id."""
    from mlflow.tracking import MlflowClient

    experiment_id = ensure_store()
    client = MlflowClient(tracking_uri())
    query = f"tags.kind = 'evaluate' and tags.objective = '{objective}'"
    if os.environ.get("DVC_EXP_NAME"):
        query += f" and tags.dvc_exp_name = '{os.environ['DVC_EXP_NAME']}'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        client.log_artifacts(runs[0].info.run_id, str(folder), artifact_path)
        return runs[0].info.run_id
    with start_run("pages", objective) as run:
        log_artifacts(folder, artifact_path)
        return run.info.run_id
