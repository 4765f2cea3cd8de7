"""Bursts of single ``submit``s grouped into multi-call tasks, as ``map`` chunks its calls.

The planner groups the submits that arrived together when the transport asks for it (batch
schedulers start tasks at a few per second); a lone submit stays a task of its own, so it
starts at once; ``map`` requests keep the chunks the executor made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from remote_futures import RemoteExecutor
from remote_futures.core import RemoteFuture
from remote_futures.ledger import Call, Job
from remote_futures.planning import Request, plan_jobs
from remote_futures.resources import Resources
from remote_futures.transports.batch import (
    BatchOptions,
    BatchTransport,
    SGEOptions,
    SGETransport,
    SlurmTransport,
)
from remote_futures.transports.local_pool import LocalPoolOptions, LocalPoolTransport
from remote_futures.transports.mock import MockTransport

pytestmark = pytest.mark.timeout(60)


def _submits(*tags: str, partition: str | None = None) -> list[Request]:
    return [Request([[Call(RemoteFuture(), tag.encode())]], Resources(partition=partition), True)
            for tag in tags]


def _tags(job: Job) -> list[list[bytes | None]]:
    return [[call.blob for call in task.calls] for task in job.tasks]


def _per_slots(slots: int) -> Callable[[int], int]:
    return lambda n: math.ceil(n / slots)


def test_a_burst_of_submits_becomes_tasks_of_several_calls_in_order() -> None:
    requests = _submits(*(f"s{i}" for i in range(10)))
    (job,) = plan_jobs(requests, max_tasks_per_job=100, submit_chunksize=_per_slots(4))
    assert _tags(job) == [
        [b"s0", b"s1", b"s2"], [b"s3", b"s4", b"s5"], [b"s6", b"s7", b"s8"], [b"s9"],
    ]


def test_without_a_chunksize_each_submit_is_a_task() -> None:
    (job,) = plan_jobs(_submits("a", "b", "c"), max_tasks_per_job=100)
    assert _tags(job) == [[b"a"], [b"b"], [b"c"]]


def test_a_lone_submit_and_a_few_submits_stay_one_call_per_task() -> None:
    (lone,) = plan_jobs(_submits("a"), max_tasks_per_job=100, submit_chunksize=_per_slots(4))
    assert _tags(lone) == [[b"a"]]
    (few,) = plan_jobs(_submits("a", "b", "c"), max_tasks_per_job=100,
                       submit_chunksize=_per_slots(4))
    assert _tags(few) == [[b"a"], [b"b"], [b"c"]]


def test_maps_keep_their_chunks_and_resources_stay_apart() -> None:
    mapped = Request([[Call(RemoteFuture(), b"m0")], [Call(RemoteFuture(), b"m1")]],
                     Resources(), False)
    requests = [*_submits("s0", "s1"), mapped, *_submits("s2", "s3"),
                *_submits("g0", "g1", partition="gpu")]
    jobs = plan_jobs(requests, max_tasks_per_job=100, submit_chunksize=lambda n: n)
    assert [_tags(job) for job in jobs] == [
        [[b"s0", b"s1", b"s2", b"s3"]],
        [[b"m0"], [b"m1"]],
        [[b"g0", b"g1"]],
    ]


def test_cancelled_submits_are_dropped_before_grouping_and_the_array_limit_holds() -> None:
    requests = _submits(*(f"s{i}" for i in range(7)))
    future = requests[2].tasks[0][0].future
    assert future is not None
    future.cancel()
    jobs = plan_jobs(requests, max_tasks_per_job=2, submit_chunksize=lambda n: 2)
    assert [_tags(job) for job in jobs] == [
        [[b"s0", b"s1"], [b"s3", b"s4"]],
        [[b"s5", b"s6"]],
    ]


@pytest.mark.parametrize("make", [lambda: SlurmTransport(BatchOptions(), max_workers=4),
                                  lambda: SGETransport(SGEOptions(), max_workers=4)])
def test_batch_transports_group_about_max_workers_tasks_capped(
    make: Callable[[], BatchTransport],
) -> None:
    transport = make()
    assert [transport.submit_chunksize(n) for n in (1, 3, 4, 5, 200, 2000)] == [
        1, 1, 1, 2, 50, 100,
    ]


def test_the_local_pool_does_not_group() -> None:
    pool = LocalPoolTransport(LocalPoolOptions(), max_workers=2)
    assert pool.submit_chunksize(1000) == 1


def test_the_core_groups_a_burst_on_a_transport_that_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the whole executor: a loop of submits goes out as few tasks, results right;
    a lone submit on the idle executor goes out alone."""
    monkeypatch.setattr(MockTransport, "submit_chunksize",
                        lambda self, n: math.ceil(n / self.max_workers))
    with RemoteExecutor("mock", max_workers=2) as ex:
        transport = ex.transport
        assert isinstance(transport, MockTransport)
        futures = [ex.submit(pow, i, 2) for i in range(40)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(40)]
        burst_tasks = [len(task.call_indices) for spec in transport.submitted
                       for task in spec.tasks]
        assert sum(burst_tasks) == 40
        assert len(burst_tasks) <= 20  # one task per call before
        assert max(burst_tasks) > 1
        before = len(transport.submitted)
        assert ex.submit(pow, 3, 3).result(timeout=30) == 27
        lone = transport.submitted[before:]
        assert [[len(task.call_indices) for task in spec.tasks] for spec in lone] == [[1]]
