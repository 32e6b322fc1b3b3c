"""Fine-tuning (hlm12erc.training.finetune) on tiny synthetic dialogues with a tiny random BERT.

The tokenizer is the real all-MiniLM-L6-v2 one (bundled, offline); the encoder is a 1-layer,
32-wide BERT saved to a temp folder so that every test runs in seconds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
from hlm12erc.training import finetune as ft  # noqa: E402

from finetune_support import LABELS, make_table, save_tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return ft.load_tokenizer(ft.default_model_path())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


def decode(tokenizer, ids):
    return tokenizer.decode(ids)


# ----------------------------------------------------------------------------- context building
def test_turn_text_has_speaker_prefix():
    assert ft.turn_text("Ross", "Hi there") == "Ross: Hi there"
    assert ft.turn_text("", "Hi") == "Hi"
    assert ft.turn_text(float("nan"), "Hi") == "Hi"


def test_target_first_then_past_turns_in_order(tokenizer):
    table = make_table(1, 5)
    cfg = ft.FinetuneConfig(past_turns=2, future_turns=0, max_tokens=128)
    examples = ft.build_inputs(table, tokenizer, cfg)
    text = decode(tokenizer, examples[4]["input_ids"])
    # row 4 (Rachel, seq 4): target, then turns 2 and 3 in chronological order; turn 1 not included
    assert text.startswith("[CLS] rachel : turn 0 4")
    first_sep = text.index("[SEP]")
    context = text[first_sep:]
    assert context.index("monica : turn 0 2") < context.index("ross : turn 0 3")
    assert "turn 0 1" not in text
    # the first turn has no context: just [CLS] target [SEP]
    assert decode(tokenizer, examples[0]["input_ids"]).count("[SEP]") == 1
    # token types: 0 for [CLS] target [SEP], 1 for the context
    types = examples[4]["token_type_ids"]
    n_first = examples[4]["input_ids"].index(tokenizer.sep_token_id) + 1
    assert set(types[:n_first]) == {0} and set(types[n_first:]) == {1}


def test_future_turns_come_after_a_separator(tokenizer):
    table = make_table(1, 5)
    cfg = ft.FinetuneConfig(past_turns=1, future_turns=1, max_tokens=128)
    text = decode(tokenizer, ft.build_inputs(table, tokenizer, cfg)[2]["input_ids"])
    assert text.count("[SEP]") == 3
    past, future = text.index("turn 0 1"), text.index("turn 0 3")
    assert text.index("turn 0 2") < past < text.rindex("[SEP]", 0, future) < future


def test_truncation_never_cuts_the_target(tokenizer):
    table = make_table(1, 6)
    table.loc[5, "x_text"] = "this target sentence is long and must survive whole " * 2
    table.loc[4, "x_text"] = "a very long previous turn " * 20
    cfg = ft.FinetuneConfig(past_turns=3, max_tokens=40)
    examples = ft.build_inputs(table, tokenizer, cfg)
    ids = examples[5]["input_ids"]
    assert len(ids) <= 40
    target = tokenizer(ft.turn_text("Monica", table.loc[5, "x_text"]), add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(target)] == target  # whole target right after [CLS]
    # the nearest past turn was cut on its far (older) side: its end is kept, right before [SEP]
    prev = tokenizer(ft.turn_text("Rachel", table.loc[4, "x_text"]), add_special_tokens=False)["input_ids"]
    context = ids[len(target) + 2:-1]
    assert context == prev[-len(context):] and len(context) > 0
    assert all(len(e["input_ids"]) <= 40 for e in examples)


def test_context_uses_sequence_order_and_dialogue_groups(tokenizer):
    table = make_table(2, 5)
    cfg = ft.FinetuneConfig(past_turns=3, future_turns=1)
    expected = ft.build_inputs(table, tokenizer, cfg)
    shuffled = table.sample(frac=1.0, random_state=3)
    got = ft.build_inputs(shuffled, tokenizer, cfg)
    for pos, row in enumerate(shuffled.index):
        assert got[pos] == expected[row]
    # no leak across dialogues: the first turn of dialogue 1 has no past from dialogue 0
    first_d1 = int(np.flatnonzero((table["dialogue"] == 1) & (table["sequence"] == 0))[0])
    assert "turn 0" not in decode(tokenizer, expected[first_d1]["input_ids"])


# ----------------------------------------------------------------------------- batching
def test_dynamic_padding_pads_to_batch_longest():
    examples = [{"input_ids": [101, 5, 102], "token_type_ids": [0, 0, 0]},
                {"input_ids": [101, 5, 6, 7, 102], "token_type_ids": [0, 0, 0, 0, 0]}]
    batch = ft.collate(examples, pad_id=0, labels=[1, 2])
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 2]


def test_bucketed_batches_cover_all_rows_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(5, 100, size=257)
    a = ft.bucketed_batches(lengths, 16, np.random.default_rng(1), bucket_size=4)
    b = ft.bucketed_batches(lengths, 16, np.random.default_rng(1), bucket_size=4)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(np.concatenate(a).tolist()) == list(range(257))
    # length bucketing: padding waste is far below that of random batches
    bucketed = sum(lengths[x].max() * len(x) for x in a)
    shuffled = np.random.default_rng(1).permutation(257)
    random_waste = sum(lengths[shuffled[i:i + 16]].max() * len(shuffled[i:i + 16]) for i in range(0, 257, 16))
    assert bucketed < random_waste


def test_class_weights_sqrt_inverse_frequency():
    y = np.array([0] * 8 + [1] * 2)
    w = ft.class_weights(y, 3, 0.5).numpy()
    assert w[1] > w[0]
    assert np.isclose(w[0], (10 / (3 * 8)) ** 0.5) and np.isclose(w[2], w[1])


# ----------------------------------------------------------------------------- training
def tiny_cfg(model_dir: str, **overrides) -> ft.FinetuneConfig:
    base = dict(model_path=model_dir, max_tokens=48, past_turns=2, epochs=3, batch_size=8, lr=3e-3,
                head_lr=1e-2, warmup_ratio=0.0, dropout=0.0, patience=5, seed=5, threads=1, device="cpu")
    base.update(overrides)
    return ft.FinetuneConfig(**base)


def test_training_reduces_loss_and_writes_checkpoint(tmp_path, tiny_model_dir):
    train, valid = make_table(4, 8, seed=1), make_table(2, 6, "valid", seed=2)
    rows = []
    summary = ft.train_finetune(tiny_cfg(tiny_model_dir), train, valid, LABELS, tmp_path / "m", on_epoch=rows.append)
    history = pd.read_csv(tmp_path / "m" / "history.csv")
    assert list(history.columns[:7]) == list(ft.HISTORY_COLUMNS)
    assert len(rows) == len(history) == summary["epochs_run"] == 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "finetune" and meta["labels"] == LABELS
    assert meta["best_epoch"] == summary["best_epoch"]
    # the checkpoint is the best epoch's model: its valid weighted-F1 is reproduced from disk
    from sklearn.metrics import f1_score

    probs = ft.predict_proba(tmp_path / "m", valid)
    assert probs.shape == (len(valid), len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    y = ft.encode_labels(valid, LABELS)
    assert np.isclose(f1_score(y, probs.argmax(1), average="weighted"), summary["best_valid_weighted_f1"])


def test_save_load_round_trip_gives_identical_probabilities(tmp_path, tiny_model_dir):
    train, valid = make_table(2, 6, seed=3), make_table(1, 6, "valid", seed=4)
    ft.train_finetune(tiny_cfg(tiny_model_dir, epochs=1, loss="focal"), train, valid, LABELS, tmp_path / "a")
    loaded = ft.load_finetuned(tmp_path / "a", device="cpu")
    model, tokenizer, cfg, labels = loaded
    assert not model.training and labels == LABELS and cfg.loss == "focal"
    first = ft.predict_proba(loaded, valid, batch_size=3)
    ft.save_checkpoint(model, tokenizer, cfg, labels, tmp_path / "b")
    second = ft.predict_proba(tmp_path / "b", valid, batch_size=16)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    # probabilities come back in table order, whatever the row order
    shuffled = valid.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(ft.predict_proba(loaded, shuffled), first[shuffled.index.to_numpy()], atol=1e-6)


def test_same_seed_gives_identical_results(tmp_path, tiny_model_dir):
    train, valid = make_table(3, 6, seed=5), make_table(1, 6, "valid", seed=6)
    cfg = tiny_cfg(tiny_model_dir, epochs=2, dropout=0.1, loss="weighted_ce", label_smoothing=0.1)
    one = ft.train_finetune(cfg, train, valid, LABELS, tmp_path / "one")
    two = ft.train_finetune(cfg, train, valid, LABELS, tmp_path / "two")
    for a, b in zip(one["history"], two["history"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    np.testing.assert_array_equal(ft.predict_proba(tmp_path / "one", valid), ft.predict_proba(tmp_path / "two", valid))


def test_max_train_rows_keeps_whole_dialogues(tiny_model_dir):
    table = make_table(6, 5)
    sub = ft._subset(table, 12, seed=0)
    assert 12 <= len(sub) < len(table)
    assert (sub.groupby("dialogue").size() == 5).all()


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="pooling"):
        ft.FinetuneConfig(pooling="max").validate()
    with pytest.raises(ValueError, match="unknown key"):
        ft.FinetuneConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="must be a number"):
        ft.FinetuneConfig(lr="5e-5").validate()  # what YAML 1.1 makes of 5e-5


def test_time_budget_stops_before_an_epoch_that_would_overrun(tmp_path, tiny_model_dir):
    train, valid = make_table(2, 6, seed=7), make_table(1, 6, "valid", seed=8)
    summary = ft.train_finetune(tiny_cfg(tiny_model_dir, epochs=3, max_minutes=1e-6), train, valid, LABELS,
                                tmp_path / "m")
    assert summary["epochs_run"] == 1 and summary["stopped_by_budget"]
    assert (tmp_path / "m" / "model.pt").exists()
