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


def prepare_fork_server() -> None:
    """Import the workers' modules, let the server exit without its final garbage collection, ignore Ctrl-C.

    The server ends with the process that started it; with torch and the
    teachers' libraries imported, its interpreter's final collection took
    about 1 s, during which it still held that process's stderr open (a
    pipe reading the run's output waited for it). Forked workers never run
    it: multiprocessing ends them with ``os._exit``.
    """
    import signal

    from mt2kd._process import skip_final_gc_at_exit

    import_each(filter(None, os.environ[ENV].split(",")))
    skip_final_gc_at_exit()
    # the server hands its workers the Ctrl-C handler it had before it began ignoring Ctrl-C itself: make
    # that "ignore", so that a worker leaves Ctrl-C to the run (which closes it) from its first moment
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if ENV in os.environ:  # set only in the fork server's environment (and so in the workers forked from it)
    prepare_fork_server()
