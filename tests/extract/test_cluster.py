"""How a LocalCluster's workers start: forked from a server that imported their modules once, or spawned."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import pytest

from mt2kd.errors import ConfigError
from mt2kd.extract import ExtractConfig, TeacherConfig
from mt2kd.extract._cluster import START_METHOD_KEY, local_start_method

# In a fresh process (a fork server outlives the run that started it, so this pytest process may hold one
# started by another test): start a LocalCluster as the job does, once forked and once spawned, and report
# each worker's parent and which teacher libraries it has imported before any plugin loaded a teacher.
# One module on the fork server's list fails at import with an error that is not an ImportError.
WORKER_FACTS = r"""
import json, os, sys
import dask
from mt2kd.extract import ExtractConfig, TeacherConfig
from mt2kd.extract import _cluster
from mt2kd.extract._cluster import open_client, prestart_local_workers

_cluster.WORKER_IMPORTS += ("broken_at_import",)

def facts():
    import os, sys
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        parent = f.read().replace(b"\0", b" ").decode()
    return {"parent_pid": os.getppid(), "parent": parent,
            "imported": sorted(m for m in ("torch", "whisper.model", "speechbrain.lobes.models.ECAPA_TDNN",
                                           "mt2kd.extract.beats") if m in sys.modules)}

if __name__ == "__main__":
    teachers = tuple(TeacherConfig(n, "unused.pt") for n in ("whisper", "beats", "ecapa"))
    config = ExtractConfig(cuts=("unused.jsonl",), store="unused", teachers=teachers, workers=2)
    out = {"client_pid": os.getpid()}
    for method in ("forkserver", "spawn"):
        with dask.config.set({"mt2kd.local-start-method": method}):
            prestart_local_workers(config)
            with open_client(config) as client:
                out[method] = list(client.run(facts).values())
    print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads worker parents from /proc")
def test_local_workers_fork_from_a_server_that_imported_the_teachers_libraries(tmp_path: Path) -> None:
    script = tmp_path / "worker_facts.py"
    script.write_text(WORKER_FACTS)
    (tmp_path / "broken_at_import.py").write_text("raise OSError('a library that cannot load')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    forked, spawned = out["forkserver"], out["spawn"]
    assert len(forked) == len(spawned) == 2
    for worker in forked:  # children of the fork server, with every teacher's libraries already in place
        assert worker["parent_pid"] != out["client_pid"]
        assert "multiprocessing.forkserver" in worker["parent"], worker
        assert worker["imported"] == sorted(["torch", "whisper.model", "speechbrain.lobes.models.ECAPA_TDNN",
                                             "mt2kd.extract.beats"])
    for worker in spawned:  # dask's own way: children of the client, importing for themselves
        assert worker["parent_pid"] == out["client_pid"]
        assert "whisper.model" not in worker["imported"] and "mt2kd.extract.beats" not in worker["imported"]


def test_the_teachers_import_nothing_the_fork_server_left_out(tiny_paths: dict[str, Path]) -> None:
    """Loading and running every tiny teacher imports no library that ``teacher_imports`` did not name."""
    check = r"""
import sys, numpy as np
from mt2kd.extract._cluster import WORKER_IMPORTS
from mt2kd.extract._teacher import teacher_imports
names = sys.argv[1].split(",")
for module in [*WORKER_IMPORTS, *teacher_imports(names)]:
    __import__(module)
before = set(sys.modules)
from mt2kd.extract import TeacherConfig
from mt2kd.extract._plugin import load_teachers, warm_up
paths = dict(zip(names, sys.argv[2:]))
warm_up(load_teachers([TeacherConfig(n, p) for n, p in paths.items()], "fp32", "cpu"))
had = {m.split(".")[0] for m in before}
print(" ".join(sorted({m.split(".")[0] for m in set(sys.modules) - before} - had)))
"""
    names = sorted(tiny_paths)
    done = subprocess.run([sys.executable, "-c", check, ",".join(names), *(str(tiny_paths[n]) for n in names)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # submodules of imported libraries may load on first use; a whole library left out shows by its name
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), done.stdout


def test_cuda_workers_are_always_spawned_and_a_bad_method_is_named() -> None:
    teachers = (TeacherConfig("beats", "beats.pt"),)
    cpu = ExtractConfig(cuts=("a.jsonl",), store="s", teachers=teachers)
    cuda = ExtractConfig(cuts=("a.jsonl",), store="s", teachers=teachers, device="cuda")
    assert local_start_method(cpu) == "forkserver"
    assert local_start_method(cuda) == "spawn"  # CUDA set up in the fork server would be unusable after a fork
    with dask.config.set({START_METHOD_KEY: "spawn"}):
        assert local_start_method(cpu) == "spawn"
    with dask.config.set({START_METHOD_KEY: "fork"}), pytest.raises(ConfigError, match=START_METHOD_KEY):
        local_start_method(cpu)


def test_local_cuda_runs_default_to_one_worker_per_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import mt2kd.extract._cluster as cluster

    monkeypatch.setattr(cluster, "visible_gpus", lambda: 4)
    teachers = (TeacherConfig("beats", "beats.pt"),)

    def workers(**fields: Any) -> int:
        return cluster.num_workers(ExtractConfig(cuts=("a.jsonl",), store="s", teachers=teachers, **fields))

    assert workers(device="cuda") == 4  # worker N takes GPU N: every GPU once
    assert workers(device="cuda:2") == 1  # one named GPU
    assert workers(device="cuda", workers=8) == 8  # as given: two workers on each GPU
    assert workers() == cluster.DEFAULT_WORKERS == 2  # CPU
    assert workers(device="cuda", scheduler="slurm") == 2  # SLURM jobs, each with its own GPUs
    with pytest.raises(ConfigError, match="workers must be >= 1. Got 0"):
        workers(workers=0)
    on_gpus = ExtractConfig(cuts=("a.jsonl",), store="s", teachers=teachers, device="cuda")
    assert cluster.describe_workers(on_gpus).startswith("4 local process(es) on cuda, one per visible GPU, ")
    monkeypatch.setattr(cluster, "visible_gpus", lambda: 0)  # a login node: the dry run says so
    assert cluster.describe_workers(on_gpus) == "none: one per visible GPU, and this machine shows no CUDA device"


def test_a_local_cuda_run_without_a_gpu_stops_before_any_cluster_or_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_starts: list[str]) -> None:
    import mt2kd.extract._cluster as cluster
    from mt2kd.extract import extract, make_tiny_checkpoints
    from mt2kd.tests.extract._corpus import DEMO

    paths = make_tiny_checkpoints(tmp_path / "teachers")
    monkeypatch.setattr(cluster, "visible_gpus", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    config = ExtractConfig(cuts=(str(DEMO / "speech_cuts.jsonl.gz"),), store=str(tmp_path / "store"),
                           teachers=(TeacherConfig("beats", str(paths["beats"])),), device="cuda:1")
    with pytest.raises(ConfigError,
                       match=r"'cuda:1' must be a GPU .* Got 1 CUDA device\(s\) \(CUDA_VISIBLE_DEVICES=3\)"):
        extract(config, echo=lambda _: None, progress=False)
    monkeypatch.setattr(cluster, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match="'cuda' must be a GPU .* Got no CUDA device .*--device cpu"):
        extract(dataclasses.replace(config, device="cuda"), echo=lambda _: None, progress=False)
    assert cluster_starts == [] and not (tmp_path / "store").exists()
    cluster.check_local_device(dataclasses.replace(config, device="cuda", scheduler="slurm"))  # GPUs are elsewhere


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mt2kd.extract import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("teachers"))


def test_the_fork_server_skips_a_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from mt2kd.extract._preload import import_each

    (tmp_path / "fails_with_oserror.py").write_text("raise OSError('native library mismatch')\n")
    (tmp_path / "exits_at_import.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_each(["json", "fails_with_oserror", "no_such_module_here", "exits_at_import", "gzip"]) == [
        "fails_with_oserror", "no_such_module_here", "exits_at_import"]
    assert "gzip" in sys.modules


@pytest.mark.parametrize("in_server", [True, False])
def test_only_the_fork_server_imports_the_list_and_skips_its_final_collection(in_server: bool) -> None:
    check = ("import sys; import mt2kd.extract._preload; import mt2kd._process as p; "
             "print(p._registered, 'wave' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "MT2KD_WORKER_IMPORTS"}
    if in_server:
        env["MT2KD_WORKER_IMPORTS"] = "wave,no_such_module_here"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(in_server), str(in_server)]


def test_a_first_ctrl_c_while_the_cluster_starts_is_held_and_a_second_goes_through() -> None:
    import os
    import signal

    from mt2kd.extract._cluster import _interrupt_deferred

    with pytest.raises(KeyboardInterrupt):
        with _interrupt_deferred() as caught:
            os.kill(os.getpid(), signal.SIGINT)  # held: the start goes on
            assert caught == [signal.SIGINT]
            os.kill(os.getpid(), signal.SIGINT)  # a start that hangs can still be stopped
            time.sleep(1.0)  # the handler runs between bytecodes; this is not reached
        pytest.fail("the second Ctrl-C was held too")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
