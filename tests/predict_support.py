"""Helpers shared by test_predict.py and test_pyfunc.py: a tiny trained model and conversations."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd

from hlm12erc.config import PARAMS_FILE, load_params

CONVERSATION = [
    {"speaker": "Ross", "text": "This is wonderful, I love it so much!"},
    {"speaker": "Rachel", "text": "I am so angry with you, get out!"},
    {"speaker": "Joey", "text": "What? No way, really?"},
]


def tiny_text_encoder_params(params, folder: Path):
    """params with a tiny random BERT (saved under ``folder``) as the fine-tuned text encoders: a seed ensemble
    of two members (the averaged path), one quick epoch each."""
    from finetune_support import save_tiny_bert
    from hlm12erc.models.text_encoder import encoder_path, load_tokenizer

    tiny = folder / "tiny_bert"
    if not (tiny / "config.json").is_file():
        save_tiny_bert(tiny, load_tokenizer(encoder_path("minilm")))
    encoder = dataclasses.replace(params.text_encoder, encoder=str(tiny), members=2, epochs=1,
                                  min_steps=0, max_tokens=32, batch_size=8, eval_batch_size=32)
    return dataclasses.replace(params, text_encoder=encoder)


def train_tiny_model(out_dir: Path, features_dir: Path, tables_dir: Path, objective: str = "final", epochs: int = 3,
                     **overrides) -> Path:
    """A few epochs of ``objective`` (fields replaced by ``overrides``) on the conftest tables and features,
    saved like the train stage saves it; ``text: finetuned`` objectives get tiny-BERT encoders."""
    from hlm12erc.data.meld import load_table
    from hlm12erc.features.store import FeatureSet
    from hlm12erc.training.fit import fit, new_model

    params = load_params(PARAMS_FILE)
    config = dataclasses.replace(params.objective(objective), epochs=epochs, **overrides)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, device="cpu", patience=epochs))
    if config.text == "finetuned":
        params = tiny_text_encoder_params(params, Path(out_dir).parent)
    train_set, valid_set = FeatureSet.load(features_dir / "train"), FeatureSet.load(features_dir / "valid")
    train, valid = (load_table(Path(tables_dir) / f"{s}.csv", params.labels) for s in ("train", "valid"))
    model = new_model(config, params, train_set.dims)
    fit(model, train, valid, train_set, valid_set, params, progress=False)
    model.info.pop("history")
    model.save(out_dir)
    return Path(out_dir)


def write_conversation(folder: Path, fmt: str, clip: Path | None = None, wrap: bool = False) -> Path:
    """CONVERSATION as ``folder/conversation.<fmt>``; turn 1 gets ``clip`` (relative path) when given."""
    folder.mkdir(parents=True, exist_ok=True)
    turns = [dict(t) for t in CONVERSATION]
    if clip is not None:
        turns[0]["clip"] = Path(os.path.relpath(clip, folder)).as_posix()
        for turn in turns[1:]:
            turn["clip"] = ""
    path = folder / f"conversation.{fmt}"
    if fmt == "csv":
        pd.DataFrame(turns).to_csv(path, index=False)
    else:
        path.write_text(json.dumps({"turns": turns} if wrap else turns))
    return path
