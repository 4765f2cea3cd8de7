"""The pod side of the Kubernetes transport: run one task, frame its outcomes in the log.

Shipped in the job's Secret beside ``worker.py`` and started as ``python entry.py``; it imports
only the standard library (and, through the worker, cloudpickle). The Secret is mounted
read-only at ``RF_PAYLOAD_DIR``; the task's input is copied to a private job directory and the
worker runs it there. As each call finishes, its outcome envelope goes to the pod log in a block
of its own, so that the client can hand out results while later calls of the task still run::

    ==RF:<nonce>:BEGIN n=<bytes> sha256=<hex>==
    <base64 of a stdlib pickle {call index: outcome bytes}, 76 characters a line>
    ==RF:<nonce>:END==

The nonce is per Job and taken out of the environment before user code runs, so nothing the
user prints can forge a block. What the user writes to stderr is kept apart from stdout by
prefixing its lines with ``==RF:<nonce>:ERR==`` (a pod has one log for both). A short JSON
receipt (the number of calls and the sha256 of all blocks' data in order) goes to the
termination message, where it survives log rotation: the client checks the blocks against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import threading

#: Lines of base64 in the framed block.
LINE = 76
TERMINATION_LOG = "/dev/termination-log"


def frame(nonce: str, data: bytes) -> str:
    """The framed block carrying ``data``."""
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i : i + LINE] for i in range(0, len(text), LINE)]
    head = f"==RF:{nonce}:BEGIN n={len(data)} sha256={hashlib.sha256(data).hexdigest()}=="
    return "\n".join([head, *lines, f"==RF:{nonce}:END=="]) + "\n"


def _receipt(path: str, receipt: dict[str, object]) -> None:
    try:
        with open(path, "w") as f:
            f.write(json.dumps(receipt)[:4000])
    except OSError:
        pass  # no termination log (a plain process in tests): the log blocks still carry all


class _Log:
    """The real stdout (the pod log), written whole lines at a time by the relay threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            while data:
                data = data[os.write(self.fd, data):]


def _relay(source: int, log: _Log, prefix: bytes) -> None:
    """Copy lines from a pipe to the log, each with ``prefix``; a partial last line too."""
    with os.fdopen(source, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                log.write(b"".join(prefix + line + b"\n" for line in lines))
        if pending:
            log.write(prefix + pending + b"\n")


def _redirect(fd: int, log: _Log, prefix: bytes) -> threading.Thread:
    read, write = os.pipe()
    os.dup2(write, fd)
    os.close(write)
    thread = threading.Thread(target=_relay, args=(read, log, prefix), daemon=True)
    thread.start()
    return thread


def main() -> int:
    """Run the task named by the environment; return the process exit code."""
    payload_dir = os.environ.get("RF_PAYLOAD_DIR", "/rf/payload")
    # One Job per task names it; an Indexed Job gives each pod its completion index.
    task = int(os.environ.get("RF_TASK") or os.environ["JOB_COMPLETION_INDEX"])
    # Out of the environment before any user code can read it.
    nonce = os.environ.pop("RF_NONCE")
    termination = os.environ.pop("RF_TERMINATION_LOG", TERMINATION_LOG)
    sys.path.insert(0, payload_dir)
    import worker  # type: ignore[import-not-found]  # shipped beside this file

    del sys.path[0]
    for extra in os.environ.pop("RF_EXTRA_PATH", "").split(os.pathsep):
        if extra:
            sys.path.append(os.path.join(payload_dir, extra))
    job_dir = tempfile.mkdtemp(prefix="rf-task-")
    shutil.copyfile(
        os.path.join(payload_dir, f"task-{task}.in"),
        os.path.join(job_dir, worker.INPUT_NAME.format(task)),
    )
    log = _Log(os.dup(1))
    relays = [_redirect(1, log, b""), _redirect(2, log, f"==RF:{nonce}:ERR==".encode())]
    digest = hashlib.sha256()
    calls = 0
    notify_read, notify_write = os.pipe()

    def forward_outcomes() -> None:
        nonlocal calls
        with os.fdopen(notify_read, "r") as notes:
            for note in notes:
                kind, _, value = note.strip().partition(" ")
                if kind != "C":
                    continue
                index = int(value)
                with open(os.path.join(job_dir, worker.OUTCOME_NAME.format(index)), "rb") as f:
                    data = pickle.dumps({index: f.read()}, protocol=worker.ENVELOPE_PROTOCOL)
                sys.stdout.flush()
                sys.stderr.flush()
                digest.update(data)
                calls += 1
                log.write(("\n" + frame(nonce, data)).encode("ascii"))

    forwarder = threading.Thread(target=forward_outcomes, daemon=True)
    forwarder.start()
    code: int = worker.run_task(job_dir, task, worker._State(), notify_write)
    os.close(notify_write)
    forwarder.join()
    sys.stdout.flush()
    sys.stderr.flush()
    # Close our ends of the pipes so that the relays drain and stop.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    for relay in relays:
        relay.join(5)
    _receipt(termination, {
        "ok": code == 0, "channel": "log", "calls": calls, "sha256": digest.hexdigest(),
    })
    shutil.rmtree(job_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
