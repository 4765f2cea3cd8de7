"""Tier B: the Kubernetes transport's fault paths against the testbed's real kube-apiserver and
kube-controller-manager (1.20) and its bubblewrap kubelet: an OOM kill, a walltime, an image
that cannot be pulled, an unschedulable pod, a missing namespace, nothing left behind, and
``sweep`` of a dead session."""

from __future__ import annotations

import asyncio
import operator
import secrets
import sys
import time
from typing import Any

import pytest
from testbed_facts import require_testbed

from remote_futures import (
    BrokenRemoteExecutor,
    JobFailedError,
    RemoteExecutor,
    Resources,
)
from remote_futures.transports.kubernetes import (
    MANAGED_BY,
    SESSION_LABEL,
    _make_client,
    sweep,
)

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(120)]


def _options(**extra: Any) -> dict[str, Any]:
    facts = require_testbed("kubernetes")
    options: dict[str, Any] = {
        "kubeconfig": str(facts.raw["RF_K8S_KUBECONFIG"]),
        "namespace": str(facts.raw["RF_K8S_NAMESPACE"]),
        "python": sys.executable, "start_grace": 5.0, "max_workers": 2,
    }
    options.update(extra)
    return options


async def _managed(options: dict[str, Any], selector: str) -> list[str]:
    import kubernetes_asyncio as k8s

    client = await _make_client(k8s, options["kubeconfig"], None)
    try:
        core, batch = k8s.client.CoreV1Api(client), k8s.client.BatchV1Api(client)
        names = []
        for fn in (batch.list_namespaced_job, core.list_namespaced_pod,
                   core.list_namespaced_secret, core.list_namespaced_config_map):
            listed = await fn(options["namespace"], label_selector=selector)
            names += [f"{item.kind or fn.__name__}/{item.metadata.name}"
                      for item in listed.items]
        return names
    finally:
        await client.close()


def _hog(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def test_oom_kill_is_out_of_memory_and_shutdown_leaves_nothing() -> None:
    options = _options(resources=Resources(memory="200M"))
    ex = RemoteExecutor("kubernetes", **options)
    with ex:
        assert ex.submit(_hog, 10).result(timeout=90) == 10 * 1024 * 1024
        with pytest.raises(JobFailedError) as info:
            ex.submit(_hog, 600).result(timeout=90)
        session = ex._transport.session  # type: ignore[attr-defined]
    assert info.value.state == "OUT_OF_MEMORY"
    assert info.value.exit_code == 137
    assert asyncio.run(_managed(options, f"{SESSION_LABEL}={session}")) == []


def test_walltime_is_the_jobs_deadline() -> None:
    with RemoteExecutor("kubernetes", **_options(resources=Resources(walltime="0:00:02"))) as ex:
        future = ex.submit(time.sleep, 60)
        with pytest.raises(JobFailedError, match="DeadlineExceeded") as info:
            future.result(timeout=90)
    assert info.value.state == "TIMEOUT"


def test_image_that_cannot_be_pulled_fails_after_the_grace_period() -> None:
    options = _options(image="registry.invalid/rf-testbed-missing:1", env="off")
    with RemoteExecutor("kubernetes", **options) as ex, pytest.raises(
        JobFailedError, match=r"ErrImagePull|ImagePullBackOff"
    ) as info:
        ex.submit(operator.add, 1, 1).result(timeout=90)
    assert info.value.state == "BOOT_FAIL"


def test_unschedulable_pod_fails_with_the_schedulers_message() -> None:
    options = _options(node_selector={"gpu": "a100"})
    with RemoteExecutor("kubernetes", **options) as ex, pytest.raises(
        JobFailedError, match="didn't match node selector"
    ) as info:
        ex.submit(operator.add, 1, 1).result(timeout=90)
    assert info.value.state == "BOOT_FAIL"


def test_missing_namespace_is_named_on_the_first_call() -> None:
    ex = RemoteExecutor("kubernetes", **_options(namespace="no-such-namespace"))
    try:
        with pytest.raises(BrokenRemoteExecutor, match="'no-such-namespace' does not exist"):
            ex.submit(operator.add, 1, 1).result(timeout=60)
    finally:
        ex.shutdown()


def test_sweep_deletes_a_dead_sessions_leftovers_only() -> None:
    import kubernetes_asyncio as k8s

    options = _options()
    # A name of its own each run: a run stopped half-way leaves its "dead" session behind.
    dead = f"dead{secrets.token_hex(4)}"
    labels = {MANAGED_BY: "remote-futures", SESSION_LABEL: dead}

    async def leave_leftovers() -> None:
        client = await _make_client(k8s, options["kubeconfig"], None)
        try:
            core = k8s.client.CoreV1Api(client)
            await core.create_namespaced_config_map(options["namespace"], {
                "metadata": {"name": f"rf-session-{dead}", "labels": labels, "annotations": {
                    "remote-futures.io/heartbeat": "2020-01-01T00:00:00Z"}}})
            await core.create_namespaced_secret(options["namespace"], {
                "metadata": {"name": f"rf-{dead}", "labels": labels}, "data": {}})
        finally:
            await client.close()

    asyncio.run(leave_leftovers())
    with RemoteExecutor("kubernetes", **options) as ex:
        assert ex.submit(operator.add, 1, 2).result(timeout=60) == 3
        live = ex._transport.session  # type: ignore[attr-defined]
        swept = asyncio.run(sweep(namespace=options["namespace"],
                                  kubeconfig=options["kubeconfig"]))
        assert dead in swept and live not in swept
        assert asyncio.run(_managed(options, f"{SESSION_LABEL}={live}")) != []
    assert asyncio.run(_managed(options, f"{SESSION_LABEL}={dead}")) == []
