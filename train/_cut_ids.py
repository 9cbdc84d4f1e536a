"""Which stored cut ID a loaded cut reads: the one rule shared by training and evaluation.

``CutSet.repeat()`` renames every copy ``<id>_repeatN`` (and repeating a
repeated set stacks the suffixes). The teachers only ever saw the original
cut, so a suffixed ID reads the original's targets, unless the suffixed ID is
itself a cut of the store (a corpus may name cuts that way on purpose).

Plain string work, no torch: ``mt2kd eval teachers`` uses it without loading
any model code.
"""

from __future__ import annotations

import re
from collections.abc import Container

REPEAT_SUFFIX = re.compile(r"(_repeat\d+)+$")  # one or more suffixes added by CutSet.repeat()


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
