"""The pod side of the Kubernetes transport: run one task, frame its outcomes in the log.

Shipped in the job's Secret beside ``worker.py`` and started as ``python entry.py``; it imports
only the standard library (and, through the worker, cloudpickle). The Secret is mounted
read-only at ``RF_PAYLOAD_DIR``; the task's input is copied to a private job directory, the
worker runs it there, and every outcome envelope goes back to the client in one block at the
end of the pod log::

    ==RF:<nonce>:BEGIN n=<bytes> sha256=<hex>==
    <base64 of a stdlib pickle {call index: outcome bytes}, 76 characters a line>
    ==RF:<nonce>:END==

The nonce is per task and taken out of the environment before user code runs, so nothing the
user prints can forge a block. A short JSON receipt (size, checksum) goes to the termination
message, where it survives log rotation: the client checks the block against it.
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
        pass  # no termination log (a plain process in tests): the log block still carries all


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
    code: int = worker.run_task(job_dir, task, worker._State())
    outcomes: dict[int, bytes] = {}
    for name in os.listdir(job_dir):
        if name.startswith("call-") and name.endswith(".out"):
            with open(os.path.join(job_dir, name), "rb") as f:
                outcomes[int(name[5:-4])] = f.read()
    data = pickle.dumps(outcomes, protocol=worker.ENVELOPE_PROTOCOL)
    sys.stdout.flush()
    sys.stderr.flush()
    # The block starts on a fresh line whatever the user printed last.
    os.write(1, ("\n" + frame(nonce, data)).encode("ascii"))
    _receipt(termination, {
        "ok": code == 0, "channel": "log", "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "calls": len(outcomes),
    })
    shutil.rmtree(job_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
