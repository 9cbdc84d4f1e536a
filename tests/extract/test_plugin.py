"""A worker's teachers: loaded at setup, with their checkpoints hashed alongside."""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path
from typing import Any

import pytest

from mt2kd.extract import TeacherConfig, _teacher, load_teacher, make_tiny_checkpoints
from mt2kd.extract._plugin import TeacherPlugin


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("teachers"))


def test_a_checkpoint_is_hashed_once_per_process_until_it_changes(tmp_path: Path, tiny: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "beats.pt"
    path.write_bytes(tiny["beats"].read_bytes())
    first = _teacher.checkpoint_digest(path)
    opened: list[str] = []
    real_open = open

    def counted_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counted_open)
    assert _teacher.checkpoint_digest(path) == first and opened == []  # from the cache: nothing read again
    monkeypatch.undo()
    with open(path, "ab") as f:
        f.write(b"\0")  # a changed file (size and time) is hashed again
    assert _teacher.checkpoint_digest(path) != first
    folder = _teacher.checkpoint_digest(tiny["ecapa"])  # a speechbrain folder: every file counts
    assert len(folder) == 64 and folder != first


def test_the_fingerprint_follows_the_checkpoint_bytes_the_options_and_the_precision(tmp_path: Path,
                                                                                   tiny: dict[str, Path]) -> None:
    path = tmp_path / "whisper.pt"
    path.write_bytes(tiny["whisper"].read_bytes())
    base = load_teacher("whisper", path).fingerprint
    assert load_teacher("whisper", path).fingerprint == base and len(base) == 16
    assert load_teacher("whisper", path, layer=1).fingerprint != base
    assert load_teacher("whisper", path, precision="bf16").fingerprint != base
    with open(path, "ab") as f:
        f.write(b"\0")
    os.utime(path)
    assert load_teacher("whisper", path).fingerprint != base


def test_worker_setup_hashes_every_checkpoint_while_the_teachers_load(tiny: dict[str, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_teacher, "_DIGESTS", {})
    configs = [TeacherConfig(name, str(path)) for name, path in tiny.items()]
    plugin = TeacherPlugin(configs, "fp32", "cpu", 1)
    plugin.setup(types.SimpleNamespace(name=0))  # type: ignore[arg-type]
    assert len(_teacher._DIGESTS) == len(configs)  # the specs the run asks for next hash nothing
    hashed: list[str] = []

    def counted_sha256(*args: bytes) -> Any:
        hashed.append("sha256")
        return hashlib.new("sha256", *args)

    monkeypatch.setattr(_teacher.hashlib, "sha256", counted_sha256)
    assert {name: t.spec.fingerprint for name, t in plugin.teachers.items()}.keys() == tiny.keys()
    assert hashed == ["sha256"] * len(configs)  # one small hash each over name, options and digest
    plugin.teardown(None)  # type: ignore[arg-type]



def test_two_runs_on_one_scheduler_each_find_their_own_teachers(tiny: dict[str, Path]) -> None:
    """Each run's client names its plugin and task keys; a second run's plugin replaces nothing of the first."""
    from distributed import Client, LocalCluster

    from mt2kd.extract._plugin import loaded_specs, plugin_name, run_token

    whisper = str(tiny["whisper"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as first, Client(cluster) as second:
        assert run_token(first) != run_token(second) and run_token(first) == run_token(first)
        names = {}
        for client, layer in ((first, -1), (second, 0)):
            names[client] = plugin_name(run_token(client))
            client.register_plugin(TeacherPlugin([TeacherConfig("whisper", whisper, {"layer": layer})], "fp32",
                                                 "cpu", 1, name=names[client]))
        got = {layer: client.submit(loaded_specs, names[client], pure=False).result()["whisper"]["fingerprint"]
               for client, layer in ((first, -1), (second, 0))}
    assert got == {layer: load_teacher("whisper", whisper, layer=layer).fingerprint for layer in (-1, 0)}


def test_a_worker_that_joins_with_a_bad_checkpoint_fails_its_tasks_naming_teacher_and_file(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    """dask only logs the failed setup of a worker that joins after the plugin was registered (SLURM)."""
    from distributed import Client, LocalCluster

    from mt2kd.errors import CheckpointError
    from mt2kd.extract._plugin import loaded_specs

    bad = tmp_path / "beats.pt"
    bad.write_bytes(b"not a torch file")
    configs = [TeacherConfig("whisper", str(tiny["whisper"])), TeacherConfig("beats", str(bad))]
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(TeacherPlugin(configs, "fp32", "cpu", 1, name="mt2kd-teachers-late"))  # no worker yet
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        with pytest.raises(CheckpointError, match=f"could not load teacher 'beats' from '{bad}'.*BEATs checkpoint"):
            client.submit(loaded_specs, "mt2kd-teachers-late", pure=False).result(timeout=60)
        plugin = client.run(lambda dask_worker: dask_worker.plugins["mt2kd-teachers-late"].teachers)
        assert list(plugin.values()) == [{}]  # the teachers it did load are let go
