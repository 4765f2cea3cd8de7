"""Tier A: the Kubernetes transport against the in-test fake API server, for the conditions a
real API server cannot stage on demand (dropped watches, 410 Gone, 429/500 with Retry-After,
image pull errors, eviction, an unschedulable pod, RBAC refusals)."""

from __future__ import annotations

import concurrent.futures as cf
import operator
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_apiserver import FakeServer

from remote_futures import (
    BrokenRemoteExecutor,
    JobFailedError,
    RemoteExecutor,
    SubmissionError,
)
from remote_futures.transports.kubernetes import MANAGED_BY, SESSION_LABEL, sweep_sync

pytestmark = pytest.mark.timeout(90)
Make = Callable[..., RemoteExecutor]


def _sleep_then(seconds: float, value: Any) -> Any:
    import time as t

    t.sleep(seconds)
    return value


def _boom(message: str) -> None:
    raise KeyError(message)


def _managed(fake: FakeServer) -> list[tuple[str, str]]:
    return [(k, name) for (k, _, name), obj in fake.cluster.objects.items()
            if obj["metadata"].get("labels", {}).get(MANAGED_BY) == "remote-futures"]


def test_submit_map_and_exception(k8s_executor: Make, fake: FakeServer) -> None:
    with k8s_executor() as ex:
        assert ex.submit(operator.add, 2, 3).result(timeout=60) == 5
        assert list(ex.map(operator.mul, range(6), range(6))) == [i * i for i in range(6)]
        with pytest.raises(KeyError, match="remote"):
            ex.submit(_boom, "remote").result(timeout=60)
    # shutdown deleted everything of the session
    assert _managed(fake) == []


def test_dropped_watch_is_resumed(k8s_executor: Make, fake: FakeServer) -> None:
    with k8s_executor() as ex:
        future = ex.submit(_sleep_then, 1.5, "after the drop")
        time.sleep(0.7)
        watches_before = fake.cluster.count("GET", r"watch=[Tt]rue")
        fake.do(fake.cluster.drop_watches)
        assert future.result(timeout=60) == "after the drop"
        # resumed (from the last resourceVersion), not given up
        assert fake.cluster.count("GET", r"watch=[Tt]rue") > watches_before


def test_410_gone_relists(k8s_executor: Make, fake: FakeServer) -> None:
    with k8s_executor() as ex:
        future = ex.submit(_sleep_then, 1.5, "after 410")
        time.sleep(0.7)
        lists_before = fake.cluster.count("GET", r"/pods\?labelSelector=[^&]*$")

        async def expire() -> None:
            fake.cluster.compact()
            await fake.cluster.drop_watches()

        fake.do(expire)
        assert future.result(timeout=60) == "after 410"
        assert fake.cluster.count("GET", r"/pods\?labelSelector=[^&]*$") > lists_before


def test_429_and_500_with_retry_after_are_retried(k8s_executor: Make, fake: FakeServer) -> None:
    fake.cluster.fail_next("POST", r"/jobs$", 429, times=2, retry_after=0.2)
    fake.cluster.fail_next("GET", r"/log", 500, times=1, retry_after=0)
    with k8s_executor() as ex:
        assert ex.submit(operator.add, 40, 2).result(timeout=60) == 42
    assert fake.cluster.count("POST", r"/jobs$") == 3


@pytest.mark.parametrize(("fate", "words"), [
    ("image_pull", "ErrImagePull"),
    ("config_error", "CreateContainerConfigError"),
    ("unschedulable", "Insufficient nvidia.com/gpu"),
    ("evict", "Evicted"),
])
def test_pod_that_cannot_run_fails_clearly(
    k8s_executor: Make, fake: FakeServer, fate: str, words: str
) -> None:
    fake.cluster.fate["rf-"] = fate
    with k8s_executor() as ex:
        future = ex.submit(operator.add, 1, 1)
        with pytest.raises(JobFailedError, match=words) as info:
            future.result(timeout=60)
    expected = "PREEMPTED" if fate == "evict" else "BOOT_FAIL"
    assert info.value.state == expected


def test_an_evicted_pod_is_named_even_when_its_job_failure_is_seen_first(
    k8s_executor: Make, fake: FakeServer
) -> None:
    """The Job's BackoffLimitExceeded arrives a second before the pod's eviction: the error
    still names the eviction (PREEMPTED, which retries re-run), not the Job's reason."""
    fake.cluster.fate["rf-"] = "evict"
    fake.cluster.job_failed_first = True
    with k8s_executor() as ex:
        future = ex.submit(operator.add, 1, 1)
        with pytest.raises(JobFailedError, match="Evicted") as info:
            future.result(timeout=60)
    assert info.value.state == "PREEMPTED"


def test_missing_namespace_is_a_clear_error(k8s_executor: Make) -> None:
    ex = k8s_executor(namespace="nope")
    with pytest.raises(BrokenRemoteExecutor, match="namespace 'nope' does not exist"):
        ex.submit(operator.add, 1, 1).result(timeout=60)


def test_forbidden_verb_is_named(k8s_executor: Make, fake: FakeServer) -> None:
    fake.cluster.denied.add(("create", "jobs"))
    with k8s_executor() as ex, pytest.raises(BrokenRemoteExecutor, match="may not create jobs"):
        ex.submit(operator.add, 1, 1).result(timeout=60)
    assert fake.cluster.count("POST", r"/jobs$") == 0


def test_payload_over_the_object_limit_fails_before_anything_is_created(
    k8s_executor: Make, fake: FakeServer
) -> None:
    with k8s_executor() as ex:
        with pytest.raises(SubmissionError, match="Secret"):
            ex.submit(len, b"x" * (2 * 1024 * 1024)).result(timeout=60)
        assert fake.cluster.count("POST", r"/secrets$") == 0
        assert fake.cluster.count("POST", r"/jobs$") == 0
        assert ex.submit(len, b"x" * 1000).result(timeout=60) == 1000


def test_cancel_deletes_the_job(k8s_executor: Make, fake: FakeServer) -> None:
    fake.cluster.fate["rf-"] = "unschedulable"
    with k8s_executor(start_grace=600.0) as ex:
        future = ex.submit(operator.add, 1, 1)
        deadline = time.monotonic() + 30
        while not any(k == "jobs" for k, _ in _managed(fake)):
            assert time.monotonic() < deadline, "the Job was never created"
            time.sleep(0.05)
        assert future.cancel()
        while any(k in ("jobs", "pods") for k, _ in _managed(fake)):
            assert time.monotonic() < deadline, f"still there: {_managed(fake)}"
            time.sleep(0.05)
        with pytest.raises(cf.CancelledError):
            future.result()


def test_sweep_deletes_dead_sessions_only(k8s_executor: Make, fake: FakeServer) -> None:
    async def leftovers() -> None:
        for session, beat in (("dead", "2020-01-01T00:00:00Z"), ("alive", None)):
            labels = {MANAGED_BY: "remote-futures", SESSION_LABEL: session}
            meta: dict[str, Any] = {"name": f"rf-session-{session}", "labels": labels}
            if beat:
                meta["annotations"] = {"remote-futures.io/heartbeat": beat}
            else:
                meta["annotations"] = {"remote-futures.io/heartbeat": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            await fake.cluster.put("configmaps", "default", {"metadata": {
                **meta, "uid": session, "creationTimestamp": "2020-01-01T00:00:00Z"}},
                "ADDED")
            await fake.cluster.put("secrets", "default", {"metadata": {
                "name": f"rf-{session}", "labels": labels, "uid": f"s-{session}",
                "creationTimestamp": "2020-01-01T00:00:00Z"}}, "ADDED")

    fake.do(leftovers)
    swept = sweep_sync(namespace="default", kubeconfig=fake.kubeconfig)
    assert swept == ["dead"]
    names = sorted(name for _, name in _managed(fake))
    assert names == ["rf-alive", "rf-session-alive"]


def test_indexed_job_for_a_map_honours_parallelism(k8s_executor: Make, fake: FakeServer) -> None:
    with k8s_executor(max_workers=3) as ex:
        assert list(ex.map(operator.neg, range(9), chunksize=1)) == [-i for i in range(9)]
    jobs = fake.cluster.count("POST", r"/jobs$")
    assert jobs == 1, "a map on a server with Indexed Jobs is one Job"
    assert fake.cluster.max_parallel_seen and max(fake.cluster.max_parallel_seen.values()) <= 3


@pytest.mark.parametrize("fake", [20], indirect=True)
def test_one_job_per_task_where_indexed_jobs_are_missing(
    k8s_executor: Make, fake: FakeServer
) -> None:
    with k8s_executor(max_workers=4) as ex:
        assert list(ex.map(operator.neg, range(4), chunksize=1)) == [0, -1, -2, -3]
    assert fake.cluster.count("POST", r"/jobs$") == 4
    assert fake.cluster.max_parallel_seen == {}


def test_one_failed_index_spares_its_siblings(k8s_executor: Make, fake: FakeServer) -> None:
    fake.cluster.fate["rf-"] = "index-1-evict"
    with k8s_executor(max_workers=3) as ex:
        futures = [ex.submit(operator.neg, i) for i in range(3)]
        cf.wait(futures, timeout=60)
    assert fake.cluster.count("POST", r"/jobs$") == 1
    assert futures[0].result() == 0 and futures[2].result() == -2
    with pytest.raises(JobFailedError, match="Evicted") as info:
        futures[1].result()
    assert info.value.state == "PREEMPTED"
