"""Fixtures for tests against the testbed's real schedulers over real SSH."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
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
