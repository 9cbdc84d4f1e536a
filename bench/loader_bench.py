"""Loader throughput: mt2kd's store join vs targets as lhotse custom fields in HDF5.

Both loaders read the same synthetic cuts (16 kHz wav audio, whisper-like
float16 frames ``[T25, 2560]``, beats ``[527]`` and ecapa ``[192]`` float32),
compute the same 80-bin fbank on the fly, and batch with the same
DynamicBucketingSampler at ``--max-duration`` seconds:

- ``mt2kd``: :class:`mt2kd.train._data.KDDataset`, targets from a Zarr
  teacher store with one ``get_many`` per batch, opened lazily per worker;
- ``hdf5``: the authors' way: each target stored with
  ``lhotse.features.io.NumpyHdf5Writer`` and attached to the cut as a custom
  field, read back with ``collate_custom_field`` (which calls
  ``cut.load_custom`` per cut).

A consumer sleeps ``--step-ms`` per batch to stand in for the GPU step, so
"data-wait" is the share of wall time the training loop would spend waiting
for its next batch. The table gives batches/s and data-wait per worker count,
and the ratio of mt2kd to the authors' way at the same worker count (the
anchor, measured in the same run).

``--composed`` measures instead what composing stores per (cut, teacher)
costs: the same targets read from one store holding all three teachers (the
anchor) and from two stores, whisper and beats in one and ecapa in the other
(a corpus that gained a teacher later), targets only and without a simulated
step, best of ``--repeats`` passes each, alternating.

Run: ``python bench/loader_bench.py`` (about 1.2 h of audio) or ``--quick``;
``python bench/loader_bench.py --composed``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # Hz
WHISPER_DIM = 2560  # stacked whisper-large frames
NUM_CLASSES = 527  # beats logits
EMBEDDING_DIM = 192  # ecapa embedding
FRAME_SHIFT = 0.04  # s, 25 Hz teacher frames
MEAN_DURATION = 12.3  # s, LibriSpeech-like cut length
SHORTEST, LONGEST = 2.0, 30.0  # s


def stacked_frames(num_samples: int) -> int:
    return ((num_samples // 160 + 1) // 2) // 2


def make_cuts(folder: Path, total_s: float, seed: int):
    """Cuts with noise audio adding up to about ``total_s`` seconds."""
    import soundfile as sf
    from lhotse import CutSet, Recording
    from lhotse.cut import MonoCut

    rng = np.random.default_rng(seed)
    num_cuts = max(2, int(total_s / MEAN_DURATION))
    durations = np.clip(rng.gamma(10.0, MEAN_DURATION / 10.0, num_cuts), SHORTEST, LONGEST)
    cuts = []
    for i, duration in enumerate(durations):
        path = folder / f"cut{i:05d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(duration * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)
        rec = Recording.from_file(path, recording_id=path.stem)
        cuts.append(MonoCut(id=path.stem, start=0.0, duration=rec.duration, channel=0, recording=rec))
    return CutSet.from_cuts(cuts)


def targets_of(cut, rng: np.random.Generator) -> dict[str, np.ndarray]:
    frames = rng.standard_normal((stacked_frames(cut.num_samples), WHISPER_DIM), dtype=np.float32)
    return {
        "whisper": frames.astype(np.float16),
        "beats": rng.standard_normal(NUM_CLASSES, dtype=np.float32),
        "ecapa": rng.standard_normal(EMBEDDING_DIM, dtype=np.float32),
    }


def write_both(cuts, folder: Path, seed: int):
    """The same targets into a teacher store and into HDF5 custom fields; returns (store path, hdf5 cuts)."""
    from lhotse import CutSet
    from lhotse.features.io import NumpyHdf5Writer

    from mt2kd.store import TeacherSpec, TeacherStore

    specs = [TeacherSpec("whisper", "frames", WHISPER_DIM, frame_rate=25.0, dtype="float16"),
             TeacherSpec("beats", "clip", NUM_CLASSES), TeacherSpec("ecapa", "clip", EMBEDDING_DIM)]
    store_path = folder / "teachers.zarr"
    store = TeacherStore.create(str(store_path), specs, attrs={"synthetic": True})
    rng = np.random.default_rng(seed)
    with_custom = []
    with store.shard_writer(0) as shard, NumpyHdf5Writer(folder / "targets.h5") as h5:
        for cut in cuts:
            arrays = targets_of(cut, rng)
            shard.put(cut.id, arrays)
            cut = cut.with_custom("whisper", h5.store_array(
                f"{cut.id}/whisper", arrays["whisper"], frame_shift=FRAME_SHIFT, temporal_dim=0))
            cut = cut.with_custom("beats", h5.store_array(f"{cut.id}/beats", arrays["beats"]))
            with_custom.append(cut.with_custom("ecapa", h5.store_array(f"{cut.id}/ecapa", arrays["ecapa"])))
    return store_path, CutSet.from_cuts(with_custom)


def write_split(cuts, folder: Path, seed: int) -> tuple[str, list[str]]:
    """The same targets into one store of three teachers and into two stores (whisper + beats, ecapa)."""
    from mt2kd.store import TeacherSpec, TeacherStore

    specs = {"whisper": TeacherSpec("whisper", "frames", WHISPER_DIM, frame_rate=25.0, dtype="float16"),
             "beats": TeacherSpec("beats", "clip", NUM_CLASSES), "ecapa": TeacherSpec("ecapa", "clip", EMBEDDING_DIM)}
    layout = {"single": ["whisper", "beats", "ecapa"], "frames": ["whisper", "beats"], "speaker": ["ecapa"]}
    stores = {name: TeacherStore.create(str(folder / f"{name}.zarr"), [specs[t] for t in teachers])
              for name, teachers in layout.items()}
    writers = {name: store.shard_writer(0) for name, store in stores.items()}
    for writer in writers.values():
        writer.__enter__()
    rng = np.random.default_rng(seed)
    for cut in cuts:
        arrays = targets_of(cut, rng)
        for name, teachers in layout.items():
            writers[name].put(cut.id, {t: arrays[t] for t in teachers})
    for writer in writers.values():
        writer.__exit__(None, None, None)
    return str(folder / "single.zarr"), [str(folder / "frames.zarr"), str(folder / "speaker.zarr")]


def run_composed(cuts, folder: Path, args: argparse.Namespace, workers: list[int]) -> None:
    """One store vs the same targets in two stores composed per (cut, teacher): batches/s and their ratio."""
    single, split = write_split(cuts, folder, args.seed)
    cuts = lazy(cuts, folder / "cuts.jsonl.gz")
    print(f"{len(cuts)} cuts, max-duration {args.max_duration:.0f} s, targets only, no step, "
          f"best of {args.repeats}")
    print(f"{'workers':>7} | {'batches':>7} | {'one store b/s':>13} | {'two stores b/s':>14} | {'ratio':>5}")
    for num_workers in workers:
        best = {"one": 0.0, "two": 0.0}
        num_batches = 0
        for _ in range(args.repeats):  # alternating, so a busy spell of the machine hits both alike
            for name, paths in (("one", [single]), ("two", split)):
                rate, _, num_batches = measure(cuts, StoreTargetsDataset(paths), num_workers, args.max_duration, 0.0)
                best[name] = max(best[name], rate)
        print(f"{num_workers:>7} | {num_batches:>7} | {best['one']:>13.2f} | {best['two']:>14.2f} | "
              f"{best['two'] / best['one']:>5.2f}")
    print("ratio: two stores / one store at the same worker count (1.00: composing costs nothing)")


def lazy(cuts, path: Path):
    """Manifests are read lazily in training, as the bucketing sampler expects."""
    from lhotse import CutSet

    cuts.to_file(path)
    return CutSet.from_jsonl_lazy(path)


class CustomFieldDataset:
    """The authors' way: fbank on the fly, targets via ``collate_custom_field``."""

    def __init__(self, with_audio: bool = True) -> None:
        self.with_audio = with_audio

    def __getitem__(self, cuts):
        from lhotse.dataset.collation import collate_custom_field

        from mt2kd.train._data import _load_audio, _pad_fbank
        from mt2kd.train._features import compute_fbank

        batch = {}
        if self.with_audio:
            batch["fbank"], batch["num_frames"] = _pad_fbank([compute_fbank(_load_audio(c)) for c in cuts])
        batch["whisper"], batch["whisper_lens"] = collate_custom_field(cuts, "whisper", pad_value=0)
        batch["beats"] = collate_custom_field(cuts, "beats")
        batch["ecapa"] = collate_custom_field(cuts, "ecapa")
        return batch


class StoreTargetsDataset:
    """mt2kd's target join alone (no audio), to compare with ``CustomFieldDataset(with_audio=False)``."""

    def __init__(self, store_paths: str | list[str]) -> None:
        from mt2kd.train._data import LazyStores

        self.stores = LazyStores([store_paths] if isinstance(store_paths, str) else store_paths)

    def __getitem__(self, cuts):
        from mt2kd.train._data import fetch_targets

        return fetch_targets(list(cuts), self.stores.get())


def measure(cuts, dataset, num_workers: int, max_duration: float, step_s: float) -> tuple[float, float, int]:
    """(batches/s, data-wait fraction, batches) over one pass of the sampler."""
    from torch.utils.data import DataLoader

    from mt2kd.train._loader import make_sampler

    sampler = make_sampler(cuts, max_duration, shuffle=True, num_buckets=4, buffer_size=5000, seed=0)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers)
    start = time.perf_counter()
    wait_s, num_batches = 0.0, 0
    iterator = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        wait_s += time.perf_counter() - t0
        if batch is None:
            break
        num_batches += 1
        time.sleep(step_s)  # the GPU step the loader has to hide behind
    elapsed = time.perf_counter() - start
    return num_batches / elapsed, wait_s / elapsed, num_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="0.5 h of audio, workers 0/2 only (about 30 s on an idle 2-core machine)")
    parser.add_argument("--hours", type=float, default=1.2, help="audio hours of synthetic data")
    parser.add_argument("--max-duration", type=float, default=1000.0, help="s of audio per batch")
    parser.add_argument("--step-ms", type=float, default=300.0, help="simulated training step per batch (ms)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets-only", action="store_true",
                        help="skip audio and fbank in both loaders: time the target reads alone")
    parser.add_argument("--composed", action="store_true",
                        help="one store vs the same targets in two stores composed per (cut, teacher)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per loader with --composed (best is kept)")
    args = parser.parse_args()
    hours, workers = (0.5, [0, 2]) if args.quick else (args.hours, args.workers)

    import warnings

    import torch

    # torch warns when workers outnumber cores; oversubscribing is part of what this measures
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    from mt2kd.train._data import KDDataset

    torch.set_num_threads(1)  # workers are the parallelism under test
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cuts = make_cuts(folder, hours * 3600.0, args.seed)
        if args.composed:
            run_composed(cuts, folder, args, workers)
            return
        store_path, custom_cuts = write_both(cuts, folder, args.seed)
        cuts, custom_cuts = lazy(cuts, folder / "cuts.jsonl.gz"), lazy(custom_cuts, folder / "custom.jsonl.gz")
        what = "targets only" if args.targets_only else "audio + fbank + targets"
        print(f"{len(cuts)} cuts, {hours:.2f} h audio, max-duration {args.max_duration:.0f} s, "
              f"step {args.step_ms:.0f} ms, {what}")
        rows = []
        for num_workers in workers:
            ours_set: StoreTargetsDataset | KDDataset
            if args.targets_only:
                anchor_set, ours_set = CustomFieldDataset(with_audio=False), StoreTargetsDataset(str(store_path))
            else:
                anchor_set, ours_set = CustomFieldDataset(), KDDataset([str(store_path)])
            anchor = measure(custom_cuts, anchor_set, num_workers, args.max_duration, args.step_ms / 1e3)
            ours = measure(cuts, ours_set, num_workers, args.max_duration, args.step_ms / 1e3)
            rows.append((num_workers, anchor, ours))
    print(f"{'workers':>7} | {'batches':>7} | {'hdf5 b/s':>8} | {'mt2kd b/s':>9} | {'b/s ratio':>9} | "
          f"{'hdf5 wait':>9} | {'mt2kd wait':>10} | {'wait ratio':>10}")
    for num_workers, anchor, ours in rows:
        print(f"{num_workers:>7} | {ours[2]:>7} | {anchor[0]:>8.2f} | {ours[0]:>9.2f} | {ours[0] / anchor[0]:>9.2f} | "
              f"{anchor[1]:>9.1%} | {ours[1]:>10.1%} | {ours[1] / max(anchor[1], 1e-9):>10.2f}")
    print("ratios: mt2kd / hdf5 custom fields at the same worker count (b/s higher is better, wait lower)")


if __name__ == "__main__":
    main()
