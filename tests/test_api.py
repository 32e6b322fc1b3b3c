"""The original notebook's API on the synthetic 1NF tables, end to end."""

import json

import pytest
import torch
import yaml

from conftest import ERC_LABELS
from hlm12erc.config import ConfigError, Params, TrainParams, load_params
from hlm12erc.modelling import ERCConfigLoader, ERCModel
from hlm12erc.models.erc import ErcModel
from hlm12erc.training import ERCDataCollator, ERCEvaluator, ERCMetricCalculator, ERCTrainer, MeldDataset


def test_config_loader_reads_params_or_a_single_objective(tmp_path):
    assert ERCConfigLoader("params.yaml", "multimodal").load().fusion == "attention"
    assert ERCConfigLoader("params.yaml").load().name == load_params().model  # top-level `model`
    single = tmp_path / "tiny.yaml"
    single.write_text(yaml.safe_dump({"modalities": ["text", "audio"], "hidden": 8, "loss": "focal"}))
    config = ERCConfigLoader(single).load()
    assert (config.name, config.modalities, config.hidden, config.loss) == ("tiny", ["text", "audio"], 8, "focal")
    with pytest.raises(ConfigError, match="unknown model config 'nope'.*baseline"):
        ERCConfigLoader("params.yaml", "nope").load()
    single.write_text(yaml.safe_dump({"modalitys": ["text"]}))
    with pytest.raises(ConfigError, match="modalitys"):
        ERCConfigLoader(single).load()


def test_notebook_flow_train_save_evaluate(erc_tables, tmp_path, capsys):
    train, valid, test = (MeldDataset(erc_tables / f"{s}.csv") for s in ("train", "valid", "test"))
    assert len(train) == 28 and list(train.df.columns)[:3] == ["split", "source_split", "dialogue"]
    assert train[0]["clip_id"] == "dia0_utt0"
    params = Params(train=TrainParams(seed=3, patience=5, device="cpu"), labels=list(ERC_LABELS))
    config = ERCConfigLoader("params.yaml", "fusion").load()
    info, model = ERCTrainer(config, params).train(data=(train, valid), n_epochs=4, batch_size=8,
                                                   save_to=tmp_path / "model", device="cpu")
    assert ERCModel is ErcModel and isinstance(model, ErcModel) and not model.head.training
    assert [row["epoch"] for row in info["history"]] == list(range(1, len(info["history"]) + 1))
    assert 1 <= len(info["history"]) <= 4
    assert train.features(params.features) is train.features(params.features)  # featurized once per dataset
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["format"] == 2 and saved["objective"]["epochs"] == 4 and saved["objective"]["name"] == "fusion"

    metrics = ERCEvaluator(model).evaluate(dataset=test, batch_size=5, device="cpu")
    assert "weighted avg" in capsys.readouterr().out
    assert metrics["n"] == 14 and set(metrics["per_class"]) == set(ERC_LABELS)
    again = ERCEvaluator(model).evaluate(dataset=test, batch_size=64, device="cpu")
    assert again == metrics  # deterministic, batch size irrelevant
    loaded = ERCModel.load(tmp_path / "model")
    assert ERCEvaluator(loaded).evaluate(dataset=test, batch_size=64) == metrics


def test_collator_and_metric_calculator(erc_tables):
    dataset = MeldDataset(erc_tables / "sample.csv")
    features = dataset.features()
    batch = ERCDataCollator(["audio", "visual"], ERC_LABELS)([features[i] for i in range(5)])
    assert batch.features["audio"].shape == (5, features.dims["audio"]) and set(batch.features) == {"audio", "visual"}
    assert batch.mask.shape == (5, 2) and batch.mask.dtype == torch.bool
    assert batch.mask[2, 0].item() is False and batch.mask[4, 1].item() is False  # no audio / no frames rows
    assert batch.targets.tolist() == [ERC_LABELS.index(label) for label in dataset.df["label"][:5]]
    scores = ERCMetricCalculator(ERC_LABELS)(["joy", "anger"], ["joy", "joy"])
    assert scores["accuracy"] == 0.5 and scores["per_class"]["anger"]["recall"] == 0.0
