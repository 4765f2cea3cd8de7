"""A plain remote host with no scheduler: each array task runs as a detached process.

Tasks start in their own session (``setsid``), so they survive a dropped SSH connection and a
cancellation kills the whole process group. At most ``max_workers`` run at once; the rest wait
on the client and start as slots free. Each poll is one command: ``ps`` for the launched pids,
then the listing of outcome and exit files.
"""

from __future__ import annotations

import collections
import dataclasses
import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import worker
from ..errors import ConfigurationError
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
    waiting: collections.deque[int]
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
        """Upload and unpack the job, then start as many tasks as slots allow."""
        job_dir = await self.upload_job(job)
        (await self.shell.run(self.unpack_command(job_dir))).check(f"unpacking {job.name}")
        handle = JobHandle(job_id=f"{job.name}", spec=job, location=job_dir)
        self._jobs[handle] = _HostJob(handle, collections.deque(t.index for t in job.tasks))
        await self._launch()
        return handle

    def _running(self) -> int:
        return sum(
            1 for job in self._jobs.values() for task in job.pids if task not in job.ended
        )

    async def _launch(self) -> None:
        """Start waiting tasks in free slots, all in one command."""
        free = self.max_workers - self._running()
        starts: list[tuple[_HostJob, int]] = []
        for job in self._jobs.values():
            while free > 0 and job.waiting:
                starts.append((job, job.waiting.popleft()))
                free -= 1
        if not starts:
            return
        lines = []
        for number, (job, task) in enumerate(starts):
            directory = job.handle.location
            out = worker.STDOUT_NAME.format(task)
            err = worker.STDERR_NAME.format(task)
            done = worker.EXIT_NAME.format(task)
            body = (
                f"{self.worker_command(directory)} --task {task} >{out} 2>{err}; "
                f"echo $? >{done}.tmp && mv -f {done}.tmp {done}"
            )
            # The redirections cover the whole background group, so that nothing keeps the
            # SSH channel open; exec keeps $! the pid of the session leader (setsid does not
            # fork when its caller leads no process group), whose group cancel() kills.
            lines.append(
                f"(cd {shlex.quote(directory)} && exec setsid sh -c {shlex.quote(body)}) "
                f"</dev/null >/dev/null 2>&1 & echo {number} $!"
            )
        result = await self.shell.run("; ".join(lines), retry=False)
        started = dict(
            (int(a), int(b)) for a, b in (line.split() for line in result.stdout.splitlines()
                                          if len(line.split()) == 2)
        )
        for number, (job, task) in enumerate(starts):
            if number in started:
                job.pids[task] = started[number]
            else:
                job.waiting.appendleft(task)  # not started: try again next cycle

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """``ps`` for the launched tasks and the listing of the job directories, in one go."""
        await self._launch()
        pids = sorted({pid for h in jobs if h in self._jobs for pid in self._jobs[h].pids.values()})
        ps = f"ps -o pid= -p {','.join(map(str, pids))}" if pids else "true"
        result = await self.shell.run(
            self.status_and_listing_command(ps, [h.location for h in jobs])
        )
        output = split_poll_output(result.stdout)
        alive = {int(word) for word in output.status.split() if word.isdigit()}
        listing = self.parse_listing(output.listing)
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
        """Drop waiting tasks; kill the process groups of running ones."""
        state = self._jobs.get(job)
        if state is None:
            return
        targets = set(range(len(job.spec.tasks))) if tasks is None else set(tasks)
        groups = []
        for task in targets - state.ended:
            state.cancelled.add(task)
            if task in state.waiting:
                state.waiting.remove(task)
            elif task in state.pids:
                groups.append(f"-{state.pids[task]}")
        if groups:
            await self.shell.run(f"kill -KILL -- {' '.join(groups)} 2>/dev/null; true")

    async def release(self, job: JobHandle) -> None:
        """Forget the job and remove its directory (per ``cleanup``)."""
        self._jobs.pop(job, None)
        await super().release(job)
