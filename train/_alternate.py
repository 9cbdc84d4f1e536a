"""Alternating single-corpus batches: one bucketing sampler per corpus, drawn from in turn.

``batches=alternate`` in stage 2: batch 1 from the first manifest, batch 2
from the second, ..., then the first again; a corpus that runs dry for the
epoch drops out of the turn. Each batch thus holds one corpus, so one task
when corpora are split by task (LibriSpeech, AudioSet, VoxCeleb).

Resume stays exact with prefetching loader workers: the sampler records
which corpus each batch of the epoch came from, so the state saved for
``n`` consumed batches rewinds every corpus's sampler to the batches of it
among those ``n`` (DataLoader workers have drawn a few more).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mt2kd.train._loader import restore_sampler, sampler_state


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

