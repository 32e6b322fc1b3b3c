"""Tiny fine-tuning inputs shared by the fine-tuning and DDP tests, and a torchrun worker.

``python tests/finetune_support.py --model DIR --out DIR`` (alone or under ``torchrun``) trains
on a fixed synthetic table and saves this rank's weights to ``OUT/rank<RANK>.pt`` plus a
``OUT/rank<RANK>.json`` summary, so a test can compare ranks and world sizes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def make_table(n_dialogues: int = 2, turns: int = 6, split: str = "train", seed: int = 0) -> pd.DataFrame:
    """Dialogues whose words give the label away (learnable), rows in dialogue/sequence order."""
    rng = np.random.default_rng(seed)
    cue = {"anger": "furious", "disgust": "gross", "fear": "scared", "joy": "great",
           "neutral": "okay", "sadness": "crying", "surprise": "whoa"}
    rows = []
    for d in range(n_dialogues):
        for s in range(turns):
            label = LABELS[int(rng.integers(len(LABELS)))]
            rows.append({"split": split, "dialogue": d, "sequence": s, "clip_id": f"dia{d}_utt{s}",
                         "speaker": ["Ross", "Rachel", "Monica"][s % 3],
                         "x_text": f"turn {d} {s} I am {cue[label]} today", "label": label})
    return pd.DataFrame(rows)


def save_tiny_bert(path: Path, tokenizer, dropout: float = 0.1) -> str:
    """A 1-layer, 32-wide random BERT (+ the real MiniLM tokenizer) saved to ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


# 33 rows in batches of 8: a short last batch of one row, so rank 1 of 2 gets an empty share
DDP_TRAIN = dict(n_dialogues=3, turns=11, seed=11)
DDP_VALID = dict(n_dialogues=2, turns=7, split="valid", seed=12)


def ddp_config(model_dir: str, **overrides):
    from hlm12erc.training.finetune import FinetuneConfig

    base = dict(model_path=model_dir, max_tokens=48, past_turns=2, future_turns=1, epochs=2, batch_size=8,
                lr=3e-3, head_lr=1e-2, warmup_ratio=0.2, dropout=0.0, loss="weighted_ce", label_smoothing=0.1,
                patience=5, seed=5, threads=1, device="cpu")
    return FinetuneConfig(**{**base, **overrides})


def main() -> None:
    import torch

    from hlm12erc.training.finetune import train_finetune

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    calls: list[int] = []
    summary = train_finetune(ddp_config(args.model), make_table(**DDP_TRAIN), make_table(**DDP_VALID), LABELS,
                             out / "model", on_epoch=lambda row: calls.append(row["epoch"]))
    rank = os.environ.get("RANK", "0")
    torch.save(summary.pop("last_model").state_dict(), out / f"rank{rank}.pt")  # this rank's weights in memory
    summary.pop("history")
    (out / f"rank{rank}.json").write_text(json.dumps({**summary, "on_epoch_calls": calls}))


if __name__ == "__main__":
    main()
