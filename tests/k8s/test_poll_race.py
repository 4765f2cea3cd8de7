"""A task whose pod succeeds while ``poll`` is reading another pod's log must not be reported
terminal before its own log (its outcomes) was read: the core would fail its calls."""

from __future__ import annotations

import pickle

import anyio
import pytest

from remote_futures import k8s_entry
from remote_futures.jobs import JobHandle, JobSpec, TaskSpec, TaskState
from remote_futures.transports.kubernetes import (
    KubernetesOptions,
    KubernetesTransport,
    _K8sJob,
)


def _pod(name: str, job: str, phase: str) -> dict:
    return {"metadata": {"name": name, "labels": {"job-name": job},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": phase}}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pod_succeeding_during_another_read_is_not_reported_early(
    anyio_backend: str,
) -> None:
    transport = KubernetesTransport(KubernetesOptions(forward_output=False), max_workers=2)
    spec = JobSpec("rf-x", (TaskSpec(0, b"", (0,)), TaskSpec(1, b"", (1,))))
    state = _K8sJob(JobHandle("rf-x", spec, "rf-x"), names={0: "rf-x-0", 1: "rf-x-1"},
                    nonces={0: "n0", 1: "n1"})
    transport._jobs["rf-x"] = state
    transport._pods = {"p0": _pod("p0", "rf-x-0", "Running"),
                       "p1": _pod("p1", "rf-x-1", "Succeeded")}
    blocks = {"p0": k8s_entry.frame("n0", pickle.dumps({0: b"zero"})),
              "p1": k8s_entry.frame("n1", pickle.dumps({1: b"one"}))}

    async def pod_log(name: str, *, tail: int | None = None) -> bytes:
        if name == "p1":  # while task 1's log is read, task 0's pod succeeds
            transport._pods["p0"] = _pod("p0", "rf-x-0", "Succeeded")
            await anyio.sleep(0)
        return blocks[name].encode()

    transport._pod_log_bytes = pod_log  # type: ignore[method-assign]
    first = (await transport.poll([state.handle]))[state.handle]
    assert first.tasks[1].state is TaskState.COMPLETED and 1 in first.ready_calls
    assert not first.tasks[0].state.terminal or 0 in first.ready_calls
    second = (await transport.poll([state.handle]))[state.handle]
    assert second.tasks[0].state is TaskState.COMPLETED and 0 in second.ready_calls
