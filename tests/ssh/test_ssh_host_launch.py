"""The ``ssh`` transport starts a job's tasks in ``submit`` or raises: it never holds tasks back
for later (the core owns ``max_workers``), so a failed launch can never leave tasks pending.
Run against the in-process SSH server of ``conftest.py``."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

asyncssh = pytest.importorskip("asyncssh")

from remote_futures import TransportError  # noqa: E402
from remote_futures.jobs import JobSpec, TaskSpec  # noqa: E402
from remote_futures.serialization import CallPickler, encode_task  # noqa: E402
from remote_futures.transports.ssh_host import SSHHostOptions, SSHHostTransport  # noqa: E402

if TYPE_CHECKING:
    from conftest import InProcessSSHServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def triple(x: int) -> int:
    return 3 * x


def _transport(server: InProcessSSHServer, tmp_path: Path, max_workers: int) -> SSHHostTransport:
    options = SSHHostOptions(
        host=server.host, port=server.port, user=server.user,
        identity_file=str(server.client_key), known_hosts=str(server.known_hosts),
        ssh_config=str(server.tmp / "empty_ssh_config"), python=sys.executable,
        env=SSHHostOptions.convert_env("off"), work_dir=str(tmp_path / "work"),
    )
    return SSHHostTransport(options, max_workers=max_workers)


def _job(n_tasks: int) -> JobSpec:
    pickler = CallPickler(triple)
    tasks = tuple(
        TaskSpec(i, encode_task([(i, pickler.dumps((i,), {}))], sys_path=sys.path), (i,))
        for i in range(n_tasks)
    )
    return JobSpec(name="rf-launchtest", tasks=tasks, max_concurrent=n_tasks)


async def test_submit_starts_every_task_it_is_given(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    """max_workers=1, a job of three tasks: all three start in submit (the core decided)."""
    transport = _transport(ssh_server, tmp_path, max_workers=1)
    async with transport:
        await transport.prepare()
        handle = await transport.submit(_job(3))
        assert len(transport._jobs[handle].pids) == 3
        outcomes: dict[int, bytes] = {}
        with anyio.fail_after(60):
            while len(outcomes) < 3:
                status = (await transport.poll([handle]))[handle]
                fetched = await transport.fetch_outcomes({handle: sorted(status.ready_calls)})
                outcomes.update(fetched.get(handle, {}))
                await anyio.sleep(0.1)
        values = {i: pickle.loads(pickle.loads(blob)["value"]) for i, blob in outcomes.items()}
        assert values == {0: 0, 1: 3, 2: 6}
        await transport.release(handle)


async def test_a_launch_on_a_dropped_connection_raises_and_leaves_nothing_pending(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    transport = _transport(ssh_server, tmp_path, max_workers=2)
    async with transport:
        await transport.prepare()
        run = transport.shell.run

        async def run_and_lose_the_server(command: str, **kwargs: Any) -> Any:
            if "setsid" in command:
                await ssh_server.stop()  # the host goes away just as the tasks launch
            return await run(command, **kwargs)

        transport.shell.run = run_and_lose_the_server  # type: ignore[method-assign]
        with pytest.raises(TransportError):
            await transport.submit(_job(2))
        assert transport._jobs == {}  # no task of it waits anywhere to be launched later
