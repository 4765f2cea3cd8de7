"""The ``ssh`` transport's warm workers, on the testbed's real sshd: workers are reused across
calls (one initializer run, one pid), and a worker killed mid-call fails exactly that call while
the other worker's call and the executor go on."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from testbed_facts import executor_options, require_testbed

from remote_futures import JobFailedError, RemoteExecutor, WorkerDiedError

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

_state: dict[str, int] = {}


def count_init() -> None:
    _state["inits"] = _state.get("inits", 0) + 1


def pid_and_inits() -> tuple[int, int]:
    return os.getpid(), _state.get("inits", 0)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def slow_value(seconds: float) -> str:
    time.sleep(seconds)
    return "survived"


def _options() -> dict[str, Any]:
    facts = require_testbed("ssh")
    return executor_options(facts, "ssh")


def test_workers_stay_warm_and_initialize_once() -> None:
    with RemoteExecutor("ssh", max_workers=1, initializer=count_init, **_options()) as ex:
        seen = [ex.submit(pid_and_inits).result(timeout=120) for _ in range(11)]
    assert len({pid for pid, _ in seen}) == 1
    assert {inits for _, inits in seen} == {1}


def test_killed_worker_fails_only_its_call() -> None:
    with RemoteExecutor("ssh", max_workers=2, **_options()) as ex:
        ex.submit(pid_and_inits).result(timeout=120)  # the workers are up
        survivor = ex.submit(slow_value, 2.0)
        victim = ex.submit(die)
        error = victim.exception(timeout=120)
        assert isinstance(error, WorkerDiedError)
        assert isinstance(error, BrokenProcessPool)
        assert isinstance(error, JobFailedError)
        assert survivor.result(timeout=120) == "survived"
        # The pool replaced the worker; the executor goes on.
        assert [ex.submit(abs, -i).result(timeout=120) for i in range(3)] == [0, 1, 2]
