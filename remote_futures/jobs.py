"""The job model shared by the core and every transport: specs going out, statuses coming back.

A *job* is what one scheduler submission creates. It holds one or more *tasks* (the elements of
an array job); each task runs one or more *calls* in order (``map``'s ``chunksize``). Calls are
numbered across the whole job; a call's outcome is fetched by that number.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from .resources import Resources

__all__ = [
    "CodeBundle",
    "JobHandle",
    "JobSpec",
    "JobStatus",
    "Pickled",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "buffers_of",
]


class TaskState(enum.Enum):
    """A task's state, normalized across schedulers (Slurm's names, the richest set)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    #: The scheduler no longer knows the job and it left no exit record.
    VANISHED = "VANISHED"

    @property
    def terminal(self) -> bool:
        """Whether the task can no longer change state."""
        return self not in (TaskState.PENDING, TaskState.RUNNING)


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    """What a transport learned of one task in one poll."""

    state: TaskState
    #: The scheduler's own word for the state (``"CANCELLED by 1001"``, ``"C"``, ``"r"``...).
    raw_state: str = ""
    exit_code: int | None = None
    signal: int | None = None


class Pickled(bytes):
    """A pickle whose large buffers travel beside it (protocol 5, out of band), in order:
    a pickled call, a task payload, an outcome. It is the pickle's ``bytes``, so it goes
    wherever bytes go; whoever sends or stores it must carry ``buffers`` too (a pickle sent
    without them cannot be loaded). The buffers are views of the caller's objects, not
    copies of them."""

    buffers: tuple[Any, ...] = ()

    @staticmethod
    def of(data: bytes, buffers: Any) -> bytes:
        """``data``, with ``buffers`` if there are any (plain bytes otherwise)."""
        buffers = tuple(buffers)
        if not buffers:
            return data
        made = Pickled(data)
        made.buffers = buffers
        return made


def buffers_of(data: bytes) -> tuple[Any, ...]:
    """The buffers that travel beside ``data`` (none for plain bytes)."""
    return data.buffers if isinstance(data, Pickled) else ()


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One array task: its input payload (the ``task-<i>.in`` file) and the calls it runs.
    For a transport that takes buffers beside the payload (``Transport.out_of_band``), the
    payload may be :class:`Pickled`."""

    index: int
    payload: bytes
    call_indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CodeBundle:
    """The caller's own modules as a zip, content-named, for a remote ``sys.path``."""

    #: ``<sha256 prefix>.zip``: the same code is uploaded once per host.
    name: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a transport needs to start a job. It carries bytes, never paths, so that
    transports without a shared filesystem (Kubernetes, cloud VMs) can ship it through an API.
    Once the job is submitted the core replaces a handle's spec by :meth:`without_payloads`, so
    that the payloads are not kept in memory while the job runs."""

    name: str
    tasks: tuple[TaskSpec, ...]
    resources: Resources = dataclasses.field(default_factory=Resources)
    #: The slots the core granted this job: at most this many of its tasks may run (or wait in
    #: the scheduler's queue) at once, e.g. an array throttle. None: one slot per task (every task
    #: may run at once). Smaller than the number of tasks only for transports that declare
    #: ``supports_throttle``.
    max_concurrent: int | None = None
    #: The caller's own modules, which the worker puts first on ``sys.path`` (remote only).
    code: CodeBundle | None = None

    def without_payloads(self) -> JobSpec:
        """This spec with empty task payloads and no code bundle (what a running job needs)."""
        return dataclasses.replace(
            self,
            tasks=tuple(TaskSpec(t.index, b"", t.call_indices) for t in self.tasks),
            code=None,
        )


@dataclasses.dataclass(eq=False)
class JobHandle:
    """A submitted job, as the transport that submitted it knows it. Hashed by identity."""

    job_id: str
    spec: JobSpec
    #: Where the job's files live (a directory on the remote host, a pod name...).
    location: str



@dataclasses.dataclass(frozen=True)
class JobStatus:
    """One poll's view of a job: the state of each task the transport could see, and which
    calls' outcomes are ready to fetch. A task missing from ``tasks`` was not seen this time."""

    tasks: dict[int, TaskStatus]
    ready_calls: frozenset[int] = frozenset()
