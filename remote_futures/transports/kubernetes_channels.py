"""How work and results travel to and from a pod: the payload Secret and the framed log block.

Pure functions, no Kubernetes client: tested on their own. The pod side of the framing is
:mod:`remote_futures.k8s_entry` (stdlib only); this is the client side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import pickle
import re
from collections.abc import Mapping

__all__ = [
    "MAX_SECRET_BYTES",
    "FrameError",
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
