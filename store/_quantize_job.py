"""``mt2kd store quantize``: train an MVQ quantiser on a store's frames, then write every cut's codes.

The codes go into a new store as a frames teacher of their own (uint8
``[T, num_codebooks]``) with the source's shards, cut order and recorded
failures, shard by shard through the ordinary writer and commit protocol,
so a rerun resumes: committed shards are skipped, and the quantiser is
read back from the store instead of being trained again. The quantiser
file lives in the store (``quantizers/<codes teacher>.safetensors``); the
codes teacher's spec names it and its fingerprint. With ``workers > 1``
the shard tasks run on a dask LocalCluster, one process each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mt2kd.errors import ConfigError, FingerprintMismatchError, ShardCommittedError, StoreNotFoundError
from mt2kd.store._format import shard_name
from mt2kd.store._quantize_config import QuantizeConfig
from mt2kd.store._quantizer import Quantizer, QuantizerConfig, load_quantizer, quantizer_path, save_quantizer
from mt2kd.store._spec import TeacherSpec
from mt2kd.store._store import TeacherStore

SAMPLE_BATCH_CUTS = 64  # cuts read together while sampling training frames
MIN_FRAMES_PER_CUT = 4  # frames sampled from each visited cut, at least (more when the corpus is small)
ENCODE_ROWS = 1024  # frames encoded in one call (the package's index refinement is memory hungry)
TRAIN_REPORTS = 10  # progress lines while training


@dataclasses.dataclass(frozen=True)
class QuantizeSummary:
    """What a quantisation run did."""

    out: str  # the codes store
    codes_teacher: str  # its teacher name
    num_shards: int  # shards of the source store
    num_shards_written: int  # shards this run wrote (the rest were committed already)
    num_failures: int  # cuts of the written shards without codes (failed in the source, or no frames there)
    rel_error: float  # the quantiser's relative reconstruction error on held-out frames
    trained: bool  # False when the quantiser came from the store (a resumed run)
    seconds: float  # wall time of the run


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What a shard task needs (picklable: dask workers get it, never the stores or the quantiser)."""

    source: str  # source store URL
    out: str  # codes store URL
    teacher: str  # source frames teacher
    codes_teacher: str  # codes teacher of the out store
    batch_cuts: int  # cuts read and encoded together
    device: str  # torch device of encoding
    owner: str  # this run's token: a rerun of a lost task waits for its own earlier attempt's lock


def quantize(config: QuantizeConfig, echo: Callable[[str], None] | None = None) -> QuantizeSummary:
    """Run ``mt2kd store quantize``: train (or reload) the quantiser, then write the missing shards of codes.

    Examples
    --------
    >>> summary = quantize(QuantizeConfig("labels.zarr", "codes.zarr", num_codebooks=8))  # doctest: +SKIP
    >>> TeacherStore.open("codes.zarr").specs["whisper_mvq"].dim  # doctest: +SKIP
    8
    """
    say = echo or (lambda text: print(text, file=sys.stderr))
    start = time.monotonic()
    source = TeacherStore.open(config.source)
    spec = frames_spec(source, config.teacher)
    out = None if config.overwrite else _open_existing(config.out)
    trained = out is None
    if out is None:
        quantizer = train_quantizer(source, spec, config, say)
        out = create_codes_store(config, source, spec, quantizer)
    else:
        check_resumable(out, spec, config)
        quantizer = load_quantizer(out, config.codes_teacher)
        say(f"resuming {out.url}: {len(out.shards)} of {len(source.shards)} shards committed; the quantiser "
            f"is read back from the store.")
    todo = [name for name in source.shards if not out.is_committed(name)]
    job = ShardJob(source.url, out.url, config.teacher, config.codes_teacher, config.batch_cuts, config.device,
                   owner=f"quantize-{uuid.uuid4().hex[:12]}")
    failures = run_shards(job, todo, config.workers, say)
    return QuantizeSummary(out.url, config.codes_teacher, len(source.shards), len(todo), failures,
                           quantizer.config.rel_error, trained, time.monotonic() - start)


def frames_spec(store: TeacherStore, teacher: str) -> TeacherSpec:
    """The spec of ``teacher``, which must be a float frames teacher of ``store``."""
    spec = store.specs.get(teacher)
    frames = [n for n, s in store.specs.items() if s.kind == "frames" and s.dtype != "uint8"]
    if spec is None or spec not in [store.specs[n] for n in frames]:
        raise ConfigError(f"--teacher must be a float frames teacher of {store.url}, one of {frames}. "
                          f"Got {teacher!r}.")
    return spec


def _open_existing(url: str) -> TeacherStore | None:
    try:
        return TeacherStore.open(url, "a")
    except StoreNotFoundError:
        return None


# ---------------------------------------------------------------- training


def sample_frames(store: TeacherStore, teacher: str, num_frames: int, seed: int) -> np.ndarray:
    """``num_frames`` frames (float32, fewer if the store has fewer) from cuts visited in a seeded random order.

    Each visited cut gives a few frames at random positions (at least
    ``MIN_FRAMES_PER_CUT``), so the sample spreads over many cuts and
    shards instead of a few long ones.
    """
    rng = np.random.default_rng(seed)
    cut_ids = [c for record in store.shards.values() for c in record.cut_ids]
    cut_ids = [cut_ids[i] for i in rng.permutation(len(cut_ids))]
    per_cut = max(MIN_FRAMES_PER_CUT, 2 * math.ceil(num_frames / max(1, len(cut_ids))))
    parts: list[np.ndarray] = []
    collected = 0
    for first in range(0, len(cut_ids), SAMPLE_BATCH_CUTS):
        batch = [c for c in cut_ids[first:first + SAMPLE_BATCH_CUTS] if store.num_frames(c, teacher)]
        for outputs in store.get_many(batch, teachers=[teacher]):
            frames = outputs[teacher]
            rows = rng.choice(frames.shape[0], size=min(per_cut, frames.shape[0]), replace=False)
            parts.append(frames[np.sort(rows)].astype(np.float32))
            collected += len(rows)
        if collected >= num_frames:
            break
    if not parts:
        raise ConfigError(f"{store.url} must hold frames of teacher {teacher!r} to train a quantiser on. Got none.")
    sample = np.concatenate(parts)
    return sample[rng.permutation(sample.shape[0])[:num_frames]]


def train_quantizer(store: TeacherStore, spec: TeacherSpec, config: QuantizeConfig,
                    say: Callable[[str], None]) -> Quantizer:
    """Train on a seeded sample of the store's frames; report the error on held-out frames."""
    frames = sample_frames(store, spec.name, config.train_frames + config.heldout_frames, config.seed)
    heldout_size = min(config.heldout_frames, max(1, frames.shape[0] // 10))
    train, heldout = frames[heldout_size:], frames[:heldout_size]
    say(f"training a {config.num_codebooks}-codebook quantiser of {spec.name} ({spec.dim}-D) on {len(train):,} "
        f"frames, {config.iters:,} + {config.iters:,} steps; {len(heldout):,} frames held out.")
    package_quantizer = fit(train, config, say)
    rel_error = package_rel_error(package_quantizer, heldout, config.refine_iters)
    say(f"relative reconstruction error on the held-out frames: {rel_error:.4f}")
    qconfig = QuantizerConfig(spec.name, spec.dim, config.num_codebooks, source_fingerprint=spec.fingerprint,
                              train_frames=len(train), heldout_frames=len(heldout), rel_error=rel_error,
                              seed=config.seed, iters=config.iters, refine_iters=config.refine_iters,
                              package=package_version())
    return Quantizer.from_package(package_quantizer, qconfig)


def fit(train: np.ndarray, config: QuantizeConfig, say: Callable[[str], None]) -> Any:
    """The package's QuantizerTrainer on random batches of ``train``, seeded (global RNG states restored after)."""
    import multi_quantization
    import torch

    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]), _python_random(config.seed):
        torch.manual_seed(config.seed)  # the package draws its initial parameters from torch's global generator
        trainer = multi_quantization.QuantizerTrainer(train.shape[1], config.num_codebooks, device,
                                                      config.iters, config.iters, config.lr)
        data = torch.from_numpy(train).to(device)
        generator = torch.Generator().manual_seed(config.seed)
        step, total, every = 0, 2 * config.iters + 1, max(1, (2 * config.iters + 1) // TRAIN_REPORTS)
        while not trainer.done():
            rows = torch.randint(data.shape[0], (min(config.batch_frames, data.shape[0]),), generator=generator)
            trainer.step(data[rows.to(device)])
            step += 1
            if step % every == 0:
                say(f"  quantiser step {step:,} of {total:,}")
        return trainer.get_quantizer()


@contextlib.contextmanager
def _python_random(seed: int) -> Iterator[None]:
    """Seed Python's ``random`` (the package draws from it) and restore its state afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def package_rel_error(package_quantizer: Any, frames: np.ndarray, refine_iters: int) -> float:
    """The package's relative reconstruction error (``compute_loss``) over ``frames``, in pieces, as one number."""
    import torch

    error = spread = 0.0
    mean = package_quantizer.get_data_mean().double().cpu()
    with torch.no_grad():
        for first in range(0, frames.shape[0], ENCODE_ROWS):
            x = torch.from_numpy(frames[first:first + ENCODE_ROWS]).to(package_quantizer.centers.device)
            part = float(((x.double().cpu() - mean) ** 2).sum())
            error += float(package_quantizer.compute_loss(x, refine_iters)[0]) * part
            spread += part
    return error / spread if spread else float("nan")


def package_version() -> str:
    from importlib.metadata import version

    return f"multi-quantization {version('multi-quantization')}"


# ---------------------------------------------------------------- the codes store


def codes_spec(name: str, source: TeacherSpec, quantizer: Quantizer, codec: str) -> TeacherSpec:
    """The spec of the codes teacher: uint8 ``[T, num_codebooks]`` at the source's frame rate."""
    q = quantizer.config
    config = {"codes_of": source.name, "quantizer": quantizer_path(name),
              "quantizer_fingerprint": quantizer.fingerprint,
              "num_codebooks": q.num_codebooks, "codebook_size": q.codebook_size, "rel_error": q.rel_error,
              "source_dim": source.dim, "source_fingerprint": source.fingerprint,
              "random_init": bool(source.config.get("random_init", False)), "source_config": source.config}
    return TeacherSpec(name, "frames", q.num_codebooks, frame_rate=source.frame_rate, dtype="uint8", codec=codec,
                       fingerprint=quantizer.fingerprint[:16], config=config)


def create_codes_store(config: QuantizeConfig, source: TeacherStore, spec: TeacherSpec,
                       quantizer: Quantizer) -> TeacherStore:
    """Make the codes store (its plan, if the source has one, is the source's) and save the quantiser in it."""
    attrs: dict[str, Any] = {"random_teachers": source.attrs.get("random_teachers") is True
                             or bool(spec.config.get("random_init")),
                             "quantize": {**config.to_dict(), "source": source.url}}
    if isinstance(source.attrs.get("plan"), dict):
        attrs["plan"] = source.attrs["plan"]
    out = TeacherStore.create(config.out, [codes_spec(config.codes_teacher, spec, quantizer, config.codec)],
                              attrs=attrs, overwrite=config.overwrite)
    save_quantizer(out, config.codes_teacher, quantizer)
    return out


def check_resumable(out: TeacherStore, spec: TeacherSpec, config: QuantizeConfig) -> None:
    """An existing codes store must hold codes of this source teacher with this many codebooks."""
    codes = out.specs.get(config.codes_teacher)
    made = None if codes is None else (codes.config.get("source_fingerprint"), codes.dim)
    if made != (spec.fingerprint, config.num_codebooks):
        raise FingerprintMismatchError(
            f"{out.url} must hold codes teacher {config.codes_teacher!r} of {spec.name} (fingerprint "
            f"{spec.fingerprint}) with {config.num_codebooks} codebooks to resume; pass --overwrite to start it "
            f"again. Got teachers {list(out.specs)}"
            + ("" if codes is None else f", its codes of fingerprint {codes.config.get('source_fingerprint')} with "
                                        f"{codes.dim} codebooks") + ".")


# ---------------------------------------------------------------- shard tasks


def run_shards(job: ShardJob, shards: Sequence[str], workers: int, say: Callable[[str], None]) -> int:
    """Write the codes of ``shards``, here or on a LocalCluster; the number of cuts without codes."""
    if not shards:
        return 0
    if workers <= 1 or len(shards) == 1:
        results = []
        for number, shard in enumerate(shards, 1):
            results.append(write_codes_shard(job, shard))
            say(f"  shard {shard} written ({number} of {len(shards)})")
        return sum(results)
    return _run_on_cluster(job, shards, workers, say)


def _run_on_cluster(job: ShardJob, shards: Sequence[str], workers: int, say: Callable[[str], None]) -> int:
    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=min(workers, len(shards)), threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        futures = [client.submit(write_codes_shard, job, shard, key=f"mt2kd-codes-{shard}-{job.owner}", pure=False)
                   for shard in shards]
        total = 0
        for number, future in enumerate(as_completed(futures), 1):
            total += future.result()
            say(f"  {number} of {len(shards)} shards written")
        return total


_OPEN: dict[tuple[str, str], TeacherStore] = {}  # a worker process keeps its stores and quantisers open
_QUANTIZERS: dict[tuple[str, str, str], tuple[Quantizer, Any]] = {}


def _store(url: str, mode: str) -> TeacherStore:
    if (url, mode) not in _OPEN:
        _OPEN[(url, mode)] = TeacherStore.open(url, mode)
    return _OPEN[(url, mode)]


def _quantizer(out: TeacherStore, teacher: str, device: str) -> tuple[Quantizer, Any]:
    key = (out.url, teacher, device)
    if key not in _QUANTIZERS:
        quantizer = load_quantizer(out, teacher)
        _QUANTIZERS[key] = (quantizer, quantizer.to_package(device))
    return _QUANTIZERS[key]


def write_codes_shard(job: ShardJob, shard: str) -> int:
    """Encode one source shard's frames into the codes store's shard of the same name; cuts without codes.

    A shard another attempt committed meanwhile is left as it is (0).
    """
    source, out = _store(job.source, "r"), _store(job.out, "a")
    quantizer, package_quantizer = _quantizer(out, job.codes_teacher, job.device)
    record = source.shards[shard_name(shard)]
    reasons = _failure_reasons(record.failures, job.teacher)
    missing = 0
    try:
        with out.shard_writer(shard, owner=job.owner) as writer:
            for first in range(0, len(record.cut_ids), job.batch_cuts):
                batch = record.cut_ids[first:first + job.batch_cuts]
                with_frames = [c for c in batch if source.num_frames(c, job.teacher)]
                frames = [o[job.teacher] for o in source.get_many(with_frames, teachers=[job.teacher])]
                for cut_id, codes in zip(with_frames, encode_cuts(quantizer, package_quantizer, frames)):
                    writer.put(cut_id, {job.codes_teacher: codes})
                for cut_id in (c for c in batch if c not in set(with_frames)):
                    writer.record_failure(cut_id, reasons.get(cut_id, f"no {job.teacher} frames in the source "
                                                                       f"store"), teacher=job.codes_teacher)
                    missing += 1
            for failure in record.failures:  # whole cuts that failed in the source: no row there, none here
                if failure["teacher"] is None and failure["cut_id"] not in set(record.cut_ids):
                    writer.record_failure(failure["cut_id"], failure["reason"])
                    missing += 1
    except ShardCommittedError:
        return 0
    return missing


def _failure_reasons(failures: Sequence[dict[str, Any]], teacher: str) -> dict[str, str]:
    return {f["cut_id"]: f["reason"] for f in failures if f["teacher"] in (None, teacher)}


def encode_cuts(quantizer: Quantizer, package_quantizer: Any, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Codes of each cut's frames, encoded together in pieces of ``ENCODE_ROWS`` frames."""
    if not frames:
        return []
    flat = np.concatenate([np.asarray(f, dtype=np.float32) for f in frames])
    codes = np.concatenate([quantizer.encode(flat[i:i + ENCODE_ROWS], package_quantizer)
                            for i in range(0, flat.shape[0], ENCODE_ROWS)])
    bounds = np.cumsum([0, *(f.shape[0] for f in frames)])
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

