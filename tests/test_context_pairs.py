"""Context pairs (hlm12erc.data.context.text_pairs) and batching, with the real all-MiniLM-L6-v2 tokenizer
(bundled, offline).
"""


from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from finetune_support import make_table  # noqa: E402
from hlm12erc.data import context  # noqa: E402
from hlm12erc.models.text_encoder import (  # noqa: E402
    collate_pairs,
)
from hlm12erc.training.tasks import bucketed_batches  # noqa: E402

CPU = torch.device("cpu")


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
