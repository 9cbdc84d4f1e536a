"""``mt2kd store export-text``: a CutSet whose supervisions carry a text teacher's transcripts.

For stage-2 ASR on corpora without transcripts: each cut of the input
manifest that the store holds a text of gets one supervision spanning the
whole cut, with that text (and the teacher's language option, when it set
one); its other supervisions are replaced. Cuts without a text (failed, or
not in the store) are left out and counted. lhotse is imported here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mt2kd.errors import ConfigError

if TYPE_CHECKING:
    from mt2kd.store._store import TeacherStore

EXPORT_BATCH = 256  # cuts whose texts are read at once


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    teacher: str  # the text teacher whose transcripts were written
    num_written: int  # cuts written, each with its transcript as its one supervision
    num_without_text: int  # cuts of the manifest left out: no text of them in the store


def text_teacher(ts: TeacherStore, teacher: str | None) -> str:
    """The text teacher to export: ``teacher``, or the store's only one."""
    texts = [name for name, spec in ts.specs.items() if spec.kind == "text"]
    if teacher is None and len(texts) == 1:
        return texts[0]
    if teacher is None or teacher not in texts:
        raise ConfigError(f"--teacher must name one of the store's text teachers {texts}. Got "
                          f"{'none' if teacher is None else repr(teacher)}"
                          f"{' (several: name one)' if teacher is None and texts else ''}.")
    return teacher


def export_text(ts: TeacherStore, teacher: str, manifest: str, out: str) -> ExportSummary:
    """Write ``manifest``'s cuts that ``ts`` holds a text of to ``out``, that text as their supervision."""
    from lhotse import CutSet

    language = ts.specs[teacher].config.get("language") or None
    written = missing = 0
    with CutSet.open_writer(out) as writer:
        for cut, text in _texts(ts, teacher, CutSet.from_file(manifest)):
            if text is None:
                missing += 1
                continue
            writer.write(_with_transcript(cut, teacher, text, language))
            written += 1
    return ExportSummary(teacher, written, missing)


def _texts(ts: TeacherStore, teacher: str, cuts: Any) -> Iterator[tuple[Any, str | None]]:
    batch: list[Any] = []
    for cut in cuts:
        batch.append(cut)
        if len(batch) == EXPORT_BATCH:
            yield from _batch_texts(ts, teacher, batch)
            batch = []
    yield from _batch_texts(ts, teacher, batch)


def _batch_texts(ts: TeacherStore, teacher: str, batch: list[Any]) -> Iterator[tuple[Any, str | None]]:
    stored = [c for c in batch if c.id in ts]
    texts = dict(zip([c.id for c in stored], ts.texts([c.id for c in stored], teacher))) if stored else {}
    for cut in batch:
        yield cut, texts.get(cut.id)


def _with_transcript(cut: Any, teacher: str, text: str, language: str | None) -> Any:
    from lhotse import SupervisionSegment
    from lhotse.utils import fastcopy

    channel = cut.channel if hasattr(cut, "channel") else 0
    supervision = SupervisionSegment(id=f"{cut.id}-{teacher}", recording_id=cut.recording_id, start=0.0,
                                     duration=cut.duration, channel=channel, text=text, language=language)
    return fastcopy(cut, supervisions=[supervision])
