"""Tiny fine-tuning inputs shared by the text-encoder and DDP tests, and a torchrun worker.

``python tests/finetune_support.py --model DIR --out DIR`` (alone or under ``torchrun``) trains
ONE text encoder through the one training loop (``EncoderTask`` + ``train_loop``, with the
``Dist`` of ``distributed.process_group``) on a fixed synthetic table, and saves this rank's
final weights to ``OUT/rank<RANK>.pt`` (and the initial ones to ``OUT/initial<RANK>.pt``) plus
an ``OUT/rank<RANK>.json`` summary, so a test can compare ranks and world sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc.config import ObjectiveConfig

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


TEXT_FINETUNE = ObjectiveConfig(name="text_finetune", text="finetuned", fusion="none")


def tiny_params(model_dir: str, epochs: int = 3, **overrides):
    """Params for fast fine-tuning of the tiny BERT in ``model_dir`` (text_encoder fields in ``overrides``)."""
    from hlm12erc.config import Params, TextEncoderParams, TrainParams

    enc = dict(encoder=model_dir, members=1, max_tokens=48, past_turns=2, future_turns=1, epochs=epochs,
               batch_size=8, lr=3e-3, head_lr=1e-2, warmup_ratio=0.0, dropout=0.0, patience=5, min_steps=0,
               eval_batch_size=16)
    enc.update(overrides)
    return Params(train=TrainParams(seed=5, epochs=3, batch_size=8, lr=1e-2, patience=5, device="cpu"),
                  labels=list(LABELS), text_encoder=TextEncoderParams(**enc))


def fit_text(params, train, valid, **kwargs):
    """The ``text_finetune`` model fitted on ``train``, selected on ``valid``."""
    from hlm12erc.training.fit import fit, new_model

    return fit(new_model(TEXT_FINETUNE, params), train, valid, None, None, params, progress=False, **kwargs)


# 33 rows in batches of 8: a short last batch of one row, so rank 1 of 2 gets an empty share
DDP_TRAIN = dict(n_dialogues=3, turns=11, seed=11)
DDP_VALID = dict(n_dialogues=2, turns=7, split="valid", seed=12)


def ddp_encoder_config(model_dir: str):
    from hlm12erc.models.text_encoder import EncoderConfig

    return EncoderConfig(encoder=model_dir, max_tokens=48, past_turns=2, future_turns=1, dropout=0.0)


def ddp_settings():
    from hlm12erc.training.loop import LoopSettings

    return LoopSettings(epochs=2, batch_size=8, lr=3e-3, head_lr=1e-2, patience=5, seed=5, schedule="linear",
                        warmup_ratio=0.2, max_grad_norm=1.0)


def main() -> None:
    import torch

    from hlm12erc.data import context
    from hlm12erc.models.losses import Criterion, LossConfig
    from hlm12erc.models.text_encoder import build_text_encoder, load_tokenizer
    from hlm12erc.runtime import seed_everything
    from hlm12erc.training import distributed
    from hlm12erc.training.loop import train_loop
    from hlm12erc.training.tasks import EncoderTask, label_ids

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    cfg = ddp_encoder_config(args.model)
    tokenizer = load_tokenizer(args.model)
    train, valid = make_table(**DDP_TRAIN), make_table(**DDP_VALID)
    pairs = [context.text_pairs(t, tokenizer, cfg.max_tokens, cfg.past_turns, cfg.future_turns) for t in (train, valid)]
    y, valid_y = label_ids(train, LABELS), label_ids(valid, LABELS)
    calls: list[int] = []
    device = torch.device("cpu")
    with distributed.process_group(device) as dist:
        seed_everything(5)  # the same classifier init on every rank
        encoder = build_text_encoder(cfg, len(LABELS))
        rank = dist.rank
        torch.save({k: v.clone() for k, v in encoder.state_dict().items()}, out / f"initial{rank}.pt")
        task = EncoderTask(encoder, pairs[0], y, pairs[1], valid_y, tokenizer.pad_token_id, 16, device)
        criterion = Criterion(LossConfig(loss="weighted_ce", class_weight_power=0.5, label_smoothing=0.1), y,
                              len(LABELS))
        result = train_loop(task, ddp_settings(), criterion, LABELS, device, dist, "encoder0",
                            on_epoch=lambda row: calls.append(row["epoch"]), progress=False)
        dist.barrier()
    torch.save(encoder.state_dict(), out / f"rank{rank}.pt")  # this rank's weights in memory
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": dist.world_size, "epochs_run": len(result.history),
        "best_epoch": result.best_epoch, "best_valid_weighted_f1": result.best_valid_weighted_f1,
        "train_loss": [r["train_loss"] for r in result.history],
        "valid_loss": [r["valid_loss"] for r in result.history],
        "on_epoch_calls": calls}))


if __name__ == "__main__":
    main()
