"""The one dialogue-context builder: who spoke before and after each utterance.

Every consumer (the frozen text features, the fine-tuned text encoder's input pairs, the
dialogue-level model, the dialogue bootstrap) groups rows into dialogues and orders them here, so
training, featurize and predict see the same context.

A dialogue is identified by every one of ``split``, ``source_split`` and ``dialogue`` that the
table has (MELD reuses dialogue ids across its source splits), and ordered by ``sequence``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

DIALOGUE_KEYS = ("split", "source_split", "dialogue")


def turn_text(speaker: object, text: object) -> str:
    """One turn as a model reads it: ``Speaker: utterance``."""
    speaker = "" if speaker is None or (isinstance(speaker, float) and math.isnan(speaker)) else str(speaker)
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return f"{speaker}: {text}" if speaker else text


def dialogue_ids(table: pd.DataFrame) -> np.ndarray:
    """A dialogue label per row (``split/source_split/dialogue``), the unit of batching and of the bootstrap."""
    keys = [k for k in DIALOGUE_KEYS if k in table.columns]
    return np.array(["/".join(str(v) for v in values) for values in zip(*(table[k].tolist() for k in keys))],
                    dtype=object)


def dialogue_positions(table: pd.DataFrame) -> list[tuple[np.ndarray, int]]:
    """For each row (table order): the row indices of its dialogue in ``sequence`` order, and its place there."""
    order: list[tuple[np.ndarray, int]] = [None] * len(table)  # type: ignore[list-item]
    frame = pd.DataFrame({"_pos": np.arange(len(table)), "_dialogue": dialogue_ids(table),
                          "sequence": table["sequence"].to_numpy()})
    for _, group in frame.groupby("_dialogue", sort=False):
        rows = group.sort_values("sequence", kind="stable")["_pos"].to_numpy()
        for place, row in enumerate(rows):
            order[row] = (rows, place)
    return order


def dialogues(table: pd.DataFrame) -> list[np.ndarray]:
    """Row indices of each dialogue in ``sequence`` order, dialogues in order of first appearance."""
    seen: dict[int, np.ndarray] = {}
    for rows, _place in dialogue_positions(table):
        seen.setdefault(int(rows[0]), rows)
    return list(seen.values())


def speaker_slots(table: pd.DataFrame, max_speakers: int) -> np.ndarray:
    """Per row, its speaker's order of first appearance in the dialogue (0, 1, ...), capped at
    ``max_speakers - 1``: names differ between shows, the roles "first speaker", "second" ... do not."""
    slots = np.zeros(len(table), dtype=np.int64)
    speakers = table["speaker"].astype(str).tolist()
    for rows in dialogues(table):
        index: dict[str, int] = {}
        for row in rows:
            slots[row] = min(index.setdefault(speakers[row], len(index)), max_speakers - 1)
    return slots


def previous_turns(table: pd.DataFrame, window: int) -> list[str]:
    """For each row, its ``window`` previous turns as ``Speaker: text`` lines (the frozen context vector)."""
    contexts = [""] * len(table)
    if window <= 0:
        return contexts
    lines = [turn_text(s, t) for s, t in zip(table["speaker"].tolist(), table["x_text"].tolist())]
    for row, (rows, place) in enumerate(dialogue_positions(table)):
        contexts[row] = "\n".join(lines[r] for r in rows[max(0, place - window):place])
    return contexts


# ----------------------------------------------------------------------------- text pairs
def _pack_context(turns: list[list[int]], past: list[int], future: list[int], budget: int,
                  sep_id: int) -> list[int]:
    """Pack context turns into ``budget`` tokens, nearest first (past and future alternating).

    ``past``/``future`` index ``turns`` nearest-first. The first turn that does not fit is cut
    on its far side (a past turn keeps its end, a future turn its start); the rest are dropped.
    Output order is chronological: past turns, then ``[SEP]`` and the future turns.
    """
    kept_past: list[list[int]] = []
    kept_future: list[list[int]] = []
    queue = [(side, index) for pair in itertools.zip_longest(past, future)
             for side, index in zip(("past", "future"), pair) if index is not None]
    left = budget
    for side, index in queue:
        ids, kept = turns[index], kept_past if side == "past" else kept_future
        sep = int(side == "future" and not kept_future)  # the [SEP] before the first future turn
        if len(ids) + sep <= left:
            kept.append(ids)
            left -= len(ids) + sep
            continue
        room = left - sep
        if room > 0:
            kept.append(ids[-room:] if side == "past" else ids[:room])
        break
    out: list[int] = [t for ids in reversed(kept_past) for t in ids]
    if kept_future:
        out.append(sep_id)
        out += [t for ids in kept_future for t in ids]
    return out


def text_pairs(table: pd.DataFrame, tokenizer: Any, max_tokens: int, past_turns: int,
               future_turns: int) -> list[dict[str, list[int]]]:
    """One encoded pair per row (table order): ``[CLS] target [SEP] context [SEP]``.

    The target is ``Speaker: text``; the context the ``past_turns`` previous and ``future_turns``
    next turns of its dialogue. Only the context is ever truncated (the target alone is cut only
    if it exceeds the budget). ``token_type_ids`` mark target 0, context 1.
    """
    turns = [tokenizer(turn_text(s, t), add_special_tokens=False)["input_ids"]
             for s, t in zip(table["speaker"].tolist(), table["x_text"].tolist())]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    examples: list[dict[str, list[int]]] = []
    for row, (rows, place) in enumerate(dialogue_positions(table)):
        target = turns[row][: max_tokens - 2]
        past = [int(r) for r in rows[max(0, place - past_turns):place][::-1]]
        future = [int(r) for r in rows[place + 1:place + 1 + future_turns]]
        budget = max_tokens - len(target) - 3  # [CLS] target [SEP] context [SEP]
        context = _pack_context(turns, past, future, budget, sep_id) if budget > 0 and (past or future) else []
        first = [cls_id] + target + [sep_id]
        second = context + [sep_id] if context else []
        examples.append({"input_ids": first + second, "token_type_ids": [0] * len(first) + [1] * len(second)})
    return examples
