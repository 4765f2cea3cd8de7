"""The remote side: runs the calls of one or more array tasks from a job directory.

This file is uploaded and executed as a script (``python3 worker.py JOB_DIR --task N``), so it
imports only the standard library, and cloudpickle lazily, so that a missing cloudpickle or a
wrong Python version is reported as a clear outcome rather than a traceback from inside pickle.
The client imports it too, for the file names and envelope format below: one source of truth.

Job directory protocol (see DESIGN.md section 3)::

    task-<i>.in      stdlib pickle (protocol 4, 5 with buffers) of an input envelope, written by
                     the client
    call-<c>.out     stdlib pickle of an outcome envelope, one per call, written atomically here
    task-<i>.exit    the task's exit code, written by the job script (batch schedulers)
    task-<i>.stdout  what the task printed; task-<i>.stderr likewise

Every call gets an outcome file, whether it returned or raised; exit codes other than 0 are
reserved for infrastructure failure (the worker itself could not run).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import pickle
import sys
import traceback
from collections.abc import Iterator
from typing import Any

#: Version of the envelopes below; bumped on any incompatible change.
FORMAT = 2
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
#: reported instead of failing to unpickle. An envelope with buffers in it (see below) is
#: pickled with protocol 5 (Python 3.8+), so that they are written from where they are.
ENVELOPE_PROTOCOL = 4
#: A ``bytes``, ``bytearray`` or buffer (a numpy array's) of at least this size is pickled
#: *out of band*: the pickle refers to it, and it travels beside the pickle as it is, so that
#: it is never copied into a pickle nor out of one. Smaller ones stay inside (in band).
OUT_OF_BAND_BYTES = 64 * 1024
#: Objects (container items) looked at for such buffers before pickling a call or a result.
_SCAN_BUDGET = 256

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


# --- large buffers beside the pickle (protocol 5, out of band) ------------------------------
#
# A call's (or a result's) large buffers are not copied into its pickle: the pickle holds a
# reference (a persistent id, or the NEXT_BUFFER of a protocol-5 buffer such as a numpy
# array's) and the buffers travel beside it, in order. Where the pickle goes:
#
# * over a warm worker's channel, each buffer is a frame of its own, written from the caller's
#   memory and read into a buffer of its size on the other side (worker_loop.py);
# * into a file (``task-<i>.in``, ``call-<c>.out``), the buffers are written into the envelope
#   once (in band, protocol 5); the entry of a call says how many of them it has.
#
# ``bytes`` and ``bytearray`` are not buffers to the pickler (it copies them into the stream
# before any hook sees them), so a call or result holding a large one (or a memoryview) --
# directly or in lists, tuples, dicts and sets -- is pickled by a pickler whose
# ``persistent_id`` turns them into references to buffers.


def _wanted(obj: Any) -> bool:
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return len(obj) >= OUT_OF_BAND_BYTES
    return kind is memoryview and obj.nbytes >= OUT_OF_BAND_BYTES


def holds_buffers(obj: Any) -> bool:
    """Whether ``obj`` is, or holds within nested lists, tuples, dicts and sets, a large
    ``bytes``, ``bytearray`` or memoryview. Looks at a bounded number of items (a long list
    of numbers costs nothing): one found later is pickled in band, which is only slower."""
    stack = [obj]
    budget = _SCAN_BUDGET
    while stack and budget > 0:
        item = stack.pop()
        budget -= 1
        kind = type(item)
        if kind is bytes or kind is bytearray or kind is memoryview:
            if _wanted(item):
                return True
        elif kind in _CONTAINERS:
            items = list(itertools.islice(item.values() if kind is dict else item, budget))
            # The items' types first, at C speed: a list of numbers is not walked in Python.
            if not SCANNED_TYPES.isdisjoint(map(type, items)):
                stack += items
            else:
                budget -= len(items)
    return False


_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
#: The types :func:`holds_buffers` looks at or into: an object of none of them holds nothing.
SCANNED_TYPES = _CONTAINERS | {bytes, bytearray, memoryview}


def rebuild_buffer(pid: Any) -> Any:
    """The object a buffer reference (see :func:`dumps_value`) stands for; ``pid[1]`` is the
    buffer as delivered: the ``bytes``/``bytearray`` itself in band, or, out of band, the
    frame it arrived in (a ``bytearray``, read-only behind a memoryview if the original was)."""
    kind, data = pid[0], pid[1]
    if kind == "b":
        if type(data) is memoryview and type(data.obj) is bytes and data.nbytes == len(data.obj):
            return data.obj  # in band, behind a read-only view: the bytes themselves
        return data if type(data) is bytes else bytes(data)  # a frame: one copy, unavoidable
    if kind == "a":
        return data if type(data) is bytearray else bytearray(data)
    raise pickle.UnpicklingError(f"unknown buffer reference {kind!r}")


def _buffer_pickler_class() -> type:
    """A cloudpickle pickler that references large ``bytes``/``bytearray`` and memoryviews
    (built on first use: cloudpickle is imported lazily)."""
    global _BufferPickler
    if _BufferPickler is None:
        import cloudpickle

        class BufferPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                # One reference per object: the same buffer twice travels once and is
                # rebuilt as one object.
                self._pids: dict[int, tuple[tuple[Any, ...], Any]] = {}

            def persistent_id(self, obj: Any) -> Any:
                if not _wanted(obj):
                    return None
                found = self._pids.get(id(obj))
                if found is not None and found[1] is obj:
                    return found[0]
                pid: tuple[Any, ...]
                if type(obj) is memoryview:
                    # Arrives as bytes, as cloudpickle pickles a memoryview.
                    try:
                        flat = obj.cast("B") if obj.c_contiguous else None
                    except (TypeError, ValueError):
                        flat = None
                    if flat is None:
                        flat = memoryview(obj.tobytes())
                    pid = ("b", pickle.PickleBuffer(flat))
                else:
                    pid = ("b" if type(obj) is bytes else "a", pickle.PickleBuffer(obj))
                # obj kept too: an object a reducer made may go before the dump ends, and
                # another take its id.
                self._pids[id(obj)] = (pid, obj)
                return pid

        _BufferPickler = BufferPickler
    return _BufferPickler


_BufferPickler: type | None = None


def immutable(view: memoryview) -> bool:
    """Whether the memory behind ``view`` cannot change: that of a ``bytes``. (A read-only
    view of a bytearray, or a read-only numpy array, may still change under it.)"""
    return view.readonly and type(view.obj) is bytes


def dumps_value(
    value: Any, out_of_band: bool, snapshot: bool = False
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``value`` (cloudpickle, protocol 5); with ``out_of_band``, its large buffers are
    returned beside the pickle instead of inside it (see above). ``snapshot``: a buffer whose
    memory may change (all but a ``bytes``'s) is copied once rather than referenced, so that
    changing it after this returns does not change what is sent."""
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []

    def collect(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if not out_of_band or view.nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        if snapshot and not immutable(view):
            buffer = pickle.PickleBuffer(bytearray(view) if not view.readonly else bytes(view))
        buffers.append(buffer)
        return False

    stream = io.BytesIO()
    kind = _buffer_pickler_class() if holds_buffers(value) else cloudpickle.Pickler
    kind(stream, protocol=5, buffer_callback=collect).dump(value)
    return stream.getvalue(), buffers


#: The flag after ``B`` in a buffer's frame: the buffer is read-only (a ``bytes``), or not.
FRAME_READONLY = b"r"
FRAME_WRITABLE = b"w"


def frame_flag(buffer: Any) -> bytes:
    """The flag of a buffer's frame (see :func:`frame_buffer`)."""
    return FRAME_READONLY if memoryview(buffer).readonly else FRAME_WRITABLE


def frame_buffer(size: int, flag: bytes) -> tuple[Any, memoryview]:
    """Where to read a buffer's frame of ``size`` bytes: the object it becomes, and a writable
    view of its memory (release it once filled). A writable buffer becomes a bytearray (what a
    ``bytearray`` argument is then, without a copy). A read-only one (a ``bytes`` argument)
    becomes a new ``bytes`` filled in place where the interpreter allows it (CPython): the
    ``bytes`` the call gets is then the frame itself, neither zeroed first nor copied after,
    which is a fifth of the time a large argument takes on the worker."""
    if flag == FRAME_READONLY and size >= OUT_OF_BAND_BYTES:
        made = _new_bytes(size)
        if made is not None:
            return made
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


#: (PyBytes_FromStringAndSize, offset of a bytes object's data) once checked; False: not here.
_bytes_api: Any = None


def _new_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new, not yet filled ``bytes`` of ``size`` and a writable view of its data, or None
    where that cannot be done. Safe as done here: the object is new (size >= 2: not a shared
    one), nobody else holds it, and its hash is not computed before it is filled."""
    global _bytes_api
    if _bytes_api is None:
        _bytes_api = False
        try:
            import ctypes

            create = ctypes.pythonapi.PyBytes_FromStringAndSize
            create.restype = ctypes.py_object
            create.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
            offset = bytes.__basicsize__ - 1  # the data, after the header, ends the object
            probe = create(None, 64)
            view = memoryview((ctypes.c_char * 64).from_address(id(probe) + offset)).cast("B")
            view[:] = bytes(range(64))
            view.release()
            if type(probe) is bytes and probe == bytes(range(64)):
                _bytes_api = (create, offset, ctypes.c_char)
        except Exception:
            pass  # another interpreter, or no ctypes: bytearrays, copied into bytes
    if not _bytes_api or size < 2:
        return None
    create, offset, char = _bytes_api
    made = create(None, size)
    return made, memoryview((char * size).from_address(id(made) + offset)).cast("B")


class BufferUnpickler(pickle.Unpickler):
    """Unpickles what :func:`dumps_value` pickled, given the buffers that travelled beside."""

    def __init__(self, data: Any, buffers: Any = ()) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._rebuilt: dict[int, tuple[Any, Any]] = {}

    def persistent_load(self, pid: Any) -> Any:
        """The object a buffer reference stands for; a reference met twice (the same buffer
        twice in a call) gives the same object."""
        found = self._rebuilt.get(id(pid))
        if found is not None and found[0] is pid:
            return found[1]
        value = rebuild_buffer(pid)
        self._rebuilt[id(pid)] = (pid, value)
        return value


def task_calls(
    envelope: dict[str, Any], frames: Any = ()
) -> Iterator[tuple[int, bytes, list[Any]]]:
    """``(index, pickled call, its buffers)`` of each call of a task envelope. A call entry is
    ``(index, blob)``, or ``(index, blob, n)`` for a call with ``n`` buffers beside its pickle:
    the envelope's ``buffers`` in a file, else ``frames`` (read from a channel), in order."""
    pool = iter(envelope.get("buffers") or frames)
    for entry in envelope["calls"]:
        count = entry[2] if len(entry) > 2 else 0
        yield entry[0], entry[1], [next(pool) for _ in range(count)]


def _run_call(blob: bytes, buffers: Any = ()) -> dict[str, Any]:
    import cloudpickle

    try:
        fn, args, kwargs = BufferUnpickler(blob, buffers).load()
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
        # In band: the outcome goes into a file whole.
        return {"format": FORMAT, "kind": VALUE, "value": dumps_value(value, False)[0]}
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


def _wait_ack(fd: int | None) -> None:
    if fd is not None:
        try:
            os.read(fd, 1)
        except OSError:
            pass  # the reader went away: nothing more to wait for


def run_task(
    job_dir: str, task: int, state: _State, notify_fd: int | None = None,
    ack_fd: int | None = None,
) -> int:
    """Run every call of one task, writing one outcome file per call; return an exit code.

    With ``ack_fd``, each call waits before it starts for one byte there after announcing
    itself (``R <index>``): the reader takes in everything printed before (streams flushed),
    so that it can tell which call each line of output belongs to."""
    if os.path.exists(os.path.join(job_dir, CANCEL_NAME.format(task))):
        return 0  # cancelled while queued here: no outcome, the client knows
    try:
        with open(os.path.join(job_dir, INPUT_NAME.format(task)), "rb") as f:
            envelope = pickle.load(f)
        calls = list(task_calls(envelope))
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
    del envelope
    calls.reverse()  # taken from the end: each call's pickle and buffers go once it ran
    while calls:
        index, blob, buffers = calls.pop()
        if ack_fd is not None:
            # Which call what follows on stdout/stderr belongs to (a pod tags its log with
            # it); what came before (the initializer's, the last call's) is flushed first.
            sys.stdout.flush()
            sys.stderr.flush()
            _notify(notify_fd, f"R {index}")
            _wait_ack(ack_fd)
        outcome = problem if problem is not None else _run_call(blob, buffers)
        del blob, buffers
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
