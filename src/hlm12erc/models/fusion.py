"""The fusion head: per-utterance modality fusion, optional dialogue context, logits.

Per utterance: train-split standardisation of each modality, projection to ``hidden`` (absent
modalities zeroed *after* the projection), fusion ``concat`` or ``attention`` over the modality
tokens *of each sample* (never across the samples of a batch), or ``hidden: 0`` for a linear
baseline. With ``dialogue: past | bidirectional`` a small transformer runs over the fused
utterances *of one dialogue* (attention never crosses dialogues), with the speaker's role in the
dialogue and a learned same-speaker attention bias; the head reads the utterance's own fused
vector next to its contextual one. :class:`HeadInputs` is what it reads, :func:`head_logits` its
inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hlm12erc.data import context
from hlm12erc.models.text_encoder import ERCOutput


@dataclass
class HeadConfig:
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "visual"])  # order of mask columns
    input_dims: dict[str, int] = field(default_factory=dict)  # vector width per modality
    hidden: int = 128  # projection width; 0 = linear model on the concatenated features
    fusion: str = "concat"  # concat | attention
    heads: int = 4  # attention heads; must divide hidden
    dropout: float = 0.2
    dialogue: str = "none"  # none | past | bidirectional: the dialogue-level transformer
    dialogue_layers: int = 1
    max_speakers: int = 8  # speaker roles per dialogue; later speakers share the last role
    max_turns: int = 64  # learned turn positions; later turns share the last one
    residual: bool = False  # add the logits to a prior's (the fine-tuned text classifier's); the last layer
                            # starts at zero, so training starts from that classifier

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in self.input_dims]
        if unknown:
            raise ValueError(f"HeadConfig: no input_dims for modality {unknown}")
        if self.fusion not in ("concat", "attention"):
            raise ValueError(f"fusion='{self.fusion}' is not known; use concat, attention (or none for the "
                             "text encoder alone)")
        if self.hidden and self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.dialogue not in ("none", "past", "bidirectional"):
            raise ValueError(f"dialogue='{self.dialogue}' is not known; use none, past or bidirectional")
        if (self.dialogue != "none" or self.residual) and not self.hidden:
            raise ValueError("dialogue context and residual heads need hidden > 0 (not the linear baseline)")


class Projection(nn.Module):
    """One modality's vector -> ``hidden``."""

    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm self-attention + MLP over tokens (N, L, d); ``bias`` (N, 1|H, L, L) is added to the
    attention scores (``-inf`` = may not attend)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).split(width, dim=-1)
        q, k, v = (t.view(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        tokens = tokens + self.dropout(self.out(attended.transpose(1, 2).reshape(n, length, width)))
        return tokens + self.dropout(self.mlp(self.norm2(tokens)))


class DialogueInputs(NamedTuple):
    """Where each utterance of a batch sits: batch-local ``dialogue`` number, ``turn`` in it, ``speaker`` role."""

    dialogue: torch.Tensor  # (B,) long, 0..D-1
    turn: torch.Tensor  # (B,) long, 0..L-1
    speaker: torch.Tensor  # (B,) long

    def to(self, device: torch.device) -> DialogueInputs:
        return DialogueInputs(*(t.to(device) for t in self))


class DialogueContext(nn.Module):
    """A transformer over the utterances of each dialogue (D, L, d): turn position, speaker role,
    same-speaker bias per head; ``past`` lets a turn see only itself and earlier turns."""

    def __init__(self, config: HeadConfig, d_in: int):
        super().__init__()
        hidden, self.causal, self.max_turns = config.hidden, config.dialogue == "past", config.max_turns
        self.inp = nn.Sequential(nn.Linear(d_in, hidden), nn.Dropout(config.dropout))
        self.turn = nn.Embedding(config.max_turns, hidden)
        self.speaker = nn.Embedding(config.max_speakers, hidden)
        self.same_speaker = nn.Parameter(torch.zeros(config.heads))
        self.blocks = nn.ModuleList(Block(hidden, config.heads, config.dropout) for _ in range(config.dialogue_layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, utterances: torch.Tensor, where: DialogueInputs) -> torch.Tensor:
        n_dialogues, length = int(where.dialogue.max()) + 1, int(where.turn.max()) + 1
        x = self.inp(utterances) + self.turn(where.turn.clamp(max=self.max_turns - 1)) + self.speaker(where.speaker)
        grid = x.new_zeros(n_dialogues, length, x.shape[-1])
        grid[where.dialogue, where.turn] = x
        present = torch.zeros(n_dialogues, length, dtype=torch.bool, device=x.device)
        present[where.dialogue, where.turn] = True
        speakers = torch.full((n_dialogues, length), -1, dtype=torch.long, device=x.device)
        speakers[where.dialogue, where.turn] = where.speaker
        allowed = present[:, None, :] & present[:, :, None]  # (D, L, L) query x key, within one dialogue
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)  # padding rows stay finite
        same = (speakers[:, :, None] == speakers[:, None, :]).to(x.dtype)  # (D, L, L)
        bias = same[:, None] * self.same_speaker[None, :, None, None]  # (D, H, L, L)
        bias = bias.masked_fill(~allowed[:, None], float("-inf"))
        for block in self.blocks:
            grid = block(grid, bias)
        return self.norm(grid)[where.dialogue, where.turn]


class FusionHead(nn.Module):
    def __init__(self, config: HeadConfig, labels: Sequence[str]):
        super().__init__()
        self.config = config
        modalities, hidden, n_classes = config.modalities, config.hidden, len(labels)
        for m in modalities:  # train-split standardisation, filled by set_normalization()
            self.register_buffer(f"mean_{m}", torch.zeros(config.input_dims[m]))
            self.register_buffer(f"std_{m}", torch.ones(config.input_dims[m]))
        if hidden == 0:
            self.linear = nn.Linear(sum(config.input_dims[m] for m in modalities) + len(modalities), n_classes)
            return
        self.project = nn.ModuleDict({m: Projection(config.input_dims[m], hidden, config.dropout) for m in modalities})
        if config.fusion == "attention":
            self.modality_embedding = nn.Parameter(torch.randn(len(modalities), hidden) * 0.02)
            self.attention = Block(hidden, config.heads, config.dropout)
        fused = hidden * len(modalities) + len(modalities)
        self.context = DialogueContext(config, fused) if config.dialogue != "none" else None
        width = fused + (hidden if self.context is not None else 0)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout),
                                  nn.Linear(hidden, n_classes))
        if config.residual:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    @torch.no_grad()
    def set_normalization(self, arrays: dict[str, np.ndarray], present: np.ndarray) -> None:
        """Mean/std per feature from the train rows where the modality is present (mask columns
        in ``config.modalities`` order); constant features keep std 1."""
        for i, m in enumerate(self.config.modalities):
            rows = arrays[m][present[:, i]]
            if len(rows) == 0:
                continue
            std = rows.std(0)
            getattr(self, f"mean_{m}").copy_(torch.as_tensor(rows.mean(0)))
            getattr(self, f"std_{m}").copy_(torch.as_tensor(np.where(std > 1e-6, std, 1.0)))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor,
                where: DialogueInputs | None = None, prior: torch.Tensor | None = None) -> ERCOutput:
        present = mask.bool()
        weights = present.unsqueeze(-1).float()  # (B, M, 1)
        normalized = [(features[m] - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")
                      for m in self.config.modalities]
        if self.config.hidden == 0:
            fused = torch.cat([x * weights[:, i] for i, x in enumerate(normalized)] + [present.float()], dim=-1)
            return ERCOutput(self.linear(fused), fused)
        tokens = torch.stack([self.project[m](x) for m, x in zip(self.config.modalities, normalized)], dim=1)
        tokens = tokens * weights  # absent modalities are zero after the projection
        if self.config.fusion == "attention":
            keys = present | ~present.any(dim=1, keepdim=True)  # nothing present -> attend to all (finite)
            tokens = self.attention(tokens + self.modality_embedding, keys[:, None, None, :]
                                    .expand(-1, 1, len(self.config.modalities), -1)
                                    .float().log()) * weights
        fused = torch.cat([tokens.flatten(1), present.float()], dim=-1)
        if self.context is not None:
            if where is None:
                raise ValueError("this head reads dialogue context: pass the batch's DialogueInputs")
            fused = torch.cat([fused, self.context(fused, where)], dim=-1)
        logits = self.head(fused)
        if self.config.residual:
            if prior is None:
                raise ValueError("this head adds to the text classifier's logits: pass them as prior")
            logits = logits + prior
        return ERCOutput(logits, fused)


@dataclass
class HeadInputs:
    """Per-utterance vectors of one table for a fusion head: ``arrays[m]`` (N, d), ``mask`` (N, M)
    in the head's modality order, and the dialogue layout (dialogue id, turn, speaker role)."""

    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    dialogue: np.ndarray
    turn: np.ndarray
    speaker: np.ndarray
    prior: np.ndarray | None = None  # (N, C) the text classifier's logits, for residual heads

    def with_text(self, text: np.ndarray, prior: np.ndarray | None = None) -> HeadInputs:
        """The same rows read through one text encoder: its pooled vectors and classifier logits."""
        return replace(self, arrays={**self.arrays, "text": text}, prior=prior)

    def over_views(self, pooled: list[np.ndarray], logits: list[np.ndarray]) -> tuple[HeadInputs, np.ndarray]:
        """One row per (row, view k) pair, in row order, with view k's pooled vector and logits; each
        view's reading of a dialogue is a dialogue of its own. Returns them and the source row of each
        (to repeat the labels)."""
        rows, view = np.repeat(np.arange(len(self.mask)), len(pooled)), np.tile(np.arange(len(pooled)), len(self.mask))
        dialogue = np.array([f"{d}#{k}" for d, k in zip(self.dialogue[rows], view)], dtype=object)
        arrays = {**{m: x[rows] for m, x in self.arrays.items()}, "text": np.stack(pooled)[view, rows]}
        return HeadInputs(arrays, self.mask[rows], dialogue, self.turn[rows], self.speaker[rows],
                          np.stack(logits)[view, rows]), rows

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                     DialogueInputs, torch.Tensor | None]:
        features = {m: torch.as_tensor(x[rows], dtype=torch.float32, device=device) for m, x in self.arrays.items()}
        local = pd.factorize(self.dialogue[rows])[0]
        where = DialogueInputs(torch.as_tensor(local), torch.as_tensor(self.turn[rows]),
                               torch.as_tensor(self.speaker[rows])).to(device)
        prior = None if self.prior is None else torch.as_tensor(self.prior[rows], dtype=torch.float32, device=device)
        return features, torch.as_tensor(self.mask[rows], device=device), where, prior

    def dialogue_batches(self, batch_size: int, order: Sequence[int] | None = None) -> list[np.ndarray]:
        """Whole dialogues packed into batches of about ``batch_size`` utterances, turns in order."""
        groups = pd.Series(np.arange(len(self.dialogue))).groupby(self.dialogue, sort=False)
        dialogues = [g.to_numpy()[np.argsort(self.turn[g.to_numpy()], kind="stable")] for _, g in groups]
        order = range(len(dialogues)) if order is None else order
        batches, current = [], []
        for i in order:
            current.append(dialogues[i])
            if sum(len(d) for d in current) >= batch_size:
                batches.append(np.concatenate(current))
                current = []
        if current:
            batches.append(np.concatenate(current))
        return batches


def head_inputs(table: pd.DataFrame, arrays: dict[str, np.ndarray], mask: np.ndarray,
                config: HeadConfig) -> HeadInputs:
    positions = context.dialogue_positions(table)
    turn = np.array([place for _rows, place in positions], dtype=np.int64)
    return HeadInputs({m: arrays[m] for m in config.modalities if m in arrays}, mask, context.dialogue_ids(table), turn,
                      context.speaker_slots(table, config.max_speakers))


@torch.no_grad()
def head_logits(head: FusionHead, inputs: HeadInputs, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits of every row, in order, in eval mode; whole dialogues per batch when the head reads context."""
    head.eval()
    n_classes = (head.head[-1] if head.config.hidden else head.linear).out_features
    out = np.zeros((len(inputs.mask), n_classes), dtype=np.float32)
    batches = (inputs.dialogue_batches(batch_size) if head.config.dialogue != "none" else
               [np.arange(i, min(i + batch_size, len(out))) for i in range(0, len(out), batch_size)])
    for rows in batches:
        out[rows] = head(*inputs.batch(rows, device)).logits.float().cpu().numpy()
    return out
