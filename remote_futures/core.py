"""The async core: the loop that owns a call's life, from queueing to its future's result.

The decisions live in pure modules: :mod:`~remote_futures.planning` turns requests into jobs,
:mod:`~remote_futures.ledger` keeps per-call books and applies what a transport reports. This
module only runs the loops, owns admission (the one limiter of ``max_workers`` task slots) and
does the I/O. Data flow (compare CPython's ``concurrent/futures/process.py``)::

    caller thread                      event-loop thread (this module)
    -------------                      --------------------------------------------------------
    RemoteExecutor.submit/map
      pickle fn once, each call's args
      enqueue(Request) ----------->    _queue
                                       _dispatch_loop: plan_jobs (coalesce submits, split at
                                         the array limit) -> _planned
                                       _admit: while slots are free, grant the oldest planned
                                         job min(tasks, free) slots (throttling transports) or
                                         carve off as many tasks as fit (the others);
                                         encode_job -> transport.submit(JobSpec): started now,
                                         or raise -> its calls fail, its slots come back
                                       _poll_loop: ONE transport.poll(all jobs) per cycle;
                                         ledger.apply_status(delta) ->
                                           task seen after PENDING -> future running
                                           task terminal -> its slots come back -> _admit
                                           outcome ready -> fetch, decode, set_result/exception
                                           task ended, calls open -> JobFailedError (+stderr)
                                         every call settled -> transport.release(job)
    future.cancel() -------------->    _on_cancel: drop it from the books; cancel its task in
                                         the scheduler once nothing is wanted from it

Every future is settled exactly once, by this thread; infrastructure failure (the transport
cannot open, poll or submit any more), or anything raised on this thread that should not have
been, settles every unsettled future with an error and marks the engine broken.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc

from .errors import (
    BrokenRemoteExecutor,
    JobFailedError,
    RemoteFuturesError,
    RemoteTraceback,
    TransportError,
    WorkerDiedError,
)
from .jobs import JobHandle, TaskState
from .ledger import Call, Job, Task, apply_status
from .planning import Request, drop_cancelled, encode_job, plan_jobs, take_tasks
from .resources import Resources
from .retry import Attempt, RetryPolicy, annotate, describe_failure
from .serialization import InitializerFailed, decode_outcome
from .transports.base import Transport

__all__ = ["Call", "Engine", "EngineObserver", "RemoteFuture", "Request"]

log = logging.getLogger("remote_futures")

T = TypeVar("T")

#: Consecutive failed polls after which the transport is considered gone.
_MAX_POLL_FAILURES = 5
#: The first poll after a submission comes this soon, then the interval doubles up to the
#: transport's own: a short job is seen finished soon after it does.
_FIRST_POLL = 0.1
#: At shutdown, submissions in flight get this long to return (so that a job the scheduler
#: accepted is known and can be cancelled), queued cancellations and clean-ups this long.
_SUBMIT_GRACE = 3.0
_CANCEL_GRACE = 60.0
_RELEASE_GRACE = 30.0
#: How many times a grouped submit is queued again because an earlier call of its task ended
#: the task's process before it started.
_MAX_RERUNS = 2


class RemoteFuture(concurrent.futures.Future[T]):
    """A ``concurrent.futures.Future`` that can also be awaited in a running asyncio loop.

    Cancelling the awaiting asyncio task cancels this future too (if it is still pending).
    """

    #: The engine and the call behind a pending future; cleared when the core settles it, so a
    #: done future keeps nothing else alive.
    _rf_hook: tuple[Engine, Call] | None = None

    def __await__(self) -> Any:
        return asyncio.wrap_future(self).__await__()

    def cancel(self) -> bool:
        """Cancel the call if it is not running yet (as ``concurrent.futures``); the core then
        forgets it, and cancels its task in the scheduler once nothing is wanted from it."""
        if not super().cancel():
            return False
        hook, self._rf_hook = self._rf_hook, None
        if hook is not None:
            hook[0].call_cancelled(hook[1])
        return True


class EngineObserver(Protocol):
    """Told what the engine does (the session ledger); called on the loop thread, so each
    method must only take note and return at once."""

    def job_submitted(self, job: Job, handle: JobHandle) -> None:
        """The transport started ``job`` (its calls are numbered)."""

    def call_settled(self, call: Call, ok: bool) -> None:
        """``call``'s future got its result (``ok``) or an exception."""

    def job_released(self, handle: JobHandle) -> None:
        """Every call of the job was settled; the transport was told to forget it."""


@dataclasses.dataclass(eq=False)
class _Resend:
    """What running a call again needs (its pickled call, the caller's code, its resources),
    and its failed attempts so far. Kept only when the executor has ``retries``."""

    blob: bytes
    code: Any
    resources: Resources
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    #: Times the call was queued again because an earlier call of its task ended the task.
    reruns: int = 0


class Engine:
    """Drives one transport. Created in the facade; :meth:`run` runs on the event loop."""

    def __init__(
        self,
        transport: Transport,
        *,
        initializer: bytes | None = None,
        sys_path: Sequence[str] = (),
        retry: RetryPolicy | None = None,
    ) -> None:
        self.transport = transport
        transport.claim = self._claim
        #: Jobs by their spec's name, from just before submission until release (``_claim``).
        self._by_name: dict[str, Job] = {}
        self._retry = retry or RetryPolicy()
        #: Calls that may run again (``retries``): what a resubmission needs, by call.
        self._resend: dict[Call, _Resend] = {}
        #: Calls after the first of a task of grouped submits: what running them again needs
        #: if an earlier call of the task ends its process before they start.
        self._unstarted: dict[Call, _Resend] = {}
        #: Calls queued again that way, and how many times so far.
        self._reruns: dict[Call, int] = {}
        self._initializer = initializer
        self._sys_path = list(sys_path)
        self._queue: collections.deque[Request] = collections.deque()
        #: Jobs planned but not admitted yet (waiting for free slots), oldest first.
        self._planned: collections.deque[Job] = collections.deque()
        self._active: dict[JobHandle, Job] = {}
        self._submitting: set[Job] = set()
        #: Task slots not granted to any job: the one place ``max_workers`` is enforced.
        self._free = transport.max_workers
        #: Jobs whose grant is below their unended tasks (candidates for ``raise_throttle``).
        self._throttled: dict[Job, None] = {}
        #: Jobs with outcomes reported ready and not read yet.
        self._has_ready: dict[Job, None] = {}
        #: Tasks that ended with calls still open (explained with the scheduler's story).
        self._ended: list[tuple[Job, Task]] = []
        #: Calls handed over and not settled nor cancelled yet.
        self._unsettled = 0
        self._wake = anyio.Event()
        self._poll_now = anyio.Event()
        self._fast_poll = False
        #: Cancellations to carry out in the scheduler, queued by plain loop callbacks (which
        #: cannot start tasks) and carried out by ``_cancel_loop``.
        self._cancels: list[tuple[JobHandle, list[int] | None]] = []
        self._cancel_wake = anyio.Event()
        self._stop_requested = anyio.Event()
        self._stopping = False
        self._stopped = anyio.Event()
        self._submitted = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._prepare_scope: anyio.CancelScope | None = None
        #: Set once the executor can no longer run work; read by the facade's ``submit``.
        self.broken: BrokenRemoteExecutor | None = None
        #: Told of submissions, settlements and releases (the session ledger).
        self.observer: EngineObserver | None = None
        #: False when re-attaching to jobs a dead client left: no environment to prepare,
        #: nothing to submit, and stopping early leaves the jobs running (a detach).
        self.prepare_transport = True
        self.cancel_on_stop = True
        #: Releases in flight (a job directory being removed): shutdown waits for them.
        self._releasing = 0

    # --- called from the facade ---------------------------------------------------------------

    def enqueue(self, request: Request) -> None:
        """Queue work (loop thread). Also hooks each future's cancellation into the core."""
        calls = [call for task in request.tasks for call in task]
        if self.broken is not None or self._stopping:
            error = self.broken or BrokenRemoteExecutor("the executor is shutting down")
            for call in calls:
                _settle(call.future, exception=error)
                call.forget()
            return
        self._unsettled += len(calls)
        if self._idle.is_set():
            self._idle = anyio.Event()
        for call in calls:
            future = call.future
            assert isinstance(future, RemoteFuture)
            future._rf_hook = (self, call)
            if future.cancelled():  # cancelled before the hook was set: count it out now
                future._rf_hook = None
                self._count_out(call)
        self._queue.append(request)
        self._wake.set()

    def call_cancelled(self, call: Call) -> None:
        """A future was cancelled (any thread): update the books on the loop thread."""
        if threading.get_ident() == self._loop_thread:
            self._on_cancel(call)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_cancel, call)
        except RuntimeError:
            pass  # the loop is closing: nothing is left to cancel remotely

    def cancel_pending(self) -> None:
        """Cancel every future that is not running yet (``shutdown(cancel_futures=True)``).
        Runs on the loop thread, so each cancellation is booked directly, not scheduled."""
        calls = [call for request in self._queue for task in request.tasks for call in task]
        calls += [call for job in self._planned for task in job.tasks for call in task.calls]
        for job in [*self._submitting, *self._active.values()]:
            calls += job.open_calls()
        cancel = concurrent.futures.Future.cancel  # the hook's work is done right here
        for call in calls:
            future = call.future
            if isinstance(future, RemoteFuture) and cancel(future):
                future._rf_hook = None
                self._on_cancel(call)

    def adopt(self, jobs: Sequence[Job]) -> None:
        """Take over jobs already running (loop thread): jobs a dead client submitted, with a
        fresh future per call and a handle naming the job. They are polled, their outcomes
        fetched and the jobs released as if this engine had submitted them; they hold no
        task slots (the scheduler admitted them long ago)."""
        for job in jobs:
            assert job.handle is not None
            for task in job.tasks:
                for call in task.calls:
                    call.job, call.task = job, task
                    job.by_index[call.index] = call
                    future = call.future
                    if isinstance(future, RemoteFuture):
                        future._rf_hook = (self, call)
            job.unsettled = len(job.by_index)
            job.unended = len(job.tasks)
            job.grant = 0
            self._unsettled += job.unsettled
            self._active[job.handle] = job
        if self._unsettled > 0 and self._idle.is_set():
            self._idle = anyio.Event()
        self._fast_poll = True
        self._poll_now.set()

    async def wait_idle(self) -> None:
        """Wait until every call handed over so far is settled or cancelled."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the loops and close the transport; wait until :meth:`run` has finished."""
        self._stop_requested.set()
        if self._prepare_scope is not None:
            self._prepare_scope.cancel()
        await self._stopped.wait()

    @property
    def active_jobs(self) -> int:
        """Submitted (or adopted) jobs not released yet, or being released."""
        return len(self._active) + self._releasing

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is still going (the facade refuses work once it is not)."""
        return not self._stopped.is_set()

    # --- the loops ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the transport, prepare it, then dispatch and poll until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        task_status.started()
        try:
            try:
                # Entered in this task and exited in it, around the loops' task group and with
                # no scope in between, so that a transport may hold a task group of its own.
                async with self.transport:
                    # Opening may fit max_workers to the cluster (none given): nothing was
                    # admitted yet, so every slot is free.
                    self._free = self.transport.max_workers
                    # stop() cancels a long preparation (an environment sync): a shutdown
                    # with every call cancelled must not wait for it.
                    with anyio.CancelScope() as self._prepare_scope:
                        if not self._stop_requested.is_set() and self.prepare_transport:
                            await self.transport.prepare()
                    prepared = not self._prepare_scope.cancel_called
                    self._prepare_scope = None
                    if prepared:
                        await self._run_loops()
            except Exception as exc:
                self._break(f"the {self.transport.describe} transport failed: {exc}", exc)
            except BaseException as exc:
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                # SystemExit or KeyboardInterrupt raised by code run on this thread: the
                # loop cannot go on, but no future may be left pending.
                self._break(f"the executor's event loop was stopped by {exc!r}", exc)
            await self._stop_requested.wait()
        finally:
            self._task_group = None
            self._stopping = True
            self._fail_everything(
                BrokenRemoteExecutor("the executor was shut down before this call finished")
            )
            self._stopped.set()

    async def _run_loops(self) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._dispatch_loop)
            tg.start_soon(self._poll_loop)
            tg.start_soon(self._cancel_loop)
            await self._stop_requested.wait()
            await self._wind_down()
            tg.cancel_scope.cancel()
        self._task_group = None

    async def _wind_down(self) -> None:
        """At shutdown: let submissions in flight return (a job the scheduler accepted must be
        known to be cancelled), carry out queued cancellations, release finished jobs."""
        self._stopping = True
        with anyio.move_on_after(_SUBMIT_GRACE):
            while self._submitting:
                await self._submitted.wait()
                self._submitted = anyio.Event()
        for job in list(self._active.values()):
            if job.unsettled > 0 and self.cancel_on_stop:
                self._cancel_tasks(job, job.tasks)
        with anyio.move_on_after(_CANCEL_GRACE):
            await self._run_cancels()
        with anyio.move_on_after(_RELEASE_GRACE):
            for job in list(self._active.values()):
                if job.unsettled == 0:
                    await self._release(job)
            # A release the poll loop started (the last outcome was just read) would be
            # cancelled with it, leaving the job's directory behind: let it finish.
            while self._releasing:
                await anyio.sleep(0.02)

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            if any(request.coalesce for request in self._queue):
                await self._gather_burst()
            self._wake = anyio.Event()
            requests = list(self._queue)
            self._queue.clear()
            self._planned.extend(plan_jobs(requests, self.transport.max_tasks_per_job,
                                           map_chunksize=self.transport.default_chunksize,
                                           rules=self.transport.job_rules))
            self._admit()

    async def _gather_burst(self) -> None:
        """Wait while submissions keep arriving (a loop of ``submit`` calls), so that they go
        out as one array job; bounded, so a steady trickle still goes out promptly."""
        window = self.transport.coalesce_window
        deadline = anyio.current_time() + window * 25
        while anyio.current_time() < deadline:
            before = len(self._queue)
            await anyio.sleep(window)
            if len(self._queue) == before:
                break

    # --- admission ----------------------------------------------------------------------------

    def _admit(self) -> None:
        """Grant free slots to planned jobs, oldest first, and start their submissions."""
        tg = self._task_group
        if tg is None or self._stopping:
            return
        throttles = self.transport.supports_throttle
        while self._planned and self._free > 0:
            head = self._planned[0]
            if not head.tasks:
                self._planned.popleft()
                continue
            if throttles or len(head.tasks) <= self._free:
                job = self._planned.popleft()
                job.grant = min(len(job.tasks), self._free)
            else:
                # No array throttle: start only what fits, the rest waits for room.
                job = take_tasks(head, self._free)
                job.grant = len(job.tasks)
            self._free -= job.grant
            self._submitting.add(job)
            tg.start_soon(self._submit, job)
        if self._free > 0 and not self._planned and self._throttled:
            self._widen_throttles()

    def _return_slots(self, job: Job) -> None:
        """Take back the slots ``job`` no longer needs, and hand them on."""
        held = job.held_slots()
        if held < job.grant:
            self._free += job.grant - held
            job.grant = held
        if job.grant >= job.unended or job.released:
            self._throttled.pop(job, None)
        if self._free > 0:
            self._admit()

    def _widen_throttles(self) -> None:
        assert self._task_group is not None
        for job in list(self._throttled):
            if self._free <= 0:
                break
            if job.throttle_fixed or job.handle is None or job.released:
                self._throttled.pop(job, None)
                continue
            extra = min(self._free, job.unended - job.grant)
            if extra <= 0:
                self._throttled.pop(job, None)
                continue
            self._free -= extra
            job.grant += extra
            self._throttled.pop(job, None)
            self._task_group.start_soon(self._raise_throttle, job, extra)

    async def _raise_throttle(self, job: Job, extra: int) -> None:
        assert job.handle is not None
        try:
            raised = await self.transport.raise_throttle(job.handle, job.grant)
        except Exception as exc:
            log.warning("raising the throttle of job %s failed: %r", job.handle.job_id, exc)
            raised = False
        if not raised:
            job.throttle_fixed = True
            job.grant -= extra
            self._free += extra
            self._admit()
        elif job.grant < job.unended:
            self._throttled[job] = None
            # Slots freed while this raise was in flight found the job out of _throttled:
            # hand them on now, or they would wait for the next slot to come back.
            if self._free > 0:
                self._admit()

    async def _submit(self, job: Job) -> None:
        # Calls cancelled while the job waited are dropped before anything goes out.
        drop_cancelled(job)
        if not job.tasks:
            self._submitting.discard(job)
            self._free += job.grant
            self._submitted.set()
            self._admit()
            return
        if job.grant > len(job.tasks):
            self._free += job.grant - len(job.tasks)
            job.grant = len(job.tasks)
        if self._retry.retries:
            # encode_job drops each call's bytes: keep them while another attempt may come.
            for task in job.tasks:
                for call in task.calls:
                    if call not in self._resend and call.blob is not None:
                        self._resend[call] = _Resend(call.blob, job.code, job.resources)
        for task in job.tasks:
            if task.rerun_unstarted:
                # encode_job drops each call's bytes: keep those a rerun may need.
                for call in task.calls[1:]:
                    if call.blob is not None:
                        self._unstarted[call] = _Resend(call.blob, job.code, job.resources,
                                                        reruns=self._reruns.get(call, 0))
        spec = encode_job(
            job,
            max_concurrent=job.grant,
            initializer=self._initializer,
            sys_path=self._sys_path,
            out_of_band=self.transport.out_of_band,
        )
        self._by_name[spec.name] = job
        try:
            handle = await self.transport.submit(spec)
        except Exception as exc:
            # Refused, or the connection dropped: the job's calls fail now, its slots return.
            self._by_name.pop(spec.name, None)
            self._submitting.discard(job)
            self._submitted.set()
            self._free += job.grant
            job.grant = 0
            error = exc if isinstance(exc, RemoteFuturesError) else TransportError(
                f"submitting to {self.transport.describe} failed: {exc!r}"
            )
            log.warning("submission of %s failed: %s", spec.name, error)
            del spec
            for call in job.open_calls():
                self._finish(call, exception=error)
            self._admit()
            return
        # The payloads went out: do not keep them in memory while the job runs.
        handle.spec = spec.without_payloads()
        del spec
        self._submitting.discard(job)
        self._submitted.set()
        job.handle = handle
        self._active[handle] = job
        if self.observer is not None:
            self.observer.job_submitted(job, handle)
        if job.grant < job.unended:
            self._throttled[job] = None
        log.info("submitted %s job %s (%d task(s), %d at once)", self.transport.describe,
                 handle.job_id, len(job.tasks), job.grant)
        # Calls cancelled during the submission: cancel their tasks in the scheduler now.
        unwanted = [task for task in job.tasks if not any(c.unsettled for c in task.calls)]
        if unwanted:
            self._cancel_tasks(job, unwanted)
        self._fast_poll = True
        self._poll_now.set()

    # --- polling ------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        low, high = self.transport.poll_interval
        interval = low
        failures = 0
        while True:
            if not self._active:
                await self._poll_now.wait()
            else:
                await self._wait_for_next_cycle(interval)
            self._poll_now = anyio.Event()
            if self._fast_poll:
                self._fast_poll = False
                interval = min(_FIRST_POLL, low)
            if not self._active:
                continue
            try:
                changed = await self._poll_once()
            except Exception as exc:
                failures += 1
                log.warning("polling %s failed (%d/%d): %r", self.transport.describe,
                            failures, _MAX_POLL_FAILURES, exc)
                if failures >= _MAX_POLL_FAILURES or isinstance(exc, BrokenRemoteExecutor):
                    self._break(f"lost the {self.transport.describe} transport: {exc}", exc)
                    return
                interval = min(high, max(interval, low) * 2)
                continue
            failures = 0
            if changed:
                interval = min(interval * 2, low) if interval < low else low
            else:
                interval = min(high, interval * 2 if interval < low else interval * 1.5)

    async def _wait_for_next_cycle(self, interval: float) -> None:
        """Sleep ``interval``, or less if the transport reports progress or the core asks."""
        with anyio.move_on_after(interval):
            async with anyio.create_task_group() as waiters:

                async def wait_event() -> None:
                    await self._poll_now.wait()
                    waiters.cancel_scope.cancel()

                async def wait_transport() -> None:
                    await self.transport.wait_for_change(interval)
                    waiters.cancel_scope.cancel()

                waiters.start_soon(wait_event)
                waiters.start_soon(wait_transport)

    async def _poll_once(self) -> bool:
        """One cycle: learn states, fetch new outcomes, settle futures. True if anything moved."""
        statuses = await self.transport.poll(list(self._active))
        changed = False
        for handle, status in statuses.items():
            job = self._active.get(handle)
            if job is None:
                continue
            effects = apply_status(job, status)
            changed |= effects.changed
            for call in effects.started:
                if call.future is not None:
                    _mark_running(call.future)
            if effects.ended:
                self._ended.extend((job, task) for task in effects.ended)
                self._return_slots(job)
            if job.ready:
                self._has_ready[job] = None
        if self._has_ready:
            changed |= await self._fetch_ready()
        if self._ended:
            changed |= await self._fail_ended_tasks()
        for job in [job for job in self._active.values() if job.unsettled == 0]:
            await self._release(job)
        return changed

    async def _fetch_ready(self) -> bool:
        jobs = {job.handle: job for job in self._has_ready if job.handle is not None}
        self._has_ready.clear()
        wanted = {handle: sorted(job.ready) for handle, job in jobs.items()}
        outcomes = await self.transport.fetch_outcomes(wanted)
        changed = False
        for handle, blobs in outcomes.items():
            job = jobs.get(handle)
            if job is None:
                continue
            for index, data in blobs.items():
                job.ready.discard(index)
                call = job.by_index.get(index)
                if call is not None and call.unsettled:
                    self._settle_outcome(call, data)
                    changed = True
        for job in jobs.values():
            if job.ready and not job.released:
                self._has_ready[job] = None  # listed but not readable yet: try again
        return changed

    async def _fail_ended_tasks(self) -> bool:
        """Settle calls of tasks that ended without an outcome, with the scheduler's story."""
        changed = False
        ended, self._ended = self._ended, []
        for job, task in ended:
            orphans = [call for call in task.calls if call.unsettled]
            if not orphans or task.status is None or job.handle is None:
                continue
            changed = True
            seen = task.status
            if task.rerun_unstarted and seen.state is not TaskState.COMPLETED:
                orphans = self._rerun_unstarted(orphans)
            try:
                tail = await self.transport.stderr_tail(job.handle, task.index)
            except Exception as exc:
                tail = f"(could not read the job's stderr: {exc!r})"
            if seen.state is TaskState.COMPLETED:
                message = "the job finished but left no result for this call"
            else:
                message = "the job ended without a result for this call"
            error = JobFailedError(
                message,
                job_id=job.handle.job_id,
                task=task.index if len(job.tasks) > 1 else None,
                state=seen.state.value,
                scheduler_state=seen.raw_state,
                exit_code=seen.exit_code,
                signal=seen.signal,
                stderr_tail=tail,
            )
            for call in orphans:
                if call.unsettled:
                    self._fail_call(call, error, lost=True)
        return changed

    def _rerun_unstarted(self, orphans: list[Call]) -> list[Call]:
        """Of the calls a task of grouped submits ended without (in the task's order), the
        first was running when its process ended; the others never started: queue those as
        new submits, each standing alone as it was submitted. Return the calls to fail."""
        if self._stopping or self.broken is not None:
            return orphans
        # Bounded: a task that ended before its first call (a job script or environment that
        # fails) looks the same, and must not make every call of a burst go round again and
        # again. Each round settles at least the first call anyway.
        rest = [call for call in orphans[1:] if call in self._unstarted
                and self._unstarted[call].reruns < _MAX_RERUNS]
        for call in rest:
            again = self._unstarted.pop(call)
            fresh = Call(call.future, again.blob)
            self._reruns[fresh] = again.reruns + 1
            resend = self._resend.pop(call, None)
            if resend is not None:
                self._resend[fresh] = resend  # the retry policy goes on counting
            # Queued before the old call is counted out: the engine never looks idle between.
            self.enqueue(Request([[fresh]], again.resources, True, again.code))
            self._count_out(call)
        if rest:
            log.info("%d call(s) after the one that ended their task never started: "
                     "submitting them again", len(rest))
        return [call for call in orphans if call.unsettled]

    async def _release(self, job: Job) -> None:
        if job.handle is None or job.released:
            return
        self._active.pop(job.handle, None)
        self._by_name.pop(job.handle.spec.name, None)
        job.released = True
        if self.observer is not None:
            self.observer.job_released(job.handle)
        self._return_slots(job)
        self._has_ready.pop(job, None)
        self._releasing += 1
        try:
            await self.transport.release(job.handle)
        except Exception as exc:
            log.warning("cleaning up job %s failed: %r", job.handle.job_id, exc)
        finally:
            self._releasing -= 1
        self._admit()

    def _settle_outcome(self, call: Call, data: bytes) -> None:
        ok, value = decode_outcome(data)
        if ok:
            self._finish(call, result=value)
        elif isinstance(value, InitializerFailed):
            broken = BrokenRemoteExecutor(f"a remote initializer failed: {value}")
            broken.__cause__ = value.__cause__ or RemoteTraceback(str(value))
            # Broken first, then the futures fail: code woken by them must find it broken.
            self._break_with(broken)
            self._finish(call, exception=broken)
        else:
            # A pool reports a worker that died under the call as an outcome: the call was
            # lost, not its own doing, so the retry policy treats it like a lost task.
            self._fail_call(call, value, lost=isinstance(value, WorkerDiedError))

    def _fail_call(self, call: Call, error: BaseException, *, lost: bool) -> None:
        """Fail ``call`` with ``error``, or run it again if the retry policy says so.
        ``lost``: its task ended without its outcome; otherwise the call raised ``error``."""
        resend = self._resend.get(call)
        if resend is not None:
            resend.attempts.append(Attempt(len(resend.attempts) + 1, describe_failure(error)))
            future = call.future
            if (
                not self._stopping
                and self.broken is None
                and future is not None
                and not future.cancelled()
                and self._retry.should_retry(len(resend.attempts), error, lost=lost)
            ):
                self._run_again(call, resend)
                return
            if len(resend.attempts) > 1:
                # One error object may be shared by the calls of a task: annotate a copy.
                error = copy.copy(error) if isinstance(error, JobFailedError) else error
                annotate(error, resend.attempts)
        self._finish(call, exception=error)

    def _run_again(self, call: Call, resend: _Resend) -> None:
        """Queue ``call`` as a new request (a new job), its future untouched."""
        fresh = Call(call.future, resend.blob, seq=call.seq)
        del self._resend[call]
        self._resend[fresh] = resend
        log.info(
            "retrying a call (attempt %d of %d) after %s",
            len(resend.attempts) + 1, self._retry.retries + 1, resend.attempts[-1].what,
        )
        # Queued before the old call is counted out, so the engine never looks idle between.
        self.enqueue(Request([[fresh]], resend.resources, True, resend.code))
        self._count_out(call)

    def _finish(
        self, call: Call, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        """Settle ``call``'s future and count it out of its job."""
        if not call.unsettled:
            return
        future = call.future
        if self.observer is not None:
            self.observer.call_settled(call, exception is None)
        self._count_out(call)
        if isinstance(future, RemoteFuture):
            future._rf_hook = None
        _settle(future, result=result, exception=exception)

    def _count_out(self, call: Call) -> None:
        self._resend.pop(call, None)
        self._unstarted.pop(call, None)
        self._reruns.pop(call, None)
        job = call.job
        if job is not None:
            job.unsettled -= 1
            job.by_index.pop(call.index, None)
        call.forget()
        self._unsettled -= 1
        self._check_idle()

    # --- cancellation -------------------------------------------------------------------------

    def _on_cancel(self, call: Call) -> None:
        if not call.unsettled:
            return
        job, task = call.job, call.task
        self._count_out(call)
        if job is None or task is None or job.handle is None or job.released:
            return  # not submitted yet: dropped before submission
        job.ready.discard(call.index)
        if not task.state.terminal and not any(c.unsettled for c in task.calls):
            self._cancel_tasks(job, [task])
        if job.unsettled == 0:
            self._poll_now.set()  # release it

    def _cancel_tasks(self, job: Job, tasks: list[Task]) -> None:
        """Queue the cancellation of ``tasks`` (all of them: the whole job) in the scheduler.
        Safe from plain loop callbacks: it only queues and wakes ``_cancel_loop``."""
        if job.handle is None:
            return
        whole = len(tasks) == len(job.tasks)
        self._cancels.append((job.handle, None if whole else [task.index for task in tasks]))
        self._cancel_wake.set()

    async def _cancel_loop(self) -> None:
        while True:
            await self._cancel_wake.wait()
            self._cancel_wake = anyio.Event()
            await self._run_cancels()

    async def _run_cancels(self) -> None:
        """Carry out queued cancellations, one command per job (tasks merged)."""
        while self._cancels:
            batch, self._cancels = self._cancels, []
            merged: dict[JobHandle, set[int] | None] = {}
            for handle, indices in batch:
                known = merged.get(handle, set())
                merged[handle] = None if indices is None or known is None else known | set(
                    indices
                )
            for handle, tasks in merged.items():
                try:
                    await self.transport.cancel(handle, None if tasks is None else sorted(tasks))
                except Exception as exc:
                    log.warning("cancelling job %s failed: %r", handle.job_id, exc)

    # --- failure and bookkeeping --------------------------------------------------------------

    def _break(self, message: str, cause: BaseException) -> None:
        broken = BrokenRemoteExecutor(message)
        broken.__cause__ = cause
        self._break_with(broken)

    def _break_with(self, broken: BrokenRemoteExecutor) -> None:
        if self.broken is None:
            self.broken = broken
            log.error("%s", broken)
        for job in list(self._active.values()):
            self._cancel_tasks(job, job.tasks)
        self._fail_everything(self.broken)

    def _fail_everything(self, error: BaseException) -> None:
        calls = [call for request in self._queue for task in request.tasks for call in task]
        self._queue.clear()
        calls += [call for job in self._planned for task in job.tasks for call in task.calls]
        self._planned.clear()
        for job in [*self._submitting, *self._active.values()]:
            calls += job.open_calls()
        for call in calls:
            self._finish(call, exception=error)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._unsettled <= 0:
            self._idle.set()


    def _claim(self, job_name: str, index: int) -> bool:
        """Mark the futures of a task its transport commits ahead of time as running (see
        ``Transport.claim``); False when every one of them was cancelled."""
        job = self._by_name.get(job_name)
        if job is None or not 0 <= index < len(job.tasks):
            return True
        task = job.tasks[index]
        task.marked_running = True
        wanted = False
        for call in task.calls:
            if call.unsettled and call.future is not None:
                wanted |= _mark_running(call.future)
            elif call.unsettled:
                wanted = True
        return wanted


def _mark_running(future: concurrent.futures.Future[Any]) -> bool:
    if future.running():
        return True  # a retried call: running since its first attempt (asking again logs)
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:
        return not future.cancelled()  # already running


def _settle(
    future: concurrent.futures.Future[Any] | None,
    *,
    result: Any = None,
    exception: BaseException | None = None,
) -> None:
    """Resolve ``future`` unless it is already done (cancelled by the user, or settled)."""
    if future is None or future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled concurrently by the user, in another thread
    except BaseException as exc:  # a done-callback raising SystemExit, say
        # Future._invoke_callbacks only catches Exception: whatever else a done-callback
        # raised arrives here, after the future was settled. It must not stop the loop that
        # settles every other future.
        log.error("a done-callback of a remote_futures future raised %r; ignored", exc)
