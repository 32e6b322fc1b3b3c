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


def train_tiny_model(out_dir: Path, features_dir: Path, objective: str = "final", epochs: int = 3) -> Path:
    """A few epochs of ``objective`` on the conftest features, saved like the train stage saves it."""
    from hlm12erc.features.store import FeatureSet
    from hlm12erc.training.trainer import save_model, train_model

    params = load_params(PARAMS_FILE)
    config = dataclasses.replace(params.objective(objective), epochs=epochs)
    train_params = dataclasses.replace(params.train, device="cpu", patience=epochs)
    train_set, valid_set = FeatureSet.load(features_dir / "train"), FeatureSet.load(features_dir / "valid")
    result = train_model(config, train_set, valid_set, params.labels, train_params, progress=False)
    save_model(result.model, out_dir, config, {"feature_dims": train_set.dims,
                                               "features": dataclasses.asdict(params.features)})
    return out_dir


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
