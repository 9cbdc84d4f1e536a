"""The whole chain from one config: prepare -> extract -> verify -> train -> eval.

- :class:`WorkflowConfig` - the chain's config (``extract``, ``train``, ``eval`` sections);
- :func:`run_workflow` - run it (``mt2kd run --config FILE``);
- :func:`demo_config` - the embedded demo's config (``mt2kd demo --out DIR``).

Names resolve on first use, so ``mt2kd --help`` imports none of the stages.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"WorkflowConfig": "_config", "run_workflow": "_run", "demo_config": "_demo"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mt2kd.workflows' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mt2kd.workflows.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
