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

from typing import Any, TypeVar

from mt2kd._typed import typed_values
from mt2kd.errors import ConfigError

T = TypeVar("T")

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
    values = {**data, **{k: v for k, v in defaults.items() if k not in data or data[k] in ((), [], "")}}
    values = typed_values(cls, values, f"{section}.")
    try:
        return cls.from_dict(values)  # type: ignore[attr-defined]
    except ConfigError as e:  # the dataclass's own checks: say which section they came from
        raise ConfigError(f"in the {section!r} section: {e}") from e
