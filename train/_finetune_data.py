"""Stage-2 batches: the stage-1 batch plus each cut's own labels, speaker crops, alternating corpora.

A cut carries whatever labels it has: a transcript (ASR), event classes
(tagging; this project's ``custom["events"]`` or icefall's ``audio_event``,
see ``_labels.py``), a speaker (the speaker layer). The batch holds them
with presence masks, so one batch may mix tasks and each cut adds only the
losses it has labels for.

Speaker crops (``speaker_crop`` > 0) are cut in the training process from
the torch RNG that checkpoints save, so a resumed run crops as an
uninterrupted one would. Only speaker-only cuts (a speaker, no transcript:
VoxCeleb-style) are cropped; their event labels and KD targets, which
describe the whole cut, are masked for that step.

Alternating single-corpus batches (``batches=alternate``): one bucketing
sampler per corpus, drawn from in turn: batch 1 from the first manifest,
batch 2 from the second, ..., then the first again; a corpus that runs dry
for the epoch drops out of the turn. Each batch thus holds one corpus, so one task
when corpora are split by task (LibriSpeech, AudioSet, VoxCeleb).

Resume stays exact with prefetching loader workers: the sampler records
which corpus each batch of the epoch came from, so the state saved for
``n`` consumed batches rewinds every corpus's sampler to the batches of it
among those ``n`` (DataLoader workers have drawn a few more).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mt2kd.cuts import manifest_error, open_manifest
from mt2kd.errors import ConfigError, MT2KDError
from mt2kd.train._data import KDDataset
from mt2kd.train._labels import cut_events, cut_speaker, events_to_multi_hot, load_label_list
from mt2kd.train._loader import restore_sampler, sampler_state
from mt2kd.train._tokenizer import cut_text

FBANK_RATE = 100  # Hz, frames of the student's input


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How cut labels become tensors: the class count, the event-name list, the speaker classes."""

    num_classes: int  # width of M_AT
    speakers: tuple[str, ...]  # speaker classes, index = position
    label_file: str = ""  # label list for event names ("" : events must be class indices)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_speaker_index", {s: i for i, s in enumerate(self.speakers)})
        object.__setattr__(self, "_label_index", load_label_list(self.label_file) if self.label_file else None)

    def speaker_index(self, speaker: str | None) -> int:
        return -1 if speaker is None else self._speaker_index.get(speaker, -1)  # type: ignore[attr-defined]

    def events(self, cut: Any) -> torch.Tensor | None:
        events = cut_events(cut)
        if events is None:
            return None
        hot = events_to_multi_hot(events, self.num_classes, self._label_index,  # type: ignore[attr-defined]
                                  cut.id, self.label_file or None)
        return torch.from_numpy(hot)


@dataclasses.dataclass(frozen=True)
class CorpusLabels:
    """What one pass over the training manifests found: the speakers and how many cuts have each label."""

    speakers: tuple[str, ...]  # sorted speaker names
    num_cuts: int  # cuts in all manifests
    num_with_text: int  # cuts with a transcript
    num_with_events: int  # cuts with event labels
    num_with_speaker: int  # cuts with a speaker

    def line(self) -> str:
        return (f"{self.num_cuts} cuts: {self.num_with_text} with a transcript, {self.num_with_events} with "
                f"event labels, {self.num_with_speaker} with a speaker ({len(self.speakers)} speakers)")


def scan_labels(cut_paths: Sequence[str | Path], num_classes: int, label_file: str = "") -> CorpusLabels:
    """Read every cut's labels once: collect the speakers, count each task, and refuse bad event labels up front."""
    spec = LabelSpec(num_classes, (), label_file)
    speakers: set[str] = set()
    counts = [0, 0, 0, 0]
    for path in cut_paths:
        try:
            for cut in open_manifest(path):
                speaker = cut_speaker(cut)
                found = (True, cut_text(cut) is not None, spec.events(cut) is not None, speaker is not None)
                counts = [n + int(f) for n, f in zip(counts, found)]
                if speaker is not None:
                    speakers.add(speaker)
        except MT2KDError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise manifest_error(path, e) from e
    return CorpusLabels(tuple(sorted(speakers)), *counts)


class FinetuneDataset(KDDataset):
    """:class:`KDDataset` batches plus ``labels``: ``texts`` (str or None per cut), ``events`` ``[B, C]``,
    ``events_present`` ``[B]``, ``speakers`` ``[B]`` (-1: none) and ``speaker_only`` ``[B]``.
    """

    def __init__(self, store_paths: Sequence[str], teachers: Sequence[str] | None, spec: LabelSpec) -> None:
        super().__init__(store_paths, teachers)
        self.spec = spec

    def __getitem__(self, cuts: Any) -> dict[str, Any]:
        batch = super().__getitem__(cuts)
        if not batch["cut_ids"]:
            return batch
        by_id = {cut.id: cut for cut in cuts}
        batch["labels"] = self.labels([by_id[cut_id] for cut_id in batch["cut_ids"]])
        return batch

    def labels(self, cuts: Sequence[Any]) -> dict[str, Any]:
        texts = [cut_text(cut) for cut in cuts]
        events = [self.spec.events(cut) for cut in cuts]
        speakers = torch.tensor([self.spec.speaker_index(cut_speaker(cut)) for cut in cuts], dtype=torch.long)
        blank = torch.zeros(self.spec.num_classes, dtype=torch.bool)
        return {
            "texts": texts,
            "events": torch.stack([blank if e is None else e for e in events]),
            "events_present": torch.tensor([e is not None for e in events]),
            "speakers": speakers,
            "speaker_only": torch.tensor([t is None and s >= 0 for t, s in zip(texts, speakers.tolist())]),
        }


def crop_speaker_cuts(batch: dict[str, Any], crop_frames: int) -> dict[str, Any]:
    """Crop speaker-only cuts longer than ``crop_frames`` fbank frames to a random window (torch RNG).

    A cropped cut keeps its speaker label; its event labels and KD targets are masked.
    """
    labels = batch["labels"]
    lengths = batch["num_frames"]
    cropped = labels["speaker_only"] & (lengths > crop_frames)
    if not bool(cropped.any()):
        return batch
    fbank = batch["fbank"].clone()
    for row in torch.nonzero(cropped).flatten().tolist():
        start = int(torch.randint(0, int(lengths[row]) - crop_frames + 1, (1,)))
        window = fbank[row, start:start + crop_frames].clone()
        fbank[row] = 0.0
        fbank[row, :crop_frames] = window
    num_frames = torch.where(cropped, torch.full_like(lengths, crop_frames), lengths)
    width = int(num_frames.max())
    masked_labels = {**labels, "events_present": labels["events_present"] & ~cropped}
    return {**batch, "fbank": fbank[:, :width], "num_frames": num_frames, "labels": masked_labels,
            "targets": _mask_targets(batch["targets"], cropped)}


def _mask_targets(targets: dict[str, dict[str, torch.Tensor]], rows: torch.Tensor) -> dict[str, Any]:
    masked = {}
    for name, target in targets.items():
        entry = {**target, "present": target["present"] & ~rows}
        if "lengths" in target:
            entry["lengths"] = torch.where(rows, torch.zeros_like(target["lengths"]), target["lengths"])
        masked[name] = entry
    return masked


def check_labels_found(corpus: CorpusLabels, has_asr: bool, has_stores: bool, cut_paths: Sequence[str]) -> None:
    """Refuse a run with nothing to learn from: no cut has a label for any task, and no store gives KD targets."""
    if has_stores or corpus.num_with_events or corpus.num_with_speaker or (has_asr and corpus.num_with_text):
        return
    asr = "" if has_asr else " (transcripts count only with --tokenizer)"
    raise ConfigError(f"the cuts of {list(cut_paths)} must carry labels to fine-tune on: transcripts, event "
                      f"labels or speakers{asr}, or --store must give KD targets. Got none in {corpus.num_cuts} cuts.")


class AlternatingSampler:
    """Round-robin over per-corpus samplers; quacks like the lhotse sampler the trainer expects.

    Examples
    --------
    >>> sampler = AlternatingSampler([make_sampler(libri, 600), make_sampler(audioset, 600)])  # doctest: +SKIP
    """

    def __init__(self, samplers: Sequence[Any]) -> None:
        self.samplers = list(samplers)
        self.epoch = 0
        self.order: list[int] = []  # corpus of each batch yielded so far this epoch
        self._resume_from: list[int] | None = None  # the order up to the restored position

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = []
        self._resume_from = None
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        done = self._resume_from or []
        self.order = list(done)
        self._resume_from = None
        iterators = [iter(sampler) for sampler in self.samplers]
        live = list(range(len(self.samplers)))
        turn = (done[-1] + 1) % len(self.samplers) if done else 0
        while live:
            index = min((i for i in live if i >= turn), default=live[0])
            try:
                batch = next(iterators[index])
            except StopIteration:
                live.remove(index)
                turn = index + 1
                continue
            self.order.append(index)
            turn = index + 1
            yield batch

    def state_dict(self, num_batches_consumed: int) -> dict[str, Any]:
        """The state as of ``num_batches_consumed`` batches of this epoch (what the trainer used)."""
        consumed = self.order[:num_batches_consumed]
        states = [sampler_state(s, consumed.count(i)) for i, s in enumerate(self.samplers)]
        first = states[0]
        return {"epoch": self.epoch, "world_size": first["world_size"], "order": consumed, "samplers": states,
                "max_duration": first["max_duration"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        for sampler, sub in zip(self.samplers, state["samplers"]):
            restore_sampler(sampler, sub)
        self._resume_from = list(state["order"])
        self.order = list(state["order"])

