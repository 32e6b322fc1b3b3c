"""One source of defaults (the params sections' defaults are params.yaml) and strict, one-line validation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hlm12erc.config import (
    PARAMS_FILE,
    RUNTIME_ENV,
    ConfigError,
    ObjectiveConfig,
    Params,
    TextEncoderParams,
    load_params,
    params_from_dict,
)


@pytest.fixture
def no_runtime_env(monkeypatch):
    for env in RUNTIME_ENV.values():
        monkeypatch.delenv(env, raising=False)


def test_the_defaults_are_params_yaml(no_runtime_env) -> None:
    """Every section but the objectives (named configs, which have no defaults) equals its params.yaml values."""
    loaded = load_params(PARAMS_FILE)
    defaults = Params()
    for name in (f.name for f in dataclasses.fields(Params)):
        if name != "objectives":
            assert getattr(defaults, name) == getattr(loaded, name), f"params.yaml {name} differs from config.py"
    assert loaded.objectives and not defaults.objectives
    assert params_from_dict({}) == defaults


def test_every_params_yaml_key_is_a_field() -> None:
    """Nothing in params.yaml is ignored: each key (objectives included) names a field of its section."""
    raw = yaml.safe_load(PARAMS_FILE.read_text())

    def walk(node: dict, cls: type, where: str) -> None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in node.items():
            assert key in fields, f"{where}{key}"
            hint = cls.__pydantic_fields__[key].annotation
            if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                walk(value, hint, f"{where}{key}.")

    objectives = raw.pop("objectives")
    walk(raw, Params, "")
    for name, cfg in objectives.items():
        walk(cfg, ObjectiveConfig, f"objectives.{name}.")


@pytest.mark.parametrize(("raw", "expected"), [
    ({"train": {"epochs": 2.0}}, "train.epochs=2.0 must be a whole number"),
    ({"train": {"epochs": True}}, "train.epochs=True must be a whole number"),
    ({"train": {"lr": True}}, "train.lr=True must be a number"),
    ({"train": {"device": 1}}, "train.device=1 must be a string"),
    ({"extract": {"max_seconds": float("inf")}}, "extract.max_seconds=inf must be a finite number"),
    ({"extract": {"frame_size": 4}}, "extract.frame_size=4 must be >= 8"),
    ({"text_encoder": {"max_minutes": "soon"}}, "text_encoder.max_minutes='soon' must be a number or null"),
    ({"train": 5}, "'train' must be a mapping of keys, got 5"),
    ({"nope": 1}, "unknown key(s) ['nope'] in 'top level'"),
    ({"features": {"visual": {"face_model": "fer"}}}, "unknown key(s) ['face_model'] in 'features.visual'"),
    ({"train": {"threads": 4}}, "unknown key(s) ['threads'] in 'train'"),  # runtime.threads sets it
    ({"objectives": {"x": {"windows": [["a", 1]], "text": "finetuned"}}, "model": "x"},
     "objectives.x.windows[0][0]='a' must be a whole number"),
])
def test_a_bad_value_is_one_line_naming_the_key(raw, expected) -> None:
    with pytest.raises(ConfigError) as raised:
        params_from_dict(raw)
    message = str(raised.value)
    assert message.startswith(f"params: {expected}") and "\n" not in message, message
    assert message.endswith("fix params.yaml (or the `dvc exp run -S` override)")


def test_an_int_is_a_float_and_empty_sections_are_defaults() -> None:
    params = params_from_dict({"train": {"lr": 1}, "data": None, "objectives": {"m": None}, "model": "m"})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.data == Params().data and params.objective("m") == ObjectiveConfig(name="m")


def test_every_bad_value_gets_its_own_line() -> None:
    with pytest.raises(ConfigError) as raised:
        params_from_dict({"train": {"lr": "x", "epochs": 0}, "text_encoder": {"precision": "fp16"}})
    lines = str(raised.value).splitlines()
    assert sorted(line.split(" ", 2)[1] for line in lines) == ["text_encoder.precision='fp16'", "train.epochs=0",
                                                                "train.lr='x'"]
    assert all(line.startswith("params: ") and line.endswith("override)") for line in lines)


def test_sections_built_in_code_are_checked_too() -> None:
    """Direct construction and dataclasses.replace validate like params.yaml does."""
    with pytest.raises(ConfigError, match=r"^TextEncoderParams: members=0 must be >= 1; fix the value$"):
        TextEncoderParams(members=0)
    with pytest.raises(ConfigError, match=r"^TrainParams: unknown key\(s\) \['threads'\] in 'top level'"):
        dataclasses.replace(Params().train, threads=2)
    with pytest.raises(ConfigError, match=r"^ObjectiveConfig: \.?residual adds to the fine-tuned"):
        ObjectiveConfig(residual=True)
    assert dataclasses.replace(Params().train, lr=1).lr == 1.0
