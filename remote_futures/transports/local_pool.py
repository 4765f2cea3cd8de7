"""The embedded default: a process pool on this machine, a drop-in for ``ProcessPoolExecutor``.

At most ``max_workers`` long-lived worker processes (:mod:`remote_futures.worker_loop`), started
on demand through a ``multiprocessing`` context (spawn unless ``mp_context`` says otherwise) and
reused across calls, jobs and ``map``s: the initializer runs once per worker, and a worker is
replaced after ``max_tasks_per_child`` tasks, as in the standard library. Because the workers are
``multiprocessing`` children, a ``Queue``/``Lock``/``Semaphore`` in ``initargs`` and ``Manager``
proxies as arguments work as they do with ``ProcessPoolExecutor``.

Calls and outcomes travel over each worker's ``multiprocessing`` pipe (nothing is written to
disk or ``/dev/shm``), and so does what the calls print to ``sys.stdout``/``sys.stderr``, line
by line and tagged with the call (see :mod:`remote_futures.output`); what is written to the
worker's file descriptors themselves (C code, child processes) comes back over pipes of their
own and is copied to this process's streams.

Scheduling, and what happens when a worker dies (:class:`~remote_futures.errors.WorkerDiedError`,
a ``BrokenProcessPool``; the executor goes on), are shared with the other pools: see
:mod:`remote_futures.transports._pool`.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import runpy
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

import anyio

from .. import worker_loop
from .._source import dumps_function
from ..errors import ConfigurationError, SerializationError
from ..serialization import children_import_main
from ._pool import PoolTransport, PoolWorker

__all__ = ["LocalPoolOptions", "LocalPoolTransport"]

#: How long ``close`` waits for workers to leave after being asked, before killing them.
_EXIT_GRACE = 5.0
#: Messages up to this size are written to a worker's pipe directly: with at most one small
#: task queued ahead, they always fit in the pipe's buffer.
_DIRECT_SEND_BYTES = 32 * 1024 + 64


def _context(value: Any) -> multiprocessing.context.BaseContext:
    if value is None:
        return multiprocessing.get_context("spawn")
    if isinstance(value, str):
        try:
            return multiprocessing.get_context(value)
        except ValueError:
            raise ConfigurationError(
                f"unknown start method {value!r}; valid: "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            ) from None
    if isinstance(value, multiprocessing.context.BaseContext):
        return value
    raise ConfigurationError(
        f"must be a multiprocessing context or a start method name, got {value!r}"
    )


@dataclasses.dataclass(frozen=True)
class LocalPoolOptions:
    """Options of the ``local`` transport (``ProcessPoolExecutor``'s own)."""

    #: A ``multiprocessing`` context, or a start method name (``"spawn"``, ``"forkserver"``,
    #: ``"fork"``); default: spawn.
    mp_context: Any = None
    #: Replace a worker after it ran this many tasks (``map`` chunks); None: never.
    max_tasks_per_child: int | None = None

    @staticmethod
    def convert_mp_context(value: Any) -> multiprocessing.context.BaseContext:
        """A context from a context or a start method name."""
        return _context(value)

    @staticmethod
    def convert_max_tasks_per_child(value: Any) -> int | None:
        """A positive int, or None."""
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigurationError("max_tasks_per_child must be an integer")
        if value < 1:
            raise ConfigurationError("max_tasks_per_child must be >= 1")
        return value


class _LocalWorker(PoolWorker):
    """A worker process and its pipes."""

    def __init__(
        self,
        process: multiprocessing.process.BaseProcess,
        conn: multiprocessing.connection.Connection,
        out: int,
        err: int,
    ) -> None:
        super().__init__()
        self.process = process
        self.conn = conn
        self.out = out
        self.err = err
        self.decoders = (
            codecs.getincrementaldecoder("utf-8")(errors="replace"),
            codecs.getincrementaldecoder("utf-8")(errors="replace"),
        )
        #: Messages waiting behind a big one that a thread is writing (None: none is).
        self._backlog: collections.deque[bytes] | None = None
        self._send_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The process id."""
        return self.process.pid

    def send(self, *parts: bytes | memoryview) -> None:
        """Write one message to the worker's pipe, in order (a pipe message is one buffer:
        the parts are joined). A small one is written here (it
        fits in the pipe); a big one, and whatever follows it while it is being written, by a
        thread: the worker may not read for a while (a slow initializer, a call still
        running), and the event loop must not wait for it."""
        message = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        with self._send_lock:
            if self._backlog is not None:
                self._backlog.append(message)
                return
            if len(message) <= _DIRECT_SEND_BYTES:
                self.conn.send_bytes(message)
                return
            self._backlog = collections.deque([message])
        threading.Thread(
            target=self._drain_backlog, name="remote_futures-pool-send", daemon=True
        ).start()

    def _drain_backlog(self) -> None:
        while True:
            with self._send_lock:
                backlog = self._backlog
                if not backlog:
                    self._backlog = None
                    return
                message = backlog.popleft()
            try:
                self.conn.send_bytes(message)
            except (OSError, ValueError):
                with self._send_lock:
                    self._backlog = None
                return  # the worker is gone: its exit is reported by its sentinel

    def kill(self) -> None:
        """SIGKILL."""
        _kill(self.process)


class LocalPoolTransport(PoolTransport):
    """A pool of long-lived local worker processes (see the module docstring)."""

    name = "local"
    Options = LocalPoolOptions
    options: LocalPoolOptions
    #: The executor hands the initializer over as objects (see :meth:`set_initializer`).
    takes_initializer = True

    def __init__(self, options: LocalPoolOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self._ctx = _context(options.mp_context)
        if options.max_tasks_per_child is not None and self._ctx.get_start_method() == "fork":
            raise ConfigurationError(
                "max_tasks_per_child is incompatible with the 'fork' start method; "
                "use mp_context='spawn' or 'forkserver'"
            )
        self.max_tasks_per_worker = options.max_tasks_per_child
        self._initializer: bytes | None = None
        self._initargs: tuple[Any, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_by_reference = children_import_main(self._ctx)

    # --- configuration ------------------------------------------------------------------------

    def set_initializer(
        self, initializer: Callable[..., object] | None, initargs: Sequence[Any]
    ) -> None:
        """Run ``initializer(*initargs)`` once in each worker, before its first call.

        The initializer is cloudpickled (so a lambda or a ``__main__`` function works); the
        arguments are handed to the worker by the start method, as ``ProcessPoolExecutor``
        does, so multiprocessing's queues and locks may be among them.
        """
        if initializer is None:
            return
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        try:
            self._initializer = dumps_function(initializer)
        except Exception as exc:
            raise SerializationError(f"cannot pickle the initializer: {exc}") from exc
        self._initargs = tuple(initargs)

    @property
    def ships_user_code(self) -> bool:
        """False: workers get this process's ``sys.path`` and import the caller's modules."""
        return False

    @property
    def main_by_reference(self) -> bool:
        """True with spawn or forkserver when this program has a main script or module:
        multiprocessing imports it in every worker (as ``__mp_main__``), so its top-level
        functions travel by name, as with ``ProcessPoolExecutor``."""
        return self._main_by_reference

    def default_chunksize(self, n_calls: int) -> int:
        """One call per task, as ``ProcessPoolExecutor.map``."""
        return 1

    @property
    def describe(self) -> str:
        """``local pool (spawn)``."""
        return f"local pool ({self._ctx.get_start_method()})"

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Remember the event loop; workers start on demand."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Ask every worker to leave, kill those that do not, and reap them."""
        self.closing = True
        workers = [w for w in self.workers if isinstance(w, _LocalWorker)]
        self.workers = []
        for w in workers:
            self._unwatch(w)
            if w.alive and w.running is None and not w.sent:
                try:
                    w.send(b"Q")
                except OSError:
                    pass
            elif w.alive:
                w.kill()

        def reap() -> None:
            for w in workers:
                w.process.join(_EXIT_GRACE)
                if w.process.exitcode is None:
                    _kill(w.process)
                    w.process.join(_EXIT_GRACE)
                try:
                    w.conn.close()
                except OSError:
                    pass
                for fd in (w.out, w.err):
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reap)

    # --- workers ------------------------------------------------------------------------------

    def start_worker(self) -> PoolWorker | None:
        """Start a worker process (synchronously: a spawn takes milliseconds)."""
        parent, child = self._ctx.Pipe(duplex=True)
        out_r, out_w = self._ctx.Pipe(duplex=False)
        err_r, err_w = self._ctx.Pipe(duplex=False)
        init_globals = {
            "__rf_conn__": child,
            "__rf_stdout__": out_w,
            "__rf_stderr__": err_w,
            "__rf_initializer__": self._initializer,
            "__rf_initargs__": self._initargs,
            # Prints come back as frames tagged with their call ("off": held to the call's
            # end, then dropped here).
            "__rf_output__": "live" if self.output.live else "end",
        }
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=runpy.run_path,
            args=(worker_loop.__file__, init_globals, "__rf_worker__"),
            name=f"remote_futures-worker-{len(self.workers) + 1}",
        )
        try:
            process.start()
        except BaseException:
            for end in (parent, out_r, err_r):
                end.close()
            raise
        finally:
            for end in (child, out_w, err_w):
                end.close()
        out, err = os.dup(out_r.fileno()), os.dup(err_r.fileno())
        out_r.close()
        err_r.close()
        for fd in (out, err):
            os.set_blocking(fd, False)
        w = _LocalWorker(process, parent, out, err)
        assert self._loop is not None, "transport not open"
        self._loop.add_reader(parent.fileno(), self._on_messages, w)
        self._loop.add_reader(out, self._on_output, w, out, sys.stdout, 0)
        self._loop.add_reader(err, self._on_output, w, err, sys.stderr, 1)
        self._loop.add_reader(process.sentinel, self._on_exit, w)
        return w

    def _unwatch(self, w: _LocalWorker) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for fd in (w.conn.fileno() if not w.conn.closed else -1, w.out, w.err,
                   w.process.sentinel):
            if fd >= 0:
                try:
                    loop.remove_reader(fd)
                except (OSError, ValueError):
                    pass

    def _on_output(self, w: _LocalWorker, fd: int, sink: IO[str], which: int) -> None:
        """Forward a worker's output to ours (as a ProcessPoolExecutor child's would appear),
        keeping the tail of its stderr for error messages."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            return
        if which == 1:
            w.keep_tail(chunk)
        if not self.output.enabled:
            return
        try:
            sink.write(w.decoders[which].decode(chunk))
            sink.flush()
        except (OSError, ValueError):
            pass  # the caller closed its stream; keep draining the pipe regardless

    def _on_messages(self, w: _LocalWorker) -> None:
        try:
            while w.conn.poll(0):
                self.on_message(w, w.conn.recv_bytes())
        except (EOFError, OSError):
            if self._loop is not None:
                self._loop.remove_reader(w.conn.fileno())

    def _on_exit(self, w: _LocalWorker) -> None:
        """The worker process ended: read what it wrote before, then report it."""
        if not w.alive:
            return
        self._on_messages(w)  # outcomes it wrote before it died
        for fd, sink, which in ((w.out, sys.stdout, 0), (w.err, sys.stderr, 1)):
            for _ in range(64):
                before = len(w.tail)
                self._on_output(w, fd, sink, which)
                if which == 0 or len(w.tail) == before:
                    break
        self._unwatch(w)
        w.process.join(1.0)
        code = w.process.exitcode
        for fd in (w.out, w.err):
            try:
                os.close(fd)
            except OSError:
                pass
        w.out = w.err = -1
        try:
            w.conn.close()
        except OSError:
            pass
        sig = -code if code is not None and code < 0 else None
        self.worker_exited(w, code if sig is None else None, sig)


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):
        pass
