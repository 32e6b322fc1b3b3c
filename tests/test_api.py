"""The original notebook's API on the synthetic 1NF tables, end to end."""

import json

import pytest
import yaml

from conftest import ERC_LABELS
from hlm12erc.config import ConfigError, Params, TrainParams, load_params
from hlm12erc.models.erc import ErcModel
from hlm12erc.notebook import ERCConfigLoader, ERCEvaluator, ERCMetricCalculator, ERCModel, ERCTrainer, MeldDataset

pytestmark = pytest.mark.slow  # minutes: whole stages, subprocesses or servers (`make test-fast` skips them)


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
    assert saved["format"] == 4 and saved["objective"]["epochs"] == 4 and saved["objective"]["name"] == "fusion"

    metrics = ERCEvaluator(model).evaluate(dataset=test, batch_size=5, device="cpu")
    assert "weighted avg" in capsys.readouterr().out
    assert metrics["n"] == 14 and set(metrics["per_class"]) == set(ERC_LABELS)
    again = ERCEvaluator(model).evaluate(dataset=test, batch_size=64, device="cpu")
    assert again == metrics  # deterministic, batch size irrelevant
    loaded = ERCModel.load(tmp_path / "model")
    assert ERCEvaluator(loaded).evaluate(dataset=test, batch_size=64) == metrics


def test_dataset_features_and_metric_calculator(erc_tables):
    dataset = MeldDataset(erc_tables / "sample.csv")
    features = dataset.features()
    assert features.arrays["audio"].shape == (len(dataset), features.dims["audio"])
    item = features[2]
    assert set(item) >= {"audio", "visual", "mask", "label"} and item["label"] == dataset.df["label"][2]
    assert not features.mask[2, 1] and not features.mask[4, 2]  # no audio / no frames rows (text, audio, visual)
    scores = ERCMetricCalculator(ERC_LABELS)(["joy", "anger"], ["joy", "joy"])
    assert scores["accuracy"] == 0.5 and scores["per_class"]["anger"]["recall"] == 0.0
