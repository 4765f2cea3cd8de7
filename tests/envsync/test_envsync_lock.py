"""The remote installer's directory lock (``_installer.Lock``), driven directly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from remote_futures.envsync._installer import Lock


def _stamp(lock: Path, pid: int, when: float) -> None:
    lock.mkdir(exist_ok=True)
    (lock / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                            "time": when}))
    os.utime(lock / "owner", (when, when))


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_a_lock_taken_afresh_after_the_verdict_is_not_broken(tmp_path: Path) -> None:
    path = tmp_path / "venv.lock"
    _stamp(path, _dead_pid(), time.time() - 3600)
    late = Lock(str(path), timeout=1, stale_after=120, heartbeat=10)
    verdict = late._stale_holder()
    assert verdict is not None  # this client judged the lock stale...

    # ...and meanwhile another client broke it and took the lock afresh.
    (path / "owner").unlink()
    path.rmdir()
    _stamp(path, os.getpid(), time.time())

    late._break(verdict)  # acting on the old verdict
    assert path.is_dir() and json.loads((path / "owner").read_text())["pid"] == os.getpid()
    assert late.broken == []
    assert not Path(f"{path}.break").exists()


def test_a_stale_lock_is_still_broken(tmp_path: Path) -> None:
    path = tmp_path / "venv.lock"
    _stamp(path, _dead_pid(), time.time() - 3600)
    lock = Lock(str(path), timeout=5, stale_after=120, heartbeat=10)
    lock.acquire()
    try:
        assert lock.broken and "is gone" in lock.broken[0]
        assert json.loads((path / "owner").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not path.exists() and not Path(f"{path}.break").exists()


def test_a_breaker_that_died_does_not_block_breaking_for_ever(tmp_path: Path) -> None:
    path = tmp_path / "venv.lock"
    _stamp(path, _dead_pid(), time.time() - 3600)
    breaker = Path(f"{path}.break")
    breaker.mkdir()
    os.utime(breaker, (time.time() - 3600, time.time() - 3600))
    lock = Lock(str(path), timeout=5, stale_after=120, heartbeat=10)
    lock.acquire()
    lock.release()
    assert lock.broken and not breaker.exists()
