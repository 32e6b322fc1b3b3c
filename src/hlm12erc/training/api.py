"""The original notebook's API as thin facades over the pipeline's own code.

    train, valid = MeldDataset("data/tables/train.csv"), MeldDataset("data/tables/valid.csv")
    config = ERCConfigLoader("params.yaml", "final").load()
    _, model = ERCTrainer(config).train(data=(train, valid), n_epochs=5, batch_size=32, save_to="models/nb")
    metrics = ERCEvaluator(model).evaluate(dataset=MeldDataset("data/tables/test.csv"), batch_size=64)

Datasets are featurized on the fly with the same frozen encoders as the featurize stage
(cached on the dataset object per feature setting); training and evaluation are the same
functions the train/evaluate stages call.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from hlm12erc.config import PARAMS_FILE, FeatureParams, ObjectiveConfig, Params, load_params
from hlm12erc.data.meld import load_table
from hlm12erc.features.store import FeatureSet, Featurizer
from hlm12erc.models.erc import ERCModel
from hlm12erc.training.metrics import compute_metrics, report_text
from hlm12erc.training.trainer import (Batch, TrainResult, collate, predict_logits, save_model, select_device,
                                       train_model)


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


class ERCDataCollator:
    """Feature items (``FeatureSet[i]``) -> a :class:`~hlm12erc.training.trainer.Batch` of tensors."""

    def __init__(self, modalities: Sequence[str], labels: Sequence[str]):
        self.modalities, self.labels = list(modalities), list(labels)

    def __call__(self, items: Sequence[dict]) -> Batch:
        return collate(items, self.modalities, self.labels)


class ERCMetricCalculator:
    """accuracy, weighted/macro F1 and per-class scores over a fixed label list."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def __call__(self, y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
        return compute_metrics(y_true, y_pred, self.labels)

    def report(self, y_true: Sequence[str], y_pred: Sequence[str]) -> str:
        return report_text(y_true, y_pred, self.labels)


class ERCTrainer:
    """Trains one objective config (from :class:`~hlm12erc.modelling.ERCConfigLoader`) on MeldDatasets."""

    def __init__(self, config: ObjectiveConfig, params: Params | None = None):
        self.config = config
        self.params = params or _default_params()

    def train(self, data: tuple[MeldDataset, MeldDataset], n_epochs: int | None = None,
              batch_size: int | None = None, save_to: str | Path | None = None,
              device: str | None = None) -> tuple[TrainResult, ERCModel]:
        """Returns ``(result, model)``; ``result.history`` holds the per-epoch curves."""
        train_data, valid_data = data
        train_params = replace(self.params.train, batch_size=batch_size or self.params.train.batch_size,
                               device=device or self.params.train.device)
        objective = replace(self.config, epochs=n_epochs or self.config.epochs)
        feature_params = self.params.features
        train_set, valid_set = train_data.features(feature_params), valid_data.features(feature_params)
        result = train_model(objective, train_set, valid_set, self.params.labels, train_params,
                             select_device(train_params.device), progress=False)
        result.model.feature_params = feature_params
        if save_to:
            save_model(result.model, save_to, objective, {"feature_dims": train_set.dims,
                                                          "features": asdict(feature_params)})
        return result, result.model


class ERCEvaluator:
    """Scores a trained model on a MeldDataset; prints scikit-learn's classification report."""

    def __init__(self, model: ERCModel, feature_params: FeatureParams | None = None):
        self.model = model
        self.feature_params = feature_params or getattr(model, "feature_params", None) or _default_params().features

    def evaluate(self, dataset: MeldDataset, batch_size: int = 256, device: str | None = None) -> dict:
        features = dataset.features(self.feature_params)
        labels = self.model.config.labels
        collator = ERCDataCollator(self.model.config.modalities, labels)
        data = collator([features[i] for i in range(len(features))])
        target = select_device(device or "auto")
        logits = predict_logits(self.model.to(target), data, batch_size, target)
        predicted = [labels[i] for i in torch.argmax(logits, dim=1).tolist()]
        calculator = ERCMetricCalculator(labels)
        print(calculator.report(features.labels, predicted))
        return calculator(features.labels, predicted)
