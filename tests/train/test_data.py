"""The loader: target join by cut ID, masks, ID mapping, muxing, DDP shards, workers, sampler state."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mt2kd.train import _data
from mt2kd.train._data import KDDataset, fetch_targets
from mt2kd.train._features import num_fbank_frames
from mt2kd.train._loader import make_loader, make_sampler, open_corpora, restore_sampler, sampler_state


def _open(path):
    from mt2kd.store import TeacherStore

    return TeacherStore.open(str(path))


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x["cut_ids"] == y["cut_ids"]
        assert torch.equal(x["fbank"], y["fbank"]) and torch.equal(x["num_frames"], y["num_frames"])
        for name in x["targets"]:
            for key in x["targets"][name]:
                assert torch.equal(x["targets"][name][key], y["targets"][name][key])


def test_targets_join_by_id_with_presence_masks(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.5, 0.9, 1.3])
    ids = [c.id for c in cuts]
    store = _open(fill_store(tmp_path / "s.zarr", cuts, missing={"whisper": {ids[1]}, "ecapa": {ids[2]}}))
    targets = fetch_targets(list(cuts), store)
    whisper = targets["whisper"]
    assert whisper["present"].tolist() == [True, False, True]
    assert whisper["lengths"][1] == 0 and whisper["values"][1].abs().max() == 0  # padding, masked out
    for i in (0, 2):
        expected = store.get(ids[i])["whisper"]
        assert whisper["lengths"][i] == expected.shape[0]
        np.testing.assert_array_equal(whisper["values"][i, : expected.shape[0]].numpy(), expected)
    assert targets["ecapa"]["present"].tolist() == [True, True, False]
    np.testing.assert_array_equal(targets["beats"]["values"][1].numpy(), store.get(ids[1])["beats"])
    only = fetch_targets(list(cuts), store, teachers=["ecapa", "hubert"])  # hubert: not in this store
    assert list(only) == ["ecapa"] and torch.equal(only["ecapa"]["values"], targets["ecapa"]["values"])


def test_repeated_ids_map_back_to_the_original(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.5, 0.7])
    store = _open(fill_store(tmp_path / "s.zarr", cuts))
    repeated = list(cuts.repeat(times=2))
    assert {c.id for c in repeated} == {"utt-000_repeat0", "utt-001_repeat0", "utt-000_repeat1", "utt-001_repeat1"}
    targets = fetch_targets(repeated, store)
    assert targets["ecapa"]["present"].all()
    for i, cut in enumerate(repeated):
        original = cut.id.split("_repeat")[0]
        np.testing.assert_array_equal(targets["ecapa"]["values"][i].numpy(), store.get(original)["ecapa"])


def test_speed_perturbed_cuts_are_masked_with_one_warning(tmp_path, make_cuts, fill_store, caplog,
                                                           monkeypatch) -> None:
    cuts = make_cuts("utt", [0.5, 0.7, 0.9])
    store = _open(fill_store(tmp_path / "s.zarr", cuts))
    monkeypatch.setattr(_data, "_warned_perturbed", False)
    batch = [cuts[0], cuts[1].perturb_speed(0.9), cuts[2].perturb_speed(1.1)]
    assert batch[1].id.endswith("_sp0.9")
    with caplog.at_level(logging.WARNING, logger="mt2kd.train._data"):
        targets = fetch_targets(batch, store)
    for name in ("whisper", "beats", "ecapa"):
        assert targets[name]["present"].tolist() == [True, False, False]
    warnings = [r for r in caplog.records if "perturbed" in r.getMessage()]
    assert len(warnings) == 1 and batch[1].id in warnings[0].getMessage()


def test_mixed_cut_takes_targets_of_its_first_track(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [1.0, 0.6])
    store = _open(fill_store(tmp_path / "s.zarr", cuts))
    mixed = cuts[0].mix(cuts[1], offset_other_by=0.2, allow_padding=True)
    assert type(mixed).__name__ == "MixedCut" and mixed.id != cuts[0].id
    batch = KDDataset([str(tmp_path / "s.zarr")])[[mixed]]
    expected = store.get(cuts[0].id)["whisper"]
    assert batch["targets"]["whisper"]["lengths"].tolist() == [expected.shape[0]]
    np.testing.assert_array_equal(batch["targets"]["whisper"]["values"][0].numpy(), expected)
    assert batch["num_frames"].tolist() == [num_fbank_frames(mixed.num_samples)]


def test_a_mixed_cut_extracted_as_mixed_reads_its_own_targets(tmp_path, make_cuts, fill_store) -> None:
    # a corpus mixed before extraction: the teachers saw the mix, stored under the MixedCut's own ID
    cuts = make_cuts("utt", [1.0, 0.6])
    mixed = cuts[0].mix(cuts[1], offset_other_by=0.6, allow_padding=True).with_id("mix-099")  # 1.2 s
    store = _open(fill_store(tmp_path / "s.zarr", [mixed, cuts[0]]))
    batch = KDDataset([str(tmp_path / "s.zarr")])[[mixed]]
    expected = store.get(mixed.id)["whisper"]
    assert expected.shape[0] != store.get(cuts[0].id)["whisper"].shape[0]
    assert batch["targets"]["whisper"]["lengths"].tolist() == [expected.shape[0]]
    np.testing.assert_array_equal(batch["targets"]["whisper"]["values"][0].numpy(), expected)
    np.testing.assert_array_equal(batch["targets"]["beats"]["values"][0].numpy(), store.get(mixed.id)["beats"])


def test_a_mixed_cut_keeping_a_tracks_id_reads_that_cuts_targets(tmp_path, make_cuts, fill_store) -> None:
    # padding or mixing with preserve_id keeps the clean cut's ID: its targets are the clean cut's, and their
    # frame count is checked against the clean cut, not against the longer mix
    cuts = make_cuts("utt", [1.0, 0.6])
    store = _open(fill_store(tmp_path / "s.zarr", cuts))
    right = cuts[0].pad(duration=1.5, preserve_id=True)
    mixed = cuts[0].mix(cuts[1], offset_other_by=0.8, allow_padding=True, preserve_id="left")
    left = cuts[0].pad(duration=1.5, direction="left", preserve_id=True)  # starts with padding: frames shifted
    assert right.id == mixed.id == left.id == cuts[0].id
    targets = fetch_targets([right, mixed, left], store)
    frames = store.get(cuts[0].id)["whisper"].shape[0]
    assert targets["whisper"]["lengths"].tolist() == [frames, frames, 0]
    assert targets["beats"]["present"].tolist() == [True, True, False]


def test_a_mixed_cut_with_a_perturbed_track_has_no_targets(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [1.0, 0.6])
    mixed = cuts[0].mix(cuts[1], allow_padding=True).with_id("mix-098")
    store = _open(fill_store(tmp_path / "s.zarr", [mixed, *cuts]))
    fast = mixed.perturb_speed(1.1, affix_id=False)  # the store's ID, other audio
    assert fast.id == "mix-098"
    assert not any(t["present"].any() for t in fetch_targets([fast], store).values())


def test_training_refuses_stores_that_hold_none_of_the_cuts(tmp_path, make_cuts, fill_store, caplog) -> None:
    from mt2kd.errors import ConfigError
    from mt2kd.train._loader import check_target_coverage

    ours, others = make_cuts("utt", [0.6, 0.8]), make_cuts("other", [0.6, 0.8])
    paths = []
    for name, cuts in (("ours", ours), ("others", others)):
        paths.append(str(tmp_path / f"{name}.jsonl.gz"))
        cuts.to_file(paths[-1])
    store = _open(fill_store(tmp_path / "s.zarr", ours))
    with pytest.raises(ConfigError, match="must hold targets for the cuts.*others.jsonl.gz"):
        check_target_coverage(paths[1:], store)
    with caplog.at_level(logging.WARNING, logger="mt2kd.train._loader"):
        assert check_target_coverage(paths, store) == {paths[0]: 1.0, paths[1]: 0.0}
    assert "others.jsonl.gz" in caplog.text and "train nothing" in caplog.text


def test_frames_of_a_truncated_cut_are_masked_not_misaligned(tmp_path, make_cuts, fill_store, caplog,
                                                             monkeypatch) -> None:
    cuts = make_cuts("utt", [1.6, 0.8])
    store = _open(fill_store(tmp_path / "s.zarr", cuts))
    monkeypatch.setattr(_data, "_warned_length", False)
    part = cuts[0].truncate(offset=0.4, duration=0.8, preserve_id=True)  # same ID, other audio
    with caplog.at_level(logging.WARNING, logger="mt2kd.train._data"):
        targets = fetch_targets([part, cuts[1]], store)
    assert targets["whisper"]["present"].tolist() == [False, True]
    assert targets["beats"]["present"].tolist() == [True, True]  # clip targets carry no time axis to check
    assert any(part.id in r.getMessage() for r in caplog.records)


def test_mux_weights_corpora_by_size_and_repeats(tmp_path, make_cuts) -> None:
    paths = []
    for name, n in (("a", 4), ("b", 2)):
        path = tmp_path / f"{name}.jsonl.gz"
        make_cuts(name, [0.5] * n).to_file(path)
        paths.append(str(path))
    muxed = [c.id for c in open_corpora(paths, repeats=[1, 3], seed=0)]
    assert sum(i.startswith("a-") for i in muxed) == 4
    assert sum(i.startswith("b-") for i in muxed) == 6 and len(set(muxed)) == 10


def test_ddp_ranks_get_disjoint_shards(tmp_path, make_cuts) -> None:
    path = tmp_path / "c.jsonl.gz"
    make_cuts("utt", [0.5 + 0.1 * i for i in range(8)]).to_file(path)
    seen = []
    for rank in (0, 1):
        sampler = make_sampler(open_corpora([str(path)]), 1.5, num_buckets=2, buffer_size=100,
                               world_size=2, rank=rank)
        seen.append({c.id for batch in sampler for c in batch})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_sampler_state_resumes_after_the_last_consumed_batch(corpus) -> None:
    def sampler():
        return make_sampler(open_corpora([corpus["manifest"]]), 1.6, num_buckets=2, buffer_size=100, seed=3)

    reference = [[c.id for c in b] for b in sampler()]
    first = sampler()
    iterator = iter(first)
    for _ in range(3):  # yielded three (as prefetching workers would) ...
        next(iterator)
    state = sampler_state(first, num_batches_consumed=1)  # ... but trained on one
    second = sampler()
    restore_sampler(second, state)
    assert [[c.id for c in b] for b in second] == reference[1:]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 2 workers on a 2-core box
def test_two_forked_workers_give_the_same_batches_as_none(corpus) -> None:
    def batches(num_workers: int) -> list[dict]:
        sampler = make_sampler(open_corpora([corpus["manifest"]]), 2.0, num_buckets=2, buffer_size=100, seed=1)
        loader = make_loader(sampler, [corpus["store"]], num_workers)
        loader.dataset.stores.get()  # open in the parent first: workers must not reuse it after fork
        return list(loader)

    serial = batches(0)
    _same_batches(serial, batches(2))
    assert sorted(i for b in serial for i in b["cut_ids"]) == sorted(c.id for c in corpus["cuts"])


def _cut_with_source(path, source: str):
    import soundfile as sf
    from lhotse import Recording
    from lhotse.utils import fastcopy

    sf.write(path, 0.1 * np.ones(1600, dtype=np.float32), 16_000)
    cut = Recording.from_file(path, recording_id=path.stem).to_cut()
    sources = [fastcopy(cut.recording.sources[0], source=source)]
    return fastcopy(cut, recording=fastcopy(cut.recording, sources=sources))


def test_audio_paths_relative_to_the_manifest_resolve_from_any_working_directory(tmp_path, monkeypatch) -> None:
    from lhotse import CutSet

    from mt2kd.cuts import open_manifest

    corpus, cwd = tmp_path / "corpus", tmp_path / "cwd"
    (corpus / "audio").mkdir(parents=True)
    (cwd / "audio").mkdir(parents=True)
    beside = _cut_with_source(corpus / "audio" / "a.wav", "audio/a.wav")  # relative to the manifest
    in_cwd = _cut_with_source(cwd / "audio" / "b.wav", "audio/b.wav")  # relative to the working directory
    mixed = beside.mix(beside, offset_other_by=0.05)
    CutSet.from_cuts([beside, in_cwd, mixed]).to_file(corpus / "cuts.jsonl.gz")
    monkeypatch.chdir(cwd)
    loaded = list(open_manifest(corpus / "cuts.jsonl.gz"))
    assert loaded[0].recording.sources[0].source == str(corpus / "audio" / "a.wav")
    assert loaded[1].recording.sources[0].source == str(cwd / "audio" / "b.wav")
    assert [t.cut.recording.sources[0].source for t in loaded[2].tracks] == [str(corpus / "audio" / "a.wav")] * 2
    assert [c.load_audio().shape[1] for c in loaded] == [1600, 1600, 2400]
    assert list(open_manifest(corpus / "cuts.jsonl.gz"))[0].id == beside.id
    corpora = list(open_corpora([corpus / "cuts.jsonl.gz"], repeats=[2]))  # the training reader resolves too
    assert len(corpora) == 6 and all(c.load_audio().shape[1] > 0 for c in corpora)


def test_a_cut_with_corrupt_audio_is_left_out_of_its_batch_with_its_reason(tmp_path, make_cuts, fill_store) -> None:
    cuts = make_cuts("utt", [0.6, 0.8])
    fill_store(tmp_path / "s.zarr", cuts)
    Path(cuts[1].recording.sources[0].source).write_bytes(b"not a wav file")
    batch = KDDataset([str(tmp_path / "s.zarr")])[cuts]
    assert batch["cut_ids"] == ["utt-000"] and batch["fbank"].shape[0] == 1
    assert list(batch["dropped"]) == ["utt-001"] and "utt-001.wav" in batch["dropped"]["utt-001"]
    assert batch["targets"]["beats"]["values"].shape[0] == 1
    Path(cuts[0].recording.sources[0].source).unlink()
    empty = KDDataset([str(tmp_path / "s.zarr")])[cuts]
    assert empty["cut_ids"] == [] and set(empty["dropped"]) == {"utt-000", "utt-001"}
    assert "does not exist" in empty["dropped"]["utt-000"]
