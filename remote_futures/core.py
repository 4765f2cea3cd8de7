"""The async core: the one place that owns a call's life, from queueing to its future's result.

Data flow (compare CPython's ``concurrent/futures/process.py``)::

    caller thread                      event-loop thread (this module)
    -------------                      --------------------------------------------------------
    RemoteExecutor.submit/map
      pickle call(s) -> _Call
      enqueue(_Request) ---------->    _dispatch_loop: coalesce submits, split maps at the
                                         transport's max tasks/job, encode task payloads,
                                         transport.submit(JobSpec) -> JobHandle
                                       _poll_loop: every cycle ONE transport.poll(all jobs),
                                         back-off while nothing changes;
                                         task RUNNING  -> future.set_running_or_notify_cancel()
                                         outcome ready -> fetch, decode, set_result/_exception
                                         task ended without outcome -> JobFailedError with the
                                           job id, state, exit code and stderr tail
                                         all calls settled -> transport.release(job)
    future.cancel() (pending) ---->    _on_cancel: cancel the array task / job in the scheduler

Every future is settled exactly once, by this thread; infrastructure failure (the transport
cannot open, poll or submit any more) settles every unsettled future with an error.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc

from .errors import (
    BrokenRemoteExecutor,
    JobFailedError,
    RemoteFuturesError,
    RemoteTraceback,
    TransportError,
)
from .jobs import CodeBundle, JobHandle, JobSpec, JobStatus, TaskSpec, TaskState, TaskStatus
from .resources import Resources
from .serialization import InitializerFailed, decode_outcome, encode_task
from .transports.base import Transport

__all__ = ["Call", "Engine", "Request"]

log = logging.getLogger("remote_futures")

#: Consecutive failed polls after which the transport is considered gone.
_MAX_POLL_FAILURES = 5


@dataclasses.dataclass(eq=False)
class Call:
    """One pickled call and the future that will receive its outcome."""

    blob: bytes
    future: concurrent.futures.Future[Any]
    index: int = -1
    job: _Job | None = None
    task: _Task | None = None
    #: False once the future is done and the job has counted it (see ``Engine._close_call``).
    open: bool = True


@dataclasses.dataclass(eq=False)
class Request:
    """Work handed over by the facade: tasks of calls, with the resources they need.

    ``coalesce`` marks a single ``submit``: such requests that arrive together (the same
    resources) are merged into one array job, which schedulers launch far faster than many jobs.
    """

    tasks: list[list[Call]]
    resources: Resources
    coalesce: bool = False
    #: The caller's own modules at the time of the request (remote transports).
    code: CodeBundle | None = None


@dataclasses.dataclass(eq=False)
class _Task:
    index: int
    calls: list[Call]
    state: TaskState = TaskState.PENDING
    status: TaskStatus | None = None
    running_marked: bool = False


@dataclasses.dataclass(eq=False)
class _Job:
    tasks: list[_Task]
    handle: JobHandle | None = None
    settled: bool = False
    #: Bookkeeping that keeps a poll cycle proportional to what changed, not to the job's size.
    by_index: dict[int, Call] = dataclasses.field(default_factory=dict)
    fetched: set[int] = dataclasses.field(default_factory=set)
    open_calls: int = 0
    ended: list[_Task] = dataclasses.field(default_factory=list)
    code: CodeBundle | None = None

    def calls(self) -> list[Call]:
        return [call for task in self.tasks for call in task.calls]


class Engine:
    """Drives one transport. Created in the facade; :meth:`run` runs on the event loop."""

    def __init__(
        self,
        transport: Transport,
        *,
        initializer: bytes | None = None,
        sys_path: Sequence[str] = (),
    ) -> None:
        self.transport = transport
        self._initializer = initializer
        self._sys_path = list(sys_path)
        self._queue: collections.deque[Request] = collections.deque()
        self._active: dict[JobHandle, _Job] = {}
        self._submitting: set[_Job] = set()
        self._wake = anyio.Event()
        self._poll_now = anyio.Event()
        #: Cancellations to carry out in the scheduler, queued by plain loop callbacks (which
        #: cannot start tasks) and carried out by ``_cancel_loop``.
        self._cancels: list[tuple[JobHandle, list[int] | None]] = []
        self._cancel_wake = anyio.Event()
        self._stop_requested = anyio.Event()
        self._stopped = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Set once the executor can no longer run work; read by the facade's ``submit``.
        self.broken: BrokenRemoteExecutor | None = None

    # --- called from the facade ---------------------------------------------------------------

    def enqueue(self, request: Request) -> None:
        """Queue work (loop thread). Also hooks each future's cancellation into the core."""
        if self.broken is not None:
            for task in request.tasks:
                for call in task:
                    _settle(call.future, exception=self.broken)
            return
        for task in request.tasks:
            for call in task:
                call.future.add_done_callback(self._cancel_callback(call))
        self._queue.append(request)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wake.set()

    def cancel_pending(self) -> None:
        """Cancel every future that is not running yet (``shutdown(cancel_futures=True)``)."""
        for request in list(self._queue):
            for task in request.tasks:
                for call in task:
                    call.future.cancel()
        for job in [*self._active.values(), *self._submitting]:
            for call in job.calls():
                call.future.cancel()

    async def wait_idle(self) -> None:
        """Wait until every call handed over so far is settled."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the loops and close the transport; wait until :meth:`run` has finished."""
        self._stop_requested.set()
        await self._stopped.wait()

    # --- the loops ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the transport, prepare it, then dispatch and poll until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        task_status.started()
        try:
            try:
                # Entered in this task and exited in it, around the loops' task group and with
                # no scope in between, so that a transport may hold a task group of its own.
                async with self.transport:
                    await self.transport.prepare()
                    async with anyio.create_task_group() as tg:
                        self._task_group = tg
                        tg.start_soon(self._dispatch_loop)
                        tg.start_soon(self._poll_loop)
                        tg.start_soon(self._cancel_loop)
                        await self._stop_requested.wait()
                        # Cancellations already asked for must reach the scheduler, or the
                        # tasks would stay queued there after we are gone.
                        with anyio.move_on_after(60):
                            await self._run_cancels()
                        tg.cancel_scope.cancel()
                    self._task_group = None
            except Exception as exc:
                self._task_group = None
                self._break(f"the {self.transport.describe} transport failed: {exc}", exc)
            await self._stop_requested.wait()
        finally:
            self._task_group = None
            self._fail_everything(
                BrokenRemoteExecutor("the executor was shut down before this call finished")
            )
            self._stopped.set()

    async def _dispatch_loop(self) -> None:
        assert self._task_group is not None
        while True:
            await self._wake.wait()
            if any(request.coalesce for request in self._queue):
                await self._gather_burst()
            self._wake = anyio.Event()
            requests = list(self._queue)
            self._queue.clear()
            for job, resources in self._plan_jobs(requests):
                self._submitting.add(job)
                self._task_group.start_soon(self._submit, job, resources)
            self._check_idle()

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

    def _plan_jobs(self, requests: list[Request]) -> list[tuple[_Job, Resources]]:
        """Group requests into jobs: coalesce single submits, split at the array size limit."""
        planned: list[tuple[list[list[Call]], Resources, CodeBundle | None]] = []
        singles: dict[tuple[Resources, CodeBundle | None], list[list[Call]]] = {}
        for request in requests:
            if request.coalesce:
                singles.setdefault((request.resources, request.code), []).extend(request.tasks)
            else:
                planned.append((request.tasks, request.resources, request.code))
        planned.extend((tasks, key[0], key[1]) for key, tasks in singles.items())
        limit = max(1, self.transport.max_tasks_per_job)
        jobs: list[tuple[_Job, Resources]] = []
        for tasks, resources, code in planned:
            for start in range(0, len(tasks), limit):
                chunk = tasks[start : start + limit]
                job = _Job([_Task(i, calls) for i, calls in enumerate(chunk)], code=code)
                jobs.append((job, resources))
        return jobs

    async def _submit(self, job: _Job, resources: Resources) -> None:
        # Calls cancelled while queued are dropped before anything reaches the scheduler.
        for task in job.tasks:
            task.calls = [call for call in task.calls if not call.future.cancelled()]
        job.tasks = [task for task in job.tasks if task.calls]
        if not job.tasks:
            self._submitting.discard(job)
            self._check_idle()
            return
        counter = 0
        specs = []
        for position, task in enumerate(job.tasks):
            task.index = position
            for call in task.calls:
                call.index, call.job, call.task = counter, job, task
                job.by_index[counter] = call
                counter += 1
            payload = encode_task(
                ((call.index, call.blob) for call in task.calls),
                initializer=self._initializer,
                sys_path=self._sys_path,
                code=job.code.name if job.code else None,
            )
            specs.append(TaskSpec(position, payload, tuple(call.index for call in task.calls)))
        job.open_calls = counter
        spec = JobSpec(
            name=f"rf-{uuid.uuid4().hex[:12]}",
            tasks=tuple(specs),
            resources=resources,
            max_concurrent=self.transport.max_workers if len(specs) > 1 else None,
            code=job.code,
        )
        try:
            handle = await self.transport.submit(spec)
        except Exception as exc:
            self._submitting.discard(job)
            error = exc if isinstance(exc, RemoteFuturesError) else TransportError(
                f"submitting to {self.transport.describe} failed: {exc!r}"
            )
            log.warning("submission of %s failed: %s", spec.name, error)
            for call in job.calls():
                _settle(call.future, exception=error)
            self._check_idle()
            return
        self._submitting.discard(job)
        job.handle = handle
        self._active[handle] = job
        log.debug("submitted %s as job %s (%d tasks)", spec.name, handle.job_id, len(specs))
        # A call cancelled during submission is cancelled in the scheduler now.
        cancelled = [t for t in job.tasks if all(c.future.cancelled() for c in t.calls)]
        if cancelled:
            self._cancel_tasks(job, cancelled)
        self._poll_now.set()

    async def _poll_loop(self) -> None:
        low, high = self.transport.poll_interval
        interval = low
        failures = 0
        while True:
            if not self._active:
                await self._poll_now.wait()
                interval = low
            else:
                await self._wait_for_next_cycle(interval)
            self._poll_now = anyio.Event()
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
            interval = low if changed else min(high, interval * 1.5)

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
        wanted: dict[JobHandle, list[int]] = {}
        for handle, status in statuses.items():
            job = self._active.get(handle)
            if job is None:
                continue
            changed |= self._apply_states(job, status)
            fresh = [index for index in status.ready_calls if index not in job.fetched]
            if fresh:
                wanted[handle] = fresh
        if wanted:
            outcomes = await self.transport.fetch_outcomes(wanted)
            for handle, blobs in outcomes.items():
                job = self._active.get(handle)
                if job is None:
                    continue
                for index, data in blobs.items():
                    call = job.by_index.get(index)
                    if call is not None and index not in job.fetched:
                        job.fetched.add(index)
                        self._settle_outcome(call, data)
                        changed = True
        for handle in statuses:
            job = self._active.get(handle)
            if job is not None:
                if job.ended:
                    changed |= await self._fail_ended_tasks(job)
                await self._release_if_settled(job)
        return changed

    def _apply_states(self, job: _Job, status: JobStatus) -> bool:
        changed = False
        for index, seen in status.tasks.items():
            if index >= len(job.tasks):
                continue
            task = job.tasks[index]
            if seen.state == task.state:
                continue
            task.state = seen.state
            task.status = seen
            changed = True
            if not task.running_marked:
                task.running_marked = True
                for call in task.calls:
                    if call.open:
                        _mark_running(call.future)
            if seen.state.terminal:
                job.ended.append(task)
        return changed

    async def _fail_ended_tasks(self, job: _Job) -> bool:
        """Settle calls of tasks that ended without an outcome, with the scheduler's story."""
        assert job.handle is not None
        changed = False
        ended, job.ended = job.ended, []
        for task in ended:
            orphans = [call for call in task.calls if call.open]
            if not orphans or task.status is None:
                continue
            changed = True
            seen = task.status
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
                self._finish(call, exception=error)
        return changed

    async def _release_if_settled(self, job: _Job) -> None:
        if job.handle is None or job.open_calls > 0 or job.settled:
            return
        self._active.pop(job.handle, None)
        job.settled = True
        try:
            await self.transport.release(job.handle)
        except Exception as exc:
            log.warning("cleaning up job %s failed: %r", job.handle.job_id, exc)
        self._check_idle()

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
            self._finish(call, exception=value)

    def _finish(
        self, call: Call, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        _settle(call.future, result=result, exception=exception)
        self._close_call(call)

    def _close_call(self, call: Call) -> None:
        if call.open:
            call.open = False
            if call.job is not None:
                call.job.open_calls -= 1

    # --- cancellation -------------------------------------------------------------------------

    def _cancel_callback(self, call: Call) -> Any:
        def on_done(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled() and self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._on_cancel, call)
                except RuntimeError:
                    pass  # the loop is closing; nothing left to cancel remotely

        return on_done

    def _on_cancel(self, call: Call) -> None:
        self._close_call(call)
        job, task = call.job, call.task
        if job is None or task is None or job.handle is None or job.settled:
            self._check_idle()
            return
        if not task.state.terminal and all(c.future.cancelled() for c in task.calls):
            self._cancel_tasks(job, [task])
        self._poll_now.set()

    def _cancel_tasks(self, job: _Job, tasks: list[_Task]) -> None:
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
        for request in list(self._queue):
            for task in request.tasks:
                for call in task:
                    _settle(call.future, exception=error)
        self._queue.clear()
        for job in [*self._active.values(), *self._submitting]:
            for call in job.calls():
                self._finish(call, exception=error)
        self._active.clear()
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._queue and not self._active and not self._submitting:
            self._idle.set()


def _mark_running(future: concurrent.futures.Future[Any]) -> bool:
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:
        return not future.cancelled()  # already running


def _settle(
    future: concurrent.futures.Future[Any],
    *,
    result: Any = None,
    exception: BaseException | None = None,
) -> None:
    """Resolve ``future`` unless it is already done (cancelled by the user, or settled)."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled concurrently by the user, in another thread

