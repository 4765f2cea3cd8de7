"""A loop of single ``submit``s on a real Slurm goes out as few multi-call array tasks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from remote_futures import RemoteExecutor
from remote_futures.jobs import JobHandle, JobSpec

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def square(x: int) -> int:
    return x * x


def test_a_burst_of_200_submits_runs_as_few_tasks_with_every_result_right(
    remote_executor: Callable[..., RemoteExecutor],
) -> None:
    ex = remote_executor("slurm", max_workers=4)
    assert ex.submit(square, 2).result(timeout=120) == 4  # open and warm
    transport = ex.transport
    submitted: list[list[int]] = []
    submit = transport.submit

    async def counting(spec: JobSpec) -> JobHandle:
        submitted.append([len(task.call_indices) for task in spec.tasks])
        return await submit(spec)

    transport.submit = counting  # type: ignore[method-assign]
    futures = [ex.submit(square, i) for i in range(200)]
    assert [f.result(timeout=240) for f in futures] == [i * i for i in range(200)]
    tasks = [calls for job in submitted for calls in job]
    assert sum(tasks) == 200
    # One task per call before; about max_workers tasks per burst now.
    assert len(tasks) <= 20, submitted
