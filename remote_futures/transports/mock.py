"""An in-memory transport for tests, after httpx's ``MockTransport``: calls run in this process.

``RemoteExecutor("mock", on_submit=hook)`` runs each task's calls in a thread of this process
(through the worker's own call runner, so outcomes travel as the same bytes as elsewhere),
honouring the slots the core grants each job. ``on_submit(spec)`` is called with each
:class:`~remote_futures.jobs.JobSpec` before it starts: raise
:class:`~remote_futures.errors.SubmissionError` from it to stage a refusal,
:class:`~remote_futures.errors.TransportError` a dropped connection. ``throttle=False`` makes it
behave like a transport with no array throttle (the plain ``ssh`` host): every job must fit.
``prepare_seconds`` and ``submit_seconds`` stage a slow environment sync or scheduler.

The transport records what it saw, for assertions: ``submitted`` (the specs it accepted, without
their payloads), ``refused`` (how many ``on_submit`` refused) and ``peak`` (the most tasks that
ran at once, across jobs).
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc

from .. import worker
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ._deltas import take_changes
from .base import Transport

__all__ = ["MockOptions", "MockTransport"]


@dataclasses.dataclass(frozen=True)
class MockOptions:
    """Options of the ``mock`` transport."""

    #: Called with each job before it starts; raising refuses it (the exception reaches the
    #: job's futures if it is a remote_futures error).
    on_submit: Callable[[JobSpec], None] | None = None
    #: Whether a job may be granted fewer slots than tasks (an array throttle).
    throttle: bool = True
    #: How long ``prepare`` takes (an environment sync) and each ``submit`` (a slow scheduler).
    prepare_seconds: float = 0.0
    submit_seconds: float = 0.0


@dataclasses.dataclass(eq=False)
class _MockJob:
    spec: JobSpec
    queue: collections.deque[int]
    states: dict[int, TaskStatus]
    outcomes: dict[int, bytes] = dataclasses.field(default_factory=dict)
    dirty: set[int] = dataclasses.field(default_factory=set)
    ready: list[int] = dataclasses.field(default_factory=list)
    lanes: int = 0
    cancelled: set[int] = dataclasses.field(default_factory=set)

    def set_state(self, index: int, status: TaskStatus) -> None:
        self.states[index] = status
        self.dirty.add(index)


class MockTransport(Transport):
    """Runs jobs in threads of this process (see the module docstring)."""

    name = "mock"
    Options = MockOptions
    options: MockOptions
    poll_interval = (0.05, 0.2)
    coalesce_window = 0.01
    max_tasks_per_job = 1_000_000

    def __init__(self, options: MockOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.supports_throttle = options.throttle
        self.submitted: list[JobSpec] = []
        self.refused = 0
        self.running = 0
        self.peak = 0
        self._jobs: dict[JobHandle, _MockJob] = {}
        self._changed = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def ships_user_code(self) -> bool:
        """False: calls run in this very process."""
        return False

    def default_chunksize(self, n_calls: int) -> int:
        """One call per task."""
        return 1

    async def open(self) -> None:
        """Start the task group that runs the calls."""
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()

    async def close(self) -> None:
        """Stop running calls (threads already in a call finish it, unobserved)."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None

    async def prepare(self) -> None:
        """Take ``prepare_seconds``."""
        await anyio.sleep(self.options.prepare_seconds)

    async def submit(self, job: JobSpec) -> JobHandle:
        """Take ``submit_seconds``, ask ``on_submit``, then start one lane per granted slot."""
        assert self._task_group is not None, "transport not open"
        if self.options.submit_seconds:
            await anyio.sleep(self.options.submit_seconds)
        if self.options.on_submit is not None:
            try:
                self.options.on_submit(job)
            except BaseException:
                self.refused += 1
                raise
        self.submitted.append(job.without_payloads())
        handle = JobHandle(job_id=f"mock-{len(self.submitted)}", spec=job, location="")
        state = _MockJob(
            job,
            queue=collections.deque(task.index for task in job.tasks),
            states={task.index: TaskStatus(TaskState.PENDING) for task in job.tasks},
        )
        self._jobs[handle] = state
        self._add_lanes(state, job.max_concurrent or len(job.tasks))
        return handle

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Start more lanes for the job."""
        state = self._jobs.get(job)
        if state is None:
            return False
        self._add_lanes(state, max_concurrent)
        return True

    def _add_lanes(self, state: _MockJob, wanted: int) -> None:
        assert self._task_group is not None
        while state.lanes < min(wanted, len(state.states)):
            state.lanes += 1
            self._task_group.start_soon(self._lane, state)

    async def _lane(self, state: _MockJob) -> None:
        while state.queue:
            index = state.queue.popleft()
            state.set_state(index, TaskStatus(TaskState.RUNNING))
            self.running += 1
            self.peak = max(self.peak, self.running)
            self._changed.set()
            try:
                envelope = pickle.loads(state.spec.tasks[index].payload)
                for call, blob, buffers in worker.task_calls(envelope):
                    outcome = await anyio.to_thread.run_sync(worker._run_call, blob, buffers)
                    state.outcomes[call] = pickle.dumps(outcome)
                    state.ready.append(call)
                    self._changed.set()
            finally:
                self.running -= 1
            ended = TaskState.CANCELLED if index in state.cancelled else TaskState.COMPLETED
            state.set_state(index, TaskStatus(ended, exit_code=0))
            self._changed.set()

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """What changed since the previous poll."""
        return take_changes(jobs, self._jobs)

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """The outcomes recorded in memory."""
        found: dict[JobHandle, dict[int, bytes]] = {}
        for handle, calls in wanted.items():
            state = self._jobs.get(handle)
            if state is not None:
                found[handle] = {c: state.outcomes[c] for c in calls if c in state.outcomes}
        return found

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Drop queued tasks (a running call cannot be interrupted in a thread)."""
        state = self._jobs.get(job)
        if state is None:
            return
        targets = set(state.states) if tasks is None else set(tasks)
        state.cancelled |= targets
        for index in [i for i in state.queue if i in targets]:
            state.queue.remove(index)
            state.set_state(index, TaskStatus(TaskState.CANCELLED))
        self._changed.set()

    async def release(self, job: JobHandle) -> None:
        """Forget the job."""
        self._jobs.pop(job, None)

    async def wait_for_change(self, timeout: float) -> None:
        """Return as soon as a call finishes, or after ``timeout``."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = anyio.Event()

