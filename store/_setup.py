"""Making a store for a run, or opening the one a run resumes: the store's side of starting an extraction.

The job decides what a store must hold (its teachers and attributes) and
whether an existing one may be resumed; this module knows what a store
looks like on disk: which folder may become one, how ``overwrite`` deletes
one, and how to tell a store another process is making (its root metadata
is written last) from a folder that is not a store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mt2kd.errors import StoreError, StoreNotFoundError
from mt2kd.store._format import COMMITS_DIR, LOCKS_DIR, METADATA_FILE, SHARDS_DIR
from mt2kd.store._fs import TMP_PREFIX, open_location
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore

STORE_MADE_SECONDS = 30.0  # how long a run waits for another process to finish making the same new store


def open_or_create(url: str, specs: Sequence[TeacherSpec], attrs: Mapping[str, Any], overwrite: bool = False,
                   say: Callable[[str], None] = lambda text: None) -> tuple[TeacherStore, bool]:
    """(the store at ``url``, whether this call made it): opened to append to, or made with ``specs`` and ``attrs``.

    With ``overwrite`` an existing store (one that no longer opens included)
    is deleted and made again, saying so. Two processes starting on the same
    new store at once both get it: the one that loses the race waits (up to
    ``STORE_MADE_SECONDS``) for the other to finish making it.

    Examples
    --------
    >>> store, made = open_or_create("labels.zarr", [spec], {"run": {}})  # doctest: +SKIP
    """
    if overwrite:
        _say_deleted(url, say)
        return TeacherStore.create(url, list(specs), attrs=dict(attrs), overwrite=True), True
    try:
        return TeacherStore.open(url, "a"), False
    except StoreNotFoundError:
        try:
            return TeacherStore.create(url, list(specs), attrs=dict(attrs)), True
        except StoreError as refused:  # another process started on the same new store a moment before us?
            return _open_when_made(url, refused), False


def _say_deleted(url: str, say: Callable[[str], None]) -> None:
    try:
        old = TeacherStore.open(url)
    except StoreNotFoundError:
        pass  # nothing to delete
    except StoreError as e:  # a store that no longer opens is what --overwrite is there to replace
        say(f"--overwrite: deleting the store {url}, which does not open ({e}), and starting it again.")
    else:
        say(f"--overwrite: deleting the store {old.url} ({len(old.shards)} committed shards, {len(old):,} "
            f"cuts) and starting it again.")


def _open_when_made(url: str, refused: Exception) -> TeacherStore:
    """The store another process is making at ``url`` (its root metadata comes last), once it is made.

    Raise ``refused`` (why this process could not make it) if ``url`` is not
    a store being made, or not made within ``STORE_MADE_SECONDS``.
    """
    deadline = time.monotonic() + STORE_MADE_SECONDS
    while True:
        try:
            return TeacherStore.open(url, "a")
        except StoreNotFoundError:
            try:
                check_store_path(url)  # only a store's own folders so far: another process is making it
            except StoreError:
                raise refused from None
            if time.monotonic() > deadline:
                raise refused from None
            time.sleep(0.1)


def check_store_path(url: str) -> None:
    """``--store`` must name an mt2kd store or nothing yet (or an empty folder): checked before workers start."""
    loc = open_location(url)
    if loc.exists(METADATA_FILE):
        return  # a store, or something that claims to be one: opening it checks which
    try:
        entries = loc.listdir("")
    except NotADirectoryError:
        raise StoreError(f"--store must name an mt2kd store or a folder to make one in. Got {loc.url}, which is "
                         f"a file.") from None
    entries = [e for e in entries if not e.startswith(TMP_PREFIX)]  # the root document on its way to disk
    if set(entries) - {COMMITS_DIR, LOCKS_DIR, SHARDS_DIR}:  # only these: a store being made (its root comes last)
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise StoreError(f"--store must name an mt2kd store, or a new or empty folder. Got {loc.url}, a non-empty "
                         f"folder without a store's {METADATA_FILE} (it holds {shown}); pass another path, or remove "
                         f"the folder yourself if it is not needed (--overwrite deletes mt2kd stores only).")
