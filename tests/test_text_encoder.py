"""The fine-tuned text encoders and the one model interface, on tiny synthetic dialogues with a tiny random BERT.

Context pairs (hlm12erc.data.context.text_pairs), batching, encoder training through the one loop
(ErcModel with ``text: finetuned``), seed ensembles (``text_encoder.members``), and fit / save / load /
predict_proba for every kind of objective. The tokenizer is the real all-MiniLM-L6-v2 one (bundled,
offline); the encoder is a 1-layer, 32-wide BERT saved to a temp folder so that every test runs in seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
import hlm12erc.training.fit  # noqa: E402
from conftest import erc_random_features  # noqa: E402
from finetune_support import LABELS, make_table, save_tiny_bert  # noqa: E402
from hlm12erc.config import ConfigError, ObjectiveConfig, Params, TextEncoderParams, TrainParams  # noqa: E402
from hlm12erc.data import context  # noqa: E402
from hlm12erc.models.erc import ErcModel, text_views  # noqa: E402
from hlm12erc.models.fusion import HeadConfig, head_inputs, head_logits  # noqa: E402
from hlm12erc.models.text_encoder import (  # noqa: E402
    EncoderConfig,
    collate_pairs,
    encode_pairs,
    encoder_path,
    load_tokenizer,
)
from hlm12erc.training.fit import dialogue_subset, fit, new_model  # noqa: E402
from hlm12erc.training.loop import HISTORY_COLUMNS  # noqa: E402
from hlm12erc.training.tasks import bucketed_batches, label_ids  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(encoder_path("minilm"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


def decode(tokenizer, ids):
    return tokenizer.decode(ids)


def pairs(table, tokenizer, max_tokens=128, past_turns=3, future_turns=1):
    return context.text_pairs(table, tokenizer, max_tokens, past_turns, future_turns)


# ----------------------------------------------------------------------------- context building
def test_turn_text_has_speaker_prefix():
    assert context.turn_text("Ross", "Hi there") == "Ross: Hi there"
    assert context.turn_text("", "Hi") == "Hi"
    assert context.turn_text(float("nan"), "Hi") == "Hi"


def test_target_first_then_past_turns_in_order(tokenizer):
    table = make_table(1, 5)
    examples = pairs(table, tokenizer, past_turns=2, future_turns=0)
    text = decode(tokenizer, examples[4]["input_ids"])
    # row 4 (Rachel, seq 4): target, then turns 2 and 3 in chronological order; turn 1 not included
    assert text.startswith("[CLS] rachel : turn 0 4")
    first_sep = text.index("[SEP]")
    ctx = text[first_sep:]
    assert ctx.index("monica : turn 0 2") < ctx.index("ross : turn 0 3")
    assert "turn 0 1" not in text
    # the first turn has no context: just [CLS] target [SEP]
    assert decode(tokenizer, examples[0]["input_ids"]).count("[SEP]") == 1
    # token types: 0 for [CLS] target [SEP], 1 for the context
    types = examples[4]["token_type_ids"]
    n_first = examples[4]["input_ids"].index(tokenizer.sep_token_id) + 1
    assert set(types[:n_first]) == {0} and set(types[n_first:]) == {1}


def test_future_turns_come_after_a_separator(tokenizer):
    table = make_table(1, 5)
    text = decode(tokenizer, pairs(table, tokenizer, past_turns=1, future_turns=1)[2]["input_ids"])
    assert text.count("[SEP]") == 3
    past, future = text.index("turn 0 1"), text.index("turn 0 3")
    assert text.index("turn 0 2") < past < text.rindex("[SEP]", 0, future) < future


def test_truncation_never_cuts_the_target(tokenizer):
    table = make_table(1, 6)
    table.loc[5, "x_text"] = "this target sentence is long and must survive whole " * 2
    table.loc[4, "x_text"] = "a very long previous turn " * 20
    examples = pairs(table, tokenizer, max_tokens=40, past_turns=3, future_turns=1)
    ids = examples[5]["input_ids"]
    assert len(ids) <= 40
    target = tokenizer(context.turn_text("Monica", table.loc[5, "x_text"]), add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(target)] == target  # whole target right after [CLS]
    # the nearest past turn was cut on its far (older) side: its end is kept, right before [SEP]
    prev = tokenizer(context.turn_text("Rachel", table.loc[4, "x_text"]), add_special_tokens=False)["input_ids"]
    ctx = ids[len(target) + 2:-1]
    assert ctx == prev[-len(ctx):] and len(ctx) > 0
    assert all(len(e["input_ids"]) <= 40 for e in examples)


def test_context_uses_sequence_order_and_dialogue_groups(tokenizer):
    table = make_table(2, 5)
    expected = pairs(table, tokenizer)
    shuffled = table.sample(frac=1.0, random_state=3)
    got = pairs(shuffled, tokenizer)
    for pos, row in enumerate(shuffled.index):
        assert got[pos] == expected[row]
    # no leak across dialogues: the first turn of dialogue 1 has no past from dialogue 0
    first_d1 = int(np.flatnonzero((table["dialogue"] == 1) & (table["sequence"] == 0))[0])
    assert "turn 0" not in decode(tokenizer, expected[first_d1]["input_ids"])


def test_dialogues_are_told_apart_by_split_and_source_split(tokenizer):
    """MELD reuses dialogue ids across its source splits: same id, other source split = other dialogue."""
    a, b = make_table(1, 3), make_table(1, 3, seed=4)
    a["source_split"], b["source_split"] = "train", "dev"
    table = pd.concat([a, b], ignore_index=True)
    ids = context.dialogue_ids(table)
    assert len(set(ids)) == 2
    text = decode(tokenizer, pairs(table, tokenizer, past_turns=3, future_turns=0)[3]["input_ids"])
    assert text.count("[SEP]") == 1  # the first turn of the second dialogue has no past


# ----------------------------------------------------------------------------- batching
def test_dynamic_padding_pads_to_batch_longest():
    examples = [{"input_ids": [101, 5, 102], "token_type_ids": [0, 0, 0]},
                {"input_ids": [101, 5, 6, 7, 102], "token_type_ids": [0, 0, 0, 1, 1]}]
    batch = collate_pairs(examples, pad_id=0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0].tolist() == [101, 5, 102, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]


def test_bucketed_batches_cover_all_rows_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(5, 100, size=257)
    a = bucketed_batches(lengths, 16, np.random.default_rng(1), bucket_size=4)
    b = bucketed_batches(lengths, 16, np.random.default_rng(1), bucket_size=4)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(np.concatenate(a).tolist()) == list(range(257))
    # length bucketing: padding waste is far below that of random batches
    bucketed = sum(lengths[x].max() * len(x) for x in a)
    shuffled = np.random.default_rng(1).permutation(257)
    random_waste = sum(lengths[shuffled[i:i + 16]].max() * len(shuffled[i:i + 16]) for i in range(0, 257, 16))
    assert bucketed < random_waste


# ----------------------------------------------------------------------------- training
TEXT_FINETUNE = ObjectiveConfig(name="text_finetune", text="finetuned", fusion="none")


def tiny_params(model_dir: str, epochs: int = 3, **overrides) -> Params:
    enc = dict(encoder=model_dir, max_tokens=48, past_turns=2, future_turns=1, epochs=epochs,
               batch_size=8, lr=3e-3, head_lr=1e-2, warmup_ratio=0.0, dropout=0.0, patience=5, min_steps=0,
               eval_batch_size=16)
    enc.update(overrides)
    return Params(train=TrainParams(seed=5, epochs=3, batch_size=8, lr=1e-2, patience=5, device="cpu"),
                  labels=list(LABELS), text_encoder=TextEncoderParams(**enc))


def fit_text(params: Params, train, valid, **kwargs) -> ErcModel:
    return fit(new_model(TEXT_FINETUNE, params), train, valid, None, None, params, progress=False, **kwargs)


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
    assert meta["format"] == 3 and meta["model"]["labels"] == LABELS and meta["model"]["head"] is None
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
    assert loaded.config.encoder == EncoderConfig(tiny_model_dir, 48, 2, 1, "mean", 0.0)
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

    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="max")
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
    assert config["format"] == 3 and config["objective"]["name"] == name
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
