"""The pool's scheduling with workers staged in memory: what a worker that dies leaves behind,
and a worker that cannot even start."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from remote_futures.jobs import JobSpec, TaskSpec, TaskState
from remote_futures.serialization import decode_outcome
from remote_futures.transports._pool import KEY, PoolTransport, PoolWorker

pytestmark = pytest.mark.asyncio


@dataclasses.dataclass(frozen=True)
class _Options:
    pass


class FakeWorker(PoolWorker):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []

    @property
    def pid(self) -> int | None:
        return 4242

    def send(self, *parts: bytes) -> None:
        self.messages.append(b"".join(parts))

    def kill(self) -> None:
        pass


class FakePool(PoolTransport):
    name = "fake"
    Options = _Options

    def __init__(self, max_workers: int) -> None:
        super().__init__(_Options(), max_workers=max_workers)
        self.started: list[FakeWorker] = []
        #: Whether new workers count as having just run a short call (tasks are sent ahead).
        self.quick_workers = False

    def start_worker(self) -> PoolWorker | None:
        w = FakeWorker()
        w.quick = self.quick_workers
        self.started.append(w)
        return w


def _job(tasks: int, grant: int) -> JobSpec:
    return JobSpec(
        name="rf-test",
        tasks=tuple(TaskSpec(i, pickle.dumps({"calls": []}), (i,)) for i in range(tasks)),
        max_concurrent=grant,
    )


async def test_a_killed_worker_fails_its_task_and_the_rest_go_to_a_new_worker() -> None:
    pool = FakePool(max_workers=1)
    pool.quick_workers = True  # as after a short call: the next task is sent ahead
    handle = await pool.submit(_job(3, grant=1))
    first = pool.started[0]
    pool.on_message(first, b"H" + (99).to_bytes(KEY, "big"))
    assert [m[:1] for m in first.messages] == [b"X", b"X"]  # one to run, one ahead
    pool.worker_exited(first, None, 9)
    status = (await pool.poll([handle]))[handle]
    assert status.tasks[0].state is TaskState.FAILED and status.tasks[0].signal == 9
    outcome = (await pool.fetch_outcomes({handle: [0]}))[handle][0]
    ok, error = decode_outcome(outcome)
    assert not ok and "signal SIGKILL" in str(error)
    # Task 1 was sent ahead but never started: it runs on the replacement.
    assert len(pool.started) == 2
    assert pool.started[1].messages[0][:1] == b"X"
    assert 1 not in status.tasks or not status.tasks[1].state.terminal


async def test_a_worker_dying_before_hello_fails_the_waiting_tasks_once() -> None:
    pool = FakePool(max_workers=1)
    handle = await pool.submit(_job(5, grant=1))
    first = pool.started[0]
    first.tail += b"python3: not found\n"
    pool.worker_exited(first, 127, None)
    status = (await pool.poll([handle]))[handle]
    assert {i: s.state for i, s in status.tasks.items()} == {
        i: TaskState.FAILED for i in range(5)
    }
    assert "not found" in status.tasks[4].raw_state
    assert len(pool.started) == 1  # no worker started per task
