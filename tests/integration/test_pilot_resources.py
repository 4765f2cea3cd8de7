"""``pool=True`` with ``with_resources`` views, on this machine against the fake Slurm of
``fake_slurm.py`` (pilot jobs and array jobs really run as local processes): the executor's
own calls run on the warm pilots, a view's calls that ask for other resources run as array
jobs with those resources, in the scheduler's array limit, and fail, print and cancel as
array jobs do.

Before, a view's calls ran on the pilots with the executor's resources (a warning said so).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _fake_slurm_env import FakeSlurm

from remote_futures import JobFailedError, RemoteExecutor

pytestmark = [pytest.mark.timeout(180)]


def where() -> tuple[str, str]:
    """The Slurm job this call runs in, and the CPUs Slurm gave each of its tasks."""
    return os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_CPUS_PER_TASK", "")


def square_where(x: int) -> tuple[int, str]:
    return x * x, os.environ.get("SLURM_JOB_ID", "")


def refuse(x: int) -> int:
    raise ValueError(f"no thanks: {x}")


def die_loudly() -> None:
    print("the call says goodbye", file=sys.stderr, flush=True)
    os._exit(3)


@pytest.fixture
def pool(fake_slurm: FakeSlurm, tmp_path: Path) -> Iterator[Callable[..., RemoteExecutor]]:
    created: list[RemoteExecutor] = []

    def make(**options: Any) -> RemoteExecutor:
        options = {"host": None, "python": sys.executable, "env": "off",
                   "work_dir": str(tmp_path / "rf"), "max_workers": 2,
                   "relay_bind": "127.0.0.1", **options}
        ex = RemoteExecutor("slurm", pool=True, **options)
        created.append(ex)
        return ex

    yield make
    for ex in created:
        ex.shutdown(wait=True, cancel_futures=True)


def _pilot_ids(ex: RemoteExecutor) -> set[str]:
    return {p.job_id for p in ex.transport._pilots.values() if p.job_id}  # type: ignore[attr-defined]


def test_view_calls_run_as_array_jobs_with_their_resources(
    pool: Callable[..., RemoteExecutor], caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain call runs on a pilot; a view's call runs in a job that is no pilot, with the
    CPUs it asked for; a view's map returns its results in order; a view's call that raises
    raises the caller's exception; one that kills its process fails with what it printed."""
    caplog.set_level(logging.INFO, logger="remote_futures")
    with pool() as ex:
        job, cpus = ex.submit(where).result(timeout=60)
        assert job in _pilot_ids(ex), (job, _pilot_ids(ex))
        assert cpus == ""  # the pilots ask for no CPU count
        view = ex.with_resources(cpus=2)
        job, cpus = view.submit(where).result(timeout=60)
        assert job and job not in _pilot_ids(ex), (job, _pilot_ids(ex))
        assert cpus == "2"
        results = list(view.map(square_where, range(10), chunksize=1))
        assert [r for r, _ in results] == [x * x for x in range(10)]
        assert not {j for _, j in results} & _pilot_ids(ex)
        with pytest.raises(ValueError, match="no thanks: 4"):
            view.submit(refuse, 4).result(timeout=60)
        error = view.submit(die_loudly).exception(timeout=60)
        assert isinstance(error, JobFailedError), error
        assert "the call says goodbye" in str(error), error
        # The executor's own calls still go to the warm pilots.
        job, _ = ex.submit(where).result(timeout=60)
        assert job in _pilot_ids(ex)
    told = [r for r in caplog.records if "run as array jobs" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO
    assert "with_resources view run on the pilots" not in caplog.text


def test_a_large_view_map_is_split_at_the_array_limit(
    fake_slurm: FakeSlurm, pool: Callable[..., RemoteExecutor],
) -> None:
    """MaxArraySize 5 (arrays of at most 4 tasks; the fake sbatch refuses larger ones, as
    Slurm does): a view's map of 11 one-call tasks becomes three array jobs, a burst of view
    submits runs in array jobs too, and the pool's own map of 11 still runs on the pilots."""
    fake_slurm.set_max_array_size(5)
    with pool() as ex:
        results = list(ex.with_resources(cpus=2).map(square_where, range(11), chunksize=1))
        assert [r for r, _ in results] == [x * x for x in range(11)]
        jobs = {j for _, j in results}
        assert len(jobs) == 3 and not jobs & _pilot_ids(ex), (jobs, _pilot_ids(ex))
        view = ex.with_resources(memory="1G")
        futures = [view.submit(square_where, x) for x in range(12)]
        assert [f.result(timeout=60)[0] for f in futures] == [x * x for x in range(12)]
        assert not {f.result()[1] for f in futures} & _pilot_ids(ex)
        mapped = list(ex.map(square_where, range(11), chunksize=1))
        assert [r for r, _ in mapped] == [x * x for x in range(11)]
        assert {j for _, j in mapped} <= _pilot_ids(ex)


def test_a_pending_view_call_is_cancelled_in_the_scheduler(
    fake_slurm: FakeSlurm, pool: Callable[..., RemoteExecutor],
) -> None:
    """A view's call whose array job pends (BeginTime): ``cancel()`` succeeds, the job is
    scancel'ed, and the executor goes on."""
    with pool() as ex:
        view = ex.with_resources(cpus=2, job_extra_directives=("--begin=now+600",))
        future = view.submit(where)
        deadline = time.monotonic() + 60
        while "PENDING" not in fake_slurm.states().values():
            assert time.monotonic() < deadline, fake_slurm.states()
            assert not future.done(), future.exception()
            time.sleep(0.1)
        (name,) = [n for n, s in fake_slurm.states().items() if s == "PENDING"]
        assert future.cancel()
        while fake_slurm.states()[name] != "CANCELLED":
            assert time.monotonic() < deadline, fake_slurm.states()
            time.sleep(0.1)
        assert name in fake_slurm.log("scancel.log")
        job, _ = ex.submit(where).result(timeout=60)
        assert job in _pilot_ids(ex)
