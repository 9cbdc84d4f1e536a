"""Reading one section of a workflow config onto a component's own frozen dataclass.

The ``train`` section holds :class:`mt2kd.train.TrainConfig` fields and the
``eval`` section :class:`mt2kd.eval.EvalConfig` fields, nothing else: the
workflow never duplicates a field. What a section leaves out is filled from
the rest of the chain (the manifests and store of ``extract``, the last
checkpoint of ``train``). Values are type-checked against the dataclass's
annotations first, so a wrong value fails with the section and field named,
before any stage runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from mt2kd.errors import ConfigError

T = TypeVar("T")

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML/JSON value fits a field annotation (unknown annotations are left to the dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, (list, tuple)) and all(_matches(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # YAML reads "1000" as an int: accept it for a float field
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(cls: type, data: dict[str, Any], section: str) -> None:
    """Raise :class:`ConfigError` naming ``section.field`` for the first value of the wrong type.

    Examples
    --------
    >>> from mt2kd.train._config import TrainConfig
    >>> check_types(TrainConfig, {"lr": "fast"}, "train")
    Traceback (most recent call last):
    ...
    mt2kd.errors.ConfigError: train.lr must be a number. Got 'fast'.
    """
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name in hints and not _matches(value, hints[name]):
            raise ConfigError(f"{section}.{name} must be {_describe(hints[name])}. Got {value!r}.")


def load_section(cls: type[T], data: Any, section: str, defaults: dict[str, Any]) -> T:
    """Build ``cls`` from a config section, ``defaults`` filling the fields the section leaves out.

    Parameters
    ----------
    cls : a frozen config dataclass with ``from_dict`` (TrainConfig, EvalConfig).
    data : the section as read from YAML/JSON (must be a mapping).
    section : its name in the workflow config, used in every error message.
    defaults : values for fields the section does not give (or gives empty).

    Examples
    --------
    >>> from mt2kd.train._config import TrainConfig
    >>> load_section(TrainConfig, {"num_steps": 30}, "train", {"cuts": ["a.jsonl.gz"]}).cuts
    ('a.jsonl.gz',)
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the {section!r} section must be a mapping of {cls.__name__} fields. "
                          f"Got {type(data).__name__}: {data!r}.")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"the {section!r} section must hold {cls.__name__} fields only ({sorted(fields)}). "
                          f"Got unknown fields {unknown}.")
    values = {**data, **{k: v for k, v in defaults.items() if k not in data or data[k] in ((), [], "")}}
    check_types(cls, values, section)
    try:
        return cls.from_dict(values)  # type: ignore[attr-defined]
    except ConfigError as e:  # the dataclass's own checks: say which section they came from
        raise ConfigError(f"in the {section!r} section: {e}") from e
