"""A plain remote host with no scheduler: each array task runs as a detached process.

Tasks start in their own session (``setsid``), so they survive a dropped SSH connection and a
cancellation kills the whole process group. ``submit`` starts every task of the job at once: the
core only submits what fits under ``max_workers`` (this transport has no throttle of its own), so
nothing ever waits here. Each poll is one command: ``ps`` for the pids, then the listing of
outcome and exit files.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import worker
from ..errors import ConfigurationError, SubmissionError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from .remote import RemoteOptions, RemoteTransport, exit_status, split_poll_output

__all__ = ["SSHHostOptions", "SSHHostTransport"]

@dataclasses.dataclass(frozen=True)
class SSHHostOptions(RemoteOptions):
    """Options of the ``ssh`` transport (``host`` is required)."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("the 'ssh' transport needs a host (host='name or alias')")


@dataclasses.dataclass(eq=False)
class _HostJob:
    handle: JobHandle
    pids: dict[int, int] = dataclasses.field(default_factory=dict)
    cancelled: set[int] = dataclasses.field(default_factory=set)
    ended: set[int] = dataclasses.field(default_factory=set)


class SSHHostTransport(RemoteTransport):
    """Runs jobs as detached processes on one SSH host."""

    name = "ssh"
    Options: ClassVar[type[Any]] = SSHHostOptions
    poll_interval = (0.2, 2.0)
    coalesce_window = 0.02
    max_tasks_per_job = 100_000

    def __init__(self, options: SSHHostOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self._jobs: dict[JobHandle, _HostJob] = {}

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """Processes at once on the host when the user says nothing."""
        return 4

    async def submit(self, job: JobSpec) -> JobHandle:
        """Upload and unpack the job, then start all its tasks, in one command each. Raises
        :class:`SubmissionError` if a task could not be started (those that did are killed),
        :class:`~remote_futures.errors.TransportError` if the connection dropped."""
        job_dir = await self.upload_job(job)
        (await self.shell.run(self.unpack_command(job_dir))).check(f"unpacking {job.name}")
        handle = JobHandle(job_id=f"{job.name}", spec=job, location=job_dir)
        state = _HostJob(handle)
        state.pids = await self._launch(handle)
        self._jobs[handle] = state
        return handle

    async def _launch(self, handle: JobHandle) -> dict[int, int]:
        """Start every task of the job, all in one command; their pids by task."""
        lines = []
        directory = handle.location
        for task in range(len(handle.spec.tasks)):
            out = worker.STDOUT_NAME.format(task)
            err = worker.STDERR_NAME.format(task)
            done = worker.EXIT_NAME.format(task)
            # Live output: what a call prints reaches its file as it prints it.
            unbuffered = "PYTHONUNBUFFERED=1 " if self.output.live else ""
            body = (
                f"{unbuffered}{self.worker_command(directory)} --task {task} >{out} 2>{err}; "
                f"echo $? >{done}.tmp && mv -f {done}.tmp {done}"
            )
            # The redirections cover the whole background group, so that nothing keeps the
            # SSH channel open; exec keeps $! the pid of the session leader (setsid does not
            # fork when its caller leads no process group), whose group cancel() kills.
            lines.append(
                f"(cd {shlex.quote(directory)} && exec setsid sh -c {shlex.quote(body)}) "
                f"</dev/null >/dev/null 2>&1 & echo {task} $!"
            )
        # Never retried: a launch that may have happened must not happen twice.
        result = await self.shell.run("; ".join(lines), retry=False)
        started = dict(
            (int(a), int(b)) for a, b in (line.split() for line in result.stdout.splitlines()
                                          if len(line.split()) == 2 and line.split()[0].isdigit()
                                          and line.split()[1].isdigit())
        )
        missing = [task for task in range(len(handle.spec.tasks)) if task not in started]
        if missing or not result.ok:
            if started:
                groups = " ".join(f"-{pid}" for pid in started.values())
                await self.shell.run(f"kill -KILL -- {groups} 2>/dev/null; true")
            said = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise SubmissionError(
                f"could not start {len(missing) or 'all'} task(s) of {handle.spec.name} on "
                f"{self.shell.label}: {said or 'no pid reported'}",
                command="setsid sh -c <worker>", stderr=result.stderr,
            )
        return started

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """``ps`` for the tasks' processes and the listing of the job directories, in one go."""
        pids = sorted({pid for h in jobs if h in self._jobs for pid in self._jobs[h].pids.values()})
        ps = f"ps -o pid= -p {','.join(map(str, pids))}" if pids else "true"
        # What running tasks printed since the last poll is read by the same command.
        tails = self.live_tails(jobs)
        command = self.status_and_listing_command(ps, [h.location for h in jobs])
        if tails:
            command += "; " + self.tail_command(tails)
        result = await self.shell.run(command)
        output = split_poll_output(result.stdout)
        alive = {int(word) for word in output.status.split() if word.isdigit()}
        listing = self.parse_listing(self.take_tails(tails, output.listing))
        states: dict[JobHandle, dict[int, TaskStatus]] = {}
        for handle in jobs:
            job = self._jobs.get(handle)
            if job is None:
                continue
            exits = listing.exits.get(handle.location, {})
            tasks: dict[int, TaskStatus] = {}
            for task in range(len(handle.spec.tasks)):
                if task in exits:
                    status = exit_status(exits[task])
                elif task in job.cancelled:
                    status = TaskStatus(TaskState.CANCELLED)
                elif task in job.pids:
                    status = TaskStatus(TaskState.RUNNING) if job.pids[task] in alive else (
                        TaskStatus(TaskState.FAILED, "the process ended without an exit record")
                    )
                else:
                    status = TaskStatus(TaskState.PENDING)
                tasks[task] = status
            states[handle] = tasks
        return await self.report(states, {h: self._jobs[h].ended for h in states}, listing)

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Kill the process groups of the tasks."""
        state = self._jobs.get(job)
        if state is None:
            return
        targets = set(range(len(job.spec.tasks))) if tasks is None else set(tasks)
        groups = []
        for task in targets - state.ended:
            state.cancelled.add(task)
            if task in state.pids:
                groups.append(f"-{state.pids[task]}")
        if groups:
            await self.shell.run(f"kill -KILL -- {' '.join(groups)} 2>/dev/null; true")

    async def release(self, job: JobHandle) -> None:
        """Forget the job and remove its directory (per ``cleanup``)."""
        self._jobs.pop(job, None)
        await super().release(job)
