"""Fixtures for tests against the testbed's real schedulers over real SSH, and for tests
against the fake Slurm of ``fake_slurm.py`` on this machine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _fake_slurm_env import HERE, FakeSlurm, install
from testbed_facts import COMPONENT_OF, executor_options, require_testbed

from remote_futures import RemoteExecutor


@pytest.fixture
def remote_executor() -> Iterator[Callable[..., RemoteExecutor]]:
    """``remote_executor(target, **overrides)``; every executor is shut down at teardown."""
    created: list[RemoteExecutor] = []

    def make(target: str, **overrides: Any) -> RemoteExecutor:
        facts = require_testbed(COMPONENT_OF[target])
        executor = RemoteExecutor(target, **{**executor_options(facts, target), **overrides})
        created.append(executor)
        return executor

    yield make
    for executor in reversed(created):
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlurm]:
    """The fake Slurm first on PATH (its state in ``tmp_path``); every task it started is
    killed at teardown."""
    state = tmp_path / "slurm-state"
    state.mkdir()
    install(tmp_path / "bin", HERE / "fake_slurm.py",
            ["sbatch", "squeue", "sacct", "scancel", "scontrol"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    fake = FakeSlurm(state)
    yield fake
    fake.kill_all()
