"""What calls print, forwarded to this process's stdout and stderr.

``RemoteExecutor(output=...)`` chooses when:

``"live"`` (the default)
    Line by line while the call runs, as a ``ProcessPoolExecutor`` child's prints appear on
    the terminal as they happen.
``"end"``
    In one piece when the call ends, so that the output of calls running at once does not
    interleave.
``"off"``
    Not at all (a worker that dies still reports the tail of its stderr in the error).

What a call wrote to stdout goes to ``sys.stdout``, what it wrote to stderr to ``sys.stderr``.
When more than one call may run at once (``max_workers > 1``), each line is tagged with the
call it came from: ``output_prefix`` is a :meth:`str.format` template with the fields ``job``
(the job's id) and ``call`` (the call's number within its job), ``"[{job}.{call}] "`` by
default; ``output_prefix=""`` turns tags off.

Transports hand what arrives to :meth:`OutputForwarder.forward` in pieces of whole lines (a
:class:`LineSplitter` keeps the unfinished end of a stream for later); the last piece of a call
may end without a newline.
"""

from __future__ import annotations

import sys
import threading
from typing import Final

from .errors import ConfigurationError

__all__ = ["DEFAULT_PREFIX", "MODES", "LineSplitter", "OutputForwarder"]

#: The accepted values of ``RemoteExecutor(output=...)``.
MODES: Final = ("live", "end", "off")
#: The tag put before each line when several calls may run at once.
DEFAULT_PREFIX: Final = "[{job}.{call}] "
#: An unfinished line longer than this is forwarded anyway (a progress meter drawn with
#: carriage returns, a binary dump): the memory held per stream stays bounded.
MAX_LINE_BYTES: Final = 64 * 1024


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`MODES`; ConfigurationError otherwise."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigurationError(
            f"output must be one of {', '.join(map(repr, MODES))}, got {mode!r}"
        )
    return mode


def check_prefix(prefix: object) -> str:
    """``prefix`` if it is a format string using only the fields ``job`` and ``call``."""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"output_prefix must be a string, got {prefix!r}")
    try:
        prefix.format(job="job", call=0)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigurationError(
            f"output_prefix {prefix!r} is not a format string with the fields "
            f"{{job}} and {{call}}: {exc!r}"
        ) from None
    return prefix


class OutputForwarder:
    """Writes what calls printed to this process's streams, tagged with the call if asked."""

    def __init__(self, mode: str = "live", prefix: str = "") -> None:
        self.mode = check_mode(mode)
        self.prefix = check_prefix(prefix)
        # Transports may forward from more than one thread (a pool's reader threads): one
        # piece is written whole, never interleaved with another.
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        """Whether output is forwarded while the call runs."""
        return self.mode == "live"

    @property
    def enabled(self) -> bool:
        """Whether output is forwarded at all."""
        return self.mode != "off"

    def format(self, job: str, call: int | str | None, text: str) -> str:
        """``text`` (whole lines, the last maybe unfinished) as it is written: each line
        tagged when there is a prefix and the call is known. A tagged piece always ends a
        line, so that the next call's tag starts one."""
        if not self.prefix or call is None or not text:
            return text
        tag = self.prefix.format(job=job, call=call)
        tagged = "".join(tag + line for line in text.splitlines(keepends=True))
        return tagged if tagged.endswith(("\n", "\r")) else tagged + "\n"

    def forward(
        self, stream: int, job: str, call: int | str | None, data: bytes | str
    ) -> None:
        """Write ``data``, printed by call ``call`` of job ``job`` (None: not by a call; a
        range ``"3-5"``: by a task running those calls) on its ``stream`` (1: stdout, 2:
        stderr), to this process's matching stream."""
        if self.mode == "off" or not data:
            return
        text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data
        text = self.format(job, call, text)
        with self._lock:
            sink = sys.stdout if stream == 1 else sys.stderr
            try:
                if sink is not None:
                    sink.write(text)
                    sink.flush()
            except (OSError, ValueError):
                pass  # the caller closed its stream: output is best effort


class LineSplitter:
    """Cuts a byte stream that arrives in arbitrary pieces into whole lines."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._pending = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> bytes:
        """The whole lines completed by ``data`` (b"" if none): the unfinished end is kept,
        unless it grew longer than a line may be."""
        self._pending += data
        cut = self._pending.rfind(b"\n") + 1
        if not cut and len(self._pending) <= self._max_line:
            return b""
        if not cut:
            cut = len(self._pending)
        lines = bytes(self._pending[:cut])
        del self._pending[:cut]
        return lines

    def rest(self) -> bytes:
        """The unfinished end (the stream ended), emptying the splitter."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest
