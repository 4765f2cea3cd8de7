"""Fixtures of the Kubernetes tests: the tier A fake API server, run in a thread of its own
(the executor runs its own event loop), and executors pointed at it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio")
from fake_apiserver import FakeServer

from remote_futures import RemoteExecutor


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """The fake server; parametrize it indirectly with a minor version (default 1.29)."""
    if shutil.which("bwrap") is None:
        why = "the fake kubelet runs pods in bubblewrap (apt-get install bubblewrap)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}; the testbed's install.sh installs it", pytrace=False)
        pytest.skip(why)
    server = FakeServer(minor=getattr(request, "param", 29))
    yield server
    server.close()


@pytest.fixture
def k8s_executor(fake: FakeServer) -> Callable[..., RemoteExecutor]:
    made: list[RemoteExecutor] = []

    def make(**options: Any) -> RemoteExecutor:
        settings: dict[str, Any] = {
            "kubeconfig": fake.kubeconfig, "namespace": "default", "python": sys.executable,
            "env": "off", "start_grace": 1.0, "max_workers": 4,
        }
        settings.update(options)
        executor = RemoteExecutor("kubernetes", **settings)
        made.append(executor)
        return executor

    yield make  # type: ignore[misc]
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)
