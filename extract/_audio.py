"""Audio for the teachers: decode a cut to 16 kHz mono, ahead of the model, on background threads.

A cut whose audio cannot be had becomes a :class:`CutFailure` with a reason
the store records; it never raises out of the task. Other sample rates and
channel counts are not failures: lhotse resamples, and channels are averaged.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mt2kd.cuts import SAMPLE_RATE, TRIED_KEY, audio_sources


@dataclasses.dataclass(frozen=True)
class CutAudio:
    """A decoded cut: its ID, duration (s) and 16 kHz mono float32 samples."""

    cut_id: str
    duration: float
    samples: np.ndarray


@dataclasses.dataclass(frozen=True)
class CutFailure:
    """A cut that could not be decoded, and why (the reason the store keeps)."""

    cut_id: str
    reason: str


def audio_only(data: dict[str, Any]) -> dict[str, Any]:
    """The cut dict less what decoding never reads (supervisions, features, custom fields), tracks included.

    The plan holds every cut of a run in the client and sends each to a
    worker, so it keeps no more of a cut than this (``ShardTask`` says how
    much that is).
    """
    slim = {key: value for key, value in data.items() if key not in ("features", "custom")}
    if "supervisions" in slim:
        slim["supervisions"] = []  # kept, empty: lhotse tells cut types apart by their keys
    if "tracks" in slim:
        slim["tracks"] = [{**track, "cut": audio_only(track["cut"])} if "cut" in track else track
                          for track in slim["tracks"]]
    return slim


def _missing_files(data: dict[str, Any]) -> list[str]:
    """Each missing file of a cut, with where else the plan looked for it (a relative path: beside the manifest)."""
    return [s["source"] + (f" (nor beside the manifest, at {s[TRIED_KEY]})" if TRIED_KEY in s else "")
            for s in audio_sources(data) if s.get("type") == "file" and not os.path.exists(s["source"])]


def recordings(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The recording dicts of a cut dict: its own, or every track's of a MixedCut (nested)."""
    if isinstance(data.get("recording"), dict):
        yield data["recording"]
    for track in data.get("tracks", []):
        yield from recordings(track.get("cut", {}))


def rate_mismatch(data: dict[str, Any]) -> str | None:
    """The failure reason when a file's sampling rate is not what its recording declares, else None.

    lhotse trusts the manifest's rate: a 8 kHz file declared as 16 kHz
    reached the teachers at twice the speed. Only the file's header is read;
    a file soundfile cannot read is left to the decoder.
    """
    import soundfile

    for recording in recordings(data):
        declared = recording.get("sampling_rate")
        for source in recording.get("sources", []):
            if source.get("type") != "file":
                continue
            try:
                actual = soundfile.info(source["source"]).samplerate
            except Exception:  # noqa: BLE001 - not a format soundfile reads: lhotse decodes it (or fails) as before
                continue
            if actual != declared:
                return (f"sampling rate mismatch: the manifest says {declared} Hz for recording "
                        f"{recording.get('id')!r}, but {source['source']} is {actual} Hz")
    return None


def _for_lhotse(data: dict[str, Any]) -> dict[str, Any]:
    """A copy lhotse may take apart (it pops keys from the dict it is given), less the plan's own keys."""
    fresh = copy.deepcopy(data)
    for source in audio_sources(fresh):
        source.pop(TRIED_KEY, None)
    return fresh


def load_cut_audio(data: dict[str, Any]) -> CutAudio | CutFailure:
    """Decode one cut dict; every way it can go wrong comes back as a CutFailure."""
    from lhotse.serialization import deserialize_item

    cut_id, duration = str(data["id"]), float(data["duration"])
    missing = _missing_files(data)
    if missing:
        return CutFailure(cut_id, f"missing audio file: {missing[0]}")
    if duration <= 0:
        return CutFailure(cut_id, f"zero-length cut: duration must be > 0 s. Got {duration} s")
    mismatch = rate_mismatch(data)
    if mismatch is not None:
        return CutFailure(cut_id, mismatch)
    try:
        # lhotse pops keys from the dict it is given: a retried task must find its cuts intact
        cut = deserialize_item(_for_lhotse(data)).resample(SAMPLE_RATE)
        audio = np.asarray(cut.load_audio(), dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - any decoder error is this cut's failure, not the job's
        return CutFailure(cut_id, f"audio could not be decoded: {type(e).__name__}: {_first_line(e)}")
    samples = downmix(audio)
    if samples.size == 0:
        return CutFailure(cut_id, "zero-length cut: decoded audio has no samples")
    # min and max are NaN or infinite when any sample is (no temporary array, unlike isfinite on every sample)
    if not (np.isfinite(samples.min()) and np.isfinite(samples.max())):
        return CutFailure(cut_id, f"non-finite samples: {int(np.sum(~np.isfinite(samples)))} NaN/Inf values")
    return CutAudio(cut_id, duration, np.ascontiguousarray(samples, dtype=np.float32))


def downmix(audio: np.ndarray) -> np.ndarray:
    """``[channels, samples]`` (or flat) audio as one channel: the mean of the channels, a view for mono."""
    if audio.ndim != 2:
        return audio.reshape(-1)
    return audio[0] if audio.shape[0] == 1 else audio.mean(axis=0)


def _first_line(error: BaseException) -> str:
    # decoder messages span lines ("failed. Details:\n..."): keep one line of the useful part
    return " ".join(str(error).split())[:400]


def prefetched(cuts: Sequence[dict[str, Any]], num_threads: int, depth: int
               ) -> Iterator[CutAudio | CutFailure]:
    """Decode ``cuts`` in order on ``num_threads`` threads, keeping at most ``depth`` decoded ahead.

    The bounded window keeps memory flat on long shards while the consumer
    (the teachers) works on what is already decoded.
    """
    with concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="mt2kd-decode") as pool:
        pending: collections.deque[concurrent.futures.Future[CutAudio | CutFailure]] = collections.deque()
        upcoming = iter(cuts)
        for data in upcoming:
            pending.append(pool.submit(load_cut_audio, data))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append(pool.submit(load_cut_audio, nxt))
            yield result


def batches(items: Iterable[CutAudio | CutFailure], max_duration: float
            ) -> Iterator[tuple[list[CutAudio], list[CutFailure]]]:
    """Group decoded cuts into batches of at most ``max_duration`` seconds (a longer cut goes alone).

    Failures travel with the batch in which they were met, so they are
    recorded in order with the cuts around them.
    """
    batch: list[CutAudio] = []
    failures: list[CutFailure] = []
    seconds = 0.0
    for item in items:
        if isinstance(item, CutFailure):
            failures.append(item)
            continue
        if batch and seconds + item.duration > max_duration:
            yield batch, failures
            batch, failures, seconds = [], [], 0.0
        batch.append(item)
        seconds += item.duration
    if batch or failures:
        yield batch, failures


def by_duration(cuts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Longest first (ties by ID): similar lengths share a batch, and the big ones meet memory first."""
    return sorted(cuts, key=lambda c: duration_order(float(c["duration"]), str(c["id"])))


def duration_order(duration: float, cut_id: str) -> tuple[float, str]:
    """The sort key of ``by_duration`` (and of the plan): longest first, ties by ID."""
    return -duration, cut_id
