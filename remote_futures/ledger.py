"""Per-call bookkeeping of the core: pure and synchronous, no I/O and no event loop.

A :class:`Call` is one pickled call and its future; a :class:`Task` is an array task (one or
more calls run in order); a :class:`Job` is one submission. The engine feeds each
:class:`~remote_futures.jobs.JobStatus` a transport reports to :func:`apply_status`, which
updates the job and says what to do next (mark futures running, fetch outcomes, explain tasks
that ended without an outcome). The cost of applying a status is proportional to what it
reports, so a transport that reports only what changed makes a poll cycle cost what changed.

Memory: a settled call lets go of its future, its pickled bytes and its job, so a finished
future pins nothing but itself, and a result is freed as soon as the caller drops its future.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

from .jobs import JobHandle, JobStatus, TaskState, TaskStatus
from .resources import Resources

__all__ = ["Call", "Job", "StatusEffects", "Task", "apply_status"]


@dataclasses.dataclass(eq=False, slots=True)
class Call:
    """One pickled call and the future that will receive its outcome."""

    future: concurrent.futures.Future[Any] | None
    #: The pickled call; dropped once it is encoded into its task's payload.
    blob: bytes | None
    job: Job | None = None
    task: Task | None = None
    #: The call's number within its job (outcome files are named by it); -1 until planned.
    index: int = -1
    #: True until the core has counted the call's end (settled by the core, or cancelled).
    unsettled: bool = True
    #: The call's position in its executor's submission order (the session ledger's key);
    #: -1 when nobody numbered it. A retried call keeps its number.
    seq: int = -1

    def forget(self) -> None:
        """Let go of everything: the future (its result belongs to the caller now), the bytes
        and the job, so that a done future that still refers to this call pins nothing."""
        self.unsettled = False
        self.future = None
        self.blob = None
        self.job = None
        self.task = None


@dataclasses.dataclass(eq=False, slots=True)
class Task:
    """An array task of a job and the calls it runs, in order."""

    index: int
    calls: list[Call]
    state: TaskState = TaskState.PENDING
    status: TaskStatus | None = None
    #: Whether its futures were marked running (once, at the first state the scheduler shows
    #: after PENDING, or at its end if it ran between two polls).
    marked_running: bool = False
    #: Single submits grouped in one task: if the task's process ends during a call, the
    #: calls after it never started and run again in a new task (each submit stands alone).
    rerun_unstarted: bool = False


@dataclasses.dataclass(eq=False)
class Job:
    """One submission: its tasks, the slots the core granted it, and what is still open."""

    tasks: list[Task]
    resources: Resources
    code: Any = None
    handle: JobHandle | None = None
    #: Task slots the core granted this job and has not taken back yet.
    grant: int = 0
    #: Tasks not reported terminal yet.
    unended: int = 0
    #: Calls not settled (nor cancelled) yet; the job is released when this reaches 0.
    unsettled: int = 0
    #: True once the transport was told to forget the job.
    released: bool = False
    #: Whether the transport refused to raise this job's throttle (do not ask again).
    throttle_fixed: bool = False
    #: Unsettled calls by number; settled and cancelled ones are removed.
    by_index: dict[int, Call] = dataclasses.field(default_factory=dict)
    #: Calls reported ready whose outcome was not read yet (retried next cycle).
    ready: set[int] = dataclasses.field(default_factory=set)

    def open_calls(self) -> list[Call]:
        """The calls whose future the core has not settled yet."""
        return [call for task in self.tasks for call in task.calls if call.unsettled]

    def held_slots(self) -> int:
        """The slots this job still needs: one per unended task, at most its grant."""
        return min(self.grant, self.unended) if not self.released else 0


@dataclasses.dataclass
class StatusEffects:
    """What applying one status to a job asks the engine to do."""

    changed: bool = False
    #: Calls whose futures go from pending to running.
    started: list[Call] = dataclasses.field(default_factory=list)
    #: Tasks that became terminal in this status (their open calls may need explaining).
    ended: list[Task] = dataclasses.field(default_factory=list)


def apply_status(job: Job, status: JobStatus) -> StatusEffects:
    """Record the task states and ready outcomes of ``status`` in ``job``.

    Tasks missing from ``status`` keep their last known state (a transport may report only what
    changed, or may not have seen every task this time). Terminal states are final.
    """
    effects = StatusEffects()
    for index, seen in status.tasks.items():
        if index >= len(job.tasks):
            continue
        task = job.tasks[index]
        if seen.state == task.state or task.state.terminal:
            continue
        task.state = seen.state
        task.status = seen
        effects.changed = True
        if not task.marked_running:
            task.marked_running = True
            effects.started.extend(call for call in task.calls if call.unsettled)
        if seen.state.terminal:
            job.unended -= 1
            effects.ended.append(task)
    for index in status.ready_calls:
        if index in job.by_index:
            job.ready.add(index)
    return effects
