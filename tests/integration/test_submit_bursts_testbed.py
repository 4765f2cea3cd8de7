"""A loop of single ``submit``s on a real Slurm goes out as few multi-call array tasks."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from remote_futures import JobFailedError, RemoteExecutor
from remote_futures.jobs import JobHandle, JobSpec

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def square(x: int) -> int:
    return x * x


def die_on(x: int, bad: int) -> int:
    """``x * 10``, except that the process exits on ``bad`` (as a segfault or OOM kill would
    end it: no outcome for this call, nor for any later one of its task)."""
    if x == bad:
        sys.stderr.write(f"die_on exits at {x}\n")
        sys.stderr.flush()
        os._exit(3)
    return x * 10


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


def test_a_call_that_ends_its_process_fails_alone_in_a_grouped_burst(
    remote_executor: Callable[..., RemoteExecutor],
) -> None:
    """Twelve submits on two slots: calls 2-11 share multi-call tasks; call 4 ends its
    process. It fails; the calls after it in its task never started and run again."""
    ex = remote_executor("slurm", max_workers=2)
    assert ex.submit(square, 2).result(timeout=120) == 4  # open and warm
    transport = ex.transport
    submitted: list[list[int]] = []
    submit = transport.submit

    async def counting(spec: JobSpec) -> JobHandle:
        submitted.append([len(task.call_indices) for task in spec.tasks])
        return await submit(spec)

    transport.submit = counting  # type: ignore[method-assign]
    futures = [ex.submit(die_on, i, 4) for i in range(12)]
    for i, future in enumerate(futures):
        if i == 4:
            error = future.exception(timeout=240)
            assert isinstance(error, JobFailedError), error
        else:
            assert future.result(timeout=240) == i * 10
    assert max(calls for job in submitted for calls in job) > 1, submitted
