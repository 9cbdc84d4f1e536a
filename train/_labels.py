"""What a cut is labelled with for stage-2 fine-tuning and evaluation: transcript, event classes, speaker.

Two event conventions are read, so existing manifests work unchanged:

- this project's: ``cut.custom["events"]``, a list of label names or class
  indices (an empty list means "no event");
- icefall's AudioSet recipe: ``cut.supervisions[0].audio_event``, class
  indices (or names) joined by ``;`` (e.g. ``"0;137;431"``).

Speakers come from the first supervision that names one (the transcript of
a cut is ``_tokenizer.cut_text``). Everything here is torch-free.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt2kd.errors import ValidationError

EVENTS_FIELD = "events"  # key in cut.custom holding a cut's event labels (this project's convention)
ICEFALL_EVENT_FIELD = "audio_event"  # custom key of the first supervision (icefall's AudioSet manifests)
ICEFALL_SEPARATOR = ";"


def _supervision_custom(cut: Any) -> dict[str, Any]:
    supervisions = getattr(cut, "supervisions", None) or []
    return dict(getattr(supervisions[0], "custom", None) or {}) if supervisions else {}


def cut_events(cut: Any) -> list[str | int] | None:
    """The cut's event labels (names or class indices), or None when the cut is not event-labelled.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> cut_events(NS(custom=None, supervisions=[NS(custom={"audio_event": "0;137"})]))
    [0, 137]
    >>> cut_events(NS(custom={"events": ["tone"]}, supervisions=[]))
    ['tone']
    """
    custom = getattr(cut, "custom", None) or {}
    if EVENTS_FIELD in custom:
        return list(custom[EVENTS_FIELD])
    joined = _supervision_custom(cut).get(ICEFALL_EVENT_FIELD)
    if joined is None:
        return None
    return [_index_or_name(part.strip()) for part in str(joined).split(ICEFALL_SEPARATOR) if part.strip()]


def _index_or_name(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def has_events(cut: Any) -> bool:
    return cut_events(cut) is not None


def cut_speaker(cut: Any) -> str | None:
    """The first speaker named by the cut's supervisions, if any."""
    for supervision in getattr(cut, "supervisions", None) or []:
        if supervision.speaker:
            return str(supervision.speaker)
    return None


def load_label_list(path: str | Path) -> dict[str, int]:
    """Map label names to class indices.

    Two formats: a plain text file with one label per line (line order gives
    the index), or AudioSet's ``class_labels_indices.csv`` (``index,mid,
    display_name``), where both the mid and the display name map to the index.

    Examples
    --------
    >>> load_label_list("class_labels_indices.csv")["Speech"]  # doctest: +SKIP
    0
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return _read_label_csv(path, text)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return {name: index for index, name in enumerate(names)}


def _read_label_csv(path: Path, text: str) -> dict[str, int]:
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValidationError(f"{path}: expected the columns index,mid,display_name. Got {list(rows[0]) if rows else []}.")
    mapping: dict[str, int] = {}
    for row in rows:
        mapping[row["mid"]] = int(row["index"])
        mapping[row["display_name"]] = int(row["index"])
    return mapping


def events_to_multi_hot(events: Sequence[str | int], num_classes: int,
                        label_index: dict[str, int] | None, cut_id: str,
                        label_file: str | Path | None = None) -> np.ndarray:
    """One cut's event labels (names or class indices) as a multi-hot vector.

    ``label_file`` (where ``label_index`` came from) is named in the error for an unknown name.

    Examples
    --------
    >>> events_to_multi_hot([0, "2"], 4, None, "cut-1").tolist()
    [True, False, True, False]
    """
    target = np.zeros(num_classes, dtype=bool)
    for event in events:
        target[_class_index(event, num_classes, label_index, cut_id, label_file)] = True
    return target


def _class_index(event: str | int, num_classes: int, label_index: dict[str, int] | None, cut_id: str,
                 label_file: str | Path | None = None) -> int:
    if isinstance(event, str) and not event.isdigit():
        if label_index is None:
            raise ValidationError(
                f"cut {cut_id!r}: event {event!r} is a name, so a label list is needed (--labels FILE). Got none.")
        if event not in label_index:
            where = f" {str(label_file)!r}" if label_file else ""
            raise ValidationError(f"cut {cut_id!r}: event {event!r} must be in the label list{where}. Got an "
                                  f"unknown name (the list has {len(set(label_index.values()))} classes).")
        index = label_index[event]
    else:
        index = int(event)
    if not 0 <= index < num_classes:
        raise ValidationError(f"cut {cut_id!r}: class index must be in [0, {num_classes}). Got {index}.")
    return index


def speaker_list(cuts: Iterable[Any]) -> list[str]:
    """Every speaker the cuts name, sorted: the classes of the speaker layer (index = position).

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> speaker_list([NS(supervisions=[NS(speaker="b")]), NS(supervisions=[NS(speaker="a")])])
    ['a', 'b']
    """
    return sorted({speaker for cut in cuts if (speaker := cut_speaker(cut)) is not None})
