"""Reading the tasks' output files while they run, within the command a poll already runs.

A batch task's stdout and stderr go to files in its job directory. To show what a running task
prints, each poll appends to its one remote command a read of the bytes each running task's
files gained since the previous poll (:func:`tail_command`), base64-encoded on one line each so
that no byte a call prints can be mistaken for the poll's own output; :func:`split_tails` takes
them apart. The bytes read per poll are bounded: a task that prints faster than that is caught
up over the following polls, and in full when it ends.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import shlex
from collections.abc import Sequence

__all__ = ["TAIL_BUDGET", "TailTarget", "split_tails", "tail_command"]

#: The most bytes one poll reads from all output files together.
TAIL_BUDGET = 256 * 1024
#: The least one file may read in a poll, however many there are.
_MIN_PER_FILE = 4096
_MARK = "@@remote_futures-tail@@"
_LINE = re.compile(re.escape(_MARK) + r" (\d+) ([A-Za-z0-9+/=]*)")


@dataclasses.dataclass(frozen=True)
class TailTarget:
    """One output file to read from ``offset`` on."""

    path: str
    offset: int


def tail_command(targets: Sequence[TailTarget], budget: int = TAIL_BUDGET) -> str:
    """A command (to run after the poll's listing, in the same shell) printing, for each
    target, a line ``<mark> <position> <base64 of the bytes from its offset>``."""
    if not targets:
        return ""
    each = max(_MIN_PER_FILE, budget // len(targets))
    parts = [
        f"printf '\\n%s %d ' {_MARK} {i}; "
        f"tail -c +{target.offset + 1} {shlex.quote(target.path)} 2>/dev/null "
        f"| head -c {each} | base64 | tr -d '\\n'"
        for i, target in enumerate(targets)
    ]
    return "; ".join(parts) + "; echo; true"


def split_tails(text: str) -> tuple[str, dict[int, bytes]]:
    """``text`` without what :func:`tail_command` printed, and that: target position ->
    bytes read (a target missing: nothing could be read)."""
    head, found, rest = text.partition("\n" + _MARK)
    if not found:
        return text, {}
    tails: dict[int, bytes] = {}
    for match in _LINE.finditer(_MARK + rest):
        try:
            tails[int(match.group(1))] = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            continue  # cut short: read again from the same offset next time
    return head, tails
