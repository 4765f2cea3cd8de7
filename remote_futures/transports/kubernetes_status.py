"""What a pod's and a Job's status mean for a task: pure functions over the API's JSON.

Kubernetes reports trouble in several places: the pod's phase and ``reason`` (``Evicted``,
``DeadlineExceeded``), the container's ``waiting``/``terminated`` state (``ErrImagePull``,
``OOMKilled``), the ``PodScheduled`` condition (``Unschedulable``) and the Job's own conditions
(``BackoffLimitExceeded``, ``DeadlineExceeded``). This module reads them all and returns one
:class:`~remote_futures.jobs.TaskStatus` whose ``raw_state`` says what Kubernetes said.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from ..jobs import TaskState, TaskStatus

__all__ = ["STUCK_REASONS", "job_failure", "parse_time", "pod_status"]

#: Waiting reasons of a container that will not start by itself; after the grace period the
#: task fails instead of waiting forever.
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 timestamp of the API (``2024-01-02T03:04:05Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _container_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (statuses[0].get("state") or {}) if statuses else {}


def _since(pod: Mapping[str, Any]) -> datetime.datetime | None:
    meta = pod.get("metadata") or {}
    return parse_time(meta.get("creationTimestamp"))


def pod_status(
    pod: Mapping[str, Any], *, now: datetime.datetime, grace: float
) -> TaskStatus:
    """The task state one pod shows. A pod that cannot start (a bad image, a missing Secret,
    no node that fits) is reported failed once it has been stuck for ``grace`` seconds."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    state = _container_state(pod)
    terminated = state.get("terminated") or {}
    if phase == "Succeeded":
        return TaskStatus(TaskState.COMPLETED, "Succeeded", exit_code=0)
    if phase == "Failed":
        reason = status.get("reason") or terminated.get("reason") or "Error"
        message = status.get("message") or ""
        exit_code = terminated.get("exitCode")
        signal = terminated.get("signal") or (
            exit_code - 128 if isinstance(exit_code, int) and 128 < exit_code < 160 else None
        )
        said = f"{reason}: {message}" if message else reason
        if terminated.get("reason") == "OOMKilled":
            return TaskStatus(TaskState.OUT_OF_MEMORY, "OOMKilled", exit_code, signal)
        if reason == "DeadlineExceeded":
            return TaskStatus(TaskState.TIMEOUT, said, exit_code, signal)
        if reason in ("Evicted", "Preempting", "Shutdown", "Terminated", "NodeShutdown"):
            return TaskStatus(TaskState.PREEMPTED, said, exit_code, signal)
        if reason == "NodeLost":
            return TaskStatus(TaskState.NODE_FAIL, said, exit_code, signal)
        return TaskStatus(TaskState.FAILED, said, exit_code, signal)
    if phase == "Unknown":
        return TaskStatus(TaskState.RUNNING, "Unknown")
    if phase == "Running":
        return TaskStatus(TaskState.RUNNING, "Running")
    # Pending: waiting to be scheduled, to pull, to start.
    since = _since(pod)
    stuck_for = (now - since).total_seconds() if since else 0.0
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in STUCK_REASONS:
        said = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
        if stuck_for >= grace:
            return TaskStatus(TaskState.BOOT_FAIL, said)
        return TaskStatus(TaskState.PENDING, said)
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            said = f"Unschedulable: {condition.get('message') or 'no node fits the pod'}"
            if stuck_for >= grace:
                return TaskStatus(TaskState.BOOT_FAIL, said)
            return TaskStatus(TaskState.PENDING, said)
    return TaskStatus(TaskState.PENDING, waiting.get("reason") or "Pending")


def job_failure(job: Mapping[str, Any]) -> TaskStatus | None:
    """The terminal state of a Job whose ``Failed`` condition is set, else None. Only
    ``Complete``/``Failed`` with status True are read: newer servers add other conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            reason = condition.get("reason") or "Failed"
            message = condition.get("message") or ""
            said = f"{reason}: {message}" if message else reason
            if reason == "DeadlineExceeded":
                return TaskStatus(TaskState.TIMEOUT, said)
            return TaskStatus(TaskState.FAILED, said)
    return None
