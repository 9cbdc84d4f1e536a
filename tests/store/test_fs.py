"""Location.create: exactly one of several writers of a name wins, on every backend."""

from __future__ import annotations

import threading
from pathlib import Path

from mt2kd.store._fs import open_location


def test_create_is_exclusive_and_keeps_the_first_content(store_url: str) -> None:
    loc = open_location(store_url)
    assert loc.create("commits/000001/zarr.json", b"first")
    assert not loc.create("commits/000001/zarr.json", b"second")
    assert loc.read("commits/000001/zarr.json") == b"first"


def test_racing_creates_have_one_winner(tmp_path: Path) -> None:
    """Local folders: ``link`` of a complete temp file is atomic (memory:// is one process, under the GIL)."""
    loc = open_location(str(tmp_path / "s.zarr"))
    start = threading.Barrier(8)
    won: list[int] = []

    def race(number: int) -> None:
        start.wait()
        if loc.create("locks/000002.lock", str(number).encode()):
            won.append(number)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and loc.read("locks/000002.lock") == str(won[0]).encode()
