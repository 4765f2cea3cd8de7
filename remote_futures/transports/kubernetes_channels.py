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
    log: str, nonce: str, receipt: Mapping[str, object] | None = None
) -> tuple[dict[int, bytes], str]:
    """Split a pod log into the outcome envelopes of its block and what the user printed.

    The block is the *last* one framed with ``nonce``; its size and sha256 must match its
    header and, when given, the termination-message ``receipt``. Raises FrameError otherwise.
    """
    begin = re.compile(
        rf"^==RF:{re.escape(nonce)}:BEGIN n=(\d+) sha256=([0-9a-f]{{64}})==$", re.MULTILINE
    )
    matches = list(begin.finditer(log))
    if not matches:
        raise FrameError("the pod log holds no result block")
    head = matches[-1]
    end_marker = f"==RF:{nonce}:END=="
    end = log.find(end_marker, head.end())
    if end < 0:
        raise FrameError("the result block in the pod log is truncated (no end marker)")
    try:
        data = base64.b64decode("".join(log[head.end() : end].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError(f"the result block in the pod log is not valid base64: {exc}") from None
    size, digest = int(head.group(1)), head.group(2)
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != size or actual != digest:
        raise FrameError(
            f"the result block is corrupt: {len(data)} bytes with sha256 {actual[:12]}..., "
            f"its header says {size} bytes with sha256 {digest[:12]}..."
        )
    if receipt is not None and receipt.get("sha256") not in (None, digest):
        raise FrameError(
            "the result block does not match the pod's termination receipt "
            f"(sha256 {digest[:12]}... vs {str(receipt.get('sha256'))[:12]}...)"
        )
    try:
        outcomes = pickle.loads(data)
    except Exception as exc:
        raise FrameError(f"the result block does not unpickle: {exc!r}") from None
    if not isinstance(outcomes, dict):
        raise FrameError("the result block holds no outcome table")
    user_output = log[: head.start()]
    # The pod side writes a newline before the block so that it starts on a line of its own.
    if user_output.endswith("\n\n"):
        user_output = user_output[:-1]
    elif user_output == "\n":
        user_output = ""
    return {int(k): bytes(v) for k, v in outcomes.items()}, user_output
