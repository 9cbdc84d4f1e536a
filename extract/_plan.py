"""The extraction plan: which cut goes into which shard, and how much it will produce.

Cuts are read lazily from the manifests in the order given, then ordered
longest first (ties by cut ID) and cut into ``ceil(total / shard_hours)``
shards of equal audio, to within a cut: no small last shard, which as a task
of its own would leave workers idle while the others finish full ones. In
duration order a shard's batches hold cuts of nearly one length, so the
teachers pad little (in manifest order a batch is padded to its longest cut:
up to 11% more audio to compute on small shards), and the shards with the
longest cuts, which need the most memory, run first. The same inputs always
give the same shards (shard IDs are their position in the plan), which is
what lets a rerun skip the shards already committed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mt2kd._console import human_bytes
from mt2kd.cuts import check_manifests, iter_cut_dicts
from mt2kd.errors import ConfigError, DuplicateCutError
from mt2kd.extract._audio import audio_only, duration_order
from mt2kd.store import TeacherSpec

SECONDS_PER_HOUR = 3600.0
BYTES_PER_VALUE = {"float16": 2, "float32": 4, "uint8": 1}  # on-disk bytes of one value, before compression
TEXT_BYTES_PER_SECOND = 16  # planning estimate of a transcript's UTF-8 bytes per second of audio


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One task of the job: a shard ID and its cuts, longest first.

    Each cut is kept as compact JSON of its lhotse dict (what decoding reads,
    audio paths made absolute): the client holds every cut of a run, and a
    planned cut takes 0.5 KB where a dict takes 2.9 KB (LibriSpeech-like
    cuts; 5 GB instead of 29 GB for 10 M cuts).
    """

    shard_id: int  # position in the plan; the store names it by this number
    cut_ids: tuple[str, ...]  # cut IDs, in shard order
    durations: tuple[float, ...]  # s, each cut's
    lines: tuple[str, ...]  # each cut's dict as compact JSON

    @classmethod
    def of(cls, shard_id: int, cuts: Sequence[dict[str, Any]]) -> ShardTask:
        """A task of ``cuts`` (cut dicts) in the order given."""
        return cls(shard_id, tuple(str(c["id"]) for c in cuts), tuple(float(c["duration"]) for c in cuts),
                   tuple(compact_json(c) for c in cuts))

    @property
    def cuts(self) -> list[dict[str, Any]]:
        """The cut dicts, read anew on each call."""
        return [json.loads(line) for line in self.lines]

    @property
    def audio_seconds(self) -> float:
        return sum(self.durations)


def compact_json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """All shards of a run, with totals; ``describe`` gives the dry-run text."""

    shards: tuple[ShardTask, ...]  # in plan order
    num_cuts: int  # cuts over all manifests
    audio_seconds: float  # s of audio over all manifests

    @property
    def audio_hours(self) -> float:
        return self.audio_seconds / SECONDS_PER_HOUR

    def expected_bytes(self, specs: Mapping[str, TeacherSpec]) -> dict[str, int]:
        """Uncompressed bytes each teacher will write (frames from each cut's duration)."""
        return {name: expected_teacher_bytes(spec, self.durations()) for name, spec in specs.items()}

    def durations(self) -> Iterator[float]:
        return (d for s in self.shards for d in s.durations)

    def describe(self, specs: Mapping[str, TeacherSpec]) -> list[tuple[str, str]]:
        """``key : value`` lines of the dry-run output."""
        lines = [("Cuts", f"{self.num_cuts:,}"), ("Audio", f"{self.audio_hours:.3f} h"),
                 ("Shards", f"{len(self.shards):,}" + (f" of {self.audio_hours / len(self.shards):.3f} h"
                                                         if self.shards else ""))]
        if self.shards:  # the longest cut is the first of the plan: it sizes the biggest batch
            first = self.shards[0]
            lines.append(("Longest cut", f"{first.durations[0]:.1f} s ({first.cut_ids[0]})"))
        for name, num_bytes in self.expected_bytes(specs).items():
            spec = specs[name]
            shape = f"[T, {spec.dim}] at {spec.frame_rate:g} Hz" if spec.kind == "frames" else f"[{spec.dim}]"
            if spec.kind == "text":
                shape = f"text (UTF-8, about {TEXT_BYTES_PER_SECOND} B/s of audio)"
            lines.append((f"Teacher {name}", f"{shape} {spec.dtype}, {human_bytes(num_bytes)} before compression"))
        return lines


def expected_frames(spec: TeacherSpec, duration: float) -> int:
    """Frames (or 1 for a clip output) a teacher should give a cut of ``duration`` seconds."""
    if spec.kind == "clip":
        return 1
    if spec.kind == "text":  # bytes: read speech runs about 2.5 words of 6 UTF-8 bytes (with the space) a second
        return int(duration * TEXT_BYTES_PER_SECOND)
    stack = int(spec.config.get("stack", 0) or 0)
    if spec.name == "whisper" and stack:
        from mt2kd.extract._frames import num_stacked_frames_for_duration

        return num_stacked_frames_for_duration(duration, stack)
    return int(duration * float(spec.frame_rate or 0))


def expected_teacher_bytes(spec: TeacherSpec, durations: Iterator[float]) -> int:
    rows = sum(expected_frames(spec, d) for d in durations)
    return rows * spec.dim * BYTES_PER_VALUE[spec.dtype]


class PlanCancelled(Exception):
    """Planning was stopped from outside (its result is no longer wanted)."""


def make_plan(manifests: Sequence[str], shard_hours: float, stop: threading.Event | None = None) -> Plan:
    """Assign every cut of ``manifests`` to a shard; duplicate cut IDs are an error naming both manifests.

    Examples
    --------
    >>> plan = make_plan(["speech_cuts.jsonl.gz"], shard_hours=0.01)  # doctest: +SKIP
    >>> len(plan.shards), plan.num_cuts
    (2, 24)

    ``stop``, once set, ends the reading early with :class:`PlanCancelled`
    (the job sets it when it fails or is interrupted while planning runs on
    a thread).
    """
    check_manifests(manifests)
    seen: dict[str, str] = {}
    cuts: list[tuple[float, str, str]] = []  # (duration, ID, compact JSON): no dict of every cut held at once
    for manifest in manifests:
        before = len(cuts)
        for data in iter_cut_dicts(manifest):
            if stop is not None and stop.is_set():
                raise PlanCancelled(f"planning stopped while reading {manifest}")
            cut_id = data["id"]
            if cut_id in seen:
                where = f"twice in {manifest}" if seen[cut_id] == manifest else f"in both {seen[cut_id]} and {manifest}"
                raise DuplicateCutError(f"cut IDs must be unique across inputs. Got {cut_id!r} {where}.")
            seen[cut_id] = manifest
            cuts.append((float(data["duration"]), cut_id, compact_json(audio_only(data))))
        if len(cuts) == before:  # else the run made an empty store, which verified OK
            raise ConfigError(f"--cuts {manifest} must hold at least one cut. Got an empty manifest.")
    cuts.sort(key=lambda c: duration_order(c[0], c[1]))
    groups = equal_shards([max(0.0, duration) for duration, _, _ in cuts], shard_hours * SECONDS_PER_HOUR)
    shards = tuple(ShardTask(i, tuple(cuts[j][1] for j in group), tuple(cuts[j][0] for j in group),
                             tuple(cuts[j][2] for j in group)) for i, group in enumerate(groups))
    return Plan(shards, len(cuts), sum(duration for duration, _, _ in cuts))


def equal_shards(durations: Sequence[float], limit: float) -> list[list[int]]:
    """Split cut positions, in order, into ``ceil(total / limit)`` runs of about equal audio.

    A cut goes to the shard its midpoint falls in, so each shard is within a
    cut of ``total / n`` seconds; a cut longer than that can leave fewer,
    never empty, shards.

    Examples
    --------
    >>> equal_shards([10.0] * 9, limit=40.0)  # 90 s: three shards of 30 s, not 40 s, 40 s and 10 s
    [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    """
    total = sum(durations)
    if not durations:
        return []
    count = max(1, math.ceil(total / limit - 1e-9))
    target = total / count
    groups: list[list[int]] = []
    last, before = -1, 0.0
    for position, duration in enumerate(durations):
        index = min(count - 1, int((before + duration / 2) / target)) if target > 0 else 0
        if index != last or not groups:
            groups.append([])
            last = index
        groups[-1].append(position)
        before += duration
    return groups
