"""The ERC model, read top to bottom: text encoders -> fusion head -> probabilities.

Every objective is one :class:`ErcModel`: the same ``predict_proba``, ``save`` and ``load``, and
one checkpoint folder format. What differs between objectives is configuration, never code paths
in the callers. The parts live beside this file: :mod:`~hlm12erc.models.text_encoder` (a sentence
encoder fine-tuned on dialogue-context pairs) and :mod:`~hlm12erc.models.fusion` (per-utterance
fusion and dialogue context). Training lives in :mod:`hlm12erc.training`; nothing here imports it.

An ErcModel holds ``members`` fine-tuned text encoders (a seed ensemble) and/or a fusion head.
Each encoder reads each utterance through one or more context windows (``windows``: how many past
and future turns it sees); each (encoder, window) pair is a *view*. Without a head (``fusion:
none``) the views' own classifiers are averaged. A head with ``text: finetuned`` reads each view's
pooled vector (and adds its logits when ``residual``), and the probabilities are averaged over
the views. A head with ``text: frozen`` reads cached text features instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hlm12erc.config import ConfigError
from hlm12erc.data import context
from hlm12erc.features.store import MODALITIES
from hlm12erc.models.fusion import FusionHead, HeadConfig, head_inputs, head_logits
from hlm12erc.models.text_encoder import (
    EncoderConfig,
    TextEncoder,
    build_text_encoder,
    encode_pairs,
    load_tokenizer,
)

FORMAT_VERSION = 4  # config.json "format": one checkpoint schema for every objective
CONFIG_FILE, HEAD_FILE, TOKENIZER_DIR, ENCODER_FILE = "config.json", "head.pt", "tokenizer", "encoder_{}.pt"


@dataclass
class ModelConfig:
    labels: list[str]
    encoder: EncoderConfig | None = None  # the fine-tuned text encoder(s), if any
    members: int = 1  # encoders, each from its own seed (a seed ensemble); probabilities averaged
    text: str = "frozen"  # frozen (the head reads cached text features) | finetuned (the encoders' vectors)
    head: HeadConfig | None = None  # None: predictions are the encoders' own classifiers
    windows: list[list[int]] = field(default_factory=list)  # more [past, future] windows read at prediction

    @property
    def n_encoders(self) -> int:
        return self.members if self.encoder else 0

    @property
    def reading_windows(self) -> list[tuple[int, int]]:
        """The (past, future) context windows each encoder reads at prediction, its training window first;
        their probabilities are averaged (test-time augmentation over how much of the dialogue it sees)."""
        if self.encoder is None:
            return []
        trained = (self.encoder.past_turns, self.encoder.future_turns)
        return list(dict.fromkeys([trained, *((past, future) for past, future in self.windows)]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        encoder, head = raw.pop("encoder", None), raw.pop("head", None)
        return cls(**raw, encoder=EncoderConfig(**encoder) if encoder else None,
                   head=HeadConfig(**head) if head else None)


class ErcModel:
    """One objective's trained model: ``fit``, ``predict_proba``, ``save``, ``load`` (see the module doc).

    ``info`` holds what training reported (best epoch, valid F1) and ``meta`` what a caller wants
    kept in config.json (the objective, the feature settings).
    """

    def __init__(self, config: ModelConfig, encoders: list[TextEncoder] | None = None, tokenizer: Any = None,
                 head: FusionHead | None = None, meta: dict[str, Any] | None = None,
                 info: dict[str, Any] | None = None):
        self.config = config
        self.encoders = list(encoders or [])
        self.tokenizer = tokenizer
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

    def to(self, device: torch.device | str) -> ErcModel:
        for module in self.modules():
            module.to(device)
        return self

    def eval(self) -> ErcModel:
        for module in self.modules():
            module.eval()
        return self

    def predict_proba(self, table: pd.DataFrame, features: Any = None, batch_size: int = 64,
                      device: torch.device | str | None = None) -> np.ndarray:
        """Class probabilities ``(len(table), n_labels)`` in table order (context built as in training)."""
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
            torch.save(_cpu_state(encoder), out_dir / ENCODER_FILE.format(k))
            architecture = {key: value for key, value in encoder.encoder.config.to_dict().items()
                            if key != "_name_or_path"}  # where the weights were read: an absolute path
        if self.encoders:
            self.tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
        if self.head is not None:
            torch.save(_cpu_state(self.head), out_dir / HEAD_FILE)
        config = {"format": FORMAT_VERSION, "model": self.config.to_dict(), "encoder_architecture": architecture,
                  **self.meta, "training": self.info}
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n",
                                           encoding="utf-8")
        return out_dir

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str = "cpu") -> ErcModel:
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
            encoder.load_state_dict(_read_state(model_dir / ENCODER_FILE.format(k)))
            encoders.append(encoder)
        head = None
        if config.head is not None:
            head = FusionHead(config.head, config.labels)
            head.load_state_dict(_read_state(model_dir / HEAD_FILE))
        tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR) if encoders else None
        meta = {k: v for k, v in raw.items()
                if k not in ("format", "model", "encoder_architecture", "training")}
        model = cls(config, encoders, tokenizer, head, meta, raw.get("training"))
        return model.to(device).eval()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the model folder is incomplete; retrain it (`dvc repro`)")
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- inference
def text_views(model: ErcModel, table: pd.DataFrame, batch_size: int, device: torch.device,
               every_window: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The text views of ``table``: ``(logits, pooled)`` of each (encoder, context window) pair, encoder-major.
    ``every_window=False`` reads the training window alone (a head's train rows)."""
    cfg = model.config.encoder
    windows = model.config.reading_windows if every_window else model.config.reading_windows[:1]
    examples = [context.text_pairs(table, model.tokenizer, cfg.max_tokens, past, future) for past, future in windows]
    views = [encode_pairs(encoder.to(device), window_examples, model.tokenizer.pad_token_id, batch_size, device)
             for encoder in model.encoders for window_examples in examples]
    return [lg for lg, _ in views], [pl for _, pl in views]


def mean_probabilities(probabilities: list[np.ndarray]) -> np.ndarray:
    """The views' probabilities averaged (in float64)."""
    return np.stack(probabilities).astype(np.float64).sum(0) / len(probabilities)


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


def feature_arrays(model: ErcModel, table: pd.DataFrame, features: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cached feature arrays (in the head's modalities) and the head's mask columns."""
    head = model.config.head
    n = len(table)
    arrays: dict[str, np.ndarray] = {}
    mask = np.ones((n, len(head.modalities)), dtype=bool)
    for i, m in enumerate(head.modalities):
        if m == "text" and model.config.text == "finetuned":
            mask[:, i] = np.array([bool(str(t).strip()) for t in table["x_text"]], dtype=bool)
            continue
        if features is None:
            raise ConfigError(f"this model reads cached {m} features; featurize the table first")
        if features.arrays[m].shape[1] != head.input_dims[m]:
            raise ConfigError(f"{m} features are {features.arrays[m].shape[1]}-d but the model expects "
                              f"{head.input_dims[m]}-d: the feature params or encoders differ from the ones it "
                              "was trained with; retrain it (`dvc repro`)")
        arrays[m] = features.arrays[m]
        mask[:, i] = features.mask[:, MODALITIES.index(m)]
    return arrays, mask


def predict_proba(model: ErcModel, table: pd.DataFrame, features: Any = None, batch_size: int = 64,
                  device: torch.device | str | None = None, views: tuple | None = None) -> np.ndarray:
    """Class probabilities of every row of ``table`` (and its cached ``features`` when the model reads any).
    ``views`` may hold :func:`text_views` of ``table`` already computed with these encoders."""
    device = torch.device(device) if device is not None else next(model.modules()[0].parameters()).device
    n_labels = len(model.labels)
    if len(table) == 0:
        return np.zeros((0, n_labels), dtype=np.float32)
    if views is None and model.encoders:
        views = text_views(model, table, batch_size, device)
    if model.head is None:
        logits, _pooled = views
        return mean_probabilities([softmax(lg) for lg in logits]).astype(np.float32)
    model.head.to(device)
    arrays, mask = feature_arrays(model, table, features)
    base = head_inputs(table, arrays, mask, model.config.head)
    if views is None or model.config.text != "finetuned":
        return softmax(head_logits(model.head, base, batch_size, device)).astype(np.float32)
    logits, pooled = views
    probs = [softmax(head_logits(model.head, base.with_text(p, lg), batch_size, device)) for p, lg in zip(pooled, logits)]
    return mean_probabilities(probs).astype(np.float32)
