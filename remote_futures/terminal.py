"""Colours for the command line's tables and reports, where a person reads them.

Colour is used only when the stream is a terminal, ``NO_COLOR`` is not set (https://no-color.org)
and ``TERM`` is not ``dumb``; ``--json`` output and pipes never get escape codes.
"""

from __future__ import annotations

import os
from typing import IO, Any, Final

__all__ = ["STYLES", "colour_enabled", "paint"]

#: The SGR codes of the styles in use.
STYLES: Final = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "dim": "2"}


def colour_enabled(stream: IO[Any]) -> bool:
    """Whether ``stream`` should get colours (see the module docstring)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False  # a closed or unusual stream


def paint(text: str, style: str, enabled: bool = True) -> str:
    """``text`` in ``style`` (a key of :data:`STYLES`), or as it is when not ``enabled``."""
    if not enabled or not text:
        return text
    return f"\033[{STYLES[style]}m{text}\033[0m"
