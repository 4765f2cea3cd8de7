"""The embedded default: a process pool on this machine, a drop-in for ``ProcessPoolExecutor``.

At most ``max_workers`` long-lived worker processes (:mod:`remote_futures.worker_loop`), started
on demand through a ``multiprocessing`` context (spawn unless ``mp_context`` says otherwise) and
reused across calls, jobs and ``map``s: the initializer runs once per worker, and a worker is
replaced after ``max_tasks_per_child`` tasks, as in the standard library. Because the workers are
``multiprocessing`` children, a ``Queue``/``Lock``/``Semaphore`` in ``initargs`` and ``Manager``
proxies as arguments work as they do with ``ProcessPoolExecutor``.

Calls and outcomes travel over each worker's ``multiprocessing`` pipe (nothing is written to
disk or ``/dev/shm``). A job granted N slots by the core is bound to at most N workers; each
bound worker is sent the job's next task ahead of time (when it is small), so that it never waits
for the event loop between tasks. The core's grants never exceed ``max_workers`` in all, so a
granted task always finds an idle worker, or room to start one: ``submit`` starts it now.

A worker that dies fails the call it was running with a
:class:`~remote_futures.errors.WorkerDiedError` (a ``BrokenProcessPool`` and a ``JobFailedError``
carrying the exit code or signal and the tail of its stderr), and the rest of that task's calls
with it; tasks it was sent but had not started go back to their job's queue, and the pool starts
a new worker when one is needed. The executor goes on.
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
import pickle
import runpy
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import anyio
import cloudpickle

from .. import worker, worker_loop
from .._source import dumps_function
from ..errors import ConfigurationError, SerializationError, WorkerDiedError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from .base import Transport

__all__ = ["LocalPoolOptions", "LocalPoolTransport"]

_KEY = 8
_STDERR_TAIL_BYTES = 16384
#: A task is sent to a worker still busy with another only if it is this small: it then fits
#: in the pipe's buffer, so the send cannot block on a worker that is busy writing a result.
_AHEAD_MAX_BYTES = 32 * 1024
#: How long ``close`` waits for workers to leave after being asked, before killing them.
_EXIT_GRACE = 5.0


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


@dataclasses.dataclass(eq=False)
class _PoolJob:
    handle: JobHandle
    queue: collections.deque[int]
    states: dict[int, TaskStatus]
    grant: int
    #: Each task's payload until it ended (the core drops the spec's copy once submitted; a
    #: task a dead worker never started is sent again).
    payloads: dict[int, bytes]
    outcomes: dict[int, bytes] = dataclasses.field(default_factory=dict)
    ready: list[int] = dataclasses.field(default_factory=list)
    dirty: set[int] = dataclasses.field(default_factory=set)
    workers: set[_Worker] = dataclasses.field(default_factory=set)
    cancelled: set[int] = dataclasses.field(default_factory=set)
    tails: dict[int, str] = dataclasses.field(default_factory=dict)

    def set_state(self, index: int, status: TaskStatus) -> None:
        self.states[index] = status
        self.dirty.add(index)


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    out: int
    err: int
    #: The job this worker serves, and the keys of the tasks it was sent, oldest first.
    job: _PoolJob | None = None
    sent: collections.deque[int] = dataclasses.field(default_factory=collections.deque)
    #: The key of the task it reported starting and has not finished.
    running: int | None = None
    #: Tasks sent in its life (for ``max_tasks_per_child``).
    tasks_taken: int = 0
    started_any: bool = False
    alive: bool = True
    tail: bytearray = dataclasses.field(default_factory=bytearray)
    decoders: tuple[Any, Any] = dataclasses.field(
        default_factory=lambda: (
            codecs.getincrementaldecoder("utf-8")(errors="replace"),
            codecs.getincrementaldecoder("utf-8")(errors="replace"),
        )
    )


class LocalPoolTransport(Transport):
    """A pool of long-lived local worker processes (see the module docstring)."""

    name = "local"
    Options = LocalPoolOptions
    options: LocalPoolOptions
    poll_interval = (0.5, 0.5)  # progress arrives by events; polling is only a safety net
    coalesce_window = 0.0  # a task starts on an idle worker at once: nothing to gather
    max_tasks_per_job = 1_000_000
    supports_throttle = True
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
        self._initializer: bytes | None = None
        self._initargs: tuple[Any, ...] = ()
        self._workers: list[_Worker] = []
        self._jobs: dict[JobHandle, _PoolJob] = {}
        #: key -> (job, task index) of every task sent to a worker and not ended.
        self._keys: dict[int, tuple[_PoolJob, int]] = {}
        self._next_key = 0
        self._count = 0
        self._changed = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

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
        self._closing = True
        workers, self._workers = self._workers, []
        for w in workers:
            self._unwatch(w)
            if w.alive and w.running is None and not w.sent:
                try:
                    w.conn.send_bytes(b"Q")
                except OSError:
                    pass
            elif w.alive:
                _kill(w.process)

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

    # --- submission ---------------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> JobHandle:
        """Bind the job to idle workers (starting them if needed) and send them its tasks."""
        self._count += 1
        handle = JobHandle(job_id=f"local-{self._count}", spec=job, location="")
        state = _PoolJob(
            handle,
            queue=collections.deque(task.index for task in job.tasks),
            states={task.index: TaskStatus(TaskState.PENDING) for task in job.tasks},
            grant=job.max_concurrent or len(job.tasks),
            payloads={task.index: task.payload for task in job.tasks},
        )
        self._jobs[handle] = state
        self._dispatch()
        return handle

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Let the job use more workers."""
        state = self._jobs.get(job)
        if state is None:
            return False
        state.grant = max(state.grant, max_concurrent)
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        """Give every job with queued tasks the workers its grant allows, and keep them fed."""
        if self._closing:
            return
        for job in list(self._jobs.values()):
            for bound in list(job.workers):
                self._feed(bound)
            while job.queue and len(job.workers) < job.grant:
                w = self._idle_worker()
                if w is None:
                    break
                w.job = job
                job.workers.add(w)
                self._feed(w)

    def _idle_worker(self) -> _Worker | None:
        for w in self._workers:
            if w.alive and w.job is None and not w.sent and not self._retired(w):
                return w
        if len(self._workers) < self.max_workers:
            return self._start_worker()
        return None

    def _retired(self, w: _Worker) -> bool:
        limit = self.options.max_tasks_per_child
        return limit is not None and w.tasks_taken >= limit

    def _feed(self, w: _Worker) -> None:
        """Send ``w`` its job's next tasks: one to run, and one ahead if it is small."""
        job = w.job
        while job is not None and job.queue and w.alive and not self._retired(w):
            if len(w.sent) >= 2:
                break
            index = job.queue[0]
            payload = job.payloads[index]
            if w.sent and (len(payload) > _AHEAD_MAX_BYTES or len(job.workers) < job.grant):
                break  # too big to queue behind a call, or another worker may take it
            job.queue.popleft()
            key = self._next_key = self._next_key + 1
            self._keys[key] = (job, index)
            w.sent.append(key)
            w.tasks_taken += 1
            try:
                w.conn.send_bytes(b"X" + key.to_bytes(_KEY, "big") + payload)
            except OSError:
                break  # it died: its exit is handled by the sentinel watch
        self._unbind_if_done(w)

    def _unbind_if_done(self, w: _Worker) -> None:
        job = w.job
        if job is not None and not w.sent and (not job.queue or self._retired(w) or not w.alive):
            job.workers.discard(w)
            w.job = None
        if w.alive and not w.sent and self._retired(w):
            try:
                w.conn.send_bytes(b"Q")
            except OSError:
                pass

    # --- workers ------------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        out_r, out_w = self._ctx.Pipe(duplex=False)
        err_r, err_w = self._ctx.Pipe(duplex=False)
        init_globals = {
            "__rf_conn__": child,
            "__rf_stdout__": out_w,
            "__rf_stderr__": err_w,
            "__rf_initializer__": self._initializer,
            "__rf_initargs__": self._initargs,
        }
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=runpy.run_path,
            args=(worker_loop.__file__, init_globals, "__rf_worker__"),
            name=f"remote_futures-worker-{len(self._workers) + 1}",
        )
        try:
            process.start()
        finally:
            for end in (child, out_w, err_w):
                end.close()
        out, err = os.dup(out_r.fileno()), os.dup(err_r.fileno())
        out_r.close()
        err_r.close()
        for fd in (out, err):
            os.set_blocking(fd, False)
        w = _Worker(process, parent, out, err)
        self._workers.append(w)
        assert self._loop is not None, "transport not open"
        self._loop.add_reader(parent.fileno(), self._on_messages, w)
        self._loop.add_reader(out, self._on_output, w, out, sys.stdout, 0)
        self._loop.add_reader(err, self._on_output, w, err, sys.stderr, 1)
        self._loop.add_reader(process.sentinel, self._on_exit, w)
        return w

    def _unwatch(self, w: _Worker) -> None:
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

    def _on_output(self, w: _Worker, fd: int, sink: IO[str], which: int) -> None:
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
            w.tail += chunk
            del w.tail[:-_STDERR_TAIL_BYTES]
        try:
            sink.write(w.decoders[which].decode(chunk))
            sink.flush()
        except (OSError, ValueError):
            pass  # the caller closed its stream; keep draining the pipe regardless

    def _on_messages(self, w: _Worker) -> None:
        try:
            while w.conn.poll(0):
                self._on_message(w, w.conn.recv_bytes())
        except (EOFError, OSError):
            if self._loop is not None:
                self._loop.remove_reader(w.conn.fileno())

    def _on_message(self, w: _Worker, message: bytes) -> None:
        kind = message[:1]
        if kind == b"C":
            index = int.from_bytes(message[1 : 1 + _KEY], "big")
            job = w.job
            if job is not None and job.handle in self._jobs:
                job.outcomes[index] = message[1 + _KEY :]
                job.ready.append(index)
                self._changed.set()
            return
        key = int.from_bytes(message[1 : 1 + _KEY], "big")
        found = self._keys.get(key)
        if kind == b"S":
            w.running = key
            w.started_any = True
            if found is not None:
                job, index = found
                job.set_state(index, TaskStatus(TaskState.RUNNING))
        elif kind == b"T":
            w.running = None
            if key in w.sent:
                w.sent.remove(key)
            self._keys.pop(key, None)
            if found is not None:
                job, index = found
                # The worker is free for others before the core learns that the task ended
                # (and grants its slot to another job).
                job.payloads.pop(index, None)
                self._feed(w)
                ended = TaskState.CANCELLED if index in job.cancelled else TaskState.COMPLETED
                job.set_state(index, TaskStatus(ended, exit_code=0))
            self._dispatch()
        self._changed.set()

    def _on_exit(self, w: _Worker) -> None:
        """A worker process ended: settle what it held, forget it, refill on demand."""
        if not w.alive:
            return
        self._on_messages(w)  # outcomes it wrote before it died
        for fd, sink, which in ((w.out, sys.stdout, 0), (w.err, sys.stderr, 1)):
            for _ in range(64):
                before = len(w.tail)
                self._on_output(w, fd, sink, which)
                if which == 0 or len(w.tail) == before:
                    break
        w.alive = False
        self._unwatch(w)
        w.process.join(1.0)
        code = w.process.exitcode
        tail = w.tail.decode(errors="replace")
        if w in self._workers:
            self._workers.remove(w)
        job = w.job
        sent, w.sent = list(w.sent), collections.deque()
        if job is not None:
            job.workers.discard(w)
            w.job = None
        running = w.running
        if running is None and sent and not w.started_any and not self._closing:
            # It died before starting anything (in start-up or the initializer): fail its
            # first task rather than hand it to the next worker forever.
            running = sent[0]
        for key in sent:
            found = self._keys.pop(key, None)
            if found is None:
                continue
            owner, index = found
            if owner.handle not in self._jobs:
                continue
            if key == running:
                self._fail_task(owner, index, w, code, tail)
            elif index in owner.cancelled:
                owner.set_state(index, TaskStatus(TaskState.CANCELLED))
                owner.payloads.pop(index, None)
            else:
                owner.queue.appendleft(index)  # never started: it runs elsewhere
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
        self._changed.set()
        self._dispatch()

    def _fail_task(
        self, job: _PoolJob, index: int, w: _Worker, code: int | None, tail: str
    ) -> None:
        sig = -code if code is not None and code < 0 else None
        exit_code = code if code is not None and code >= 0 else None
        if index in job.cancelled:
            job.set_state(index, TaskStatus(TaskState.CANCELLED, signal=sig))
            return
        what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {exit_code}"
        pid = w.process.pid
        error = WorkerDiedError(
            f"the worker process (pid {pid}) died ({what}) while running this call; "
            "the pool replaced it",
            job_id=job.handle.job_id,
            state=TaskState.FAILED.value,
            exit_code=exit_code,
            signal=sig,
            stderr_tail="\n".join(tail.splitlines()[-20:]),
        )
        outcome = {
            "format": worker.FORMAT,
            "kind": worker.EXCEPTION,
            "exception": cloudpickle.dumps(error),
            "type": "remote_futures.errors.WorkerDiedError",
            "repr": repr(error),
            "traceback": f"worker process {pid} ended with {what}\n",
        }
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        for call in job.handle.spec.tasks[index].call_indices:
            if call not in job.outcomes and call not in job.ready:
                job.outcomes[call] = data
                job.ready.append(call)
        job.tails[index] = tail
        job.payloads.pop(index, None)
        job.set_state(index, TaskStatus(TaskState.FAILED, exit_code=exit_code, signal=sig))

    # --- the core's view ----------------------------------------------------------------------

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """What changed since the previous poll."""
        statuses = {}
        for handle in jobs:
            state = self._jobs.get(handle)
            if state is not None:
                statuses[handle] = JobStatus(
                    {i: state.states[i] for i in state.dirty}, frozenset(state.ready)
                )
                state.dirty, state.ready = set(), []
        return statuses

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """The outcomes received (handed over once: they are dropped here)."""
        found: dict[JobHandle, dict[int, bytes]] = {}
        for handle, calls in wanted.items():
            state = self._jobs.get(handle)
            if state is None:
                continue
            got = found[handle] = {}
            for call in calls:
                data = state.outcomes.pop(call, None)
                if data is not None:
                    got[call] = data
        return found

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Drop queued tasks; tell workers to skip tasks sent ahead; kill a worker running a
        cancelled task (the pool replaces it)."""
        state = self._jobs.get(job)
        if state is None:
            return
        targets = set(state.states) if tasks is None else set(tasks)
        targets = {i for i in targets if not state.states[i].state.terminal}
        state.cancelled |= targets
        if state.queue:
            kept = collections.deque(i for i in state.queue if i not in targets)
            for index in state.queue:
                if index in targets:
                    state.set_state(index, TaskStatus(TaskState.CANCELLED))
                    state.payloads.pop(index, None)
            state.queue = kept
        for w in list(state.workers):
            for key in list(w.sent):
                found = self._keys.get(key)
                if found is None or found[1] not in targets:
                    continue
                if key == w.running:
                    _kill(w.process)
                else:
                    try:
                        w.conn.send_bytes(b"K" + key.to_bytes(_KEY, "big"))
                    except OSError:
                        pass
        self._changed.set()

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """What the worker that died running the task wrote to stderr last."""
        state = self._jobs.get(job)
        text = state.tails.get(task, "") if state else ""
        return "\n".join(text.splitlines()[-lines:])

    async def release(self, job: JobHandle) -> None:
        """Forget the job."""
        state = self._jobs.pop(job, None)
        if state is not None:
            state.queue.clear()
            state.outcomes.clear()
            state.payloads.clear()

    async def wait_for_change(self, timeout: float) -> None:
        """Return as soon as a worker reports progress, or after ``timeout``."""
        if not self._changed.is_set():
            with anyio.move_on_after(timeout):
                await self._changed.wait()
        self._changed = anyio.Event()


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):
        pass
