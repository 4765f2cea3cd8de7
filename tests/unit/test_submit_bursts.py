"""Bursts of single ``submit``s grouped into multi-call tasks, as ``map`` chunks its calls.

The planner regroups the submits that arrived together when the transport asks for it (batch
schedulers start tasks at a few per second). On a batch transport the first ``max_workers``
calls stay one per task, so a lone submit (or a few) starts at once and a call waiting behind
them stays cancellable; the rest go in about ``max_workers`` tasks of several calls. ``map``
requests keep the chunks the executor made.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable

import cloudpickle
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

Chunks = Callable[[int], "list[int] | None"]


def _submits(*tags: str, partition: str | None = None) -> list[Request]:
    return [Request([[Call(RemoteFuture(), tag.encode())]], Resources(partition=partition), True)
            for tag in tags]


def _tags(job: Job) -> list[list[bytes | None]]:
    return [[call.blob for call in task.calls] for task in job.tasks]


def _slurm(max_workers: int) -> Chunks:
    return SlurmTransport(BatchOptions(), max_workers=max_workers).submit_chunks


def test_a_burst_becomes_single_calls_for_the_slots_then_multi_call_tasks() -> None:
    requests = _submits(*(f"s{i}" for i in range(10)))
    (job,) = plan_jobs(requests, max_tasks_per_job=100, submit_chunks=_slurm(2))
    assert _tags(job) == [
        [b"s0"], [b"s1"],  # one per slot: they start at once
        [b"s2", b"s3", b"s4", b"s5"], [b"s6", b"s7", b"s8", b"s9"],  # the rest, in two tasks
    ]


def test_without_chunks_each_submit_is_a_task() -> None:
    (job,) = plan_jobs(_submits("a", "b", "c"), max_tasks_per_job=100)
    assert _tags(job) == [[b"a"], [b"b"], [b"c"]]
    (same,) = plan_jobs(_submits("a", "b", "c"), max_tasks_per_job=100,
                        submit_chunks=lambda n: None)
    assert _tags(same) == [[b"a"], [b"b"], [b"c"]]


def test_a_lone_submit_and_a_few_submits_stay_one_call_per_task() -> None:
    (lone,) = plan_jobs(_submits("a"), max_tasks_per_job=100, submit_chunks=_slurm(4))
    assert _tags(lone) == [[b"a"]]
    (few,) = plan_jobs(_submits("a", "b", "c", "d", "e"), max_tasks_per_job=100,
                       submit_chunks=_slurm(4))
    assert _tags(few) == [[b"a"], [b"b"], [b"c"], [b"d"], [b"e"]]


def test_maps_keep_their_chunks_and_resources_stay_apart() -> None:
    mapped = Request([[Call(RemoteFuture(), b"m0")], [Call(RemoteFuture(), b"m1")]],
                     Resources(), False)
    requests = [*_submits("s0", "s1"), mapped, *_submits("s2", "s3"),
                *_submits("g0", "g1", partition="gpu")]
    jobs = plan_jobs(requests, max_tasks_per_job=100, submit_chunks=lambda n: [n])
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
    jobs = plan_jobs(requests, max_tasks_per_job=2, submit_chunks=lambda n: [2] * (n // 2))
    assert [_tags(job) for job in jobs] == [
        [[b"s0", b"s1"], [b"s3", b"s4"]],
        [[b"s5", b"s6"]],
    ]


def test_chunks_that_do_not_hold_every_call_are_ignored() -> None:
    (job,) = plan_jobs(_submits("a", "b", "c"), max_tasks_per_job=100,
                       submit_chunks=lambda n: [2])
    assert _tags(job) == [[b"a"], [b"b"], [b"c"]]


@pytest.mark.parametrize("make", [lambda w: SlurmTransport(BatchOptions(), max_workers=w),
                                  lambda w: SGETransport(SGEOptions(), max_workers=w)])
def test_batch_transports_chunks(make: Callable[[int], BatchTransport]) -> None:
    four = make(4)
    assert four.submit_chunks(1) is None
    assert four.submit_chunks(4) is None
    assert four.submit_chunks(8) is None  # 4 + 4: one call per task either way
    assert four.submit_chunks(9) == [1, 1, 1, 1, 2, 2, 1]
    assert four.submit_chunks(200) == [1] * 4 + [49] * 4
    assert four.submit_chunks(2000) == [1] * 4 + [499] * 4
    assert four.submit_chunks(10_000) == [1] * 4 + [1000] * 9 + [996]  # at most 1000 a task
    many = make(64).submit_chunks(2000)
    assert many is not None and sum(many) == 2000 and len(many) == 64 + 63


def test_the_local_pool_does_not_group() -> None:
    pool = LocalPoolTransport(LocalPoolOptions(), max_workers=2)
    assert pool.submit_chunks(1000) is None


def test_the_core_groups_a_burst_on_a_transport_that_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the whole executor: a loop of submits goes out as few tasks, results right;
    a lone submit on the idle executor goes out alone."""
    monkeypatch.setattr(MockTransport, "submit_chunks", BatchTransport.submit_chunks)
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


def die_on(x: int, bad: int) -> int:
    """``x * 10``, except that the process exits on ``bad`` (no outcome for this call nor for
    the later calls of its task)."""
    if x == bad:
        import os

        os._exit(3)
    return x * 10


def test_a_call_that_ends_its_process_fails_alone_and_the_rest_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Grouped as a batch scheduler groups them, on local job processes (one per task): the
    call that kills its task's process fails; the calls after it never started and run in a
    new task; every other result is right."""
    from remote_futures import JobFailedError
    from remote_futures.transports.local import LocalTransport

    monkeypatch.setattr(LocalTransport, "submit_chunks", BatchTransport.submit_chunks)
    with RemoteExecutor("local-jobs", max_workers=2) as ex:
        futures = [ex.submit(die_on, i, 4) for i in range(12)]
        for i, future in enumerate(futures):
            if i == 4:
                assert isinstance(future.exception(timeout=60), JobFailedError)
            else:
                assert future.result(timeout=60) == i * 10


def test_calls_that_all_end_their_process_fail_in_a_bounded_number_of_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When every call ends its task's process (as a broken environment would end each task
    before its first call), the calls after the first of each task are run again a bounded
    number of times, so every future fails soon instead of going round and round."""
    from remote_futures import JobFailedError
    from remote_futures.jobs import JobHandle, JobSpec
    from remote_futures.transports.local import LocalTransport

    monkeypatch.setattr(LocalTransport, "submit_chunks", BatchTransport.submit_chunks)
    sent: collections.Counter[int] = collections.Counter()  # times each call went out
    sizes: list[int] = []
    with RemoteExecutor("local-jobs", max_workers=2) as ex:
        transport = ex.transport
        submit = transport.submit

        async def counting(spec: JobSpec) -> JobHandle:
            for task in spec.tasks:
                sizes.append(len(task.call_indices))
                for _, blob in pickle.loads(task.payload)["calls"]:
                    _, args, _ = cloudpickle.loads(blob)
                    sent[args[0]] += 1
            return await submit(spec)

        transport.submit = counting  # type: ignore[method-assign]
        futures = [ex.submit(die_on, i, i) for i in range(60)]
        for future in futures:
            assert isinstance(future.exception(timeout=120), JobFailedError)
    # Each call went out at most three times: the first time and two reruns.
    assert sorted(sent) == list(range(60))
    assert max(sent.values()) <= 3, sent
    assert max(sizes) > 1, sizes


def test_rules_per_resources_split_and_group_each_job_their_own_way() -> None:
    """``rules(resources)`` replaces the limit and the burst grouping per resources: a pilot
    pool's own calls stay one per task in one job, other resources (array jobs) are grouped
    and split at the array limit."""
    pool_res, other = Resources(cpus=1), Resources(cpus=4)

    def rules(resources: Resources) -> tuple[int, Chunks | None]:
        return (1_000_000, None) if resources == pool_res else (3, _slurm(2))

    requests = [Request([[Call(RemoteFuture(), f"p{i}".encode())]], pool_res, True)
                for i in range(10)]
    requests += [Request([[Call(RemoteFuture(), f"o{i}".encode())]], other, True)
                 for i in range(10)]
    requests.append(Request([[Call(RemoteFuture(), f"m{i}".encode())] for i in range(7)],
                            other))
    own, *arrays = plan_jobs(requests, max_tasks_per_job=1, rules=rules)
    assert _tags(own) == [[f"p{i}".encode()] for i in range(10)]
    assert own.resources == pool_res
    # The burst of ten: one per slot, then two tasks of four; three tasks a job at most.
    assert [_tags(job) for job in arrays[:2]] == [
        [[b"o0"], [b"o1"], [b"o2", b"o3", b"o4", b"o5"]], [[b"o6", b"o7", b"o8", b"o9"]],
    ]
    assert [len(job.tasks) for job in arrays[2:]] == [3, 3, 1]  # the map of seven
    assert all(job.resources == other for job in arrays)


def test_a_pilot_pool_plans_other_resources_as_array_jobs() -> None:
    """The pilot transport's rules: its own resources unlimited and one call per task;
    others at the scheduler's array limit, bursts grouped as the batch transport groups."""
    from remote_futures.transports.batch import PBSOptions
    from remote_futures.transports.pilot import PBSPilotTransport

    pilot = PBSPilotTransport(PBSOptions(pool=True, resources=Resources(cpus=1)),
                              max_workers=4)
    limit, chunks = pilot.job_rules(Resources(cpus=1))
    assert limit >= 1_000_000 and (chunks is None or chunks(2000) is None)
    limit, chunks = pilot.job_rules(Resources(cpus=1, memory="8G"))
    assert limit == 10_000  # PBSTransport.max_tasks_per_job
    assert chunks is not None and chunks(200) == [1] * 4 + [49] * 4
