"""How work and results travel to and from a pod: the payload Secret and the framed log block.

Pure functions, no Kubernetes client: tested on their own. The pod side of the framing is
:mod:`remote_futures.k8s_entry` (stdlib only); this is the client side.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import pickle
import re
from collections.abc import Mapping

__all__ = [
    "MAX_SECRET_BYTES",
    "FrameError",
    "LogFollower",
    "Printed",
    "parse_log",
    "parse_receipt",
    "secret_size",
]

#: The API server refuses objects above 1 MiB (etcd's limit is 1.5 MiB); keep a margin for
#: metadata, labels and base64 overhead in the request body.
MAX_SECRET_BYTES = 900 * 1024


class FrameError(ValueError):
    """The pod log holds no intact result block (missing, truncated or tampered with)."""


def secret_size(data: Mapping[str, bytes]) -> int:
    """Bytes a Secret of ``data`` counts against the object limit (keys plus raw values)."""
    return sum(len(key) + len(value) for key, value in data.items())


def parse_receipt(message: str | None) -> dict[str, object] | None:
    """The JSON receipt the pod wrote to its termination message, or None if there is none
    (a crash: ``FallbackToLogsOnError`` puts the log tail there instead)."""
    if not message:
        return None
    try:
        receipt = json.loads(message)
    except ValueError:
        return None
    return receipt if isinstance(receipt, dict) and "sha256" in receipt else None


def parse_log(
    log: str, nonce: str, receipt: Mapping[str, object] | None = None,
    spilled: dict[int, tuple[int, str]] | None = None,
) -> tuple[dict[int, bytes], str, str]:
    """Split a pod log into the outcome envelopes of its blocks, what the user printed to
    stdout and what it wrote to stderr.

    Every block framed with ``nonce`` (one per finished call) must be intact: its size and
    sha256 match its header. When the termination-message ``receipt`` is given (the pod
    finished), the blocks must be exactly the ones it counts (sha256 of their data in order).
    A log may hold no block (a pod that crashed before its first call ended). Raises
    FrameError on a corrupt, truncated or forged block.

    A call whose outcome the pod uploaded to the bucket (too large for the log) has a
    ``("url", size, sha256)`` entry in its block instead: it goes to ``spilled`` (call ->
    (size, sha256)), for the caller to fetch and check; without ``spilled`` it is a FrameError.
    """
    begin = f"==RF:{nonce}:BEGIN "
    end_marker = f"==RF:{nonce}:END=="
    err_prefix = f"==RF:{nonce}:ERR=="
    call_prefix = f"==RF:{nonce}:CALL "
    head_re = re.compile(rf"^==RF:{re.escape(nonce)}:BEGIN n=(\d+) sha256=([0-9a-f]{{64}})==$")
    outcomes: dict[int, bytes] = {}
    out_lines: list[str] = []
    err_lines: list[str] = []
    digest = hashlib.sha256()
    blocks = 0
    lines = log.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(call_prefix):
            i += 1
            continue
        if line.startswith(err_prefix):
            err_lines.append(line[len(err_prefix):])
            i += 1
            continue
        if not line.startswith(begin):
            out_lines.append(line)
            i += 1
            continue
        head = head_re.match(line.rstrip("\n"))
        if head is None:
            raise FrameError("a result block in the pod log has a malformed header")
        try:
            stop = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == end_marker)
        except StopIteration:
            raise FrameError("a result block in the pod log is truncated (no end marker)") from None
        try:
            data = base64.b64decode("".join(x.strip() for x in lines[i + 1 : stop]),
                                    validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FrameError(f"a result block in the pod log is not valid base64: {exc}") from None
        size, expected = int(head.group(1)), head.group(2)
        actual = hashlib.sha256(data).hexdigest()
        if len(data) != size or actual != expected:
            raise FrameError(
                f"a result block is corrupt: {len(data)} bytes with sha256 {actual[:12]}..., "
                f"its header says {size} bytes with sha256 {expected[:12]}..."
            )
        try:
            table = pickle.loads(data)
        except Exception as exc:
            raise FrameError(f"a result block does not unpickle: {exc!r}") from None
        if not isinstance(table, dict):
            raise FrameError("a result block holds no outcome table")
        for key, value in table.items():
            if isinstance(value, tuple) and len(value) == 3 and value[0] == "url":
                if spilled is None:
                    raise FrameError(f"call {key}'s result went to a bucket this client lacks")
                spilled[int(key)] = (int(value[1]), str(value[2]))
            else:
                outcomes[int(key)] = bytes(value)
        digest.update(data)
        blocks += 1
        # The pod writes a newline before each block so that it starts on a line of its own.
        if out_lines and out_lines[-1] == "\n":
            out_lines.pop()
        i = stop + 1
    if receipt is not None and (
        receipt.get("sha256") != digest.hexdigest()
        or receipt.get("calls") not in (None, blocks)
    ):
        raise FrameError(
            f"the result blocks in the pod log ({blocks}) do not match the pod's termination "
            f"receipt ({receipt.get('calls')} calls, sha256 {str(receipt.get('sha256'))[:12]}...)"
        )
    return outcomes, "".join(out_lines), "".join(err_lines)


#: A line longer than this is taken in pieces (the memory held per pod stays bounded).
MAX_LINE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Printed:
    """One line (or piece of a very long line) a pod's calls printed."""

    #: Where it starts in the pod log (bytes): a log read again is forwarded from there on.
    start: int
    #: 1: stdout, 2: stderr.
    stream: int
    #: The call that printed it (None: before the first call started).
    call: int | None
    text: str


class LogFollower:
    """Takes a pod log apart as it arrives, in pieces of any size: what the calls printed
    (each line with its stream, its call and its place in the log) and the text of each
    result block (for :func:`parse_log`). The mark lines are never shown as output."""

    def __init__(self, nonce: str) -> None:
        self._begin = f"==RF:{nonce}:BEGIN ".encode()
        self._end = f"==RF:{nonce}:END==".encode()
        self._err = f"==RF:{nonce}:ERR==".encode()
        self._call_re = re.compile(rb"==RF:" + re.escape(nonce.encode()) + rb":CALL (\d+)==")
        self._buf = bytearray()
        self._pos = 0  # where the buffer starts in the log
        self._call: int | None = None
        self._block: list[bytes] | None = None
        #: The stream of a line taken in part (too long), whose rest is still to come.
        self._rest_of: int | None = None
        #: Where an empty stdout line starts that may be the one the pod writes before each
        #: block (not the user's): decided by the next line.
        self._held: int | None = None
        #: Every line before this offset has been handed out (or was not output): reading
        #: the log again, the lines from here on are still to show.
        self.settled = 0

    def feed(self, data: bytes, *, ended: bool = False) -> tuple[list[Printed], list[str]]:
        """The lines ``data`` completes and the blocks it ends. ``ended``: the log is
        complete (an unfinished last line is handed out too)."""
        self._buf += data
        printed: list[Printed] = []
        blocks: list[str] = []
        while self._buf:
            cut = self._buf.find(b"\n") + 1
            if not cut:
                if ended or (self._block is None and len(self._buf) > MAX_LINE_BYTES):
                    cut = len(self._buf)
                else:
                    break
            line = bytes(self._buf[:cut])
            del self._buf[:cut]
            start = self._pos
            self._pos += cut
            self._line(start, line, printed, blocks)
        if ended and self._held is not None:
            printed.append(Printed(self._held, 1, self._call, "\n"))
            self._held = None
        self.settled = self._held if self._held is not None else self._pos
        return printed, blocks

    def _line(self, start: int, line: bytes, printed: list[Printed], blocks: list[str]) -> None:
        whole = line.endswith(b"\n")
        if self._rest_of is not None:  # the rest of a line too long to wait for
            stream, self._rest_of = self._rest_of, None if whole else self._rest_of
            printed.append(Printed(start, stream, self._call, line.decode("utf-8", "replace")))
            return
        if self._block is not None:
            self._block.append(line)
            if line.rstrip(b"\n") == self._end:
                blocks.append(b"".join(self._block).decode("ascii", "replace"))
                self._block = None
            return
        if line.startswith(self._begin):
            self._held = None  # the pod's own newline before the block
            self._block = [line]
            return
        if self._held is not None:
            printed.append(Printed(self._held, 1, self._call, "\n"))
            self._held = None
        mark = self._call_re.fullmatch(line.rstrip(b"\n"))
        if mark is not None:
            self._call = int(mark.group(1))
            return
        stream = 1
        if line.startswith(self._err):
            stream, line = 2, line[len(self._err):]
        elif line == b"\n":
            self._held = start
            return
        if not whole:
            self._rest_of = stream
        printed.append(Printed(start, stream, self._call, line.decode("utf-8", "replace")))
