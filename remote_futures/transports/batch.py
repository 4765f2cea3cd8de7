"""Batch schedulers: one transport, a dialect per scheduler (SLURM, PBS Pro/Torque, SGE).

A ``map`` becomes one array job; every poll cycle runs ONE command on the host for all jobs:
the scheduler's status command for every job id (with its exit status: a failed one means
"unknown", never "gone"), then a listing of exit-code and outcome files, exit files first (so
a task seen finished has all its outcomes listed). What these views mean together is decided
by the pure :mod:`.reconcile`: an exit file ends a task; a scheduler's or accounting's "ended"
without one starts a bounded wait for files still on their way (``latency_wait``); a job
nobody knows any more resolves as VANISHED instead of hanging. Between polls the transport
watches its jobs' directories (``stat``, no scheduler query) and polls again when one changes.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import shlex
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import anyio

from .. import worker
from ..errors import SubmissionError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskStatus
from ..resources import Resources
from . import capacity
from .dialect import Dialect, ParsedStatuses, ScriptRequest, render_script
from .pbs import PBSProDialect, TorqueDialect, detect_pbs_flavor, is_slurm_torque_wrapper
from .reconcile import JobMemory, Observation, Rules, reconcile, scheduler_done
from .remote import (
    UNCOLLECTED,
    PollOutput,
    RemoteOptions,
    RemoteTransport,
    remove_ended_command,
    split_poll_output,
)
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

#: While the status command keeps failing, a warning every this many seconds.
_WARN_EVERY = 300.0
#: Seconds between two looks at the job directories while waiting for the next poll (at
#: least; at most _WATCH_LOOKS looks per wait, so a long wait looks less often).
_WATCH_STEP = 0.05
_WATCH_LOOKS = 20
#: Above this many active jobs, the wait between polls is a plain sleep (a bounded command).
_WATCH_MAX_DIRS = 64
#: ``max_workers`` when the user gives none: the cap on what the free slots may set it to.
_DEFAULT_MAX_WORKERS = 64
#: The most single submits one array task runs in a row. The calls beyond the first
#: ``max_workers`` of a burst are cut into ``max_workers`` tasks (one more round of starts);
#: only a very long burst on few slots, where a task of this many calls would leave too coarse
#: a grain to balance uneven calls, is cut into more.
_SUBMIT_CHUNK_CAP = 1000


def watch_dirs_command(dirs: Sequence[str], steps: int, step: float = _WATCH_STEP) -> str:
    """A POSIX shell command that exits 0 as soon as the modification time of one of
    ``dirs`` changes (or one appears or goes), looking every ``step`` seconds, and exits 3
    after ``steps`` looks without a change."""
    quoted = " ".join(shlex.quote(d) for d in dirs)
    look = f"stat -c %y -- {quoted} 2>&1"
    return (
        f"rf_w=$({look}); rf_i=0; while [ $rf_i -lt {int(steps)} ]; do "
        f"sleep {step:.3f}; [ \"$({look})\" = \"$rf_w\" ] || exit 0; "
        f"rf_i=$((rf_i + 1)); done; exit 3"
    )


@dataclasses.dataclass(frozen=True)
class BatchOptions(RemoteOptions):
    """Options of the batch schedulers: connection and layout, plus the default resources."""

    resources: Resources = dataclasses.field(default_factory=Resources)
    #: Seconds a task the scheduler says ended may take to show its exit and result files
    #: (files written on compute nodes reach the login node late on NFS).
    latency_wait: float = 60.0
    #: Seconds a job pending for a reason that never clears (``BadConstraints``,
    #: ``JobHeldAdmin``, SGE's ``Eqw``...) waits before it is cancelled and its calls fail.
    never_runs_grace: float = 120.0
    #: Seconds the status command may keep failing while calls keep their last known states;
    #: past this, jobs it cannot show are taken for gone (accounting, then VANISHED), so that
    #: a status command that will never work again cannot leave calls pending for ever.
    status_outage_limit: float = 1800.0
    #: ``True``: run calls on warm workers in pilot jobs instead of one array job per ``map``
    #: (see :mod:`remote_futures.transports.pilot`); the options below apply to it only.
    pool: bool = False
    #: Workers per pilot job (each with the ``cpus``/``memory`` of one array task); default 1.
    workers_per_job: int | None = None
    #: Seconds a pilot's worker may stay idle before it leaves (its job ends with its last).
    idle_timeout: float = 300.0
    #: The address the pilots' relay listens on, on the login host: ``0.0.0.0`` (every
    #: interface, so compute nodes can reach it; pilots prove a token), or a narrower one.
    relay_bind: str = "0.0.0.0"
    #: Seconds before the pilot's walltime a worker stops taking calls; default: a tenth of
    #: the walltime, at most 60.
    pilot_margin: float | None = None

    @staticmethod
    def convert_resources(value: Any) -> Resources:
        """A :class:`Resources`, or a table of its fields (``cores``/``queue`` accepted)."""
        return Resources.coerce(value)


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

    #: What status reconciliation remembers between polls.
    memory: JobMemory = dataclasses.field(default_factory=JobMemory)
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
        #: The array throttles raised so far, and one lock per job for raising them.
        self._throttles: dict[JobHandle, int] = {}
        self._throttle_locks: dict[JobHandle, anyio.Lock] = {}
        #: Released jobs whose tasks may still be finishing: removed when they have ended.
        self._finishing: dict[JobHandle, _Tracking] = {}
        self._rules = Rules(latency_wait=options.latency_wait,
                            never_runs_grace=options.never_runs_grace)
        #: Since when the status command fails (None: it answers), and the last warning.
        self._status_failing_since: float | None = None
        self._status_warned = 0.0

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """Array tasks running at once when the user says nothing, until the executor opens and
        learns what the partition can run now (see :meth:`fit_max_workers_to_capacity`)."""
        return _DEFAULT_MAX_WORKERS

    def submit_chunks(self, n_calls: int) -> list[int] | None:
        """A burst of single submits: the first ``max_workers`` calls one per task, so that
        they start at once (and a lone submit, or a few, is not delayed); the rest, which
        would wait for those slots anyway, in about ``max_workers`` more tasks of several
        calls (at most ``_SUBMIT_CHUNK_CAP``), as ``map`` chunks its calls: a scheduler starts
        tasks at a limited rate, a few per second. Calls of a multi-call task can be
        cancelled while it waits for a slot, not once it runs (they all show as running)."""
        slots = max(1, self.max_workers)
        rest = n_calls - slots
        if rest <= 0:
            return None
        size = min(_SUBMIT_CHUNK_CAP, -(-rest // slots))
        if size == 1:
            return None
        return [1] * slots + [size] * (rest // size) + ([rest % size] if rest % size else [])

    async def open(self) -> None:
        """Connect, create the work directory, and learn the scheduler's limits (and, with no
        ``max_workers`` given, what the partition can run now)."""
        await super().open()
        await self.detect()
        if self.fit_max_workers:
            await self.fit_max_workers_to_capacity()

    async def detect(self) -> None:
        """Learn what differs between installations of this scheduler (hook)."""

    async def fit_max_workers_to_capacity(self) -> None:
        """Set ``max_workers`` to the tasks the partition (queue) can start now, from the
        scheduler's summary command, at most :data:`_DEFAULT_MAX_WORKERS` and at least 1. When
        the command fails or its output does not say, the fixed default stays."""
        argv = self.capacity_argv()
        result = await self.shell.run(shlex.join(argv))
        slots = self.parse_capacity(result.stdout) if result.ok else None
        if slots is None:
            log.info("%s on %s: could not learn the free slots (%s); max_workers stays %d",
                     self.name, self.shell.label,
                     (result.stderr.strip() or result.stdout.strip())[-300:] or "no answer",
                     self.max_workers)
            return
        self.max_workers = max(1, min(_DEFAULT_MAX_WORKERS, slots))
        log.info("%s on %s: %d task slot(s) free now; max_workers=%d", self.name,
                 self.shell.label, slots, self.max_workers)

    def capacity_argv(self) -> list[str]:
        """The command that shows what the scheduler can run now (per dialect)."""
        raise NotImplementedError

    def parse_capacity(self, stdout: str) -> int | None:
        """Tasks of this executor's resources that can start now, from the output of
        :meth:`capacity_argv`; None when it does not say."""
        raise NotImplementedError

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
            # Live output: what a call prints reaches its file as it prints it.
            worker_command=("PYTHONUNBUFFERED=1 " if self.output.live else "")
            + self.worker_command(job_dir),
            max_concurrent=throttle if len(job.tasks) > 1 else None,
        )
        script_path = posixpath.join(job_dir, "job.sh")
        await self.shell.write_file(script_path, render_script(self.dialect, request).encode(),
                                    mode=0o700)
        handle.job_id = await self.submit_script(
            request, script_path, before=self.unpack_command(job_dir), what="the job"
        )
        log.debug("submitted %s: %s job %s with %d task(s), %d at a time", job.name, self.name,
                 handle.job_id, len(job.tasks), throttle)

    async def submit_script(
        self, request: ScriptRequest, script_path: str, *, before: str = "", what: str
    ) -> str:
        """Submit the script at ``script_path`` from its job directory (after the shell
        command ``before``, if any) and return the scheduler's job id. One command, never
        retried: a submission that may have happened must not happen twice. A refusal is a
        :class:`SubmissionError` with the scheduler's words, naming ``what`` was refused."""
        submit = shlex.join(self.dialect.submit_argv(request, script_path))
        steps = [f"cd {shlex.quote(request.job_dir)}", *([before] if before else []), submit]
        result = await self.shell.run(" && ".join(steps), retry=False)
        if not result.ok:
            said = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise SubmissionError(
                f"{self.name} refused {what} on {self.shell.label}: {said}",
                command=submit, stderr=result.stderr,
            )
        return self.dialect.parse_submit(result.stdout)

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Let the submitted array run ``max_concurrent`` tasks at once, with the scheduler's
        own command (the dialect's :meth:`~.dialect.Dialect.throttle_argv`). False when the
        scheduler has no such command or refuses it twice: the core keeps the slots for other
        jobs. A dropped connection raises (the core treats that as False too).

        Raises of one job are sent one at a time and never lower the limit: two commands in
        flight at once could otherwise be applied in the wrong order."""
        if not job.job_id or len(job.spec.tasks) < 2:
            return False
        if self.dialect.throttle_argv(job.job_id, max_concurrent) is None:
            return False
        lock = self._throttle_locks.setdefault(job, anyio.Lock())
        async with lock:
            wanted = max(max_concurrent, self._throttles.get(job, 0))
            argv = self.dialect.throttle_argv(job.job_id, wanted)
            assert argv is not None
            for attempt in range(2):
                # Setting a limit twice is harmless: the command may be retried.
                result = await self.shell.run(shlex.join(argv))
                if result.ok:
                    self._throttles[job] = wanted
                    log.debug("%s job %s now runs up to %d tasks at once", self.name,
                              job.job_id, wanted)
                    return True
                log.info("%s job %s: raising its throttle to %d failed: %s", self.name,
                         job.job_id, wanted,
                         (result.stderr.strip() or result.stdout.strip())[-500:])
                if attempt == 0:
                    await anyio.sleep(1.0)  # "Socket timed out" from a busy controller
            return False

    # --- poll ---------------------------------------------------------------------------------

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """One command for all jobs: the scheduler's status, then the job directories. What
        the views mean together is :func:`~.reconcile.reconcile`'s business."""
        statuses: dict[JobHandle, JobStatus] = {}
        # Released jobs whose tasks may still be finishing are watched in the same command,
        # until their directories can go.
        watched = list(jobs) + [h for h in self._finishing if h not in jobs]
        ids = [handle.job_id for handle in watched]
        # What running tasks printed since the last poll is read by the same command.
        tails = self.live_tails(watched)
        command = self.status_and_listing_command(
            shlex.join(self.dialect.status_argv(ids)), [h.location for h in watched]
        )
        if tails:
            command += "; " + self.tail_command(tails)
        result = await self.shell.run(command)
        output = split_poll_output(result.stdout)
        live = self._live_statuses(output, ids)
        listing = self.parse_listing(self.take_tails(tails, output.listing))
        now = time.monotonic()
        lookups: list[JobHandle] = []
        cancels: dict[JobHandle, frozenset[int]] = {}
        verdicts: dict[JobHandle, dict[int, TaskStatus]] = {}
        removable: list[JobHandle] = []
        for handle in watched:
            finishing = self._finishing.get(handle)
            tracking = finishing or self._tracking.setdefault(handle, _Tracking())
            verdict = reconcile(
                Observation(
                    calls=[task.call_indices for task in handle.spec.tasks],
                    live=None if live is None else live.get(handle.job_id, {}),
                    exits=listing.exits.get(handle.location, {}),
                    outcomes=listing.outcomes.get(handle.location, set()),
                    started=listing.started.get(handle.location, set()),
                ),
                tracking.memory, now, self._rules, self.dialect.never_runs,
            )
            if finishing is not None:
                if scheduler_done(len(handle.spec.tasks), finishing.memory):
                    removable.append(handle)
                continue
            if verdict.reasons is not None and verdict.reasons:
                log.info("%s job %s is pending: %s", self.name, handle.job_id,
                         ", ".join(sorted(verdict.reasons)))
            if verdict.lookup:
                lookups.append(handle)
            if verdict.cancel:
                cancels[handle] = verdict.cancel
            verdicts[handle] = verdict.tasks
        if lookups:
            await self._lookup_final(lookups)
        for handle, tasks in cancels.items():
            await self._explain_never_runs(handle, tasks, verdicts[handle])
            log.warning("%s job %s can never start (%s): cancelling it", self.name,
                        handle.job_id, verdicts[handle][min(tasks)].raw_state)
            await self.cancel(handle, None if len(tasks) == len(handle.spec.tasks) else
                              sorted(tasks))
        statuses.update(await self.report(
            verdicts, {handle: self._tracking[handle].ended for handle in verdicts}, listing
        ))
        if removable:
            for handle in removable:
                self._finishing.pop(handle, None)
            quoted = " ".join(shlex.quote(handle.location) for handle in removable)
            result = await self.shell.run(f"rm -rf {quoted}")
            if not result.ok:
                log.info("removing finished job directories: %s", result.stderr.strip())
        return statuses

    async def wait_for_change(self, timeout: float) -> None:
        """Wait for the next poll by watching the active jobs' directories on the host: a
        new file (a task starting, an outcome, an exit code) changes a directory's mtime, and
        the poll follows within a twentieth of the wait (at least 0.05 s) instead of at its
        end. This costs at most 20 ``stat`` commands per wait on the login node, and no
        scheduler query. Directories
        whose changes reach the host late (NFS attribute caching) just make this a sleep."""
        await self.watch_job_dirs(timeout)

    async def watch_job_dirs(self, timeout: float) -> bool:
        """What :meth:`wait_for_change` does; True if a job directory changed."""
        dirs = [handle.location for handle in self._tracking]
        step = max(_WATCH_STEP, timeout / _WATCH_LOOKS)
        steps = int(timeout / step)
        if not dirs or len(dirs) > _WATCH_MAX_DIRS or steps < 2:
            await anyio.sleep(timeout)
            return False
        start = anyio.current_time()
        try:
            command = watch_dirs_command(dirs, steps, step)
            result = await self.shell.run(command, timeout=timeout + 5)
            changed = result.returncode == 0
        except Exception as exc:  # a failed watch is only a sleep; the poll reports faults
            log.debug("watching job directories failed: %r", exc)
            changed = False
        if not changed:
            await anyio.sleep(max(0.0, timeout - (anyio.current_time() - start)))
        return changed

    def _live_statuses(self, output: PollOutput, ids: list[str]) -> ParsedStatuses | None:
        """The parsed live statuses, or None when the status command failed: then nobody
        knows, and no task may be taken for gone (a controller restart, a failover)."""
        answered = output.returncode is not None and self.dialect.status_answered(
            output.returncode, output.stderr
        )
        now = time.monotonic()
        if answered:
            if self._status_failing_since is not None:
                log.warning("%s on %s answers again after %.0f s", self.name, self.shell.label,
                            now - self._status_failing_since)
                self._status_failing_since = None
            return self.dialect.parse_status(output.status, ids)
        if self._status_failing_since is None:
            self._status_failing_since = self._status_warned = now
            log.warning("%s status command failed on %s (exit %s: %s); keeping the last known "
                        "states until it answers", self.name, self.shell.label,
                        output.returncode, output.stderr[-500:] or "no message")
        elif now - self._status_failing_since >= self.options.status_outage_limit:
            if now - self._status_warned >= _WARN_EVERY:
                self._status_warned = now
                log.warning("%s status command failing on %s for %.0f s, past "
                            "status_outage_limit: jobs it cannot show are taken for gone",
                            self.name, self.shell.label, now - self._status_failing_since)
            return self.dialect.parse_status(output.status, ids)
        elif now - self._status_warned >= _WARN_EVERY:
            self._status_warned = now
            log.warning("%s status command still failing on %s after %.0f s (exit %s: %s)",
                        self.name, self.shell.label, now - self._status_failing_since,
                        output.returncode, output.stderr[-500:] or "no message")
        return None

    async def _explain_never_runs(
        self, handle: JobHandle, tasks: frozenset[int], verdict: dict[int, TaskStatus]
    ) -> None:
        """Add the scheduler's own explanation (SGE's ``error reason``) to the state of tasks
        that can never start, where the dialect has a command for it."""
        argv_of = getattr(self.dialect, "error_reason_argv", None)
        if argv_of is None:
            return
        result = await self.shell.run(shlex.join(argv_of(handle.job_id)))
        reason = self.dialect.parse_error_reason(result.stdout)  # type: ignore[attr-defined]
        if not reason:
            return
        memory = self._tracking[handle].memory
        for task in tasks:
            explained = dataclasses.replace(
                verdict[task], raw_state=f"{verdict[task].raw_state}: {reason}"[:2000]
            )
            verdict[task] = memory.reported[task] = explained

    async def _lookup_final(self, handles: list[JobHandle]) -> None:
        """Ask accounting about jobs the live command stopped showing. Only terminal answers
        are kept; a failed accounting command teaches nothing."""
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
                    tracking.memory.final[task] = status

    # --- the rest -----------------------------------------------------------------------------

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Cancel the job or some of its array tasks with the scheduler's own command."""
        tracking = self._tracking.get(job) or self._finishing.get(job)
        if tracking is not None:
            tracking.memory.cancelled |= (
                set(range(len(job.spec.tasks))) if tasks is None else set(tasks)
            )
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
        """Forget the job; remove its directory (per ``cleanup``) once no task can be running.

        Nothing is cancelled here: every outcome was read, and tasks whose calls the user
        cancelled were cancelled when that happened. A task may well still run after its
        last outcome (interpreter teardown, the exit-file write, COMPLETING): cancelling it
        would record successful work as CANCELLED, and removing its directory would break
        it. Such a job is watched by the next polls and its directory removed when the
        scheduler says it ended; if the executor closes first, pruning removes it later."""
        tracking = self._tracking.pop(job, None)
        self._output.pop(job, None)
        self._throttles.pop(job, None)
        self._throttle_locks.pop(job, None)
        if (job.job_id and tracking is not None and self.options.cleanup == "on_release"
                and not scheduler_done(len(job.spec.tasks), tracking.memory)):
            self._finishing[job] = tracking
            return
        await super().release(job)

    async def close(self) -> None:
        """Remove the directories of released jobs whose tasks have all ended by now (the
        others are left to pruning), then disconnect."""
        if self._finishing:
            dirs = [handle.location for handle in self._finishing]
            self._finishing.clear()
            # Those still running were collected all the same: pruning may take them later.
            collected = " ".join(shlex.quote(posixpath.join(d, UNCOLLECTED)) for d in dirs)
            with anyio.move_on_after(15, shield=True):
                try:
                    await self.shell.run(f"{remove_ended_command(dirs)}; rm -f {collected}")
                except Exception as exc:  # closing anyway; pruning covers what is left
                    log.info("removing finished job directories failed: %r", exc)
        await super().close()


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

    def capacity_argv(self) -> list[str]:
        """``sinfo -h -o "%P %C"`` for the partition asked for (else the default one)."""
        return capacity.sinfo_argv(self.options.resources.partition)

    def parse_capacity(self, stdout: str) -> int | None:
        """Idle CPUs of the partition, divided by the CPUs a task asks for."""
        resources = self.options.resources
        idle = capacity.parse_sinfo_cpus(stdout, resources.partition)
        return None if idle is None else capacity.slots_for(idle, resources.cpus)


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

    def capacity_argv(self) -> list[str]:
        """``pbsnodes -a``: every node's CPUs and what is assigned of them."""
        return capacity.pbsnodes_argv()

    def parse_capacity(self, stdout: str) -> int | None:
        """Tasks that fit in the free CPUs of the nodes that take work."""
        return capacity.parse_pbsnodes(stdout, self.options.resources.cpus or 1)


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

    def capacity_argv(self) -> list[str]:
        """``qstat -g c``: the cluster queues' used and available slots."""
        return capacity.qstat_gc_argv()

    def parse_capacity(self, stdout: str) -> int | None:
        """Available slots of the queue asked for (else of every queue), divided by the slots
        a task takes (its CPUs, through the parallel environment)."""
        resources = self.options.resources
        avail = capacity.parse_qstat_gc(stdout, resources.partition)
        return None if avail is None else capacity.slots_for(avail, resources.cpus)
