"""The training loop on random label-correlated features (no encoders): fast and deterministic."""

from dataclasses import replace

import pytest
import torch
from conftest import ERC_LABELS, erc_random_features

from hlm12erc.config import ObjectiveConfig, TrainParams, load_params
from hlm12erc.data.meld import DataError
from hlm12erc.training.metrics import compute_metrics, confusion
from hlm12erc.training.trainer import (as_batch, load_model, predict_logits, save_model, select_device,
                                       train_model)

FAST = TrainParams(seed=1, epochs=1, batch_size=8, lr=1e-2, patience=3, device="cpu")


@pytest.fixture(scope="module")
def splits():
    return erc_random_features(42, seed=0), erc_random_features(21, seed=1)


@pytest.mark.parametrize("name", sorted(load_params().objectives))
def test_every_objective_in_params_trains_one_epoch(name, splits):
    objective = replace(load_params().objective(name), epochs=1)
    result = train_model(objective, *splits, ERC_LABELS, FAST, progress=False)
    assert list(result.history["epoch"]) == [1]
    assert torch.isfinite(torch.tensor(result.history["train_loss"].to_numpy())).all()
    assert not result.model.training  # handed back in eval mode


def test_learns_separable_features_and_keeps_the_best_epoch(splits):
    objective = ObjectiveConfig(name="t", modalities=["text", "audio", "visual"], fusion="attention", hidden=32)
    result = train_model(objective, *splits, ERC_LABELS, replace(FAST, epochs=25, patience=4), progress=False)
    history = result.history
    assert history["valid_weighted_f1"].max() > 0.8
    assert result.best_valid_weighted_f1 == history["valid_weighted_f1"].max()
    assert result.best_epoch == int(history.loc[history["valid_weighted_f1"].idxmax(), "epoch"])
    assert len(history) <= result.best_epoch + 4  # early stopping after `patience` epochs without gain
    valid = as_batch(splits[1], objective.modalities, ERC_LABELS)
    from hlm12erc.training.trainer import evaluate_batch
    assert evaluate_batch(result.model, valid, 64, torch.device("cpu"))["weighted_f1"] == pytest.approx(
        result.best_valid_weighted_f1)  # the restored weights are the best epoch's


def test_training_is_seeded(splits):
    objective = ObjectiveConfig(name="t", modalities=["text", "audio"], hidden=16)
    first = train_model(objective, *splits, ERC_LABELS, replace(FAST, epochs=2), progress=False)
    second = train_model(objective, *splits, ERC_LABELS, replace(FAST, epochs=2), progress=False)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_checkpoint_round_trip_and_deterministic_evaluation(splits, tmp_path):
    objective = ObjectiveConfig(name="t", modalities=["text", "visual"], fusion="attention", hidden=16, dropout=0.5)
    model = train_model(objective, *splits, ERC_LABELS, replace(FAST, epochs=2), progress=False).model
    save_model(model, tmp_path / "m", objective, {"feature_dims": splits[0].dims})
    loaded, config = load_model(tmp_path / "m")
    assert config["objective"]["name"] == "t" and config["model"]["labels"] == ERC_LABELS
    data = as_batch(splits[1], objective.modalities, ERC_LABELS)
    cpu = torch.device("cpu")
    first, second = predict_logits(loaded, data, 5, cpu), predict_logits(loaded, data, 7, cpu)
    assert torch.allclose(first, second, atol=1e-6)  # dropout off, batch size irrelevant
    assert torch.allclose(first, predict_logits(model, data, 64, cpu), atol=1e-6)
    assert torch.equal(loaded.mean_text, model.mean_text)  # train statistics travel with the checkpoint


def test_label_outside_the_set_names_the_row(splits):
    train, valid = splits
    bad = erc_random_features(10, seed=3)
    bad.index.loc[4, "label"] = "contempt"
    with pytest.raises(DataError, match=r"row 5 \(dia0_utt4\).*'contempt'"):
        train_model(ObjectiveConfig(name="t"), bad, valid, ERC_LABELS, FAST, progress=False)


def test_another_label_set_works_by_changing_labels():
    labels = ["neg", "pos"]
    train = erc_random_features(20, seed=0, labels=labels)
    valid = erc_random_features(10, seed=1, labels=labels)
    result = train_model(ObjectiveConfig(name="t"), train, valid, labels, FAST, progress=False)
    assert result.model.config.n_classes == 2


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")


def test_metrics_keep_absent_classes_and_hand_values():
    actual = ["joy", "joy", "anger", "neutral"]
    predicted = ["joy", "anger", "anger", "joy"]
    metrics = compute_metrics(actual, predicted, ERC_LABELS)
    assert metrics["accuracy"] == 0.5 and metrics["n"] == 4
    assert set(metrics["per_class"]) == set(ERC_LABELS)
    assert metrics["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # joy: p=1/2 r=1/2 f1=.5 ; anger: p=1/2 r=1 f1=2/3 ; neutral 0 -> weighted (2*.5+2/3+0)/4
    assert metrics["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3) / 4)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 7)
    counts = confusion(actual, predicted, ERC_LABELS)
    assert counts.shape == (7, 7) and counts[ERC_LABELS.index("joy"), ERC_LABELS.index("anger")] == 1


def test_predict_proba_checks_feature_widths(splits):
    from hlm12erc.config import ConfigError
    from hlm12erc.training.trainer import predict_proba

    objective = ObjectiveConfig(name="t", modalities=["text", "audio"], hidden=16)
    model = train_model(objective, *splits, ERC_LABELS, FAST, progress=False).model
    probs = predict_proba(model, splits[1], 8, torch.device("cpu"), "valid")
    assert probs.shape == (21, len(ERC_LABELS)) and abs(probs.sum(1) - 1).max() < 1e-5
    wider = erc_random_features(21, seed=1, dims={"text": 13, "audio": 8, "visual": 6})
    with pytest.raises(ConfigError, match=r"valid: text features are 13-d but the model expects 12-d.*retrain"):
        predict_proba(model, wider, 8, torch.device("cpu"), "valid")
