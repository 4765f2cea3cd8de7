"""The pilot transport's two kinds of jobs: the pool's (the pilots' resources) and array jobs
(a ``with_resources`` view's other resources), each handle served by its own half, with a
shell that records commands and can drop the connection once."""

from __future__ import annotations

import anyio
import pytest

from remote_futures.errors import TransportError
from remote_futures.jobs import JobHandle, JobSpec, TaskSpec, TaskState, TaskStatus
from remote_futures.resources import Resources
from remote_futures.shell import CommandResult
from remote_futures.transports.batch import BatchOptions
from remote_futures.transports.pilot import SlurmPilotTransport


class FakeShell:
    """Records commands; ``drop`` makes the next command or read fail as a lost connection."""

    label = "fake"

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.drop = False

    async def run(self, command: str, **_: object) -> CommandResult:
        self.commands.append(command)
        if self.drop:
            self.drop = False
            raise TransportError("the connection dropped")
        return CommandResult(command, 0, "", "")

    async def read_files(self, paths: list[str]) -> dict[str, bytes]:
        if self.drop:
            self.drop = False
            raise TransportError("the connection dropped")
        return {path: b"from a file" for path in paths}


def _spec(name: str, resources: Resources) -> JobSpec:
    return JobSpec(name=name, tasks=(TaskSpec(0, b"payload", (0,)),), resources=resources)


def _transport() -> tuple[SlurmPilotTransport, FakeShell, JobHandle, JobHandle]:
    """A pilot transport (not opened: no pilot starts) with one pool job and one array job."""
    transport = SlurmPilotTransport(BatchOptions(pool=True, resources=Resources(cpus=1)),
                                    max_workers=2)
    shell = FakeShell()
    transport.shell = shell  # type: ignore[assignment]
    pool_job = anyio.run(transport.submit, _spec("rf-pool", Resources(cpus=1)))
    array_job = JobHandle(job_id="77", spec=_spec("rf-array", Resources(cpus=4)),
                          location="/w/jobs/rf-array")
    transport._arrays.add(array_job)  # as BatchTransport.submit would have left it
    return transport, shell, pool_job, array_job


def test_the_executor_resources_go_to_the_pool_without_a_scheduler_command() -> None:
    transport, shell, pool_job, _ = _transport()
    assert pool_job in transport._pool_jobs and pool_job not in transport._arrays
    assert shell.commands == []


def test_a_dropped_scheduler_poll_loses_no_progress_of_the_pool() -> None:
    """The array jobs' poll fails (the connection dropped): the poll raises, and the pool's
    change of the same cycle is still reported by the next poll (a poll hands each change
    over once: reported before the failure, it would have been lost with it)."""
    transport, shell, pool_job, array_job = _transport()
    transport._pool_jobs[pool_job].set_state(0, TaskStatus(TaskState.RUNNING))
    shell.drop = True
    with pytest.raises(TransportError):
        anyio.run(transport.poll, [pool_job, array_job])
    statuses = anyio.run(transport.poll, [pool_job, array_job])
    assert statuses[pool_job].tasks == {0: TaskStatus(TaskState.RUNNING)}
    assert array_job in statuses
    assert any("squeue" in command and "77" in command for command in shell.commands)


def test_array_jobs_are_polled_at_the_batch_pace_not_at_every_pool_poll() -> None:
    """Right after a scheduler poll, the next polls (the pool's pace) ask the scheduler
    nothing; a cancel makes the next poll ask at once."""
    transport, shell, pool_job, array_job = _transport()
    anyio.run(transport.poll, [pool_job, array_job])
    asked = len(shell.commands)
    for _ in range(3):
        anyio.run(transport.poll, [pool_job, array_job])
    assert len(shell.commands) == asked
    anyio.run(transport.cancel, array_job, None)
    assert "scancel 77" in shell.commands[-1]
    anyio.run(transport.poll, [pool_job, array_job])
    assert len(shell.commands) == asked + 2


def test_a_dropped_outcome_read_loses_no_outcome_of_the_pool() -> None:
    transport, shell, pool_job, array_job = _transport()
    transport._pool_jobs[pool_job].outcomes[0] = b"from a worker"
    shell.drop = True
    with pytest.raises(TransportError):
        anyio.run(transport.fetch_outcomes, {pool_job: [0], array_job: [0]})
    found = anyio.run(transport.fetch_outcomes, {pool_job: [0], array_job: [0]})
    assert found == {pool_job: {0: b"from a worker"}, array_job: {0: b"from a file"}}
