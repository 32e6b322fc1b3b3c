"""Text features: a frozen sentence encoder (MiniLM; mpnet or a local folder by name) over the utterance
and its dialogue context.

Each row becomes ``[embed(utterance) ; embed(context)]`` (2 x 384 = 768 floats), where the
context is the ``context_window`` previous turns of the same dialogue written as
``Speaker: text`` and joined by newlines. The first turn of a dialogue has no context: its
context half is all zeros (not the embedding of ""), so "no context" is one fixed point the
model can learn, and the standardisation in the model maps it to a constant.
Embeddings are mean-pooled over the tokens and L2-normalised, as sentence-transformers
does for all-MiniLM-L6-v2.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from hlm12erc.config import TextFeatureParams
from hlm12erc.data.context import previous_turns
from hlm12erc.features.weights import device_or_default

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 (the default)


def _offline() -> None:
    """The HF hub is unreachable here: never let transformers try it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str, name: str = "minilm") -> tuple[object, torch.nn.Module]:
    """Tokenizer and model, loaded once per process (the load takes seconds)."""
    _offline()
    from transformers import AutoModel, AutoTokenizer

    from hlm12erc.features.weights import text_model_path
    from hlm12erc.quiet import quiet_transformers

    path = str(text_model_path(name))
    tokenizer = AutoTokenizer.from_pretrained(path)
    with quiet_transformers():
        model = AutoModel.from_pretrained(path).to(device).eval()
    return tokenizer, model


class TextEncoder:
    """Frozen MiniLM: list of strings -> (N, 384) float32, batched, no gradients."""

    def __init__(self, params: TextFeatureParams, device: str | None = None):
        self.params = params
        self.device = device_or_default(device)
        self.tokenizer, self.model = _load_minilm(self.device, params.encoder)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        size = max(1, self.params.batch_size)
        for start in range(0, len(texts), size):
            batch = list(texts[start:start + size])
            tokens = self.tokenizer(batch, padding=True, truncation=True,
                                    max_length=self.params.max_tokens, return_tensors="pt").to(self.device)
            hidden = self.model(**tokens).last_hidden_state  # (B, T, 384)
            weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # mean over real tokens
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[start:start + len(batch)] = pooled.float().cpu().numpy()
        return out


def text_features(table: pd.DataFrame, params: TextFeatureParams,
                  encoder: TextEncoder | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2 * dim) features and the (N,) present-mask (False where the utterance is empty)."""
    encoder = encoder or TextEncoder(params)
    dim = encoder.dim
    utterances = [str(t) for t in table["x_text"]]
    contexts = previous_turns(table, params.context_window)
    features = np.zeros((len(table), 2 * dim), dtype=np.float32)
    if len(table):
        features[:, :dim] = encoder.encode(utterances)
        with_context = [i for i, c in enumerate(contexts) if c]
        if with_context:
            features[with_context, dim:] = encoder.encode([contexts[i] for i in with_context])
    present = np.array([bool(t.strip()) for t in utterances], dtype=bool)
    features[~present, :dim] = 0.0
    return features, present
