"""Imported by a LocalCluster's fork server: the modules its workers need, named in ``MT2KD_WORKER_IMPORTS``.

A module that fails to import is skipped, whatever the error: the worker
that needs it imports it again and reports the error where it belongs (the
teacher that could not load), instead of the fork server dying before any
worker has started.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

ENV = "MT2KD_WORKER_IMPORTS"  # comma-separated module names


def import_each(names: Iterable[str]) -> list[str]:
    """Import every module of ``names`` that imports; returns those that did not."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - see the module docstring; even SystemExit must not end the server
            failed.append(name)
    return failed


import_each(filter(None, os.environ.get(ENV, "").split(",")))
