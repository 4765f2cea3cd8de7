"""The persistent worker: a long-lived process that takes tasks over a pipe and runs their calls.

The local pool starts it through ``multiprocessing`` (``runpy.run_path`` of this file as the
``Process`` target), so that what ``multiprocessing`` knows how to hand to a child it starts --
a ``Queue``, ``Lock`` or ``Semaphore`` in ``initargs``, the parent's authentication key that
``Manager`` proxies need -- arrives exactly as with ``ProcessPoolExecutor``. Like ``worker.py``
it imports only the standard library and cloudpickle (it does not import the ``remote_futures``
package): the envelope format and the call runner's helpers come from ``worker.py`` beside it.

Messages on the connection (``Connection.send_bytes``), each one frame::

    parent -> worker   b"B" + flag(1) + bytes            a buffer of the task that follows
                       b"X" + key(8) + task payload     run a task (a ``task-<i>.in`` envelope)
                       b"K" + key(8)                     skip that task if not started yet
                       b"Q"                              exit once idle
    worker -> parent   b"H" + pid(8)                     hello, once
                       b"B" + flag(1) + bytes            a buffer of the outcome that follows
                       b"C" + index(8) + outcome         one call's outcome envelope
                       b"D" + key(8) + index(8) + outcome  the task's last call; the task ended
                       b"T" + key(8)                     the task ended (skipped)
                       b"O" + bytes                      what a call printed (remote hosts)
                       b"E" + bytes                      ... to stderr (``--capture-stderr``)
                       b"P" + stream(1) + index(8) + bytes  what a call printed to sys.stdout
                                                          (stream b"1") or sys.stderr (b"2"):
                                                          whole lines (live output) or all of
                                                          it at the call's end; index 2**64-1:
                                                          not printed by a call

``B`` frames (on a host's stream channel only) carry the large buffers of a call or a result
beside its pickle (``worker.dumps_value``): written from the sender's memory as they are, read
into a buffer of their own size (a ``bytes`` for a read-only one: flag ``r``; a ``bytearray``
otherwise: ``w``), never copied into a pickle or out of one.

Tasks run in the order they were sent, so the parent knows which one a worker is running (the
oldest it sent and has not heard the end of) without being told.

A function is unpickled once per worker and kept, keyed by a digest of its pickled bytes: the
calls of one function (pickled once by the client and embedded in every call) then cost their
arguments only, as module-level functions do with ``ProcessPoolExecutor``.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import sys
import threading
import traceback
import types
from typing import Any

_KEY = 8
#: The index of ``P`` frames printed outside any call (an initializer, a thread left running).
NO_CALL = (1 << 64) - 1
#: A live stream's unfinished line is sent anyway once it is this long; a call's output held
#: to its end is sent in pieces of this size (the memory held stays bounded).
_LINE_MAX = 64 * 1024
_HOLD_MAX = 1 << 20
#: Unpickled functions kept per worker (by their pickled bytes), most recently used last.
_FUNCTION_CACHE_SIZE = 32


def _load_protocol(path: str | None = None) -> types.ModuleType:
    """``worker.py`` (beside this file unless ``path`` says where), imported by path, not as
    part of the package."""
    name = "_remote_futures_worker_protocol"
    module = sys.modules.get(name)
    if module is not None:
        return module
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(name, path or os.path.join(here, "worker.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Functions:
    """Functions unpickled in this worker, keyed by a digest of their pickled bytes (LRU)."""

    def __init__(self) -> None:
        self._cache: collections.OrderedDict[bytes, Any] = collections.OrderedDict()

    def loads(self, blob: bytes) -> Any:
        # Keyed by a digest, so that the cache does not keep the pickled bytes themselves.
        key = hashlib.blake2b(blob, digest_size=20).digest()
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        value = pickle.loads(blob)
        if callable(value):  # only functions: other values may be mutated by a call
            self._cache[key] = value
            if len(self._cache) > _FUNCTION_CACHE_SIZE:
                self._cache.popitem(last=False)
        return value


class _CallUnpickler(pickle.Unpickler):
    """Unpickles a call, with the buffers that came beside it; the function inside it
    (``pickle.loads(<bytes>)``, as the client embeds it) comes from the per-worker cache."""

    functions = _Functions()

    def __init__(self, blob: Any, buffers: Any, proto: types.ModuleType) -> None:
        super().__init__(io.BytesIO(blob), buffers=buffers)
        self._proto = proto
        self._rebuilt: dict[int, tuple[Any, Any]] = {}

    def persistent_load(self, pid: Any) -> Any:
        found = self._rebuilt.get(id(pid))
        if found is not None and found[0] is pid:
            return found[1]
        value = self._proto.rebuild_buffer(pid)
        self._rebuilt[id(pid)] = (pid, value)
        return value

    def find_class(self, module: str, name: str) -> Any:
        if name == "loads" and module in ("_pickle", "pickle"):
            return self.functions.loads
        return super().find_class(module, name)


def run_call(
    blob: bytes, proto: types.ModuleType, buffers: Any = (), out_of_band: list[Any] | None = None
) -> dict[str, Any]:
    """Run one pickled call (``buffers``: those that came beside it); its outcome envelope (as
    ``worker.py`` writes it). Given ``out_of_band``, the result's large buffers are appended
    to it instead of being copied into the envelope (the envelope says how many)."""
    import cloudpickle

    try:
        fn, args, kwargs = _CallUnpickler(blob, buffers, proto).load()
    except BaseException as exc:
        result: dict[str, Any] = proto._unpickle_error(exc)
        return result
    # The call's arguments are its own now: the frames they were read into go with them.
    del blob, buffers
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickled: bytes | None = cloudpickle.dumps(exc)
        except BaseException:
            pickled = None
        return {
            "format": proto.FORMAT,
            "kind": proto.EXCEPTION,
            "exception": pickled,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "repr": repr(exc),
            "traceback": tb,
        }
    try:
        data, found = proto.dumps_value(value, out_of_band is not None)
        if out_of_band is not None:
            out_of_band += found
        return {"format": proto.FORMAT, "kind": proto.VALUE, "value": data, "buffers": len(found)}
    except BaseException as exc:
        error: dict[str, Any] = proto._error(
            proto.PICKLE_RESULT,
            f"the call returned a {type(value).__qualname__} that cannot be pickled: {exc!r}",
            traceback.format_exc(),
        )
        return error


class _Serialized:
    """A connection whose sends may come from several threads (a call's own threads print
    too): one message is written whole before the next."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send_bytes(self, data: bytes) -> None:
        with self._lock:
            self._conn.send_bytes(data)

    def send_parts(self, *parts: Any) -> None:
        with self._lock:
            if isinstance(self._conn, _StreamChannel):
                self._conn.send_parts(*parts)
            else:
                self._conn.send_bytes(b"".join(parts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _CallOutput(io.RawIOBase):
    """The bytes under ``sys.stdout`` or ``sys.stderr`` while calls run: sent to the parent
    as ``P`` frames tagged with the running call, whole lines at a time (``live``) or all at
    the call's end. ``fileno()`` is the process's own descriptor (what C code and child
    processes write to), and a process forked by a call writes there too: only this process
    may send frames on the connection."""

    def __init__(self, conn: Any, stream: int, fd: int, live: bool) -> None:
        super().__init__()
        self._conn = conn
        self._head = b"P" + str(stream).encode()
        self._fd = fd
        self._live = live
        self._pid = os.getpid()
        self._pending = bytearray()
        # The call's own threads write too, while the main thread ends the call.
        self._lock = threading.Lock()
        self.call = NO_CALL

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        size = len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes
        if os.getpid() != self._pid:
            os.write(self._fd, data)  # a forked child: not ours to frame
            return size
        with self._lock:
            self._pending += data
            if self._live:
                cut = self._pending.rfind(b"\n") + 1
                if cut:
                    self._send(cut)
                elif len(self._pending) > _LINE_MAX:
                    self._send(len(self._pending))
            elif len(self._pending) > _HOLD_MAX:
                self._send(len(self._pending))
        return size

    def end_call(self, following: int) -> None:
        """The call ended (its streams flushed): send what it left, and tag what comes next
        with ``following``."""
        with self._lock:
            if self._pending:
                self._send(len(self._pending))
            self.call = following

    def _send(self, cut: int) -> None:
        data = bytes(self._pending[:cut])
        del self._pending[:cut]
        try:
            self._conn.send_bytes(self._head + self.call.to_bytes(_KEY, "big") + data)
        except (OSError, ValueError):
            pass  # the parent went away: the main loop sees it


def _capture_output(conn: Any, live: bool) -> tuple[_CallOutput, _CallOutput]:
    """Point ``sys.stdout`` and ``sys.stderr`` at frames on ``conn`` (line-buffered, as on a
    terminal, so that a ``print`` leaves when it is made)."""
    _flush()
    captured = []
    for stream, fd, name in ((1, 1, "stdout"), (2, 2, "stderr")):
        raw = _CallOutput(conn, stream, fd, live)
        text = io.TextIOWrapper(
            io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace",
            line_buffering=True,
        )
        setattr(sys, name, text)
        captured.append(raw)
    return captured[0], captured[1]


def _redirect(fd: int, conn: Any) -> None:
    """Point this process's ``fd`` at the write end of a pipe the parent reads."""
    if conn is None:
        return
    os.dup2(conn.fileno(), fd)
    conn.close()


def serve(
    conn: Any,
    stdout: Any = None,
    stderr: Any = None,
    initializer: bytes | None = None,
    initargs: tuple[Any, ...] = (),
    *,
    protocol: str | None = None,
    code_dir: str | None = None,
    captured_stdout: int | None = None,
    captured_stderr: int | None = None,
    output: str | None = None,
) -> None:
    """Take tasks from ``conn`` until told to stop or the parent goes away.

    ``initializer`` is the cloudpickled initializer; ``initargs`` arrive as the start method
    delivered them (so multiprocessing's synchronisation objects work in them). ``protocol``
    is the path of ``worker.py``; ``code_dir`` holds the caller's code bundles (remote hosts);
    ``captured_stdout``, a file the calls' stdout goes to, is sent after each call (``O``);
    ``captured_stderr`` likewise for stderr (``E``), so that it arrives before the outcome.
    ``output`` (``"live"`` or ``"end"``; None: neither) sends what the calls print to
    ``sys.stdout``/``sys.stderr`` as ``P`` frames, line by line or at each call's end.
    """
    _redirect(1, stdout)
    _redirect(2, stderr)
    proto = _load_protocol(protocol)
    # A host's channel takes buffers beside the pickles (B frames); a local pipe does not.
    out_of_band = isinstance(conn, _StreamChannel)
    streams: tuple[_CallOutput, _CallOutput] | None = None
    if output in ("live", "end"):
        conn = _Serialized(conn)
        streams = _capture_output(conn, output == "live")
    conn.send_bytes(b"H" + os.getpid().to_bytes(_KEY, "big"))
    failure: dict[str, Any] | None = None
    if initializer is not None:
        try:
            import cloudpickle

            function = cloudpickle.loads(initializer)
            function(*initargs)
        except BaseException as exc:
            failure = proto._error(
                proto.INITIALIZER, f"the initializer raised {exc!r}", traceback.format_exc()
            )
        finally:
            _flush()
            if streams is not None:
                streams[0].end_call(NO_CALL)
                streams[1].end_call(NO_CALL)
    pending: collections.deque[tuple[bytes, memoryview, list[bytearray]]] = collections.deque()
    skipped: set[bytes] = set()
    envelope_initializer_done = False
    checked_environment = False

    def take(message: bytes) -> bool:
        kind = bytes(message[:1])
        if kind == b"X":
            # The payload as a view of the message: slicing it would copy it. The buffers
            # read since the previous task are this one's.
            frames = conn.take_frames() if out_of_band else []
            pending.append(
                (bytes(message[1 : 1 + _KEY]), memoryview(message)[1 + _KEY :], frames)
            )
        elif kind == b"K":
            skipped.add(bytes(message[1 : 1 + _KEY]))
        elif kind == b"Q":
            return False
        return True

    while True:
        try:
            # Read everything waiting (cancellations of tasks sent ahead among it), and block
            # only when there is nothing to run.
            while not pending or conn.poll(0):
                if not take(conn.recv_bytes()):
                    return
        except (EOFError, OSError):
            return  # the parent went away
        key, payload, frames = pending.popleft()
        if key in skipped:
            skipped.discard(key)
            conn.send_bytes(b"T" + key)
            continue
        envelope = pickle.loads(payload)
        payload.release()
        del payload  # the message it viewed is freed: the envelope holds what it needs
        for entry in envelope.get("sys_path", ()):
            if entry not in sys.path:
                sys.path.append(entry)
        if envelope.get("code") and code_dir:
            # The caller's own modules, uploaded as a zip: first, as the script's directory
            # is first on the caller's side.
            bundle = os.path.join(code_dir, envelope["code"])
            if bundle not in sys.path:
                sys.path.insert(0, bundle)
        if failure is None and not checked_environment:
            checked_environment = True
            failure = proto._environment_problem(envelope)
        problem = failure
        if (problem is None and not envelope_initializer_done
                and envelope.get("initializer") is not None):
            # An initializer the executor did not hand to the pool itself: once per worker.
            envelope_initializer_done = True
            try:
                import cloudpickle

                function, args = cloudpickle.loads(envelope["initializer"])
                function(*args)
            except BaseException as exc:
                failure = problem = proto._error(
                    proto.INITIALIZER, f"the initializer raised {exc!r}", traceback.format_exc()
                )
        # Each call's pickle and buffers are dropped as it starts running (popped), so that
        # a call's arguments live only as long as the call holds them.
        calls = list(proto.task_calls(envelope, frames))
        del envelope, frames
        calls.reverse()
        last = len(calls) - 1
        position = 0
        while calls:
            index, blob, buffers = calls.pop()
            if streams is not None:
                streams[0].call = streams[1].call = index
            out: list[Any] | None = [] if out_of_band else None
            outcome = problem if problem is not None else run_call(blob, proto, buffers, out)
            del blob, buffers
            _flush()
            if streams is not None:
                streams[0].end_call(NO_CALL)
                streams[1].end_call(NO_CALL)
            if captured_stdout is not None:
                printed = _take(captured_stdout)
                if printed:
                    conn.send_bytes(b"O" + printed)
            if captured_stderr is not None:
                printed = _take(captured_stderr)
                if printed:
                    conn.send_bytes(b"E" + printed)
            data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
            del outcome
            for buffer in out or ():
                _send(conn, b"B" + proto.frame_flag(buffer), buffer)
            del out
            # The last call's outcome also says the task is done: one message, not two.
            head = b"D" + key if position == last else b"C"
            _send(conn, head + index.to_bytes(_KEY, "big"), data)
            del data
            position += 1


def _send(conn: Any, head: bytes, body: Any) -> None:
    """Send ``head + body`` as one message, without joining them where the channel can write
    them one after the other."""
    if isinstance(conn, _StreamChannel | _Serialized):
        conn.send_parts(head, body)
    else:
        conn.send_bytes(head + body)


def _take(fd: int) -> bytes:
    """What was written to the file at ``fd`` since the last time, emptying it."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return b"".join(chunks)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


class _StreamChannel:
    """Messages framed by a 4-byte length on a pair of file descriptors (a worker on a remote
    host, fed over an SSH channel's stdin and stdout)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read = read_fd
        self._write = write_fd
        #: The bodies of the B frames read since the last :meth:`take_frames`.
        self._frames: list[Any] = []
        self._proto: types.ModuleType | None = None

    def poll(self, timeout: float) -> bool:
        import select

        return bool(select.select([self._read], [], [], timeout)[0])

    def _into(self, view: memoryview) -> None:
        """Fill ``view`` from the channel."""
        done, size = 0, len(view)
        while done < size:
            got = os.readv(self._read, [view[done : done + (16 << 20)]])
            if not got:
                raise EOFError
            done += got

    def _exactly(self, size: int) -> bytearray:
        # Read into a buffer of the message's size: no chunks to join into a second copy.
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            self._into(view)
        return buffer

    def recv_bytes(self) -> bytearray:
        """The next message; a B frame's body is kept apart (:meth:`take_frames`), in a buffer
        of its own (what the unpickled object will be), and ``b"B"`` returned."""
        size = int.from_bytes(self._exactly(4), "big")
        if not size:
            return bytearray()
        kind = self._exactly(1)
        if kind == b"B" and size >= 2:
            flag = bytes(self._exactly(1))
            if self._proto is None:
                self._proto = _load_protocol()
            body, view = self._proto.frame_buffer(size - 2, flag)
            try:
                self._into(view)
            finally:
                view.release()
            self._frames.append(body)
            return kind
        message = bytearray(size)
        message[0] = kind[0]
        with memoryview(message) as view:
            self._into(view[1:])
        return message

    def take_frames(self) -> list[Any]:
        """The B frames' bodies read since the last call, in order."""
        frames, self._frames = self._frames, []
        return frames

    def send_bytes(self, data: bytes) -> None:
        self.send_parts(data)

    def send_parts(self, *parts: Any) -> None:
        """Write one message, the parts (bytes-like) one after the other (never joined)."""
        views = [memoryview(p).cast("B") for p in parts]
        views = [memoryview(sum(len(v) for v in views).to_bytes(4, "big"))] + [
            v for v in views if len(v)
        ]
        while views:
            written = os.writev(self._write, views[:64])
            while written and views:
                if written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][written:]
                    written = 0


def main(argv: list[str] | None = None) -> int:
    """``worker_loop.py --serve [--protocol WORKER_PY] [--code-dir DIR] [--output live|end]``:
    take tasks framed on stdin, answer on stdout. What the calls write to the process's
    stdout (descriptor 1) goes to an unlinked file, sent as a frame after each call (stdout
    carries the frames); with ``--output``, what they print to ``sys.stdout``/``sys.stderr``
    is sent as ``P`` frames. Their stdin is /dev/null."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="remote_futures worker loop")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--code-dir", default=None)
    # Its stderr is a file that whoever started it reads after it died: what it printed
    # there is sent after each call (``E``), in order with the outcomes.
    parser.add_argument("--capture-stderr", action="store_true")
    parser.add_argument("--output", choices=("live", "end"), default=None)
    args = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # the work directory must not shadow the user's modules
    frames_in, frames_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        serve(_StreamChannel(frames_in, frames_out), protocol=args.protocol,
              code_dir=args.code_dir, captured_stdout=1,
              captured_stderr=2 if args.capture_stderr else None, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Started by the pool as ``runpy.run_path(<this file>, init_globals, "__rf_worker__")``.
if __name__ == "__rf_worker__" and "__rf_conn__" in globals():
    serve(
        globals()["__rf_conn__"],
        globals().get("__rf_stdout__"),
        globals().get("__rf_stderr__"),
        globals().get("__rf_initializer__"),
        tuple(globals().get("__rf_initargs__", ())),
        output=globals().get("__rf_output__"),
    )
