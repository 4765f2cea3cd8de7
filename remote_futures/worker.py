"""The remote side: runs the calls of one or more array tasks from a job directory.

This file is uploaded and executed as a script (``python3 worker.py JOB_DIR --task N``), so it
imports only the standard library, and cloudpickle lazily, so that a missing cloudpickle or a
wrong Python version is reported as a clear outcome rather than a traceback from inside pickle.
The client imports it too, for the file names and envelope format below: one source of truth.

Job directory protocol (see DESIGN.md section 3)::

    task-<i>.in      stdlib pickle (protocol 4) of an input envelope, written by the client
    call-<c>.out     stdlib pickle of an outcome envelope, one per call, written atomically here
    task-<i>.exit    the task's exit code, written by the job script (batch schedulers)
    task-<i>.stdout  what the task printed; task-<i>.stderr likewise

Every call gets an outcome file, whether it returned or raised; exit codes other than 0 are
reserved for infrastructure failure (the worker itself could not run).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from collections.abc import Iterator
from typing import Any

#: Version of the envelopes below; bumped on any incompatible change.
FORMAT = 1
INPUT_NAME = "task-{}.in"
OUTCOME_NAME = "call-{}.out"
EXIT_NAME = "task-{}.exit"
STDOUT_NAME = "task-{}.stdout"
STDERR_NAME = "task-{}.stderr"
#: Created by the job script when the task starts: "running" even where the scheduler cannot
#: say (the Torque wrappers list a running array task under another id).
STARTED_NAME = "task-{}.started"
#: All of a job's ``task-<i>.in`` payloads in one upload ({index: bytes}, stdlib pickle), split
#: on the remote side by ``worker.py JOB_DIR --unpack``: one file transfer instead of many.
BUNDLE_NAME = "tasks.bundle"
#: Directory, beside the uploaded worker, of the caller's code bundles (zips on sys.path).
CODE_DIR = "code"
#: Present when the task was cancelled after being handed to this worker: skip it.
CANCEL_NAME = "task-{}.cancel"
#: Protocol of the envelopes: readable by any Python 3.8+, so that a version mismatch can be
#: reported instead of failing to unpickle.
ENVELOPE_PROTOCOL = 4

#: Exit code when the worker cannot read its input (missing or corrupt ``task-<i>.in``).
EXIT_BAD_INPUT = 65

#: Outcome kinds.
VALUE = "value"
EXCEPTION = "exception"
ERROR = "error"
#: Error causes within an ``error`` outcome.
ENVIRONMENT = "environment"
UNPICKLE = "unpickle"
PICKLE_RESULT = "pickle_result"
INITIALIZER = "initializer"


class _State:
    """Per-process state: the initializer runs once per worker process."""

    def __init__(self) -> None:
        self.initialized = False
        self.initializer_failure: dict[str, Any] | None = None


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _error(cause: str, message: str, tb: str = "") -> dict[str, Any]:
    return {"format": FORMAT, "kind": ERROR, "cause": cause, "message": message, "traceback": tb}


def _notify(fd: int | None, line: str) -> None:
    if fd is not None:
        try:
            os.write(fd, (line + "\n").encode())
        except OSError:
            pass  # the client went away; outcome files still carry everything


def _environment_problem(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """An error outcome if this interpreter cannot load the payload, else None."""
    wanted = tuple(envelope.get("python", ()))
    here = tuple(sys.version_info[:2])
    if wanted and wanted != here:
        return _error(
            ENVIRONMENT,
            f"the remote Python is {here[0]}.{here[1]} ({sys.executable}) but the client runs "
            f"{wanted[0]}.{wanted[1]}; cloudpickle payloads need the same major.minor version. "
            "Point the 'python' option at a matching interpreter, or use env='sync'.",
        )
    try:
        import cloudpickle  # noqa: F401
    except ImportError as exc:
        return _error(
            ENVIRONMENT,
            f"cloudpickle is not installed for the remote Python {sys.executable} ({exc}); "
            "install it there (pip install cloudpickle) or use env='sync'.",
        )
    return None


def _unpickle_error(exc: BaseException) -> dict[str, Any]:
    tb = traceback.format_exc()
    if isinstance(exc, ModuleNotFoundError):
        return _error(
            ENVIRONMENT,
            f"the call needs module {exc.name!r}, which the remote Python ({sys.executable}) "
            "cannot import: install the package remotely (env='sync' does it for you), or, "
            "for your own code, make sure it is pickled by value.",
            tb,
        )
    return _error(UNPICKLE, f"could not unpickle the call on the remote side: {exc!r}", tb)


def _run_call(blob: bytes) -> dict[str, Any]:
    import cloudpickle

    try:
        fn, args, kwargs = cloudpickle.loads(blob)
    except BaseException as exc:
        return _unpickle_error(exc)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickled: bytes | None = cloudpickle.dumps(exc)
        except BaseException:
            pickled = None  # reported by type and repr instead
        return {
            "format": FORMAT,
            "kind": EXCEPTION,
            "exception": pickled,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "repr": repr(exc),
            "traceback": tb,
        }
    try:
        return {"format": FORMAT, "kind": VALUE, "value": cloudpickle.dumps(value)}
    except BaseException as exc:
        return _error(
            PICKLE_RESULT,
            f"the call returned a {type(value).__qualname__} that cannot be pickled: {exc!r}",
            traceback.format_exc(),
        )


def _run_initializer(envelope: dict[str, Any], state: _State) -> None:
    if state.initialized:
        return
    state.initialized = True
    blob = envelope.get("initializer")
    if blob is None:
        return
    import cloudpickle

    try:
        initializer, initargs = cloudpickle.loads(blob)
        initializer(*initargs)
    except BaseException as exc:
        state.initializer_failure = _error(
            INITIALIZER, f"the initializer raised {exc!r}", traceback.format_exc()
        )


def run_task(job_dir: str, task: int, state: _State, notify_fd: int | None = None) -> int:
    """Run every call of one task, writing one outcome file per call; return an exit code."""
    if os.path.exists(os.path.join(job_dir, CANCEL_NAME.format(task))):
        return 0  # cancelled while queued here: no outcome, the client knows
    try:
        with open(os.path.join(job_dir, INPUT_NAME.format(task)), "rb") as f:
            envelope = pickle.load(f)
        calls: list[tuple[int, bytes]] = envelope["calls"]
    except Exception as exc:
        print(f"remote_futures worker: cannot read task {task} in {job_dir}: {exc!r}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    _notify(notify_fd, f"S {task}")
    for entry in envelope.get("sys_path", ()):
        if entry not in sys.path:
            sys.path.append(entry)
    if envelope.get("code"):
        # The caller's own modules, uploaded beside this file; first, as the script's
        # directory is first on the caller's side.
        bundle = os.path.join(os.path.dirname(os.path.abspath(__file__)), CODE_DIR,
                              envelope["code"])
        if bundle not in sys.path:
            sys.path.insert(0, bundle)
    problem = _environment_problem(envelope)
    if problem is None:
        _run_initializer(envelope, state)
        problem = state.initializer_failure
    for index, blob in calls:
        outcome = problem if problem is not None else _run_call(blob)
        sys.stdout.flush()
        sys.stderr.flush()
        data = pickle.dumps(outcome, protocol=ENVELOPE_PROTOCOL)
        _write_atomic(os.path.join(job_dir, OUTCOME_NAME.format(index)), data)
        _notify(notify_fd, f"C {index}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``worker.py JOB_DIR --task N [--task M ...] [--notify-fd FD]``."""
    parser = argparse.ArgumentParser(prog="remote_futures worker")
    parser.add_argument("job_dir")
    parser.add_argument("--task", type=int, action="append", default=[])
    parser.add_argument(
        "--stdin-tasks", action="store_true",
        help="read task indices from stdin, one per line (the local transport's feed)",
    )
    parser.add_argument("--notify-fd", type=int, default=None)
    parser.add_argument(
        "--unpack", action="store_true", help=f"split {BUNDLE_NAME} into task files and exit"
    )
    args = parser.parse_args(argv)
    if args.unpack:
        return unpack_bundle(args.job_dir)
    if not args.task and not args.stdin_tasks:
        parser.error("give --task N, --stdin-tasks or --unpack")
    # Running as a file puts this file's directory first on sys.path; the user's modules must
    # not be shadowed by whatever else lives there.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]
    state = _State()
    tasks: Iterator[int] = iter(args.task)
    if args.stdin_tasks:
        tasks = _stdin_feed()
    for task in tasks:
        code = run_task(args.job_dir, task, state, args.notify_fd)
        _notify(args.notify_fd, f"T {task} {code}")
        if code:
            return code
    return 0


def unpack_bundle(job_dir: str) -> int:
    """Write each payload of the job's bundle to its ``task-<i>.in`` file."""
    path = os.path.join(job_dir, BUNDLE_NAME)
    try:
        with open(path, "rb") as f:
            payloads: dict[int, bytes] = pickle.load(f)
    except Exception as exc:
        print(f"remote_futures worker: cannot read {path}: {exc!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for index, payload in payloads.items():
        _write_atomic(os.path.join(job_dir, INPUT_NAME.format(index)), payload)
    os.remove(path)
    return 0


def _stdin_feed() -> Iterator[int]:
    """Task indices from stdin; the user's code gets /dev/null as stdin instead, as it would
    in a ProcessPoolExecutor child, so that it cannot swallow the feed."""
    feed = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for line in feed:
        if line.strip():
            yield int(line)


if __name__ == "__main__":
    sys.exit(main())
