"""Fixtures for tests against the testbed's real schedulers over real SSH."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from testbed_facts import TestbedFacts, require_testbed

from remote_futures import RemoteExecutor

#: The interpreter the testbed provides for env="off" (system Python + cloudpickle).
DEFAULT_REMOTE_PYTHON = "/opt/rf-remote-python/bin/python"

USER_OF = {"ssh": "slurm_user", "slurm": "slurm_user", "pbs": "pbs_user", "sge": "sge_user"}
COMPONENT_OF = {"ssh": "ssh", "slurm": "slurm", "pbs": "pbs", "sge": "sge"}


def connection(facts: TestbedFacts, target: str) -> dict[str, Any]:
    """RemoteExecutor keyword arguments that reach ``target`` on the testbed as its user."""
    return {
        "host": facts.host,
        "port": facts.port,
        "user": getattr(facts, USER_OF[target]),
        "identity_file": str(facts.key),
        "known_hosts": str(facts.known_hosts),
        "python": str(facts.raw.get("RF_REMOTE_PYTHON", DEFAULT_REMOTE_PYTHON)),
        "env": "off",
    }


@pytest.fixture
def remote_executor() -> Iterator[Callable[..., RemoteExecutor]]:
    """``remote_executor(target, **overrides)``; every executor is shut down at teardown."""
    created: list[RemoteExecutor] = []

    def make(target: str, **overrides: Any) -> RemoteExecutor:
        facts = require_testbed(COMPONENT_OF[target])
        executor = RemoteExecutor(target, **{**connection(facts, target), **overrides})
        created.append(executor)
        return executor

    yield make
    for executor in reversed(created):
        executor.shutdown(wait=True, cancel_futures=True)
