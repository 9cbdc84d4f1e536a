"""Small facts about where output goes."""

from __future__ import annotations

from typing import Any


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (a live progress bar may be drawn on it)."""
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())
