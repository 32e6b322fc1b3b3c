"""Fine-tuning text encoders through the one loop, on tiny synthetic dialogues with a tiny random BERT
(a 1-layer, 32-wide BERT saved to a temp folder, so that every test runs in seconds).
"""


from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from finetune_support import LABELS, fit_text, make_table, tiny_params  # noqa: E402
from hlm12erc.config import ConfigError  # noqa: E402
from hlm12erc.models.erc import ErcModel  # noqa: E402
from hlm12erc.models.text_encoder import (  # noqa: E402
    EncoderConfig,
)
from hlm12erc.training.fit import dialogue_subset  # noqa: E402
from hlm12erc.training.loop import HISTORY_COLUMNS  # noqa: E402
from hlm12erc.training.tasks import label_ids  # noqa: E402

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- training
def test_training_reduces_loss_and_writes_checkpoint(tmp_path, tiny_model_dir):
    train, valid = make_table(4, 8, seed=1), make_table(2, 6, "valid", seed=2)
    rows = []
    model = fit_text(tiny_params(tiny_model_dir), train, valid, on_epoch=rows.append)
    history = pd.DataFrame(model.info.pop("history"))
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert len(rows) == len(history) == 3 and set(history["part"]) == {"encoder0"}
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert model.info["encoder0"]["best_epoch"] == int(history.loc[history["valid_weighted_f1"].idxmax(), "epoch"])
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format"] == 4 and meta["model"]["labels"] == LABELS and meta["model"]["head"] is None
    assert meta["objective"]["name"] == "text_finetune" and (tmp_path / "m" / "encoder_0.pt").is_file()
    assert not (tmp_path / "m" / "head.pt").exists() and (tmp_path / "m" / "tokenizer").is_dir()
    # the checkpoint is the best epoch's model: its valid weighted-F1 is reproduced from disk
    from sklearn.metrics import f1_score

    probs = ErcModel.load(tmp_path / "m").predict_proba(valid)
    assert probs.shape == (len(valid), len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    y = label_ids(valid, LABELS)
    best = model.info["encoder0"]["best_valid_weighted_f1"]
    assert np.isclose(f1_score(y, probs.argmax(1), average="weighted"), best)


def test_save_load_round_trip_gives_identical_probabilities(tmp_path, tiny_model_dir):
    train, valid = make_table(2, 6, seed=3), make_table(1, 6, "valid", seed=4)
    fit_text(tiny_params(tiny_model_dir, epochs=1, loss="focal"), train, valid).save(tmp_path / "a")
    loaded = ErcModel.load(tmp_path / "a", device="cpu")
    assert not loaded.encoders[0].training and loaded.labels == LABELS
    assert loaded.config.encoder == EncoderConfig(tiny_model_dir, 48, 2, 1, 0.0)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    # the network's shape only, not where its weights were read (an absolute path: other bytes in every clone)
    assert str(tiny_model_dir) not in json.dumps(saved["encoder_architecture"])
    first = loaded.predict_proba(valid, batch_size=3)
    loaded.save(tmp_path / "b")
    second = ErcModel.load(tmp_path / "b").predict_proba(valid, batch_size=16)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    # probabilities come back in table order, whatever the row order
    shuffled = valid.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(loaded.predict_proba(shuffled), first[shuffled.index.to_numpy()], atol=1e-6)


def test_same_seed_gives_identical_results(tiny_model_dir):
    train, valid = make_table(3, 6, seed=5), make_table(1, 6, "valid", seed=6)
    params = tiny_params(tiny_model_dir, epochs=2, dropout=0.1, loss="weighted_ce", label_smoothing=0.1)
    one, two = fit_text(params, train, valid), fit_text(params, train, valid)
    assert one.info["history"] == two.info["history"]
    np.testing.assert_array_equal(one.predict_proba(valid), two.predict_proba(valid))


def test_max_train_rows_keeps_whole_dialogues():
    table = make_table(6, 5)
    sub = dialogue_subset(table, 12, seed=0)
    assert 12 <= len(sub) < len(table)
    assert (sub.groupby("dialogue").size() == 5).all()


def test_bad_config_is_rejected():
    from hlm12erc.config import params_from_dict

    with pytest.raises(ValueError, match="precision"):
        EncoderConfig(precision="fp16")
    with pytest.raises(ValueError, match="max_tokens"):
        EncoderConfig(max_tokens=4)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nope'\] in 'text_encoder'"):
        params_from_dict({"text_encoder": {"nope": 1}})


def test_a_yaml_string_learning_rate_is_a_config_error():
    from hlm12erc.config import params_from_dict

    with pytest.raises(ConfigError, match="must be a number"):
        params_from_dict({"text_encoder": {"lr": "5e-5"}})  # what YAML 1.1 makes of 5e-5


def test_time_budget_stops_before_an_epoch_that_would_overrun(tmp_path, tiny_model_dir):
    train, valid = make_table(2, 6, seed=7), make_table(1, 6, "valid", seed=8)
    model = fit_text(tiny_params(tiny_model_dir, epochs=3, max_minutes=1e-6), train, valid)
    assert len(model.info["history"]) == 1 and model.info["encoder0"]["stopped_by_budget"]
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "encoder_0.pt").exists()
