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
import subprocess
import sys
import tempfile
import threading

#: Lines of base64 in the framed block.
LINE = 76
#: The largest outcome sent through the pod log: kubelets rotate container logs at 10 MiB by
#: default and serve only the newest file, so a bigger block could be lost.
MAX_LOG_OUTCOME = 4 * 1024 * 1024
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


def _child() -> int:
    """The worker process: run the task, announcing each written outcome on the notify fd."""
    payload_dir = os.environ.pop("RF_PAYLOAD_DIR")
    job_dir = os.environ.pop("RF_JOB_DIR")
    task = int(os.environ.pop("RF_CHILD_TASK"))
    notify = int(os.environ.pop("RF_NOTIFY_FD"))
    sys.path.insert(0, payload_dir)
    import worker  # type: ignore[import-not-found]  # shipped beside this file

    del sys.path[0]
    for extra in os.environ.pop("RF_EXTRA_PATH", "").split(os.pathsep):
        if extra:
            sys.path.append(os.path.join(payload_dir, extra))
    code: int = worker.run_task(job_dir, task, worker._State(), notify)
    return code


def main() -> int:
    """Run the task named by the environment in a child process; relay its output to the pod
    log, framing each outcome as the child announces it. Return the child's exit code (128+N
    when a signal killed it). A child that dies mid-task (``os._exit``, a segfault) still
    leaves everything it wrote, and every outcome written before, in the log."""
    payload_dir = os.environ.get("RF_PAYLOAD_DIR", "/rf/payload")
    # One Job per task names it; an Indexed Job gives each pod its completion index.
    task = int(os.environ.get("RF_TASK") or os.environ["JOB_COMPLETION_INDEX"])
    # Out of the environment before any user code can read it (the child inherits the rest).
    nonce = os.environ.pop("RF_NONCE")
    termination = os.environ.pop("RF_TERMINATION_LOG", TERMINATION_LOG)
    sys.path.insert(0, payload_dir)
    import worker  # shipped beside this file

    del sys.path[0]
    job_dir = tempfile.mkdtemp(prefix="rf-task-")
    shutil.copyfile(
        os.path.join(payload_dir, f"task-{task}.in"),
        os.path.join(job_dir, worker.INPUT_NAME.format(task)),
    )
    log = _Log(1)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    note_r, note_w = os.pipe()
    env = dict(os.environ, RF_PAYLOAD_DIR=payload_dir, RF_JOB_DIR=job_dir,
               RF_CHILD_TASK=str(task), RF_NOTIFY_FD=str(note_w))
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child"], stdin=subprocess.DEVNULL,
        stdout=out_w, stderr=err_w, pass_fds=(note_w,), env=env,
    )
    for fd in (out_w, err_w, note_w):
        os.close(fd)
    digest = hashlib.sha256()
    calls = 0

    def forward_outcomes() -> None:
        nonlocal calls
        with os.fdopen(note_r, "r") as notes:
            for note in notes:
                kind, _, value = note.strip().partition(" ")
                if kind != "C":
                    continue
                index = int(value)
                with open(os.path.join(job_dir, worker.OUTCOME_NAME.format(index)), "rb") as f:
                    outcome = f.read()
                if len(outcome) > MAX_LOG_OUTCOME:
                    outcome = pickle.dumps(worker._error(
                        worker.PICKLE_RESULT,
                        f"the call's result is {len(outcome) / 2**20:.1f} MiB pickled, over "
                        f"the {MAX_LOG_OUTCOME // 2**20} MiB a pod log can carry safely; "
                        "return less (write large data to shared storage and return its "
                        "location)"), protocol=worker.ENVELOPE_PROTOCOL)
                data = pickle.dumps({index: outcome}, protocol=worker.ENVELOPE_PROTOCOL)
                digest.update(data)
                calls += 1
                log.write(("\n" + frame(nonce, data)).encode("ascii"))

    threads = [
        threading.Thread(target=_relay, args=(out_r, log, b""), daemon=True),
        threading.Thread(target=_relay, args=(err_r, log, f"==RF:{nonce}:ERR==".encode()),
                         daemon=True),
        threading.Thread(target=forward_outcomes, daemon=True),
    ]
    for thread in threads:
        thread.start()
    code = child.wait()
    for thread in threads:
        # Bounded: a background process the user started may hold a pipe open.
        thread.join(10)
    if code < 0:
        code = 128 - code
    _receipt(termination, {
        "ok": code == 0, "channel": "log", "calls": calls, "sha256": digest.hexdigest(),
    })
    shutil.rmtree(job_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(_child() if sys.argv[1:] == ["--child"] else main())
