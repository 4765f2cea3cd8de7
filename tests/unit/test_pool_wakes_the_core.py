"""A pool tells the core at once when a task starts on a worker that joined later (a pilot
or an SSH worker that connected): the core does not learn it only at its next safety poll."""

from __future__ import annotations

import anyio
import pytest

from remote_futures.jobs import JobSpec, TaskSpec, TaskState
from remote_futures.transports._pool import PoolTransport, PoolWorker
from remote_futures.transports.local_pool import LocalPoolOptions

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class _Worker(PoolWorker):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    @property
    def pid(self) -> int | None:
        return None

    def send(self, *parts: bytes | memoryview) -> None:
        self.frames.append(b"".join(bytes(part) for part in parts))

    def kill(self) -> None:
        self.alive = False


class _LateWorkersPool(PoolTransport):
    """Workers start asynchronously, as pilots and SSH workers do."""

    name = "late-workers-test"
    Options = LocalPoolOptions

    def start_worker(self) -> PoolWorker | None:
        self.starting += 1
        return None


async def test_a_task_started_on_a_worker_that_joins_later_wakes_the_core() -> None:
    pool = _LateWorkersPool(LocalPoolOptions(), max_workers=1)
    handle = await pool.submit(JobSpec("job", (TaskSpec(0, b"payload", (0,)),)))
    with anyio.move_on_after(0.1):
        await pool.wait_for_change(0.1)  # what the submission itself changed is seen
    assert 0 not in (await pool.poll([handle]))[handle].tasks  # nothing new: it waits

    worker = _Worker()
    pool.starting -= 1
    pool.worker_started(worker)  # it connected: the queued task goes to it
    assert worker.frames and worker.frames[-1].endswith(b"payload")
    with anyio.fail_after(5):  # the core's safety poll would be much later than this
        await pool.wait_for_change(600)
    assert (await pool.poll([handle]))[handle].tasks[0].state is TaskState.RUNNING
