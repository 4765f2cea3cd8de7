"""Admission on real schedulers: refusals give their slots back, no transport defers work."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from remote_futures import RemoteExecutor, SubmissionError

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize(("target", "bad"), [("slurm", "nosuchpartition"), ("sge", "nosuch.q")])
def test_refused_jobs_do_not_keep_max_workers(
    remote_executor: Callable[..., RemoteExecutor], target: str, bad: str
) -> None:
    """Two refused maps (each at least max_workers tasks), then a good submit: it runs."""
    ex = remote_executor(target, max_workers=2)
    refused = ex.with_resources(partition=bad)
    for _ in range(2):
        with pytest.raises(SubmissionError):
            list(refused.map(square, range(4), chunksize=1))
    assert ex.submit(square, 7).result(timeout=120) == 49
    assert list(ex.map(square, range(4), chunksize=1)) == [0, 1, 4, 9]


def test_slurm_array_gets_the_core_grant_as_its_throttle(
    remote_executor: Callable[..., RemoteExecutor],
) -> None:
    """A map while one slot is busy: the array is submitted at once with the room left, and
    every call completes (the job is not held back in the transport)."""
    ex = remote_executor("slurm", max_workers=2)
    busy = ex.submit(nap, 3.0)
    deadline = time.monotonic() + 120
    while not busy.running():
        assert time.monotonic() < deadline, "the first job never started"
        assert not busy.done(), busy.exception()
        time.sleep(0.2)
    assert list(ex.map(square, range(4), chunksize=1)) == [0, 1, 4, 9]
    assert busy.result(timeout=120) == 3.0
