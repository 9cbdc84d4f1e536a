"""The cut, the key every package joins on: manifests, audio paths, durations, stored IDs, the sample rate.

One rule each, used by every package:

- **Manifests** are lhotse CutSets (``.jsonl``, ``.jsonl.gz``; ``.json`` loads
  whole). :func:`check_manifests` refuses an empty list, a path that is not a
  file and a manifest given twice, before any is read. A manifest is read
  either as plain JSON cut dicts (:func:`iter_cut_dicts`: fast, no torch;
  what extraction plans from and what :func:`load_durations` counts) or as a
  lazy lhotse CutSet (:func:`open_manifest`: what training and evaluation
  decode). Both make relative audio paths absolute by the same rule.
- **Audio paths**: a relative file path is looked up next to the manifest
  first (so a corpus folder works from anywhere), then in the working
  directory (:func:`absolute_path`). Absolute paths, URLs and non-file
  sources pass through untouched.
- **Stored IDs**: ``CutSet.repeat()`` renames every copy ``<id>_repeatN``
  (repeating a repeated set stacks the suffixes). The teachers only ever saw
  the original, so a suffixed ID reads the original's outputs, unless the
  suffixed ID is itself a stored cut (:func:`stored_cut_id`).
  A MixedCut reads its own ID only when that is not one of its tracks';
  otherwise its first track's; speed- or tempo-perturbed audio reads none
  (:func:`target_source`).
- **Sample rate**: every teacher and the student take 16 kHz mono.

Torch-free: lhotse (which imports torch) is imported only inside the
functions that build lhotse cuts, so ``mt2kd store verify`` and the
extraction plan never load it for a plain manifest.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Container, Iterator, Sequence
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError

__all__ = [
    "SAMPLE_RATE", "TRIED_KEY", "absolute_path", "absolute_sources", "audio_sources", "canonical_cut_id",
    "check_manifests", "is_time_altered", "iter_cut_dicts", "load_durations", "manifest_error",
    "open_manifest", "stored_cut_id", "strip_repeat_suffix", "target_source",
]

SAMPLE_RATE = 16_000  # Hz: what every teacher and the student take (mono float32)
GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file
REPEAT_SUFFIX = re.compile(r"(_repeat\d+)+$")  # one or more suffixes added by CutSet.repeat()
# key of a file source found nowhere: where it was looked for first (a relative path: beside the manifest)
TRIED_KEY = "mt2kd_tried_first"


# ---------------------------------------------------------------- which manifests


def check_manifests(manifests: Sequence[str | Path]) -> None:
    """Refuse no manifest, one that is not a file, or one given twice, before any is read.

    Examples
    --------
    >>> check_manifests([])
    Traceback (most recent call last):
    ...
    mt2kd.errors.ConfigError: at least one --cuts manifest is needed. Got none.
    """
    if not manifests:
        raise ConfigError("at least one --cuts manifest is needed. Got none.")
    given: dict[str, str] = {}  # real path -> as given
    for manifest in map(str, manifests):
        if not os.path.isfile(manifest):
            raise ConfigError(f"--cuts must name an existing CutSet manifest. Got {manifest!r}.")
        real = os.path.realpath(manifest)
        if real in given:
            same = "" if given[real] == manifest else f" (as {given[real]!r} and {manifest!r})"
            raise ConfigError(f"--cuts must give each manifest once. Got {real} twice{same}.")
        given[real] = manifest


# ---------------------------------------------------------------- audio paths


def absolute_path(path: str, folder: str) -> str:
    """``path`` made absolute: next to ``folder`` when it exists there, else in the working directory.

    Examples
    --------
    >>> absolute_path("/data/a.flac", "/corpus"), absolute_path("s3://bucket/a.flac", "/corpus")
    ('/data/a.flac', 's3://bucket/a.flac')
    """
    if os.path.isabs(path) or "://" in path:
        return path
    beside = os.path.join(folder, path)
    return beside if os.path.exists(beside) else os.path.abspath(path)


def audio_sources(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The audio source dicts of a cut dict: its recording's, or every track's of a MixedCut (nested)."""
    yield from (data.get("recording") or {}).get("sources", [])
    for track in data.get("tracks", []):
        yield from audio_sources(track.get("cut") or {})


def absolute_sources(data: dict[str, Any], folder: str, note_tried: bool = False) -> bool:
    """Make the relative file sources of a cut dict absolute, in place; True if any changed.

    With ``note_tried``, a source found nowhere keeps where it was looked for
    first under :data:`TRIED_KEY`, so its failure can name both places.
    """
    changed = False
    for source in audio_sources(data):
        path = source.get("source")
        if source.get("type") != "file" or not isinstance(path, str):
            continue
        source["source"] = absolute_path(path, folder)
        changed = changed or source["source"] != path
        if note_tried and path != source["source"] and not os.path.exists(source["source"]):
            source[TRIED_KEY] = os.path.join(folder, path)
    return changed


def _with_absolute_audio(cut: Any, folder: str) -> Any:
    """A lhotse ``cut`` with its audio paths absolute (the same object when they already are)."""
    from lhotse.serialization import deserialize_item
    from lhotse.utils import fastcopy

    recording = getattr(cut, "recording", None)
    if recording is not None and not hasattr(cut, "tracks"):  # a MonoCut: the common, cheap case
        sources = [s if s.type != "file" else fastcopy(s, source=absolute_path(s.source, folder))
                   for s in recording.sources]
        if all(new.source == old.source for new, old in zip(sources, recording.sources)):
            return cut
        return fastcopy(cut, recording=fastcopy(recording, sources=sources))
    data = cut.to_dict()  # mixed or other cut types: rewrite every source the dict holds
    return deserialize_item(data) if absolute_sources(data, folder) else cut


# ---------------------------------------------------------------- reading: plain JSON


def iter_cut_dicts(manifest: str | Path, absolute: bool = True) -> Iterator[dict[str, Any]]:
    """Cut dicts of a manifest as lhotse wrote them, read line by line (audio paths made absolute).

    The lines are parsed as JSON, not built into lhotse cuts (4 us a cut
    instead of 46 us). A line that is not a cut with a finite duration stops
    the reading, naming the manifest and the line; a MixedCut, which carries
    no duration of its own, gets the one lhotse computes from its tracks.
    ``absolute=False`` leaves audio paths as written (no file is looked up).

    Examples
    --------
    >>> next(iter_cut_dicts("workflows/demo/speech_cuts.jsonl.gz"))["id"]  # doctest: +SKIP
    'spk-0-utt-00'
    """
    manifest = str(manifest)
    check_manifests([manifest])
    folder = os.path.dirname(os.path.abspath(manifest))
    gzipped = manifest.endswith(".gz")
    opener = gzip.open if gzipped else open
    number = 0
    try:
        with opener(manifest, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    data = _cut_dict(line, f"{manifest} line {number}")
                    if absolute:
                        absolute_sources(data, folder, note_tried=True)
                    yield data
    except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as e:
        kind = "a gzipped (its name ends in .gz), UTF-8" if gzipped else "a UTF-8"
        raise ConfigError(f"--cuts {manifest} must be {kind} CutSet manifest. Got {type(e).__name__} after line "
                          f"{number}: {e}") from e


def _cut_dict(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as e:
        raise ConfigError(f"{where} must be a JSON cut, as lhotse writes CutSets. Got: {e}") from e
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str) or not kind.endswith("Cut") or not isinstance(data.get("id"), str):
        got = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{where} must be a cut with an 'id' and a 'type' such as 'MonoCut' (is this a CutSet "
                          f"manifest, not recordings or supervisions?). Got {got}.")
    if not data["id"]:  # the store keys every output by it: found only after the teachers ran, otherwise
        raise ConfigError(f"{where} must have a non-empty cut 'id'. Got ''.")
    if "duration" not in data:  # a MixedCut: its duration follows from its tracks, as lhotse computes it
        from lhotse.serialization import deserialize_item

        try:
            data["duration"] = deserialize_item(copy.deepcopy(data)).duration
        except Exception as e:  # lhotse raises many types for a malformed cut
            raise ConfigError(f"{where} must be a cut lhotse can read. Got {type(e).__name__}: {e}") from e
    if isinstance(data["duration"], bool) or not isinstance(data["duration"], (int, float)):
        raise ConfigError(f"{where}: cut {data['id']!r} must have a duration in seconds. Got {data['duration']!r}.")
    # JSON lines may hold NaN and Infinity: NaN breaks the duration order, Infinity the shard split
    if not math.isfinite(data["duration"]) or data["duration"] < 0:
        raise ConfigError(f"{where}: cut {data['id']!r} must have a finite duration >= 0 in seconds. "
                          f"Got {data['duration']!r}.")
    check_span(data, where)
    return data


END_TOLERANCE = 0.025  # s a cut may reach past its recording's end (lhotse's own tolerance for rounding)


def check_span(data: dict[str, Any], where: str) -> None:
    """A cut (and each track's cut of a MixedCut) must lie within its recording: start >= 0, end <= its duration.

    A negative start read [0, duration] of the recording, not what the cut
    says, and a cut past the end read less audio than its duration.
    """
    recording = data.get("recording")
    if isinstance(recording, dict) and "start" in data:
        start, duration, cut_id = data["start"], data.get("duration"), data.get("id")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
            raise ConfigError(f"{where}: cut {cut_id!r} must start at a finite time >= 0 s in its recording. "
                              f"Got start {start!r}.")
        length = recording.get("duration")
        if isinstance(length, (int, float)) and isinstance(duration, (int, float)) \
                and start + duration > length + END_TOLERANCE:
            raise ConfigError(f"{where}: cut {cut_id!r} must end within its recording {recording.get('id')!r} of "
                              f"{length:g} s. Got start {start:g} s + duration {duration:g} s = "
                              f"{start + duration:g} s.")
    for track in data.get("tracks") or []:
        if isinstance(track, dict) and isinstance(track.get("cut"), dict):
            check_span(track["cut"], where)


def load_durations(manifest: str | Path) -> dict[str, float]:
    """Cut ID -> duration (s) of a lhotse CutSet manifest (``.jsonl`` or ``.jsonl.gz``), without torch.

    Examples
    --------
    >>> load_durations("workflows/demo/events_cuts.jsonl.gz")  # doctest: +SKIP
    {'event-00': 2.41, ...}
    """
    return {data["id"]: float(data["duration"]) for data in iter_cut_dicts(manifest, absolute=False)}


# ---------------------------------------------------------------- reading: lhotse cuts


def open_manifest(path: str | Path) -> Any:
    """A lazy lhotse CutSet of ``path`` whose cuts carry absolute audio paths.

    The file is checked before it is handed to lhotse: a ``.gz`` name that is
    not gzip, or a manifest of recordings or supervisions, is a
    :class:`ConfigError` naming it.

    Examples
    --------
    >>> cuts = open_manifest("workflows/demo/events_cuts.jsonl.gz")  # doctest: +SKIP
    >>> next(iter(cuts)).recording.sources[0].source  # doctest: +SKIP
    '/.../workflows/demo/events/event-00.flac'
    """
    from lhotse import CutSet

    folder = os.path.dirname(os.path.abspath(path))
    lazy = str(path).endswith((".jsonl", ".jsonl.gz"))  # other formats (.json, .json.gz) load whole
    _check_compression(path)
    if lazy:
        _check_first_item(path, _first_jsonl_item(path))
        cuts = CutSet.from_jsonl_lazy(path)
    else:
        try:
            cuts = CutSet.from_file(path)
        except (OSError, ValueError, EOFError) as e:
            raise manifest_error(path, e) from e
        _check_first_item(path, next(iter(cuts), None))
    return cuts.map(functools.partial(_with_absolute_audio, folder=folder))


def manifest_error(path: str | Path, error: Exception) -> ConfigError:
    """A ConfigError naming the manifest that could not be read, and why."""
    return ConfigError(f"CutSet manifest {str(path)!r} must be readable lhotse JSON(L). Got "
                       f"{type(error).__name__}: {error}")


def _check_compression(path: str | Path) -> None:
    if not str(path).endswith(".gz"):
        return
    with open(path, "rb") as f:
        head = f.read(2)
    if head and head != GZIP_MAGIC:
        raise ConfigError(f"CutSet manifest {str(path)!r} is named .gz, so it must be gzip-compressed. Got a file "
                          f"starting with {head!r}: compress it (gzip) or drop the .gz from its name.")


def _first_jsonl_item(path: str | Path) -> Any:
    """The first item of a JSONL manifest, deserialised (None for an empty file)."""
    from lhotse.serialization import deserialize_item

    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            line = next((line for line in f if line.strip()), None)
        return None if line is None else deserialize_item(json.loads(line))
    except (OSError, ValueError, EOFError) as e:  # corrupt gzip, a line that is not JSON, an unknown item
        raise manifest_error(path, e) from e


def _check_first_item(path: str | Path, item: Any) -> None:
    from lhotse.cut import Cut

    if item is None or isinstance(item, Cut):
        return
    raise ConfigError(
        f"CutSet manifest {str(path)!r} must hold cuts. Got a {type(item).__name__} manifest: make a CutSet "
        f"from it first (lhotse's CutSet.from_manifests(recordings=..., supervisions=...))."
    )


# ---------------------------------------------------------------- stored IDs


def strip_repeat_suffix(cut_id: str) -> str:
    """``cut_id`` without the ``_repeatN`` suffixes of ``CutSet.repeat()``.

    Examples
    --------
    >>> strip_repeat_suffix("utt-7_repeat1_repeat0"), strip_repeat_suffix("utt-7")
    ('utt-7', 'utt-7')
    """
    return REPEAT_SUFFIX.sub("", cut_id)


def stored_cut_id(cut_id: str, known: Container[str]) -> str | None:
    """The ID under which ``known`` (a store, or a set of IDs) holds ``cut_id``'s data, or None.

    The ID itself wins; otherwise a ``_repeatN`` copy maps to its original.

    Examples
    --------
    >>> stored_cut_id("a_repeat2", {"a", "b"}), stored_cut_id("c_repeat0", {"a"})
    ('a', None)
    """
    if cut_id in known:
        return cut_id
    original = strip_repeat_suffix(cut_id)
    if original != cut_id and original in known:
        return original
    return None


def canonical_cut_id(cut_id: str, known: Container[str]) -> str:
    """Like :func:`stored_cut_id`, but an ID ``known`` lacks still loses its repeat suffixes.

    Two repeat copies of one cut then share an ID even when no store holds
    it, so evaluation never scores the same audio twice or pairs it with
    itself in a speaker trial.

    Examples
    --------
    >>> canonical_cut_id("a_repeat1", set())
    'a'
    """
    return stored_cut_id(cut_id, known) or strip_repeat_suffix(cut_id)


# ---------------------------------------------------------------- mixed and perturbed cuts

_TIME_ALTERING = ("speed", "tempo")  # lhotse transform names that change the time axis


def is_time_altered(cut: Any) -> bool:
    """True when a lhotse cut's audio, or that of any track of a MixedCut, is speed- or tempo-perturbed."""
    if hasattr(cut, "tracks"):
        return any(is_time_altered(track.cut) for track in cut.tracks)
    recording = getattr(cut, "recording", None)
    transforms = getattr(recording, "transforms", None) or []
    return any(_transform_name(t).lower() in _TIME_ALTERING for t in transforms)


def _transform_name(transform: Any) -> str:
    if isinstance(transform, dict):
        return str(transform.get("name", ""))
    return type(transform).__name__


def _first_track_cut(cut: Any) -> Any:
    while hasattr(cut, "tracks"):  # MixedCut; tracks may themselves be mixed
        cut = cut.tracks[0].cut
    return cut


def _track_ids(cut: Any) -> set[str]:
    """IDs of every cut inside a MixedCut (nested mixes included)."""
    ids: set[str] = set()
    for track in getattr(cut, "tracks", ()):
        ids.add(track.cut.id)
        ids |= _track_ids(track.cut)
    return ids


def target_source(cut: Any, known: Container[str]) -> tuple[str, Any] | None:
    """(stored cut ID, the cut those outputs were computed on) for a lhotse ``cut``, or None if none are valid.

    A MixedCut with an ID of its own that ``known`` holds was extracted as
    mixed (a corpus mixed before extraction): its own outputs. Any other
    MixedCut (mixed on the fly, or padded or mixed keeping a track's ID)
    takes its first track's. Time-altered audio (speed or tempo perturbed,
    of any track) has none: the teachers saw other audio with another frame
    count.

    Examples
    --------
    >>> target_source(cut.repeat(2)[1], store)[0]  # doctest: +SKIP
    'cut-0001'
    """
    if is_time_altered(cut):
        return None
    if hasattr(cut, "tracks"):
        own = stored_cut_id(cut.id, known)  # after repeat(), "<id>_repeatN" reads <id>
        if own is not None and own not in _track_ids(cut):
            return own, cut
    source = _first_track_cut(cut)
    stored = stored_cut_id(source.id, known)
    return None if stored is None else (stored, source)
