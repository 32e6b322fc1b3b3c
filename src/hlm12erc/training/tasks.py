"""What the loop trains: a text encoder on dialogue-context pairs, or a fusion head on utterance vectors.

:class:`EncoderTask` batches pairs of similar length (less padding, order still random);
:class:`HeadTask` batches random utterances, or whole dialogues when the head reads dialogue context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from hlm12erc.data.meld import check_labels
from hlm12erc.models.fusion import FusionHead, HeadInputs
from hlm12erc.models.text_encoder import TextEncoder, collate_pairs, encode_pairs
from hlm12erc.training import distributed
from hlm12erc.training.loop import Task


def label_ids(table: pd.DataFrame, labels: Sequence[str], source: str = "table") -> np.ndarray:
    """Class ids of the rows; a label outside ``labels`` is a DataError naming the row."""
    check_labels(table, labels, source)
    lookup = {label: i for i, label in enumerate(labels)}
    return np.array([lookup[label] for label in table["label"].astype(str)], dtype=np.int64)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                     bucket_size: int = 50) -> list[np.ndarray]:
    """Seeded length buckets: shuffle, sort by length within chunks of ``bucket_size`` batches,
    cut into batches, shuffle the batches. Similar lengths share a batch; order stays random."""
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    chunk = max(batch_size, batch_size * bucket_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class EncoderTask(Task):
    """A text encoder on dialogue-context pairs; the encoder body at ``lr``, its classifier at ``head_lr``."""

    def __init__(self, encoder: TextEncoder, examples: list[dict[str, list[int]]], y: np.ndarray,
                 valid_examples: list[dict[str, list[int]]], valid_y: np.ndarray, pad_id: int,
                 eval_batch_size: int, device: torch.device):
        self.module, self.examples, self.y = encoder, examples, y
        self.valid_examples, self.valid_y = valid_examples, valid_y
        self.pad_id, self.eval_batch_size, self.device = pad_id, eval_batch_size, device
        self.lengths = np.array([len(e["input_ids"]) for e in self.examples])

    def is_head(self, name: str) -> bool:
        return name.startswith("head.")

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        return bucketed_batches(self.lengths, batch_size, rng)

    def forward(self, net: nn.Module, rows: np.ndarray, device: torch.device):
        batch = {k: v.to(device) for k, v in collate_pairs([self.examples[i] for i in rows], self.pad_id).items()}
        return net(**batch), torch.as_tensor(self.y[rows], device=device)

    def valid_logits(self, dist: distributed.Dist) -> np.ndarray:
        """Each rank scores its shard of valid; the shards are gathered (all ranks get all logits)."""
        rows = distributed.shard(len(self.valid_examples), dist)
        part, _ = encode_pairs(self.module, [self.valid_examples[i] for i in rows], self.pad_id,
                               self.eval_batch_size, self.device)
        if not dist.enabled:
            return part
        out = np.zeros((len(self.valid_examples), part.shape[1]), dtype=np.float32)
        for rank_rows, rank_logits in dist.all_gather((rows, part)):
            out[rank_rows] = rank_logits
        return out


class HeadTask(Task):
    """A fusion head on per-utterance vectors: random utterance batches, or whole dialogues when it
    reads dialogue context. Valid is scored by ``valid_scorer`` (it may average several views)."""

    def __init__(self, head: FusionHead, inputs: HeadInputs, y: np.ndarray,
                 valid_scorer: Callable[[], np.ndarray], valid_y: np.ndarray):
        self.module, self.inputs, self.y = head, inputs, y
        self.valid_scorer, self.valid_y = valid_scorer, valid_y

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        if self.module.config.dialogue != "none":
            n = len(set(self.inputs.dialogue.tolist()))
            return self.inputs.dialogue_batches(batch_size, rng.permutation(n))
        order = rng.permutation(len(self.y))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def forward(self, net: nn.Module, rows: np.ndarray, device: torch.device):
        return net(*self.inputs.batch(rows, device)), torch.as_tensor(self.y[rows], device=device)

    def valid_logits(self, dist: distributed.Dist) -> np.ndarray:
        return self.valid_scorer()
