"""Checking YAML/JSON values against a frozen config dataclass's annotations, before it is built.

A config file is read into plain values; a value of the wrong type must fail
naming its field, not as a ``TypeError`` deep inside a run, and a string
``"false"`` must never pass as true. One leniency: YAML 1.1 (what PyYAML
reads) takes ``1e-4`` and ``5e3`` for strings, as they lack a dot; such a
string given for a number field is read as the number it spells.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from mt2kd.errors import ConfigError

T = TypeVar("T")
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_YAML_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # what YAML 1.1 leaves as a string


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


def _number(value: Any, hint: Any) -> Any:
    """``value`` as the number a YAML 1.1 exponent string spells, when the field takes one; else unchanged.

    A whole float (``2.0e+4``, which YAML reads as a float) is taken for an
    integer field, as its string form ``2e4`` is.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    kinds = set(args) if origin in (typing.Union, types.UnionType) else {hint}
    if isinstance(value, float) and int in kinds and float not in kinds and value.is_integer():
        return int(value)
    if not isinstance(value, str) or not _YAML_NUMBER.match(value.strip()):
        return value
    number = float(value)
    if float in kinds:
        return number
    if int in kinds and number.is_integer():
        return int(number)
    return value


def typed_values(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` checked against ``cls``'s annotations; raise :class:`ConfigError` naming the first bad field.

    ``where`` prefixes the field in the message (``"train."`` gives
    ``train.lr``). Fields ``cls`` does not have are left to its own checks.

    Examples
    --------
    >>> from mt2kd.train._config import TrainConfig
    >>> typed_values(TrainConfig, {"lr": "1e-4", "num_steps": "2e3", "log_every": 5.0e+1}, "train.")
    {'lr': 0.0001, 'num_steps': 2000, 'log_every': 50}
    >>> typed_values(TrainConfig, {"shuffle": "false"}, "train.")
    Traceback (most recent call last):
    ...
    mt2kd.errors.ConfigError: train.shuffle must be true or false. Got 'false'.
    """
    hints = typing.get_type_hints(cls)
    values = dict(data)
    for name, value in data.items():
        if name not in hints:
            continue
        values[name] = _number(value, hints[name])
        if not _matches(values[name], hints[name]):
            raise ConfigError(f"{where}{name} must be {_describe(hints[name])}. Got {value!r}.")
    return values


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML (``.yaml``/``.yml``) or JSON file holds; ``what`` names the file in every error.

    Examples
    --------
    >>> read_mapping("run.yaml", "workflow config")  # doctest: +SKIP
    {'extract': {...}, 'train': {...}}
    """
    path = Path(path)
    is_yaml = path.suffix in (".yaml", ".yml")
    text = path.read_text(encoding="utf-8")
    try:
        if is_yaml:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError or yaml.YAMLError
        raise ConfigError(f"{what} {str(path)!r} must be valid {'YAML' if is_yaml else 'JSON'}. Got: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of its fields. Got {type(data).__name__}.")
    return data


def check_fields(cls: type, data: Mapping[str, Any], what: str | None = None) -> None:
    """Refuse keys of ``data`` that are not fields of the dataclass ``cls``, naming them and the fields it has.

    ``what`` names the config in the message (the class name by default).

    Examples
    --------
    >>> from mt2kd.store import TeacherSpec
    >>> check_fields(TeacherSpec, {"nme": "beats"})
    Traceback (most recent call last):
    ...
    mt2kd.errors.ConfigError: unknown TeacherSpec fields ['nme']; expected a subset of [...].
    """
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what or cls.__name__} fields {unknown}; expected a subset of {known}.")


def from_dict(cls: type[T], data: Mapping[str, Any], what: str | None = None, tuples: bool = True) -> T:
    """The dataclass ``cls`` built from ``data`` (JSON or YAML values): every config's ``from_dict``.

    Keys ``cls`` does not have are refused (:func:`check_fields`); with
    ``tuples``, lists become tuples, as frozen configs hold them.

    Examples
    --------
    >>> from mt2kd.eval import EvalConfig
    >>> from_dict(EvalConfig, {"cuts": ["dev.jsonl.gz"], "stores": ["dev.zarr"]}).cuts
    ('dev.jsonl.gz',)
    """
    check_fields(cls, data, what)
    values = {k: tuple(v) if tuples and isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def file_values(cls: type, path: str | Path) -> dict[str, Any]:
    """The fields a YAML or JSON config file gives ``cls``, each checked against its type (every ``from_file``).

    Examples
    --------
    >>> TrainConfig.from_dict(file_values(TrainConfig, "train.yaml"))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file must exist. Got {str(path)!r}.")
    return typed_values(cls, read_mapping(path, "config file"), f"config file {str(path)!r}: ")
