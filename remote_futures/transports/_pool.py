"""What every pool of persistent workers shares: binding jobs to workers, feeding them tasks,
reading their reports, and settling what a worker held when it dies.

A pool transport keeps long-lived workers (:mod:`remote_futures.worker_loop`) and sends them
tasks over a channel (a ``multiprocessing`` pipe locally, an SSH channel on a host). A job
granted N slots by the core is bound to at most N workers; a bound worker is sent the job's next
task ahead of time when it is small, no other worker could take it and the worker's last task was
short, so that it never waits for the event loop between short tasks. A task sent ahead is
running from then on (its futures can no longer be cancelled, as with ``ProcessPoolExecutor``'s
call queue), since the worker starts it without asking again. The core's grants never exceed
``max_workers`` in all, so a granted task always finds an idle worker or room to start one.

A worker that dies fails the call it was running with a
:class:`~remote_futures.errors.WorkerDiedError` (a ``BrokenProcessPool`` and a
``JobFailedError``: exit code or signal, the tail of its stderr), and the rest of that task's
calls with it; tasks it was sent but had not started go back to their job's queue. The pool
starts another worker when one is needed.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import pickle
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import cloudpickle

from .. import worker
from ..errors import WorkerDiedError
from ..jobs import JobHandle, JobSpec, JobStatus, Pickled, TaskState, TaskStatus, buffers_of
from ._deltas import take_changes
from .base import Transport

__all__ = ["PoolTransport", "PoolWorker", "head_size"]

KEY = 8
#: The call index of output printed outside any call (``worker_loop.NO_CALL``).
NO_CALL = (1 << 64) - 1
STDERR_TAIL_BYTES = 16384
#: A task is sent to a worker still busy with another only if it is this small: it then fits
#: in the channel's buffer, so the send cannot block on a worker that is busy writing a result.
AHEAD_MAX_BYTES = 32 * 1024
#: ... and only to a worker whose previous task took less than this (seconds). Committing a
#: task early saves a round trip between short calls, but makes it running (not cancellable)
#: for as long as the call before it runs: behind a long call that round trip costs nothing.
AHEAD_AFTER_SECONDS = 0.05


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
    workers: set[PoolWorker] = dataclasses.field(default_factory=set)
    cancelled: set[int] = dataclasses.field(default_factory=set)
    tails: dict[int, str] = dataclasses.field(default_factory=dict)

    def set_state(self, index: int, status: TaskStatus) -> None:
        self.states[index] = status
        self.dirty.add(index)


def head_size(kind: bytes) -> int:
    """The size of the head of a worker's message of this kind before its body (an outcome),
    or 0 for a message with no body."""
    if kind == b"B":
        return 2  # the kind and the flag (see worker.frame_buffer)
    if kind == b"C":
        return 1 + KEY
    if kind == b"D":
        return 1 + 2 * KEY
    return 0


class PoolWorker(abc.ABC):
    """One persistent worker, as the pool sees it; subclasses own the channel."""

    def __init__(self) -> None:
        #: The job this worker serves, and the keys of the tasks it was sent, oldest first.
        self.job: _PoolJob | None = None
        self.sent: collections.deque[int] = collections.deque()
        #: Tasks sent in its life (for ``max_tasks_per_child``).
        self.tasks_taken = 0
        self.alive = True
        self.tail = bytearray()
        #: The pid the worker reported itself (on its own host).
        self.reported_pid: int | None = None
        #: Buffers (B frames) received for the outcome that follows them.
        self.inbound: list[bytes] = []
        #: When the task it runs started, as seen from here; whether its last one was short.
        self.started_at = 0.0
        self.quick = False

    @property
    def running(self) -> int | None:
        """The key of the task it runs (or will run next): tasks run in the order sent."""
        return self.sent[0] if self.sent else None

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The worker's process id (on its host), if known."""

    @abc.abstractmethod
    def send(self, *parts: bytes | memoryview) -> None:
        """Send one message, the concatenation of ``parts``, without blocking for long;
        OSError if the channel is gone. A task's payload is passed as a part of its own, so
        that a channel able to write parts one after the other never copies it."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the worker now (its exit is then reported as usual)."""

    def keep_tail(self, chunk: bytes) -> None:
        """Keep the last bytes of what the worker wrote to stderr."""
        self.tail += chunk
        del self.tail[:-STDERR_TAIL_BYTES]


class PoolTransport(Transport):
    """The scheduling half of a pool transport. Subclasses start workers
    (:meth:`start_worker`) and report their messages (:meth:`on_message`) and exits
    (:meth:`worker_exited`)."""

    poll_interval = (0.5, 0.5)  # progress arrives by events; polling is only a safety net
    coalesce_window = 0.0  # a task starts on an idle worker at once: nothing to gather
    max_tasks_per_job = 1_000_000
    supports_throttle = True

    def __init__(self, options: Any, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.workers: list[PoolWorker] = []
        #: Workers being started (asynchronously), counted against ``max_workers``.
        self.starting = 0
        self._pool_jobs: dict[JobHandle, _PoolJob] = {}
        #: key -> (job, task index) of every task sent to a worker and not ended.
        self._keys: dict[int, tuple[_PoolJob, int]] = {}
        self._next_key = 0
        self._count = 0
        self._changed = anyio.Event()
        self.closing = False

    #: Replace a worker after this many tasks; None: never.
    max_tasks_per_worker: int | None = None

    @abc.abstractmethod
    def start_worker(self) -> PoolWorker | None:
        """Start a worker: return it if it can take tasks now, or None if it is being started
        (then call :meth:`worker_started` when it is, counting ``starting`` meanwhile)."""

    def worker_started(self, w: PoolWorker) -> None:
        """A worker started asynchronously is ready for tasks."""
        self.workers.append(w)
        self.dispatch()

    # --- submission ---------------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> JobHandle:
        """Bind the job to idle workers (starting them if needed) and send them its tasks."""
        self._count += 1
        handle = JobHandle(job_id=f"{self.name}-{self._count}", spec=job, location="")
        state = _PoolJob(
            handle,
            queue=collections.deque(task.index for task in job.tasks),
            states={task.index: TaskStatus(TaskState.PENDING) for task in job.tasks},
            grant=job.max_concurrent or len(job.tasks),
            payloads={task.index: task.payload for task in job.tasks},
        )
        self._pool_jobs[handle] = state
        self.dispatch()
        return handle

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Let the job use more workers."""
        state = self._pool_jobs.get(job)
        if state is None:
            return False
        state.grant = max(state.grant, max_concurrent)
        self.dispatch()
        return True

    def dispatch(self) -> None:
        """Give every job with queued tasks the workers its grant allows, and keep them fed."""
        if self.closing:
            return
        for job in list(self._pool_jobs.values()):
            for bound in list(job.workers):
                self._feed(bound)
            while job.queue and len(job.workers) < job.grant:
                w = self._idle_worker()
                if w is None:
                    break
                w.job = job
                job.workers.add(w)
                self._feed(w)

    def _idle_worker(self) -> PoolWorker | None:
        for w in self.workers:
            if w.alive and w.job is None and not w.sent and not self._retired(w):
                return w
        if len(self.workers) + self.starting < self.max_workers:
            try:
                started = self.start_worker()
            except Exception as exc:
                self.fail_waiting(exc)
                return None
            if started is not None:
                self.workers.append(started)
            return started
        return None

    def fail_waiting(self, exc: BaseException) -> None:
        """A worker could not be started: if no worker is left to run them, fail the tasks
        that wait for one (they would wait forever), saying why. With workers left, the tasks
        wait for them, and the next dispatch tries again."""
        if any(w.alive for w in self.workers) or self.starting:
            return
        message = f"could not start a worker: {exc!r}"
        for job in list(self._pool_jobs.values()):
            while job.queue:
                index = job.queue.popleft()
                job.payloads.pop(index, None)
                job.tails[index] = message
                job.set_state(index, TaskStatus(TaskState.FAILED, raw_state=message))
        self._changed.set()

    def _retired(self, w: PoolWorker) -> bool:
        limit = self.max_tasks_per_worker
        return limit is not None and w.tasks_taken >= limit

    def _feed(self, w: PoolWorker) -> None:
        """Send ``w`` its job's next tasks: one to run, and one ahead if it is small."""
        job = w.job
        while job is not None and job.queue and w.alive and not self._retired(w):
            if len(w.sent) >= 2:
                break
            index = job.queue[0]
            payload = job.payloads[index]
            # A payload's buffers go before it, each a frame of its own, sent from where it is.
            buffers = [memoryview(buffer).cast("B") for buffer in buffers_of(payload)]
            size = len(payload) + sum(len(buffer) for buffer in buffers)
            if w.sent and (
                size > AHEAD_MAX_BYTES or len(job.workers) < job.grant or not w.quick
            ):
                break  # too big to queue, another worker may take it, or calls are long
            job.queue.popleft()
            if w.sent and self.claim is not None and not self.claim(job.handle.spec.name, index):
                # Every call of it was cancelled: a worker told to skip it later might have
                # started it already (the skip crosses the channel behind the task's end).
                job.set_state(index, TaskStatus(TaskState.CANCELLED))
                job.payloads.pop(index, None)
                self._changed.set()
                continue
            key = self._next_key = self._next_key + 1
            self._keys[key] = (job, index)
            if not w.sent:
                w.started_at = time.monotonic()
                # An idle worker starts it at once. A task sent ahead is claimed above (its
                # futures are running from then on, as a ProcessPoolExecutor's call queue's);
                # it shows as running when the worker finishes the one before.
                job.set_state(index, TaskStatus(TaskState.RUNNING))
                # Tell the core now: a worker that joined later (a pilot, an SSH worker that
                # connected) is fed outside any poll, which would see it only at the next
                # safety poll (up to poll_interval later).
                self._changed.set()
            w.sent.append(key)
            w.tasks_taken += 1
            try:
                for buffer in buffers:
                    w.send(b"B" + worker.frame_flag(buffer), buffer)
                w.send(b"X" + key.to_bytes(KEY, "big"), payload)
            except OSError:
                break  # it died: its exit is reported separately
            finally:
                del buffers
        self._unbind_if_done(w)

    def _unbind_if_done(self, w: PoolWorker) -> None:
        job = w.job
        if job is not None and not w.sent and (not job.queue or self._retired(w) or not w.alive):
            job.workers.discard(w)
            w.job = None
        if w.alive and not w.sent and self._retired(w):
            try:
                w.send(b"Q")
            except OSError:
                pass

    # --- what workers report ------------------------------------------------------------------

    def on_message(self, w: PoolWorker, message: bytes, body: bytes | None = None) -> None:
        """One message from a worker (see :mod:`remote_futures.worker_loop`). A channel that
        reads an outcome's head (:func:`head_size`) apart from its body passes them apart:
        the body is then kept as it is, not sliced into a copy."""
        kind = message[:1]
        if kind == b"B":
            # A buffer of the outcome that follows (see worker_loop).
            w.inbound.append(message[2:] if body is None else body)
            return
        if kind == b"C" or kind == b"D":
            start = 1 + KEY if kind == b"D" else 1
            index = int.from_bytes(message[start : start + KEY], "big")
            job = w.job
            data = message[start + KEY :] if body is None else body
            if w.inbound:
                # The envelope as plain bytes (small: the result's buffers are apart).
                data = Pickled.of(bytes(data), w.inbound)
                w.inbound = []
            if job is not None and job.handle in self._pool_jobs:
                job.outcomes[index] = data
                job.ready.append(index)
                self._changed.set()
            del data
            if kind == b"C":
                return
            kind = b"T"
        if kind == b"P":
            self.on_printed(w, message)
            return
        key = int.from_bytes(message[1 : 1 + KEY], "big")
        if kind == b"O":
            self.on_output(w, message[1:])
            return
        if kind == b"H":
            w.reported_pid = key  # hello: the worker's pid on its host
            return
        found = self._keys.get(key)
        if kind == b"T":
            if key in w.sent:
                w.sent.remove(key)
            now = time.monotonic()
            w.quick = now - w.started_at < AHEAD_AFTER_SECONDS
            w.started_at = now  # the task sent ahead, if any, starts now
            self._keys.pop(key, None)
            following = self._keys.get(w.sent[0]) if w.sent else None
            if following is not None and following[1] not in following[0].cancelled:
                following[0].set_state(following[1], TaskStatus(TaskState.RUNNING))
            if found is not None:
                job, index = found
                job.payloads.pop(index, None)
                # The worker is free for others before the core learns that the task ended
                # (and grants its slot to another job).
                self._feed(w)
                ended = TaskState.CANCELLED if index in job.cancelled else TaskState.COMPLETED
                job.set_state(index, TaskStatus(ended, exit_code=0))
            self.dispatch()
        self._changed.set()

    def on_printed(self, w: PoolWorker, message: bytes) -> None:
        """What a call printed to ``sys.stdout``/``sys.stderr`` (a ``P`` frame), forwarded
        tagged with the call; stderr's is also kept for the error of a worker that dies."""
        stream = 2 if message[1:2] == b"2" else 1
        index = int.from_bytes(message[2 : 2 + KEY], "big")
        data = bytes(message[2 + KEY :])
        if stream == 2:
            w.keep_tail(data)
        job = w.job
        self.output.forward(
            stream, job.handle.job_id if job is not None else "",
            None if index == NO_CALL or job is None else index, data,
        )

    def on_output(self, w: PoolWorker, data: bytes) -> None:
        """What a call printed to stdout (workers that cannot share a pipe with us): copied
        to this process's stdout, as a ProcessPoolExecutor child's output would appear."""
        if not self.output.enabled:
            return
        try:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def worker_exited(self, w: PoolWorker, code: int | None, sig: int | None) -> None:
        """A worker ended (``code``: its exit code, ``sig``: the signal that killed it):
        settle what it held, forget it, refill on demand."""
        if not w.alive:
            return
        w.alive = False
        tail = w.tail.decode(errors="replace")
        if w in self.workers:
            self.workers.remove(w)
        job = w.job
        sent, w.sent = list(w.sent), collections.deque()
        if job is not None:
            job.workers.discard(w)
            w.job = None
        # The oldest task it was sent is the one it ran; if it died before running anything
        # (in start-up or the initializer), that task fails too, rather than going to the next
        # worker forever.
        running = sent[0] if sent else None
        for key in sent:
            found = self._keys.pop(key, None)
            if found is None:
                continue
            owner, index = found
            if owner.handle not in self._pool_jobs:
                continue
            if key == running:
                self._fail_task(owner, index, w, code, sig, tail)
            elif index in owner.cancelled:
                owner.set_state(index, TaskStatus(TaskState.CANCELLED))
                owner.payloads.pop(index, None)
            else:
                owner.queue.appendleft(index)  # never started: it runs elsewhere
        if w.reported_pid is None and not self.closing:
            # It never got as far as saying hello (no interpreter, a broken environment): the
            # next one would fare no better, so do not spend a task on each attempt.
            said = "\n".join(tail.splitlines()[-10:])
            self.fail_waiting(RuntimeError(
                f"the worker exited during start-up (exit code {code}, signal {sig})"
                + (f"; it said:\n{said}" if said else "")
            ))
        self._changed.set()
        self.dispatch()

    def _fail_task(
        self, job: _PoolJob, index: int, w: PoolWorker, code: int | None, sig: int | None,
        tail: str,
    ) -> None:
        if index in job.cancelled:
            job.set_state(index, TaskStatus(TaskState.CANCELLED, signal=sig))
            job.payloads.pop(index, None)
            return
        if sig:
            try:
                what = f"signal {signal.Signals(sig).name}"
            except ValueError:
                what = f"signal {sig}"
        elif code is not None:
            what = f"exit code {code}"
        else:
            what = "its channel closed"
        error = WorkerDiedError(
            f"the worker process (pid {w.pid}) died ({what}) while running this call; "
            "the pool replaced it",
            job_id=job.handle.job_id,
            state=TaskState.FAILED.value,
            exit_code=code,
            signal=sig,
            stderr_tail="\n".join(tail.splitlines()[-20:]),
        )
        outcome = {
            "format": worker.FORMAT,
            "kind": worker.EXCEPTION,
            "exception": cloudpickle.dumps(error),
            "type": "remote_futures.errors.WorkerDiedError",
            "repr": repr(error),
            "traceback": f"worker process {w.pid} ended with {what}\n",
        }
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        for call in job.handle.spec.tasks[index].call_indices:
            if call not in job.outcomes and call not in job.ready:
                job.outcomes[call] = data
                job.ready.append(call)
        job.tails[index] = tail
        job.payloads.pop(index, None)
        job.set_state(index, TaskStatus(TaskState.FAILED, exit_code=code, signal=sig))

    # --- the core's view ----------------------------------------------------------------------

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """What changed since the previous poll."""
        return take_changes(jobs, self._pool_jobs)

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """The outcomes received (handed over once: they are dropped here)."""
        found: dict[JobHandle, dict[int, bytes]] = {}
        for handle, calls in wanted.items():
            state = self._pool_jobs.get(handle)
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
        state = self._pool_jobs.get(job)
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
                    w.kill()
                else:
                    try:
                        w.send(b"K" + key.to_bytes(KEY, "big"))
                    except OSError:
                        pass
        self._changed.set()

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """What the worker that died running the task wrote to stderr last."""
        state = self._pool_jobs.get(job)
        text = state.tails.get(task, "") if state else ""
        return "\n".join(text.splitlines()[-lines:])

    async def release(self, job: JobHandle) -> None:
        """Forget the job."""
        state = self._pool_jobs.pop(job, None)
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
