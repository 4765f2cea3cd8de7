"""The real ``BatchTransport`` on this machine (``host=None``) against a fake Slurm on PATH
(``fake_slurm.py``): jobs really run, while the test stages what a shared cluster does to a
client: a controller that does not answer for minutes, an NFS home whose listings lag, a
slow interpreter teardown after the last result."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _fake_slurm_env import HERE, FakeSlurm, install

from remote_futures import RemoteExecutor

pytestmark = [pytest.mark.timeout(300)]


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square(x: int) -> int:
    return x * x


def square_slow_exit(x: int) -> int:
    """The result is written at once; the interpreter then takes 3 s to exit (as torch, CUDA
    or MPI teardown can)."""
    atexit.register(time.sleep, 3)
    return x * x


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Callable[..., RemoteExecutor]]:
    created: list[RemoteExecutor] = []

    def make(**options: Any) -> RemoteExecutor:
        options = {"host": None, "python": sys.executable, "env": "off",
                   "work_dir": str(tmp_path / "rf"), "max_workers": 4, **options}
        ex = RemoteExecutor("slurm", **options)
        created.append(ex)
        return ex

    yield make
    for ex in created:
        ex.shutdown(wait=True, cancel_futures=True)


def _wait_running(futures: list[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(f.running() or f.done() for f in futures):
        assert time.monotonic() < deadline, "the calls never started"
        time.sleep(0.2)
    assert not any(f.done() for f in futures), [f.exception() for f in futures if f.done()]


def test_controller_down_for_80_s_fails_no_call(
    fake_slurm: FakeSlurm, executor: Callable[..., RemoteExecutor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """squeue and sacct fail for 80 s while the calls run (a slurmctld restart, a failover):
    one call ends during the outage (its exit file says so), the other after the controller
    is back; both return their results. Before, a failed squeue read as "no jobs", and the
    running call failed as VANISHED about 65 s into the outage."""
    caplog.set_level(logging.INFO, logger="remote_futures")
    ex = executor()
    futures = [ex.submit(nap, 50.0), ex.submit(nap, 100.0)]
    _wait_running(futures)
    fake_slurm.set_down(True)
    threading.Timer(80.0, fake_slurm.set_down, args=(False,)).start()
    assert futures[0].result(timeout=200) == 50.0
    assert (fake_slurm.state / "ctld-down").exists()  # it did end during the outage
    assert futures[1].result(timeout=200) == 100.0
    assert "status command failed" in caplog.text
    assert "answers again" in caplog.text
    assert ex.submit(square, 7).result(timeout=60) == 49


def test_nfs_listing_lag_fails_no_call(
    fake_slurm: FakeSlurm, executor: Callable[..., RemoteExecutor], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files younger than 3 s are invisible to find/grep (NFS on a login node), while the
    scheduler already says COMPLETED: every call still succeeds (the latency wait), where
    before each one failed with "the job finished but left no result"."""
    monkeypatch.setenv("FAKE_REAL_FIND", shutil.which("find") or "find")
    monkeypatch.setenv("FAKE_REAL_GREP", shutil.which("grep") or "grep")
    install(tmp_path / "nfs-bin", HERE / "fake_nfs.py", ["find", "grep"])
    monkeypatch.setenv("FAKE_NFS_ROOT", str(tmp_path / "rf"))
    monkeypatch.setenv("FAKE_NFS_LAG", "3")
    monkeypatch.setenv("PATH", f"{tmp_path / 'nfs-bin'}{os.pathsep}{os.environ['PATH']}")
    ex = executor()
    assert list(ex.map(square, range(10), chunksize=1)) == [x * x for x in range(10)]
    futures = [ex.submit(square, x) for x in range(4)]
    assert [f.result(timeout=120) for f in futures] == [0, 1, 4, 9]


def test_slow_teardown_is_neither_cancelled_nor_cleaned_up_under_the_task(
    fake_slurm: FakeSlurm, executor: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    """Every result is read while the tasks still tear down for 3 s: the job is not
    scancel'ed (it ends COMPLETED, not CANCELLED) and its directory is not removed under
    it; the directories go once the tasks have ended."""
    ex = executor()
    assert list(ex.map(square_slow_exit, range(3), chunksize=1)) == [0, 1, 4]
    deadline = time.monotonic() + 60
    while any(state == "RUNNING" for state in fake_slurm.states().values()):
        assert time.monotonic() < deadline, fake_slurm.states()
        time.sleep(0.2)
    assert set(fake_slurm.states().values()) == {"COMPLETED"}, fake_slurm.states()
    assert fake_slurm.log("scancel.log") == ""
    assert fake_slurm.log("dir-gone.log") == ""
    ex.shutdown(wait=True)
    assert list((tmp_path / "rf" / "jobs").iterdir()) == []


def speak_slow_exit(tag: str) -> str:
    """Prints, returns at once, then the interpreter takes 3 s to exit: the outcome file is
    there 3 s before the task's exit file."""
    print(f"stdout says {tag}")
    print(f"stderr says {tag}", file=sys.stderr)
    atexit.register(time.sleep, 3)
    return tag


def test_output_is_forwarded_before_the_result_is_set(
    fake_slurm: FakeSlurm, executor: Callable[..., RemoteExecutor],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The result settles when its outcome is listed, seconds before the task's exit file
    here. What the call printed must already be on the caller's stdout/stderr when
    ``result()`` returns, and not printed twice when the task ends. Before, output was
    forwarded only once a poll saw the exit file, after the result (and after the job was
    released, so not at all)."""
    ex = executor()
    assert ex.submit(speak_slow_exit, "a").result(timeout=60) == "a"
    assert list(ex.map(speak_slow_exit, ["b", "c"], chunksize=1)) == ["b", "c"]
    out, err = capfd.readouterr()
    for tag in "abc":
        assert f"stdout says {tag}" in out, out
        assert f"stderr says {tag}" in err, err
    ex.shutdown(wait=True)
    out, err = capfd.readouterr()
    assert "says" not in out + err, (out, err)
