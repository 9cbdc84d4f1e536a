"""Storage faults of a real extraction run end in one clear line and leave nothing half-committed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mt2kd.store import TeacherStore
from mt2kd.tests.extract._corpus import DEMO

LIMIT_BYTES = 40 * 1024  # RLIMIT_FSIZE of the run: smaller than one shard of tiny-whisper frames

RUN_LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)), resource.RLIM_INFINITY))
sys.argv[0] = "mt2kd"
runpy.run_module("mt2kd", run_name="__main__")
"""


@pytest.mark.slow
def test_a_file_size_limit_during_extraction_ends_in_one_line_naming_the_file(tmp_path: Path) -> None:
    """Disk full or a file-size limit: the run printed an 80-line dask traceback per failed shard."""
    from mt2kd.extract import make_tiny_checkpoints

    whisper = make_tiny_checkpoints(tmp_path / "teachers", names=("whisper",))["whisper"]
    store = tmp_path / "store"
    command = [sys.executable, "-c", RUN_LIMITED, str(LIMIT_BYTES), "extract", "--cuts",
               str(DEMO / "speech_cuts.jsonl.gz"), "--store", str(store), "--teacher", f"whisper={whisper}",
               "--workers", "1", "--shard-hours", "0.01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Compute Failed" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"Error: StoreWriteError: .*/store/shards/00000\d\.[0-9a-f]{12}/whisper/data/c/0/0: the file "
                        r"system refused to write .* of the data of teacher 'whisper' after [\d,]+ bytes: File too "
                        r"large \[errno EFBIG\]; nothing of this shard was committed.*", last), done.stderr
    opened = TeacherStore.open(store)
    assert len(opened.shards) == 0 and opened.leftovers() == [] and os.listdir(store / "locks") == []


@pytest.mark.slow
def test_a_run_waits_for_the_shard_another_live_run_holds_and_ends_with_the_store_complete(tmp_path: Path) -> None:
    """The same command twice at once: the run that met the other's lock stopped with ShardLockedError."""
    import contextlib
    import threading
    import time

    from mt2kd.extract import ExtractConfig, TeacherConfig, extract, make_tiny_checkpoints
    from mt2kd.extract._plan import make_plan
    from mt2kd.store._index import commit_path

    beats = make_tiny_checkpoints(tmp_path / "teachers", names=("beats",))["beats"]
    cuts = (str(DEMO / "speech_cuts.jsonl.gz"),)
    config = ExtractConfig(cuts=cuts, store=str(tmp_path / "store"), teachers=(TeacherConfig("beats", str(beats)),),
                           workers=1, shard_hours=0.005)
    extract(config, progress=False)
    plan = make_plan(cuts, config.shard_hours)
    for other_commits in (True, False):  # the other run commits the shard, or fails and lets it go
        store = TeacherStore.open(config.store, "a")
        record = store.shards["000001"]
        outputs = dict(zip(record.cut_ids, store.get_many(record.cut_ids)))
        store.loc.remove(commit_path("000001"))  # shard 1 is the other run's, still being written
        holding = threading.Event()
        writing = TeacherStore.open(config.store, "a").shard_writer(1)

        def other_run() -> None:
            with contextlib.suppress(RuntimeError), writing as writer:
                holding.set()
                time.sleep(4.0)  # this run meets the lock meanwhile
                for cut_id, arrays in outputs.items():
                    writer.put(cut_id, arrays)
                if not other_commits:
                    raise RuntimeError("the other run failed")

        thread = threading.Thread(target=other_run)
        thread.start()
        holding.wait(30)
        messages: list[str] = []
        summary = extract(config, echo=messages.append, progress=False)
        thread.join()
        assert any("1 shard(s) are being written by another extraction process" in m for m in messages), messages
        done = TeacherStore.open(config.store)
        assert done.verify(complete=True) == [] and len(done) == plan.num_cuts
        assert summary.num_shards_written == (0 if other_commits else 1)  # else this run wrote it itself
