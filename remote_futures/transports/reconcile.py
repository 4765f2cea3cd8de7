"""Status reconciliation of batch jobs, as a pure function: no I/O, the clock is an argument.

Each poll gives three partial, lagging views of a job's tasks:

- the scheduler's live status command (``squeue``, ``qstat``), which may fail (controller
  restart, failover: *unknown*, not "gone") and forgets finished jobs after a while;
- the listing of the job directory (exit files, outcome files, started markers), which on a
  shared filesystem (NFS) lags what compute nodes wrote by seconds;
- accounting (``sacct``, ``qacct``), asked only for tasks the live command stopped showing.

:func:`reconcile` turns them, with what was remembered from earlier polls, into the task states
the core acts on. The rules, in order:

1. An exit file is the task's own word: it ends the task (the scheduler's richer word wins when
   it killed the task itself: TIMEOUT, OUT_OF_MEMORY...). A task that exited 0 but whose outcome
   files are not all listed yet waits for them up to ``latency_wait``.
2. A task once reported terminal stays so.
3. A failed status command changes nothing (the last known states stand), except that a task
   already waiting out its latency window may still end when the window closes.
4. A live non-terminal state is reported (PENDING with a started marker is RUNNING). A pending
   reason that can never clear (the dialect's ``never_runs``) ends the task after
   ``never_runs_grace``, and the transport cancels it at the scheduler.
5. A terminal state from the scheduler or from accounting, without an exit file, starts a
   latency window: the task is reported only when the window closes with still no exit file
   (files written on a compute node reach the login node late). A task that was killed
   (``scancel``/``qdel``: CANCELLED, or ended by SIGKILL/SIGTERM such as SGE's exit status 137
   or PBS's 271) leaves no exit file: its window is ``kill_wait``, only long enough for the
   results of calls it finished before to arrive. A requeued task (NODE_FAIL, PREEMPTED, then
   PENDING again) closes its window and is followed, not ended.
6. A task the live command no longer shows is looked up in accounting after ``missing_grace``;
   if nobody knows it and no exit file appears, it is VANISHED after ``vanish_after`` more.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence, Set

from ..jobs import TaskState, TaskStatus
from .remote import exit_status

__all__ = ["JobMemory", "Observation", "Rules", "Verdict", "reconcile", "scheduler_done"]


@dataclasses.dataclass(frozen=True)
class Rules:
    """The time limits of reconciliation, in seconds."""

    #: How long a task the scheduler says ended may take to show its exit and outcome files.
    latency_wait: float = 60.0
    #: A task the live status command stopped showing is looked up in accounting after this.
    missing_grace: float = 5.0
    #: ...and declared VANISHED when nobody knows it this much later still.
    vanish_after: float = 60.0
    #: A task pending for a reason that can never clear is ended after this.
    never_runs_grace: float = 120.0
    #: How long a task the scheduler says was killed (cancelled; SIGKILL, SIGTERM) may take
    #: to show its files (at most ``latency_wait``): no exit file comes from a killed task.
    kill_wait: float = 5.0


@dataclasses.dataclass(eq=False)
class JobMemory:
    """What reconciliation remembers of one job between polls (the transport keeps it)."""

    #: When a source first said the task no longer runs, while no exit file was listed.
    ended_since: dict[int, float] = dataclasses.field(default_factory=dict)
    #: The terminal state the scheduler or accounting gave for such a task.
    evidence: dict[int, TaskStatus] = dataclasses.field(default_factory=dict)
    #: Terminal states learned from accounting (filled by the transport's lookups).
    final: dict[int, TaskStatus] = dataclasses.field(default_factory=dict)
    #: When the task was first seen pending for a reason that can never clear.
    stuck_since: dict[int, float] = dataclasses.field(default_factory=dict)
    #: Tasks reported terminal, and how: a task never comes back from the end.
    reported: dict[int, TaskStatus] = dataclasses.field(default_factory=dict)
    #: Tasks whose calls the user cancelled (their missing outcomes are not waited for).
    cancelled: set[int] = dataclasses.field(default_factory=set)
    #: The pending reasons last logged for this job.
    reasons: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Observation:
    """One poll's view of one job."""

    #: The call indices each task runs, by task index (so ``len(calls)`` is the task count).
    calls: Sequence[Sequence[int]]
    #: The dialect's parsed live statuses of this job (key None: the whole job), or None when
    #: the status command failed.
    live: Mapping[int | None, TaskStatus] | None
    exits: Mapping[int, int] = dataclasses.field(default_factory=dict)
    outcomes: Set[int] = frozenset()
    started: Set[int] = frozenset()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the transport reports and does after one poll of one job."""

    #: The states to report; a task left out keeps its last reported state.
    tasks: dict[int, TaskStatus]
    #: Tasks reported terminal for the first time (their output is forwarded).
    newly_ended: frozenset[int]
    #: Whether accounting should be asked about this job.
    lookup: bool
    #: Tasks ended here that the scheduler still holds: cancel them there.
    cancel: frozenset[int]
    #: Pending reasons to log, when they changed since the last poll.
    reasons: frozenset[str] | None


def _never(status: TaskStatus) -> str | None:
    return None


def reconcile(
    observed: Observation,
    memory: JobMemory,
    now: float,
    rules: Rules = Rules(),
    never_runs: Callable[[TaskStatus], str | None] = _never,
) -> Verdict:
    """The task states of one job after one poll (see the module docstring for the rules).
    Updates ``memory``; pure otherwise."""
    n_tasks = len(observed.calls)
    single = n_tasks == 1
    live = observed.live
    job_level = live.get(None) if live is not None else None
    tasks: dict[int, TaskStatus] = {}
    newly: set[int] = set()
    cancel: set[int] = set()
    lookup = False
    reasons: set[str] = set()
    for task in range(n_tasks):
        if task in memory.reported:
            tasks[task] = memory.reported[task]
            continue
        seen = live.get(task) if live is not None else None
        # A job-level line speaks for every task of a plain job, and for tasks of an array
        # only while it is not final: the Torque wrappers show a whole array under one id
        # whose 'C' says nothing about tasks still running.
        if seen is None and job_level is not None and (single or not job_level.state.terminal):
            seen = job_level
        status: TaskStatus | None
        if task in observed.exits:
            status = _from_exit_file(observed.exits[task], seen)
            wanted = set(observed.calls[task]) - set(observed.outcomes)
            if (status.state is TaskState.COMPLETED and wanted
                    and task not in memory.cancelled):
                since = memory.ended_since.setdefault(task, now)
                if now - since < rules.latency_wait:
                    status = None  # its results are on their way (NFS)
        elif live is None:
            status = _window_closed(task, memory, now, rules)
        elif seen is not None and not seen.state.terminal:
            # Alive (again, after a requeue): whatever said it ended is out of date.
            memory.ended_since.pop(task, None)
            memory.evidence.pop(task, None)
            memory.final.pop(task, None)
            status = seen
            if seen.state is TaskState.PENDING:
                if task in observed.started:
                    status = TaskStatus(TaskState.RUNNING, "started")
                else:
                    reason = never_runs(seen)
                    if reason is None:
                        memory.stuck_since.pop(task, None)
                        if seen.raw_state.endswith(")"):  # "PENDING (Resources)"
                            reasons.add(seen.raw_state)
                    else:
                        stuck = memory.stuck_since.setdefault(task, now)
                        if now - stuck >= rules.never_runs_grace:
                            status = TaskStatus(TaskState.FAILED, f"never runs: {reason}")
                            cancel.add(task)
                        else:
                            reasons.add(seen.raw_state or reason)
        else:
            # The scheduler says it ended, or no longer shows it: wait for its files.
            since = memory.ended_since.setdefault(task, now)
            if seen is not None:
                memory.evidence[task] = seen
            elif task in memory.final:
                memory.evidence[task] = memory.final[task]
            elif now - since >= rules.missing_grace:
                lookup = True
            status = _window_closed(task, memory, now, rules)
        if status is None:
            continue
        tasks[task] = status
        if status.state.terminal:
            memory.reported[task] = status
            memory.ended_since.pop(task, None)
            memory.evidence.pop(task, None)
            memory.stuck_since.pop(task, None)
            newly.add(task)
    changed: frozenset[str] | None = None
    if live is not None and frozenset(reasons) != memory.reasons:
        memory.reasons = changed = frozenset(reasons)
    return Verdict(tasks, frozenset(newly), lookup, frozenset(cancel), changed)


def scheduler_done(n_tasks: int, memory: JobMemory) -> bool:
    """Whether no task of the job can still be running: each one was reported ended, was
    cancelled by the user, or the scheduler said it ended (its files may still be on their
    way, but nobody waits for them any more)."""
    return all(
        task in memory.reported or task in memory.cancelled or task in memory.ended_since
        for task in range(n_tasks)
    )


def _from_exit_file(code: int, seen: TaskStatus | None) -> TaskStatus:
    recorded = exit_status(code)
    # The scheduler's word is richer when it ended the task itself (timeout, OOM...).
    if seen is not None and seen.state.terminal and seen.state not in (
        TaskState.COMPLETED, TaskState.FAILED
    ):
        return dataclasses.replace(seen, exit_code=recorded.exit_code)
    return recorded


def _window_closed(task: int, memory: JobMemory, now: float, rules: Rules) -> TaskStatus | None:
    """The task's end, once its latency window closed with no exit file; None until then."""
    since = memory.ended_since.get(task)
    if since is None:
        return None
    evidence = memory.evidence.get(task)
    if evidence is None:
        if now - since >= rules.missing_grace + rules.vanish_after:
            return TaskStatus(
                TaskState.VANISHED,
                "the scheduler no longer knows the job and it left no exit record",
            )
        return None
    wait = min(rules.kill_wait, rules.latency_wait) if _killed(evidence) else rules.latency_wait
    if now - since < wait:
        return None
    if evidence.state is TaskState.COMPLETED:
        # e.g. PBS 'C'/'F' or sacct COMPLETED, and still no exit file after the wait: the
        # script did not record its end, so the task did not complete normally.
        return TaskStatus(
            TaskState.FAILED,
            f"{evidence.raw_state or 'COMPLETED'}, but no exit record appeared",
            exit_code=evidence.exit_code,
            signal=evidence.signal,
        )
    return evidence


#: Signals a task is ended with when it is killed (scancel, qdel, a node's shutdown).
_KILL_SIGNALS = frozenset({int(signal.SIGKILL), int(signal.SIGTERM)})


def _killed(status: TaskStatus) -> bool:
    """Whether the scheduler's word says the task was killed (it then writes no exit file)."""
    return status.state is TaskState.CANCELLED or status.signal in _KILL_SIGNALS
