"""BatchTransport.raise_throttle: the dialect's command, sent one at a time, never lowering."""

from __future__ import annotations

import anyio

from remote_futures.jobs import JobHandle, JobSpec, TaskSpec
from remote_futures.shell import CommandResult
from remote_futures.transports.batch import BatchOptions, PBSOptions, PBSTransport, SlurmTransport


class FakeShell:
    """Records commands; the first one is slow (a busy controller), refusals are scripted."""

    def __init__(self, refusals: int = 0) -> None:
        self.commands: list[str] = []
        self.refusals = refusals

    async def run(self, command: str, **_: object) -> CommandResult:
        self.commands.append(command)
        if len(self.commands) == 1:
            await anyio.sleep(0.2)
        if self.refusals:
            self.refusals -= 1
            return CommandResult(command, 1, "", "Socket timed out on send/recv operation")
        return CommandResult(command, 0, "", "")


def _handle(n_tasks: int = 6) -> JobHandle:
    tasks = tuple(TaskSpec(i, b"", (i,)) for i in range(n_tasks))
    return JobHandle(job_id="123", spec=JobSpec(name="rf-x", tasks=tasks), location="/w/rf-x")


def test_concurrent_raises_are_applied_in_order_and_never_lower() -> None:
    """Two raises in flight (to 3, then to 2 after tasks ended): the second waits for the
    first and sends 3 again, not 2."""
    transport = SlurmTransport(BatchOptions(), max_workers=8)
    shell = FakeShell()
    transport.shell = shell  # type: ignore[assignment]
    handle = _handle()
    results: list[bool] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            async def raise_to(n: int) -> None:
                results.append(await transport.raise_throttle(handle, n))
            tg.start_soon(raise_to, 3)
            await anyio.sleep(0.05)
            tg.start_soon(raise_to, 2)

    anyio.run(main)
    assert results == [True, True]
    assert shell.commands == ["scontrol update JobId=123 ArrayTaskThrottle=3"] * 2


def test_a_transient_refusal_is_retried_once() -> None:
    transport = SlurmTransport(BatchOptions(), max_workers=8)
    shell = FakeShell(refusals=1)
    transport.shell = shell  # type: ignore[assignment]
    assert anyio.run(transport.raise_throttle, _handle(), 4) is True
    assert len(shell.commands) == 2


def test_two_refusals_give_up() -> None:
    transport = SlurmTransport(BatchOptions(), max_workers=8)
    shell = FakeShell(refusals=2)
    transport.shell = shell  # type: ignore[assignment]
    assert anyio.run(transport.raise_throttle, _handle(), 4) is False


def test_torque_and_single_tasks_send_nothing() -> None:
    torque = PBSTransport(PBSOptions(flavor="torque"), max_workers=8)
    shell = FakeShell()
    torque.shell = shell  # type: ignore[assignment]
    assert anyio.run(torque.raise_throttle, _handle(), 4) is False
    slurm = SlurmTransport(BatchOptions(), max_workers=8)
    slurm.shell = shell  # type: ignore[assignment]
    assert anyio.run(slurm.raise_throttle, _handle(1), 4) is False
    assert shell.commands == []
