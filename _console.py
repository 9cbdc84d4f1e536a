"""Small facts about where output goes, and how sizes read in it."""

from __future__ import annotations

from typing import Any


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (a live progress bar may be drawn on it)."""
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def human_bytes(num_bytes: float) -> str:
    """A byte count in binary units with one decimal, as every command prints sizes.

    Examples
    --------
    >>> human_bytes(512), human_bytes(1536), human_bytes(3 * 1024**4)
    ('512 B', '1.5 KiB', '3.0 TiB')
    """
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024.0:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    return f"{value:,.1f} TiB"
