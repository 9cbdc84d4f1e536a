"""Settings for the processes mt2kd owns: its command line and its dask workers."""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_final_gc_at_exit() -> None:
    """Let the process exit without the interpreter's last full garbage collection.

    With torch, whisper, speechbrain and lhotse imported, that collection walks
    millions of objects: it made a process's exit take 0.83 s instead of
    0.26 s where this was measured, paid by the CLI and by every dask worker
    at the end of each run. Nothing mt2kd writes depends on it: shards are
    committed explicitly and files are closed by their owners. Only for
    processes that end when mt2kd's work ends (not a user's Python session).
    """
    global _registered
    if not _registered:
        atexit.register(gc.freeze)  # frozen objects are left out of the collection at shutdown
        _registered = True
