"""The ErcModel's text views (encoders x context windows), seed ensembles, and fit / save / load /
predict_proba as one interface for every kind of objective, with tiny random BERT encoders.
"""


from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import hlm12erc.training.fit  # noqa: E402
from conftest import erc_random_features  # noqa: E402
from finetune_support import LABELS, TEXT_FINETUNE, fit_text, make_table, tiny_params  # noqa: E402
from hlm12erc.config import ConfigError, ObjectiveConfig  # noqa: E402
from hlm12erc.data import context  # noqa: E402
from hlm12erc.models.erc import ErcModel, text_views  # noqa: E402
from hlm12erc.models.fusion import HeadConfig, head_inputs, head_logits  # noqa: E402
from hlm12erc.models.text_encoder import (  # noqa: E402
    encode_pairs,
)
from hlm12erc.training.fit import fit, new_model  # noqa: E402

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- views and windows
@pytest.fixture(scope="module")
def data():
    """train (6 dialogues), valid, test tables and random label-correlated features aligned with them."""
    tables = {"train": make_table(6, 5, seed=21), "valid": make_table(2, 5, "valid", seed=22),
              "test": make_table(2, 4, "test", seed=23)}
    features = {s: erc_random_features(len(t), seed=i, dims={"text": 12, "audio": 8, "visual": 6})
                for i, (s, t) in enumerate(tables.items())}
    return tables, features


@pytest.fixture(scope="module")
def ensemble(tiny_model_dir, data):
    """(params, model): a seed ensemble of two encoders alone (``fusion: none``)."""
    tables, _ = data
    params = tiny_params(tiny_model_dir, epochs=2, members=2)
    return params, fit_text(params, tables["train"], tables["valid"])


def test_context_windows_average_every_encoder_over_every_window(ensemble, data, tmp_path, monkeypatch):
    """``windows``: each encoder also reads other (past, future) windows at prediction, probabilities averaged;
    the training window comes first, a repeat of it is read once, and a head's train rows use it alone."""
    params, encoders = ensemble
    tables, features = data
    objective = replace(TEXT_FINETUNE, windows=[[0, 0], [2, 1], [1, 0]])  # [2, 1] is the training window
    model = fit(new_model(objective, params), tables["train"], tables["valid"], None, None, params,
                encoders_from=encoders, progress=False)
    assert model.config.reading_windows == [(2, 1), (0, 0), (1, 0)]
    for split in ("train", "valid"):
        table = tables[split]
        logits, pooled = text_views(model, table, 16, CPU)
        alone = text_views(encoders, table, 16, CPU)
        assert len(logits) == len(pooled) == 6  # encoder-major, window-minor
        for k in range(2):
            np.testing.assert_allclose(logits[3 * k], alone[0][k], atol=1e-6)
            for w, (past, future) in enumerate([(2, 1), (0, 0), (1, 0)]):
                examples = context.text_pairs(table, model.tokenizer, 48, past, future)
                lg, _ = encode_pairs(model.encoders[k], examples, model.tokenizer.pad_token_id, 8, CPU)
                np.testing.assert_allclose(logits[3 * k + w], lg, atol=1e-5)
        assert not np.allclose(logits[0], logits[1], atol=1e-3)  # another window is another reading
        training_only = text_views(model, table, 16, CPU, every_window=False)
        assert len(training_only[0]) == 2
        np.testing.assert_array_equal(training_only[0][1], alone[0][1])
        softmax = np.stack([torch.softmax(torch.from_numpy(lg), -1).numpy() for lg in logits])
        expected = softmax.mean(0)
        np.testing.assert_allclose(model.predict_proba(table), expected, atol=1e-6)
    model.save(tmp_path / "windows")
    loaded = ErcModel.load(tmp_path / "windows")
    assert loaded.config.reading_windows == [(2, 1), (0, 0), (1, 0)]
    np.testing.assert_allclose(loaded.predict_proba(tables["test"]), model.predict_proba(tables["test"]), atol=1e-6)
    # a head: train rows through the training window alone, valid (selection) through every window
    calls = []
    real = text_views

    def spy(model, table, batch_size, device, every_window=True):
        calls.append((len(table), every_window))
        return real(model, table, batch_size, device, every_window)

    monkeypatch.setattr(hlm12erc.training.fit, "text_views", spy)
    final = replace(OBJECTIVES["final"], windows=[[0, 0]])
    head = new_model(final, params, features["train"].dims)
    fit(head, tables["train"], tables["valid"], features["train"], features["valid"], params, encoders_from=encoders,
        progress=False)
    assert calls == [(len(tables["train"]), False), (len(tables["valid"]), True)]


def test_windows_need_finetuned_text_and_two_turn_counts():
    from hlm12erc.config import params_from_dict

    with pytest.raises(ConfigError, match=r"objectives.text.windows are context windows of the fine-tuned"):
        params_from_dict({"model": "text", "objectives": {"text": {"windows": [[1, 0]]}}})
    for bad in ([[1]], [[2, -1]], [[1, 0, 2]]):
        with pytest.raises(ConfigError, match=r"each window is \[past, future\] turns, both >= 0"):
            params_from_dict({"model": "t", "objectives": {"t": {"text": "finetuned", "fusion": "none",
                                                                 "windows": bad}}})
    with pytest.raises(ConfigError, match=r"objectives.t.windows"):
        params_from_dict({"model": "t", "objectives": {"t": {"text": "finetuned", "fusion": "none",
                                                             "windows": [["a", 1]]}}})


# ----------------------------------------------------------------------------- seed ensemble
def test_ensemble_member_k_is_the_single_encoder_of_seed_plus_k(tiny_model_dir, data, tmp_path):
    tables, _ = data
    params = tiny_params(tiny_model_dir, epochs=1, members=2)
    model = fit_text(params, tables["train"], tables["valid"])
    assert model.config.n_encoders == 2 and len(model.encoders) == 2
    single = tiny_params(tiny_model_dir, epochs=1)
    alone = fit_text(replace(single, train=replace(single.train, seed=single.train.seed + 1)), tables["train"],
                     tables["valid"])
    for mine, its in zip(model.encoders[1].state_dict().values(), alone.encoders[0].state_dict().values()):
        assert torch.equal(mine, its)
    assert any(not torch.equal(a, b) for a, b in zip(model.encoders[0].state_dict().values(),
                                                      model.encoders[1].state_dict().values()))
    # each member reads every row, and the probabilities are averaged
    logits, _ = text_views(model, tables["train"], 16, CPU)
    assert len(logits) == 2
    softmax = [torch.softmax(torch.from_numpy(lg), -1).numpy() for lg in logits]
    probs = model.predict_proba(tables["train"])
    np.testing.assert_allclose(probs, (softmax[0] + softmax[1]) / 2, atol=1e-6)
    model.save(tmp_path / "m")
    loaded = ErcModel.load(tmp_path / "m")
    assert loaded.config.members == 2 and len(loaded.encoders) == 2
    np.testing.assert_allclose(loaded.predict_proba(tables["train"]), probs, rtol=0, atol=1e-6)


def test_a_head_trains_on_every_view_each_a_dialogue_of_its_own():
    table = make_table(2, 3)
    config = HeadConfig(modalities=["text"], input_dims={"text": 4}, hidden=8, dialogue="past")
    base = head_inputs(table, {}, np.ones((len(table), 1), dtype=bool), config)
    pooled = [np.arange(6, dtype=np.float32)[:, None] + np.full((6, 4), 100 * k, np.float32) for k in range(2)]
    logits = [np.full((6, 7), 10.0 * k, np.float32) for k in range(2)]
    stacked, source = base.over_views(pooled, logits)
    assert source.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    np.testing.assert_array_equal(stacked.arrays["text"][:, 0], [0, 100, 1, 101, 2, 102, 3, 103, 4, 104, 5, 105])
    np.testing.assert_array_equal(stacked.prior[:, 0], [0, 10] * 6)
    np.testing.assert_array_equal(stacked.turn, base.turn[source])
    # each encoder's reading of a dialogue is one dialogue of its own: whole, in turn order, one view
    batches = stacked.dialogue_batches(3)
    assert len(batches) == 4
    for rows in batches:
        assert len(set(stacked.dialogue[rows])) == 1 and len(set(stacked.prior[rows, 0])) == 1
        assert len(set(base.dialogue[source[rows]])) == 1 and stacked.turn[rows].tolist() == [0, 1, 2]


def test_zero_members_is_a_config_error():
    from hlm12erc.config import params_from_dict

    with pytest.raises(ConfigError, match=r"text_encoder.members=0 must be >= 1"):
        params_from_dict({"text_encoder": {"members": 0}})


# ----------------------------------------------------------------------------- one interface
OBJECTIVES = {
    "fusion": ObjectiveConfig(name="fusion", modalities=["text", "audio", "visual"], fusion="attention", hidden=16,
                              epochs=3),
    "text_finetune": TEXT_FINETUNE,
    "final": ObjectiveConfig(name="final", modalities=["text", "audio", "visual"], text="finetuned",
                             fusion="attention", dialogue="bidirectional", hidden=16, loss="weighted_ce",
                             aux_loss="triplet", aux_weight=0.1, epochs=3),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_fit_save_load_predict_is_one_interface(name, ensemble, data, tmp_path):
    params, encoders = ensemble
    tables, features = data
    objective = OBJECTIVES[name]
    model = new_model(objective, params, features["train"].dims)
    fit(model, tables["train"], tables["valid"], features["train"], features["valid"], params,
        encoders_from=encoders if objective.text == "finetuned" else None, progress=False)
    assert (model.head is None) == (objective.fusion == "none")
    assert len(model.encoders) == (2 if objective.text == "finetuned" else 0)
    test_features = features["test"] if model.uses_cached_features else None
    probs = model.predict_proba(tables["test"], test_features, batch_size=3)
    assert probs.shape == (len(tables["test"]), len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(model.predict_proba(tables["test"], test_features, batch_size=64), probs, atol=1e-6)
    model.save(tmp_path / name)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["format"] == 4 and config["objective"]["name"] == name
    assert (tmp_path / name / "head.pt").is_file() == (objective.fusion != "none")
    loaded = ErcModel.load(tmp_path / name)
    assert loaded.modalities == model.modalities
    for batch_size in (2, 64):
        np.testing.assert_allclose(loaded.predict_proba(tables["test"], test_features, batch_size=batch_size), probs,
                                   rtol=0, atol=1e-6)


def test_a_head_on_finetuned_text_averages_every_encoder_view(ensemble, data):
    """The head reads each encoder's pooled vector; its probabilities are averaged over the views."""
    params, encoders = ensemble
    tables, features = data
    objective = replace(OBJECTIVES["final"], modalities=["text"], dialogue="none", aux_loss="none")
    model = new_model(objective, params, features["train"].dims)
    fit(model, tables["train"], tables["valid"], None, None, params, encoders_from=encoders, progress=False)
    assert not model.uses_cached_features
    for split in ("train", "valid"):
        table = tables[split]
        _, pooled = text_views(model, table, 16, CPU)
        base = head_inputs(table, {}, np.ones((len(table), 1), dtype=bool), model.config.head)
        views = [torch.softmax(torch.from_numpy(head_logits(model.head, base.with_text(p), 8, CPU)), -1)
                 .numpy() for p in pooled]
        expected = np.stack(views).mean(0)
        np.testing.assert_allclose(model.predict_proba(table), expected, atol=1e-6)


def test_encoders_from_other_text_encoder_params_are_refused(ensemble, data):
    params, encoders = ensemble
    tables, features = data
    other = replace(params, text_encoder=replace(params.text_encoder, past_turns=1))
    model = new_model(OBJECTIVES["final"], other, features["train"].dims)
    with pytest.raises(ConfigError, match="rerun `dvc repro text_encoder`"):
        fit(model, tables["train"], tables["valid"], features["train"], features["valid"], other,
            encoders_from=encoders, progress=False)
