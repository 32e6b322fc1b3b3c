"""The original notebook's API, call for call, as thin facades over the pipeline's own code.

    train, valid = MeldDataset("data/tables/train.csv"), MeldDataset("data/tables/valid.csv")
    config = ERCConfigLoader("params.yaml", "final").load()
    _, model = ERCTrainer(config).train(data=(train, valid), n_epochs=5, batch_size=32, save_to="models/nb")
    model = ERCModel.load("models/nb")   # the pipeline's ErcModel: the same model back, any objective
    metrics = ERCEvaluator(model).evaluate(dataset=MeldDataset("data/tables/test.csv"), batch_size=64)

``ERCConfigLoader(path).load()`` reads a params.yaml (the objective named ``name``, or the file's
top-level ``model``) or a YAML of one objective config (named ``name`` or the file stem).
Datasets are featurized on the fly with the featurize stage's frozen encoders (cached on the
dataset per feature setting); training and evaluation are the functions the stages call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import yaml

from hlm12erc.config import (
    PARAMS_FILE,
    ConfigError,
    FeatureParams,
    ObjectiveConfig,
    Params,
    load_params,
    params_from_dict,
)
from hlm12erc.data.meld import load_table
from hlm12erc.features.featurize import Featurizer
from hlm12erc.features.store import FeatureSet
from hlm12erc.metrics import compute_metrics, report_text
from hlm12erc.models.erc import ErcModel
from hlm12erc.models.erc import ErcModel as ERCModel
from hlm12erc.runtime import select_device
from hlm12erc.training.fit import fit, new_model

__all__ = ["ERCConfigLoader", "ERCEvaluator", "ERCMetricCalculator", "ERCModel", "ERCTrainer", "MeldDataset"]


class ERCConfigLoader:
    def __init__(self, path: str | Path, name: str | None = None):
        self.path, self.name = Path(path), name

    def load(self) -> ObjectiveConfig:
        if not self.path.exists():
            raise ConfigError(f"{self.path}: config file not found")
        raw = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if "objectives" in raw:
            params = params_from_dict(raw)
            return params.objective(self.name or params.model)
        name = self.name or self.path.stem
        return params_from_dict({"model": name, "objectives": {name: raw}}).objectives[name]


def _default_params() -> Params:
    return load_params(PARAMS_FILE) if PARAMS_FILE.exists() else Params()


class MeldDataset:
    """One 1NF table CSV: ``.df`` (media paths absolute), ``len``, ``dataset[i]`` = the row as a dict."""

    def __init__(self, path: str | Path, labels: Sequence[str] | None = None):
        self.path = Path(path)
        self.df: pd.DataFrame = load_table(self.path, labels)
        self._features: dict[str, FeatureSet] = {}

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, row: int) -> dict:
        return self.df.iloc[row].to_dict()

    def features(self, params: FeatureParams | None = None) -> FeatureSet:
        """The rows' features with the frozen encoders, computed once per feature setting."""
        params = params or _default_params().features
        key = repr(params)
        if key not in self._features:
            self._features[key] = Featurizer(params, progress=False)(self.df)
        return self._features[key]


class ERCMetricCalculator:
    """accuracy, weighted/macro F1 and per-class scores over a fixed label list."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def __call__(self, y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
        return compute_metrics(y_true, y_pred, self.labels)

    def report(self, y_true: Sequence[str], y_pred: Sequence[str]) -> str:
        return report_text(y_true, y_pred, self.labels)


class ERCTrainer:
    """Trains one objective config (from :class:`ERCConfigLoader`) on MeldDatasets."""

    def __init__(self, config: ObjectiveConfig, params: Params | None = None):
        self.config = config
        self.params = params or _default_params()

    def train(self, data: tuple[MeldDataset, MeldDataset], n_epochs: int | None = None,
              batch_size: int | None = None, save_to: str | Path | None = None,
              device: str | None = None) -> tuple[dict, ErcModel]:
        """Returns ``(info, model)``; ``info["history"]`` holds the per-epoch curves."""
        train_data, valid_data = data
        params = replace(self.params, train=replace(self.params.train,
                                                    batch_size=batch_size or self.params.train.batch_size,
                                                    device=device or self.params.train.device))
        objective = replace(self.config, epochs=n_epochs or self.config.epochs)
        train_set, valid_set = train_data.features(params.features), valid_data.features(params.features)
        model = new_model(objective, params, train_set.dims)
        fit(model, train_data.df, valid_data.df, train_set, valid_set, params,
            device=select_device(params.train.device), progress=False)
        info = dict(model.info)
        model.info.pop("history", None)
        if save_to:
            model.save(save_to)
        return info, model


class ERCEvaluator:
    """Scores a trained model on a MeldDataset; prints scikit-learn's classification report."""

    def __init__(self, model: ErcModel):
        self.model = model

    def evaluate(self, dataset: MeldDataset, batch_size: int = 256, device: str | None = None) -> dict:
        feature_params = params_from_dict({"features": self.model.meta.get("features") or {}}).features
        features = dataset.features(feature_params) if self.model.uses_cached_features else None
        self.model.to(select_device(device or "auto"))
        probs = self.model.predict_proba(dataset.df, features, batch_size=batch_size)
        labels = self.model.labels
        predicted = [labels[i] for i in probs.argmax(1)]
        actual = dataset.df["label"].astype(str).tolist()
        calculator = ERCMetricCalculator(labels)
        print(calculator.report(actual, predicted))
        return calculator(actual, predicted)
