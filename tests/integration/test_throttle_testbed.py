"""Array throttles follow the core's grant: slots freed by one job widen a throttled array."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from remote_futures import RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

#: How long a task of the throttled array watches its own job's limit.
WATCH_SECONDS = 90.0


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def watch_own_throttle(_: int, wanted: int = 4) -> int:
    """Run inside an array task: the job's own concurrency limit, as its scheduler shows it,
    once it reaches ``wanted`` (or the last value seen after WATCH_SECONDS)."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        argv = ["scontrol", "show", "job", "-o", os.environ["SLURM_ARRAY_JOB_ID"]]
        pattern = r"ArrayTaskThrottle=(\d+)"
    else:
        argv = ["qstat", "-j", os.environ["JOB_ID"]]
        pattern = r"maximum concurrency:\s*(\d+)"
    deadline = time.monotonic() + WATCH_SECONDS
    seen = -1
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        match = re.search(pattern, out)
        if match:
            seen = int(match.group(1))
        if seen >= wanted or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


@pytest.mark.parametrize("target", ["slurm", "sge"])
def test_freed_slots_widen_a_throttled_array(
    remote_executor: Callable[..., RemoteExecutor], target: str
) -> None:
    """max_workers=4: a first map holds 3 slots, so a second map of 6 is submitted with a
    throttle of 1. When the first map ends, its slots go to the second array: the scheduler
    itself shows the second job's limit raised to 4 (seen from inside the job)."""
    ex = remote_executor(target, max_workers=4)
    first = ex.map(nap, [8.0, 8.0, 8.0], chunksize=1)
    second = ex.map(watch_own_throttle, range(6), chunksize=1)
    assert list(first) == [8.0, 8.0, 8.0]
    seen = list(second)
    assert seen[0] == 4, seen
    assert all(value == 4 for value in seen), seen
