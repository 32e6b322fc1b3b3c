"""Strict pydantic dataclasses whose validation errors read as one line per bad value.

:mod:`hlm12erc.config` declares the params sections with :func:`section`; this module turns
pydantic's ``ValidationError`` into lines such as ``train.lr='abc' must be a number`` (the key, the
value, what it must be), each followed by how to fix it. Validators written with :func:`rule` (or
raising ``ValueError`` in a pydantic validator) give the text that follows the key's path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Union

import pydantic
import pydantic.dataclasses
from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

Int, Float, Str, Bool = StrictInt, StrictFloat, StrictStr, StrictBool  # no "1" for 1, no true for 1; 1 is a float
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[StrictFloat, Field(gt=0)]
NonNegativeFloat = Annotated[StrictFloat, Field(ge=0)]


class ConfigError(ValueError):
    """A bad value in params.yaml or on the command line; the message says how to fix it."""


@typing.dataclass_transform(field_specifiers=(dataclasses.field,))
def section(cls: type) -> type:
    """A pydantic dataclass (unknown keys refused) whose errors, direct or by ``replace``, are ConfigErrors."""
    cls = pydantic.dataclasses.dataclass(cls, config=pydantic.ConfigDict(extra="forbid", allow_inf_nan=False))
    init = cls.__init__

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as error:
            raise ConfigError(describe(error, cls, cls.__name__, "fix the value")) from None

    cls.__init__ = checked
    return cls


def empty_section(value: Any) -> Any:
    """An empty YAML section (a key with nothing under it) means the section's defaults."""
    return {} if value is None else value


def rule(ok: Any, text: str) -> AfterValidator:
    """Refuse a value for which ``ok`` is false; ``text.format(value)`` follows the key in the message."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(text.format(value))
        return value

    return AfterValidator(check)


def _annotation(tp: Any, loc: tuple) -> Any:
    """The annotation at ``loc`` (field names, mapping keys, list indices) below ``tp``."""
    for key in loc:
        if typing.get_origin(tp) in (Union, types.UnionType):
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(key, Any)
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return Any
    return tp


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
    if dataclasses.is_dataclass(tp):
        return "a section"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}


def _problem(item: dict, tp: Any) -> str:
    """What is wrong with one value: the text after ``key=value``."""
    kind, value = item["type"], item.get("input")
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {next(iter(item['ctx'].values()))}"
    if kind == "literal_error":
        names = [str(o) for o in typing.get_args(tp)]
        return f"is not {' or '.join(names)}" if len(names) == 2 else f"is not one of {', '.join(names)}"
    if kind == "finite_number":
        return "must be a finite number"
    if isinstance(value, str) and float in (tp, *typing.get_args(tp)):
        with contextlib.suppress(ValueError):
            float(value)
            return f"must be {_type_name(tp)} (YAML reads {value} as a string: write it with a dot, e.g. 1.0e-5)"
    return f"must be {_type_name(tp)}"


def describe(error: ValidationError, cls: type, where: str, fix: str) -> str:
    """One line per bad value in ``error`` (raised validating ``cls``): ``where: key=value ...; fix``."""
    lines, unknown = [], {}
    for item in error.errors():
        loc = item["loc"]
        path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc).lstrip(".")
        if item["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(loc[:-1], []).append(loc[-1])
        elif item["type"] == "value_error":  # a rule or validator: its text follows the key
            lines.append(f"{path}{item['ctx']['error']}".lstrip(".:= "))
        elif item["type"] == "dataclass_type":
            lines.append(f"'{path or 'top level'}' must be a mapping of keys, got {item['input']!r}")
        else:
            lines.append(f"{path}={item.get('input')!r} {_problem(item, _annotation(cls, loc))}")
    for loc, keys in unknown.items():
        known = sorted(f.name for f in dataclasses.fields(_annotation(cls, loc)))
        parent = ".".join(str(k) for k in loc) or "top level"
        lines.append(f"unknown key(s) {sorted(keys, key=str)} in '{parent}'; known: {known}")
    return "\n".join(f"{where}: {line}; {fix}" for line in lines)
