"""The one way a package ``__init__`` exports names that load on first use.

A package whose modules import torch, dask or lhotse names its public face
in ``__all__`` and resolves each name from its private module when it is
first read, so ``mt2kd --help`` and ``mt2kd store info`` stay fast. The same
names are imported under ``TYPE_CHECKING`` in the ``__init__``, so mypy sees
real types, not ``Any``::

    if TYPE_CHECKING:
        from mt2kd.train._config import TrainConfig
    _WHERE = {"TrainConfig": "_config"}
    __all__ = sorted(_WHERE)
    if not TYPE_CHECKING:
        __getattr__ = lazy_exports(__name__, _WHERE)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` giving each name of ``where`` (name -> module under ``package``) on first use.

    Examples
    --------
    >>> getattr_ = lazy_exports("mt2kd.train", {"TrainConfig": "_config"})
    >>> getattr_("TrainConfig").__name__
    'TrainConfig'
    """

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later reads skip this function
        return value

    return __getattr__
