"""Batch schedulers: one transport, a dialect per scheduler (SLURM, PBS Pro/Torque, SGE).

A ``map`` becomes one array job; every poll cycle runs ONE command on the host for all jobs:
the scheduler's status command for every job id, then a listing of outcome and exit-code files
(states first, so a task seen finished has all its outcomes listed). A task's final state never
depends on the scheduler remembering it: the job script records each task's exit code, and a
job the live status command no longer shows is looked up once in accounting (``sacct``,
``qacct``, ``qstat -x``); if nobody knows it, it resolves as VANISHED instead of hanging.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import shlex
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from .. import worker
from ..errors import ConfigurationError, SubmissionError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ..resources import Resources
from .dialect import Dialect, ParsedStatuses, ScriptRequest, render_script
from .pbs import PBSProDialect, TorqueDialect, detect_pbs_flavor, is_slurm_torque_wrapper
from .remote import RemoteOptions, RemoteTransport, exit_status
from .sge import SGEDialect
from .slurm import SlurmDialect, parse_max_array_size

__all__ = [
    "BatchOptions",
    "BatchTransport",
    "PBSOptions",
    "PBSTransport",
    "SGEOptions",
    "SGETransport",
    "SlurmTransport",
]

log = logging.getLogger("remote_futures")

_MARK = "@@remote_futures-listing@@"
#: A task the scheduler stopped showing is looked up in accounting after this many seconds,
#: and declared VANISHED if accounting does not know it either after this many more.
_MISSING_GRACE = 5.0
_VANISHED_AFTER = 60.0


@dataclasses.dataclass(frozen=True)
class BatchOptions(RemoteOptions):
    """Options of the batch schedulers: connection and layout, plus the default resources."""

    resources: Resources = dataclasses.field(default_factory=Resources)

    @staticmethod
    def convert_resources(value: Any) -> Resources:
        """A :class:`Resources`, or a table of its fields (``cores``/``queue`` accepted)."""
        if isinstance(value, Resources):
            return value
        if isinstance(value, dict):
            return Resources.from_mapping(value)
        raise ConfigurationError(f"must be a Resources or a table of resources, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PBSOptions(BatchOptions):
    """``pbs`` options: ``flavor`` is detected from ``qstat --version`` unless given."""

    flavor: Literal["auto", "pbspro", "torque"] = "auto"


@dataclasses.dataclass(frozen=True)
class SGEOptions(BatchOptions):
    """``sge`` options: the parallel environment for ``cpus > 1`` and the memory resource."""

    parallel_environment: str = "smp"
    memory_resource: str = "h_vmem"


@dataclasses.dataclass(eq=False)
class _Tracking:
    """What the transport remembers of a job between polls."""

    missing_since: dict[int, float] = dataclasses.field(default_factory=dict)
    final: dict[int, TaskStatus] = dataclasses.field(default_factory=dict)
    #: Tasks seen terminal (their output was forwarded).
    ended: set[int] = dataclasses.field(default_factory=set)


class BatchTransport(RemoteTransport):
    """A batch scheduler reached through a shell (SSH, or this machine on a login node)."""

    Options: ClassVar[type[Any]] = BatchOptions
    options: BatchOptions
    poll_interval = (0.5, 5.0)
    #: Array jobs run with the core's grant as their throttle (``%N``, ``-tc``).
    supports_throttle = True
    dialect: Dialect

    def __init__(self, options: BatchOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self._tracking: dict[JobHandle, _Tracking] = {}

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """Array tasks running at once when the user says nothing (the array throttle)."""
        return 64

    async def open(self) -> None:
        """Connect, create the work directory, and learn the scheduler's limits."""
        await super().open()
        await self.detect()

    async def detect(self) -> None:
        """Learn what differs between installations of this scheduler (hook)."""

    # --- submit -------------------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> JobHandle:
        """Upload the job and submit it now, with the core's grant as its array throttle. A
        refusal raises :class:`SubmissionError`; a dropped connection ``TransportError``."""
        job_dir = await self.upload_job(job)
        handle = JobHandle(job_id="", spec=job, location=job_dir)
        await self._sbatch(handle, job.max_concurrent or len(job.tasks))
        self._tracking[handle] = _Tracking()
        return handle

    async def _sbatch(self, handle: JobHandle, throttle: int) -> None:
        """Unpack and submit in one command, never retried: a submission that may have
        happened must not happen twice."""
        job, job_dir = handle.spec, handle.location
        request = ScriptRequest(
            job_name=job.name,
            job_dir=job_dir,
            n_tasks=len(job.tasks),
            resources=job.resources,
            worker_command=self.worker_command(job_dir),
            max_concurrent=throttle if len(job.tasks) > 1 else None,
        )
        script_path = posixpath.join(job_dir, "job.sh")
        await self.shell.write_file(script_path, render_script(self.dialect, request).encode(),
                                    mode=0o700)
        submit = shlex.join(self.dialect.submit_argv(request, script_path))
        command = f"cd {shlex.quote(job_dir)} && {self.unpack_command(job_dir)} && {submit}"
        result = await self.shell.run(command, retry=False)
        if not result.ok:
            said = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise SubmissionError(
                f"{self.name} refused the job on {self.shell.label}: {said}",
                command=submit, stderr=result.stderr,
            )
        handle.job_id = self.dialect.parse_submit(result.stdout)
        log.info("submitted %s: %s job %s with %d task(s), %d at a time", job.name, self.name,
                 handle.job_id, len(job.tasks), throttle)

    # --- poll ---------------------------------------------------------------------------------

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """One command for all jobs: the scheduler's status, then the job directories."""
        statuses: dict[JobHandle, JobStatus] = {}
        ids = [handle.job_id for handle in jobs]
        status_command = shlex.join(self.dialect.status_argv(ids))
        command = (
            f"{status_command} 2>/dev/null; echo {_MARK}; "
            f"{self.listing_command([h.location for h in jobs])}"
        )
        result = await self.shell.run(command)
        live_text, _, listing_text = result.stdout.partition(_MARK)
        live = self.dialect.parse_status(live_text, ids)
        listing = self.parse_listing(listing_text)
        now = time.monotonic()
        lookups: list[JobHandle] = []
        ended: dict[JobHandle, set[int]] = {}
        for handle in jobs:
            tracking = self._tracking.setdefault(handle, _Tracking())
            exits = listing.exits.get(handle.location, {})
            started = listing.started.get(handle.location, set())
            seen = live.get(handle.job_id, {})
            tasks: dict[int, TaskStatus] = {}
            for task in range(len(handle.spec.tasks)):
                status = self._task_status(task, len(handle.spec.tasks) == 1, exits, seen,
                                           tracking)
                # Started says running only while the scheduler still lists the task as
                # pending: a task it no longer lists must go through accounting instead.
                if task in started and status is not None and status.state is TaskState.PENDING:
                    status = TaskStatus(TaskState.RUNNING, "started")
                if status is None:
                    first = tracking.missing_since.setdefault(task, now)
                    if now - first > _MISSING_GRACE:
                        lookups.append(handle)
                    if now - first > _MISSING_GRACE + _VANISHED_AFTER:
                        status = TaskStatus(
                            TaskState.VANISHED,
                            f"{self.name} no longer knows the job and it left no exit record",
                        )
                else:
                    tracking.missing_since.pop(task, None)
                if status is not None:
                    tasks[task] = status
                    if status.state.terminal and task not in tracking.ended:
                        tracking.ended.add(task)
                        ended.setdefault(handle, set()).add(task)
            statuses[handle] = JobStatus(
                tasks, frozenset(listing.outcomes.get(handle.location, set()))
            )
        if lookups:
            await self._lookup_final(list(dict.fromkeys(lookups)))
        if ended:
            await self.forward_output(ended, listing)
        return statuses

    @staticmethod
    def _task_status(
        task: int,
        single: bool,
        exits: dict[int, int],
        seen: dict[int | None, TaskStatus],
        tracking: _Tracking,
    ) -> TaskStatus | None:
        live = seen.get(task)
        job_level = seen.get(None)
        # A job-level line speaks for every task of a plain job, and for tasks of an array only
        # while it is not final: the Torque wrappers show a whole array under one id whose 'C'
        # says nothing about tasks still running. Such tasks wait for their exit file or for
        # accounting.
        if live is None and job_level is not None and (single or not job_level.state.terminal):
            live = job_level
        if task in exits:
            recorded = exit_status(exits[task])
            # The scheduler's word is richer when it ended the task itself (timeout, OOM...).
            if live is not None and live.state.terminal and live.state not in (
                TaskState.COMPLETED, TaskState.FAILED
            ):
                return dataclasses.replace(live, exit_code=recorded.exit_code)
            return recorded
        if live is not None:
            if live.state is TaskState.COMPLETED and live.exit_code is None:
                # e.g. PBS 'C'/'F' without an exit status and no exit file: the script did not
                # reach its end, so the task did not complete normally.
                return TaskStatus(TaskState.FAILED, live.raw_state or "ended", signal=live.signal)
            return live
        return tracking.final.get(task)

    async def _lookup_final(self, handles: list[JobHandle]) -> None:
        ids = [handle.job_id for handle in handles]
        argv = self.dialect.final_status_argv(ids)
        if argv is None:
            return
        result = await self.shell.run(shlex.join(argv))
        final: ParsedStatuses = self.dialect.parse_final_status(result.stdout, ids)
        for handle in handles:
            known = final.get(handle.job_id, {})
            tracking = self._tracking[handle]
            for task in range(len(handle.spec.tasks)):
                status = known.get(task) or known.get(None)
                if status is not None and status.state.terminal:
                    tracking.final[task] = status

    # --- the rest -----------------------------------------------------------------------------

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Cancel the job or some of its array tasks with the scheduler's own command."""
        if not job.job_id:
            return  # never submitted
        command = shlex.join(self.dialect.cancel_argv(job.job_id, tasks))
        if tasks is not None:
            # Not every scheduler can cancel one queued array task (the Torque wrappers
            # cannot): the worker also skips a task with a cancel marker.
            command = f"{self._cancel_markers(job, set(tasks))}; {command}"
        result = await self.shell.run(command)
        if not result.ok:
            log.info("cancelling job %s: %s", job.job_id, result.stderr.strip())

    @staticmethod
    def _cancel_markers(job: JobHandle, tasks: set[int]) -> str:
        return "touch " + " ".join(
            shlex.quote(posixpath.join(job.location, worker.CANCEL_NAME.format(t)))
            for t in sorted(tasks)
        )

    def extra_log_files(self, job: JobHandle, task: int) -> list[str]:
        """The scheduler's own log of the task (timeouts and kills are reported there)."""
        scheduler_log = getattr(self.dialect, "scheduler_log", None)
        if scheduler_log is None:
            return []
        single = len(job.spec.tasks) == 1
        return [scheduler_log(job.location, job.job_id, None if single else task)]

    async def release(self, job: JobHandle) -> None:
        """Forget the job and remove its directory (per ``cleanup``). Tasks the scheduler may
        still hold (cancelled calls whose cancel is in flight) are cancelled first: nothing
        is wanted from them, and without their directory they would fail or linger."""
        tracking = self._tracking.pop(job, None)
        if job.job_id and (tracking is None or len(tracking.ended) < len(job.spec.tasks)):
            await self.cancel(job)
        await super().release(job)


class SlurmTransport(BatchTransport):
    """SLURM: ``sbatch --parsable``, ``squeue``, ``sacct``, ``scancel``."""

    name = "slurm"
    Options = BatchOptions

    def __init__(self, options: BatchOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.dialect = SlurmDialect()

    async def detect(self) -> None:
        """MaxArraySize: larger maps are split into several array jobs."""
        result = await self.shell.run("scontrol show config 2>/dev/null | grep -i MaxArraySize")
        self.max_tasks_per_job = max(1, parse_max_array_size(result.stdout) - 1)


class PBSTransport(BatchTransport):
    """PBS Pro / OpenPBS and Torque (also SchedMD's Torque wrappers over SLURM)."""

    name = "pbs"
    Options = PBSOptions
    options: PBSOptions
    max_tasks_per_job = 10000

    def __init__(self, options: PBSOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.dialect = TorqueDialect() if options.flavor == "torque" else PBSProDialect()

    async def detect(self) -> None:
        """Which PBS this is, unless the ``flavor`` option says."""
        if self.options.flavor != "auto":
            return
        result = await self.shell.run("qstat --version 2>&1; true")
        if is_slurm_torque_wrapper(result.stdout):
            self.dialect = TorqueDialect(list_subjobs=False)
        elif detect_pbs_flavor(result.stdout) == "torque":
            self.dialect = TorqueDialect()
        else:
            self.dialect = PBSProDialect()
        log.info("pbs on %s: %s dialect", self.shell.label, self.dialect.name)


class SGETransport(BatchTransport):
    """Son of Grid Engine / Univa-style: ``qsub -terse``, ``qstat -xml``, ``qacct``, ``qdel``."""

    name = "sge"
    Options = SGEOptions
    options: SGEOptions
    max_tasks_per_job = 75000

    def __init__(self, options: SGEOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.dialect = SGEDialect(
            memory_resource=options.memory_resource,
            parallel_environment=options.parallel_environment,
        )
