"""Reading CutSet manifests whose audio paths may be relative to the manifest's own folder.

A corpus folder that names its audio relative to its manifest (as the demo
corpus does) works from any working directory. Extraction already resolves
such paths; training and evaluation read the same manifests, so they resolve
them by the same rule: a relative file path is looked up next to the
manifest first, then in the working directory. Absolute paths, URLs and
non-file sources pass through untouched.

Torch-free: ``mt2kd eval teachers`` reads manifests without model code.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mt2kd.errors import ConfigError


def absolute_path(path: str, folder: str) -> str:
    """``path`` made absolute: next to ``folder`` when it exists there, else in the working directory.

    Examples
    --------
    >>> absolute_path("/data/a.flac", "/corpus")
    '/data/a.flac'
    """
    if os.path.isabs(path) or "://" in path:
        return path
    beside = os.path.join(folder, path)
    return beside if os.path.exists(beside) else os.path.abspath(path)


def _resolve_sources(value: Any, folder: str) -> bool:
    """Rewrite relative file sources in a cut's dict in place; True if any changed."""
    changed = False
    if isinstance(value, dict):
        if value.get("type") == "file" and isinstance(value.get("source"), str):
            resolved = absolute_path(value["source"], folder)
            changed = resolved != value["source"]
            value["source"] = resolved
        for item in value.values():
            changed = _resolve_sources(item, folder) or changed
    elif isinstance(value, list):
        for item in value:
            changed = _resolve_sources(item, folder) or changed
    return changed


def with_absolute_audio(cut: Any, folder: str) -> Any:
    """``cut`` with its audio paths absolute (the same object when they already are)."""
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
    return deserialize_item(data) if _resolve_sources(data, folder) else cut


def open_manifest(path: str | Path) -> Any:
    """A lazy CutSet of ``path`` whose cuts carry absolute audio paths.

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
    return cuts.map(functools.partial(with_absolute_audio, folder=folder))


GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file


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
    import gzip
    import json

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
