"""The whole chain from one config: prepare -> extract -> verify -> train -> eval.

- :class:`WorkflowConfig` - the chain's config (``extract``, ``train``, ``eval`` sections);
- :func:`run_workflow` - run it (``mt2kd run --config FILE``);
- :func:`demo_config` - the embedded demo's config (``mt2kd demo --out DIR``).

Names resolve on first use, so ``mt2kd --help`` imports none of the stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mt2kd._exports import lazy_exports

if TYPE_CHECKING:
    from mt2kd.workflows._config import WorkflowConfig
    from mt2kd.workflows._demo import demo_config
    from mt2kd.workflows._run import run_workflow

_WHERE = {"WorkflowConfig": "_config", "run_workflow": "_run", "demo_config": "_demo"}

__all__ = sorted(_WHERE)
if not TYPE_CHECKING:
    __getattr__ = lazy_exports(__name__, _WHERE)
