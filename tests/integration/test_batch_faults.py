"""Faults on real schedulers: every future resolves, with the scheduler's story, none hangs."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import time
from collections.abc import Callable

import pytest
from testbed_facts import require_testbed

from remote_futures import (
    JobFailedError,
    RemoteExecutor,
    Resources,
    SubmissionError,
    WorkerDiedError,
)

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square(x: int) -> int:
    return x * x


def crash_after(x: int) -> int:
    if x == 3:
        os._exit(7)
    return x


def _job_id_when_running(ex: RemoteExecutor, future: cf.Future[object]) -> str:
    """The scheduler's id of the job running ``future`` (waits until it runs)."""
    deadline = time.monotonic() + 120
    while not future.running():
        assert time.monotonic() < deadline, "the job never started"
        assert not future.done(), future.exception()
        time.sleep(0.2)
    active = list(ex._engine._active)  # the core's own record: one job here
    assert len(active) == 1
    return active[0].job_id


def _as_user(user: str, command: str) -> subprocess.CompletedProcess[str]:
    facts = require_testbed("ssh")
    return subprocess.run([*facts.ssh_argv(user), command], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(
    ("target", "cancel", "states"),
    [
        ("slurm", "scancel {id}", {"CANCELLED"}),
        # The testbed's PBS is SLURM's Torque wrappers: every end state is 'C', with no exit
        # status anywhere; the scheduler's own message in the stderr tail tells the rest.
        ("pbs", "qdel {id}", {"FAILED"}),
        ("sge", "qdel {id}", {"CANCELLED"}),
    ],
)
def test_job_cancelled_from_outside(
    remote_executor: Callable[..., RemoteExecutor], target: str, cancel: str, states: set[str]
) -> None:
    # The scheduler killed the job, so no exit file will come: a short latency wait keeps this
    # test quick. The default wait for files the listing cannot see yet is staged in
    # test_batch_reconcile.py.
    ex = remote_executor(target, max_workers=1, latency_wait=10)
    future = ex.submit(nap, 120)
    job_id = _job_id_when_running(ex, future)
    user = {"slurm": "slurm_user", "pbs": "pbs_user", "sge": "sge_user"}[target]
    facts = require_testbed(target)
    done = _as_user(getattr(facts, user), cancel.format(id=job_id))
    assert done.returncode == 0, done.stderr
    with pytest.raises(JobFailedError) as caught:
        future.result(timeout=150)
    error = caught.value
    assert error.job_id == job_id
    assert error.state in states, str(error)
    assert job_id in str(error)
    if target != "sge":  # SLURM's stepd says so in the job's stderr; SGE writes nothing there
        assert "CANCELLED" in error.stderr_tail
    # The executor still serves new work.
    assert ex.submit(square, 5).result(timeout=120) == 25


def test_sge_walltime_exceeded(remote_executor: Callable[..., RemoteExecutor]) -> None:
    ex = remote_executor("sge", resources=Resources(walltime="00:00:05"), latency_wait=10)
    future = ex.submit(nap, 120)
    with pytest.raises(JobFailedError) as caught:
        future.result(timeout=200)
    assert caught.value.state == "TIMEOUT", str(caught.value)


@pytest.mark.slow
def test_slurm_walltime_exceeded(remote_executor: Callable[..., RemoteExecutor]) -> None:
    # Slurm enforces walltime in whole minutes: about 75 s for --time=1.
    ex = remote_executor("slurm", resources={"walltime": "00:01:00"}, latency_wait=10)
    future = ex.submit(nap, 250)
    with pytest.raises(JobFailedError) as caught:
        future.result(timeout=280)
    assert caught.value.state == "TIMEOUT", str(caught.value)
    assert "TIME LIMIT" in caught.value.stderr_tail
    assert caught.value.job_id in str(caught.value)


@pytest.mark.parametrize("target", ["ssh", "slurm", "pbs", "sge"])
def test_crash_in_one_task_keeps_the_others(
    remote_executor: Callable[..., RemoteExecutor], target: str
) -> None:
    ex = remote_executor(target, max_workers=2)
    futures = [ex.submit(crash_after, x) for x in range(6)]
    cf.wait(futures, timeout=200)
    assert all(f.done() for f in futures)
    for x, future in enumerate(futures):
        if x == 3:
            error = future.exception()
            assert isinstance(error, JobFailedError)
            assert error.exit_code == 7
        else:
            assert future.result() == x


def test_bad_partition_is_refused_with_sbatch_message(
    remote_executor: Callable[..., RemoteExecutor],
) -> None:
    ex = remote_executor("slurm", resources=Resources(partition="nosuchpartition"))
    future = ex.submit(square, 2)
    with pytest.raises(SubmissionError) as caught:
        future.result(timeout=60)
    assert "partition" in str(caught.value).lower()


def test_sge_bad_queue_is_refused(remote_executor: Callable[..., RemoteExecutor]) -> None:
    ex = remote_executor("sge", resources=Resources(partition="nosuch.q"))
    with pytest.raises(SubmissionError) as caught:
        ex.submit(square, 2).result(timeout=60)
    assert "nosuch.q" in str(caught.value)


@pytest.mark.parametrize("target", ["ssh", "slurm"])
def test_ssh_connection_killed_mid_map(
    remote_executor: Callable[..., RemoteExecutor], target: str
) -> None:
    """sshd's process for our connection is killed while a map runs: the shell reconnects.
    On a scheduler the results of the jobs already submitted are still collected. The ssh
    transport's warm workers live on the connection's channels: the calls they were running
    fail with WorkerDiedError (no call hangs, none runs twice) and the others, and later
    calls, run on new workers."""
    facts = require_testbed(target)
    ex = remote_executor(target, max_workers=2)
    futures = [ex.submit(nap, 2.0) for _ in range(4)]
    time.sleep(1.0)
    user = facts.slurm_user
    killed = subprocess.run(["pkill", "-KILL", "-u", user, "-f", f"sshd: {user}"],
                            capture_output=True, check=False)
    assert killed.returncode == 0, "no sshd session process was found to kill"
    done, _ = cf.wait(futures, timeout=120)
    assert len(done) == 4
    if target != "ssh":
        assert [f.result() for f in futures] == [2.0] * 4
        return
    outcomes = [f.exception() or f.result() for f in futures]
    lost = [o for o in outcomes if isinstance(o, WorkerDiedError)]
    assert 1 <= len(lost) <= 2, outcomes  # the calls running on the 2 workers at the drop
    assert all(o == 2.0 for o in outcomes if not isinstance(o, WorkerDiedError)), outcomes
    assert ex.submit(nap, 0.1).result(timeout=120) == 0.1


def test_map_splits_into_one_array_job(remote_executor: Callable[..., RemoteExecutor]) -> None:
    ex = remote_executor("slurm", max_workers=2)
    assert list(ex.map(square, range(50))) == [x * x for x in range(50)]


def job_id_slow_exit() -> str:
    """The Slurm job id of this call; the interpreter then takes 2 s to exit (torch, CUDA or
    MPI teardown)."""
    import atexit

    atexit.register(time.sleep, 2)
    return os.environ["SLURM_JOB_ID"]


def _slurm_state(job_id: str) -> str:
    facts = require_testbed("slurm")
    done = _as_user(facts.slurm_user, f"sacct -X -P -n -j {job_id} --format=State")
    return done.stdout.strip()


def test_slow_teardown_is_not_cancelled(remote_executor: Callable[..., RemoteExecutor]) -> None:
    """The result is read while the task still tears down: the job must end COMPLETED in
    Slurm's accounting, not CANCELLED by a clean-up scancel."""
    facts = require_testbed("slurm")
    if not facts.slurm_accounting:
        pytest.skip("needs sacct (slurmdbd)")
    ex = remote_executor("slurm")
    job_id = ex.submit(job_id_slow_exit).result(timeout=120)
    deadline = time.monotonic() + 90
    while (state := _slurm_state(job_id)) in ("", "PENDING", "RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert state == "COMPLETED"


def test_relative_work_dir(remote_executor: Callable[..., RemoteExecutor]) -> None:
    """A work_dir relative to the remote home works (job scripts run elsewhere: the path
    must be made absolute)."""
    ex = remote_executor("slurm", work_dir="rf-relative-work-dir")
    assert ex.submit(square, 3).result(timeout=120) == 9
    assert list(ex.map(square, range(3))) == [0, 1, 4]


def test_dependency_never_satisfied_fails_with_the_reason(
    remote_executor: Callable[..., RemoteExecutor],
) -> None:
    """A job pending on DependencyNeverSatisfied never runs: after never_runs_grace its call
    fails naming the reason, and the job is cancelled instead of pending for ever."""
    facts = require_testbed("slurm")
    failed = _as_user(facts.slurm_user, "sbatch --parsable -o /dev/null --wrap false")
    assert failed.returncode == 0, failed.stderr
    parent = failed.stdout.strip()
    deadline = time.monotonic() + 60
    while "FAILED" not in _as_user(facts.slurm_user, f"squeue -h -j {parent} -t all -o %T").stdout:
        assert time.monotonic() < deadline, "the parent job never failed"
        time.sleep(1)
    ex = remote_executor(
        "slurm", never_runs_grace=3.0,
        resources=Resources(job_extra_directives=(f"--dependency=afterok:{parent}",)),
    )
    with pytest.raises(JobFailedError) as caught:
        ex.submit(square, 2).result(timeout=120)
    assert "DependencyNeverSatisfied" in str(caught.value)
    job_id = caught.value.job_id
    deadline = time.monotonic() + 60
    while "CANCELLED" not in _as_user(facts.slurm_user,
                                      f"squeue -h -j {job_id} -t all -o %T").stdout:
        assert time.monotonic() < deadline, "the job was left pending"
        time.sleep(1)


def test_sge_error_state_is_deleted(remote_executor: Callable[..., RemoteExecutor]) -> None:
    """A job Grid Engine puts in error state (Eqw: here its output file cannot be opened)
    stays queued for ever: its call fails naming the state, and the job is qdel'ed."""
    facts = require_testbed("sge")
    ex = remote_executor(
        "sge", never_runs_grace=3.0,
        resources=Resources(job_extra_directives=("-o /nonexistent/dir/out",)),
    )
    with pytest.raises(JobFailedError) as caught:
        ex.submit(square, 2).result(timeout=120)
    assert "Eqw" in str(caught.value)
    assert "can't open output file" in str(caught.value)  # SGE's own error reason
    job_id = caught.value.job_id
    deadline = time.monotonic() + 60
    while _as_user(facts.sge_user, f"qstat -j {job_id}").returncode == 0:
        assert time.monotonic() < deadline, "the job was left in the queue"
        time.sleep(1)
