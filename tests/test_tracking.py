"""MLflow tracking against a tmp sqlite store (never the repo's mlflow.db)."""

import pytest

from hlm12erc import tracking
from hlm12erc.config import PROJECT_ROOT


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.tracking_uri())


def test_uri_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(PROJECT_ROOT / "src")  # a sub-folder of a checkout: that checkout's store
    assert tracking.tracking_uri() == f"sqlite:///{PROJECT_ROOT.resolve() / 'mlflow.db'}"
    (tmp_path / "other" / ".dvc").mkdir(parents=True)  # another repo: its own store, same install
    (tmp_path / "other" / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "other" / "deep")
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'other').resolve() / 'mlflow.db'}"
    # inside a DVC stage: the repo DVC runs for (for queued experiments DVC points DVC_ROOT at
    # the user's repo, not at its .dvc/tmp/exps copy), wherever the package is installed
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlflow.db'}"
    monkeypatch.setenv(tracking.URI_ENV, f"sqlite:///{tmp_path}/x.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/x.db"


def _ensure_store_at_barrier(uri: str, barrier, results) -> None:
    import os

    os.environ[tracking.URI_ENV] = uri
    import mlflow  # noqa: F401  (the slow import happens before the barrier)

    barrier.wait()
    try:
        results.put(("ok", tracking.ensure_store()))
    except BaseException as error:  # noqa: BLE001  (reported to the parent)
        results.put(("error", f"{type(error).__name__}: {error}"))


def test_ensure_store_is_safe_when_processes_create_a_fresh_store_at_once(tmp_path):
    """Parallel queued experiments may each be first to log into a store that does not exist yet."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    workers = 3
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_ensure_store_at_barrier, args=(uri, barrier, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [kind for kind, _ in outcomes] == ["ok"] * workers, outcomes
    assert len({experiment_id for _, experiment_id in outcomes}) == 1, outcomes
    from mlflow.tracking import MlflowClient

    experiments = MlflowClient(uri).search_experiments()
    assert [e.name for e in experiments if e.name == tracking.EXPERIMENT] == [tracking.EXPERIMENT]


def test_run_logs_params_metrics_artifacts_and_tags(erc_mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "train@text")
    monkeypatch.setenv("DVC_EXP_NAME", "brave-owl")
    experiment_id = tracking.ensure_store()
    assert tracking.ensure_store() == experiment_id  # idempotent
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "config.json").write_text("{}")
    with tracking.start_run("train", "text", {"objective": {"hidden": 128, "modalities": ["text", "audio"]},
                                               "lr": 0.001}) as run:
        for epoch, f1 in enumerate([0.2, 0.4, 0.3], start=1):
            tracking.log_metrics({"valid_weighted_f1": f1}, step=epoch)
        tracking.log_artifacts(artifact, "model")
        tracking.log_text("report", "classification_report.txt")
    client = _client()
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "train@text"
    assert stored.data.params["objective.hidden"] == "128"
    assert stored.data.params["objective.modalities"] == "text,audio"
    assert stored.data.tags["dvc_exp_name"] == "brave-owl" and stored.data.tags["git_commit"]
    history = client.get_metric_history(run.info.run_id, "valid_weighted_f1")
    assert [(m.step, m.value) for m in history] == [(1, 0.2), (2, 0.4), (3, 0.3)]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "classification_report.txt"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/config.json"]
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts live beside the tmp db


def test_crashed_run_ends_failed(erc_mlflow_uri, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.start_run("train", "audio", {"x": 1}):
            raise RuntimeError("boom")
    runs = _client().search_runs([tracking.ensure_store()])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("train-audio", "FAILED")]
    import mlflow

    assert mlflow.active_run() is None  # nothing left dangling


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "1,2", "d": None}
