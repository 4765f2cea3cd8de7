"""The transport plug-in: how jobs are started, watched, read back and cancelled somewhere.

Small on purpose, like httpx's transports: the core owns every future and every decision about
them; a transport only moves jobs and bytes. It never assumes a filesystem shared with the
client: job payloads go in as bytes (:class:`~remote_futures.jobs.JobSpec`) and outcomes come
back as bytes, so Kubernetes Jobs or cloud VMs fit the same interface as SLURM over SSH.

Admission belongs to the core: it holds the one limiter of ``max_workers`` task slots and
submits a job only when it has granted it slots (``JobSpec.max_concurrent``). A transport never
queues or defers a submission: :meth:`Transport.submit` means "handed to the scheduler (or
started) now, or raise". Transports with a native throttle (an array's ``%N``, SGE's ``-tc``) set
``supports_throttle`` and honour the grant, which may be smaller than the job; for the others the
core only submits jobs whose every task fits the grant.

Life cycle, driven by the core::

    async with transport:              # open(): connect, create work dirs
        await transport.prepare()      # once: upload the worker, sync the environment
        handle = await transport.submit(spec)
        statuses = await transport.poll([handle, ...])        # one round trip for all jobs
        outcomes = await transport.fetch_outcomes({handle: [call, ...]})
        await transport.release(handle)                       # clean up a finished job
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio

from ..errors import ConfigurationError
from ..jobs import JobHandle, JobSpec, JobStatus
from ..output import OutputForwarder
from ..resources import Resources

__all__ = ["Transport", "build_options"]


class Transport(abc.ABC):
    """Base class of every transport. Subclasses set ``name`` and ``Options``."""

    #: The name users pass to ``RemoteExecutor`` (``local``, ``slurm``...).
    name: ClassVar[str]
    #: The frozen dataclass of this transport's options; its fields are the valid option names.
    Options: ClassVar[type[Any]]
    #: Poll interval bounds in seconds: the core starts at the first and backs off to the second
    #: while nothing changes.
    poll_interval: tuple[float, float] = (0.5, 5.0)
    #: How long the core waits after a ``submit`` for more to arrive, so that a burst of
    #: submissions becomes one array job (schedulers launch one job far faster than many).
    coalesce_window: float = 0.02
    #: The most tasks one job may hold (a scheduler's MaxArraySize); the core splits larger maps.
    max_tasks_per_job: int = 1000
    #: Whether the transport can run a job with fewer tasks at once than it has (an array
    #: throttle): then the core may grant a job fewer slots than tasks (``JobSpec.max_concurrent``)
    #: and the transport must never run more of its tasks at once. Without it, the core submits
    #: only jobs all of whose tasks it can grant a slot, splitting larger ones.
    supports_throttle: bool = False
    #: Whether task payloads may come as :class:`~remote_futures.jobs.Pickled`, their large
    #: buffers beside them (sent as they are, never copied into the payload), and outcomes may
    #: come back the same way. Otherwise payloads are self-contained bytes.
    out_of_band: bool = False
    #: Where what the calls print goes (the executor sets its own, from ``output=``);
    #: transports that can show it while calls run forward it there.
    output: OutputForwarder = OutputForwarder()

    def __init__(self, options: Any, *, max_workers: int) -> None:
        self.options = options
        self.max_workers = max_workers
        #: Set by the core. A transport that commits a task before it is started (sends it to a
        #: worker still busy with another, which starts it without asking again) calls
        #: ``claim(job_name, task_index)`` first: it marks the task's futures running, so that
        #: ``Future.cancel()`` can no longer succeed for a call that will run anyway (as
        #: ``ProcessPoolExecutor`` marks the calls it moves to its call queue). False means
        #: every call of the task was cancelled: the task must not be sent.
        self.claim: Callable[[str, int], bool] | None = None
        #: Set by the executor when the user gave no ``max_workers``: a transport that can
        #: learn what the cluster runs now may change ``max_workers`` in :meth:`open` (the
        #: core reads it once the transport is open).
        self.fit_max_workers = False

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """``max_workers`` when the user gives none: this machine's CPU count."""
        return os.cpu_count() or 1

    @property
    def describe(self) -> str:
        """A short description for messages (``slurm on user@host:22``)."""
        return self.name

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create what the transport needs. Errors here break the executor."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource. Jobs still running are left alone unless cancelled first.
        Runs when the executor shuts down, possibly under cancellation: shield what must finish
        and bound it in time."""

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Once, before the first submission: upload the worker, sync the environment."""

    @property
    def ships_user_code(self) -> bool:
        """Whether the caller's own modules must travel with each job (the remote cannot
        import them): ``JobSpec.code``. The local transport shares ``sys.path`` instead."""
        return True

    @property
    def main_by_reference(self) -> bool:
        """Whether the top-level functions of the caller's main script may travel by name
        (``__main__.f``) because every worker imports that script, as ``ProcessPoolExecutor``'s
        spawned workers do. False (by value) unless the transport knows it: a remote host
        does not have the script."""
        return False

    def default_chunksize(self, n_calls: int) -> int:
        """Calls per array task when ``map`` is given no chunksize: by default, about as many
        tasks as can run at once, since every job costs the scheduler time to launch."""
        return max(1, math.ceil(n_calls / max(1, self.max_workers)))

    def submit_chunks(self, n_calls: int) -> list[int] | None:
        """How ``n_calls`` single ``submit``s that arrived together (a loop of them) are cut
        into tasks: the number of calls of each task in turn (a task runs its calls one after
        the other, as a ``map`` chunk), or None for one call per task (the default: a pool
        hands each call to a free worker anyway)."""
        return None

    def job_rules(
        self, resources: Resources
    ) -> tuple[int, Callable[[int], list[int] | None] | None]:
        """How the core plans jobs of ``resources``: the most tasks one job may hold, and how
        a burst of single submits is cut into tasks. ``max_tasks_per_job`` and
        :meth:`submit_chunks` whatever the resources, unless a transport runs some resources
        another way (a pilot pool runs other resources than its pilots' as array jobs)."""
        return self.max_tasks_per_job, self.submit_chunks

    @abc.abstractmethod
    async def submit(self, job: JobSpec) -> JobHandle:
        """Start ``job`` now: hand it to the scheduler (or start its processes) before returning.

        Never queue it for later: the core has already admitted it, granting it
        ``job.max_concurrent`` slots (None: one per task). Raise
        :class:`~remote_futures.errors.SubmissionError` with the scheduler's message if it is
        refused, :class:`~remote_futures.errors.TransportError` if the host could not be reached;
        either way the core fails the job's calls and takes its slots back.
        """

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Let ``job`` (submitted with a smaller grant) run up to ``max_concurrent`` tasks at once.

        Called by the core when slots free up while a throttled job still has more tasks than
        its grant. Return True if the transport raised the limit, False if it cannot (the
        default; the core then keeps the extra slots for other jobs). Only meaningful when
        ``supports_throttle`` is set.
        """
        return False

    @abc.abstractmethod
    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """The state of every task of ``jobs``, learned in as few round trips as possible.

        Contract: when a task is reported terminal, every outcome it wrote is in
        ``ready_calls`` of the same status (learn states first, then list outcomes).
        """

    @abc.abstractmethod
    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """The outcome envelopes of the given calls, which ``poll`` reported ready."""

    @abc.abstractmethod
    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Cancel the whole job, or only the given array tasks. Unknown or finished: no error."""

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """The last lines the task wrote to stderr (and the scheduler's own messages)."""
        return ""

    async def release(self, job: JobHandle) -> None:  # noqa: B027 - optional hook
        """Forget a job whose outcomes were all read: remove its files per the cleanup policy."""

    async def wait_for_change(self, timeout: float) -> None:
        """Sleep until something may have changed, at most ``timeout`` seconds. Transports that
        learn of progress by events (the local one) return early."""
        await anyio.sleep(timeout)


def build_options(cls: type[Any], values: Mapping[str, Any], *, where: str) -> Any:
    """Build the options dataclass ``cls`` from ``values``, checking names and simple types.

    ``where`` says where the values came from (keyword arguments, a profile in a file) so that
    the error names it.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in {where}; valid options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        convert = getattr(cls, f"convert_{key}", None)
        if convert is not None:
            try:
                value = convert(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"option {key!r} in {where}: {exc}") from None
        elif not _matches(value, hints[key]):
            raise ConfigurationError(
                f"option {key!r} in {where} must be {_type_name(hints[key])}, got {value!r}"
            )
        converted[key] = value
    return cls(**converted)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "")
