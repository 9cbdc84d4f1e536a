"""Training from stores composed per (cut, teacher): a corpus that gained a teacher in a store of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt2kd.errors import DuplicateCutError, FingerprintMismatchError
from mt2kd.store import TeacherStore
from mt2kd.train import TrainConfig
from mt2kd.train._trainer import train


def _split(full: Path, parts: dict[str, list[str]], folder: Path, fingerprints: dict[str, str] | None = None
           ) -> list[str]:
    """Copy ``full`` into one store per part holding only that part's teachers."""
    source = TeacherStore.open(str(full))
    paths = []
    for name, teachers in parts.items():
        specs = [source.specs[t] for t in teachers]
        if fingerprints:
            specs = [s.__class__(**{**s.to_dict(), "fingerprint": fingerprints.get(s.name, s.fingerprint)})
                     for s in specs]
        store = TeacherStore.create(str(folder / f"{name}.zarr"), specs)
        with store.shard_writer(0) as writer:
            for cut_id in source.cut_ids():
                writer.put(cut_id, source.get_many([cut_id], teachers)[0])
        paths.append(str(folder / f"{name}.zarr"))
    return paths


def _config(manifest: str, stores: list[str], exp_dir: Path, **overrides) -> TrainConfig:
    fields = dict(cuts=(manifest,), stores=tuple(stores), exp_dir=str(exp_dir), student="tiny",
                  max_duration=3.0, num_buckets=2, buffer_size=100, num_workers=0, lr=3e-3, warmup_steps=10,
                  lr_steps=1000.0, log_every=20, checkpoint_every=1000, keep_last=1, seed=1,
                  device="cpu")  # composed and single compared bit for bit: CPU float32, no autocast
    fields.update(overrides)
    return TrainConfig(**fields)


def test_whisper_from_one_store_and_ecapa_from_another_train_both_terms(tmp_path, corpus) -> None:
    stores = _split(Path(corpus["store"]), {"a": ["whisper", "beats"], "b": ["ecapa"]}, tmp_path)
    composed = train(_config(corpus["manifest"], stores, tmp_path / "composed", num_steps=40))
    single = train(_config(corpus["manifest"], [corpus["store"]], tmp_path / "single", num_steps=40))
    for name in ("whisper", "beats", "ecapa"):
        first = sum(h[name] for h in composed[:3]) / 3
        last = sum(h[name] for h in composed[-5:]) / 5
        assert first > 0 and last < 0.6 * first, (name, first, last)
    # the same targets, whichever stores hold them: the same run
    assert [h["total"] for h in composed] == [h["total"] for h in single]


def test_a_cut_teacher_pair_in_two_stores_stops_the_run_naming_both(tmp_path, corpus) -> None:
    stores = _split(Path(corpus["store"]), {"a": ["whisper", "ecapa"], "b": ["beats", "ecapa"]}, tmp_path)
    with pytest.raises(DuplicateCutError, match=r"teacher\(s\) \['ecapa'\] in both .*a.zarr and .*b.zarr"):
        train(_config(corpus["manifest"], stores, tmp_path / "exp", num_steps=1))


def test_one_teacher_with_two_fingerprints_stops_the_run_naming_both(tmp_path, corpus, make_cuts, fill_store) -> None:
    more = make_cuts("more", [0.7, 0.9])
    other = _split(fill_store(tmp_path / "more.zarr", more), {"other": ["ecapa"]}, tmp_path, {"ecapa": "f00d"})
    with pytest.raises(FingerprintMismatchError,
                       match=r"teacher 'ecapa' must be the same teacher in every store. Got fingerprint \(none\) "
                             r"in .*teachers.zarr and f00d in .*other.zarr"):
        train(_config(corpus["manifest"], [corpus["store"], *other], tmp_path / "exp", num_steps=1))
