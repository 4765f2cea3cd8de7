"""The pure parts of the core: planning requests into jobs, and applying statuses to the books."""

from __future__ import annotations

import pickle

from remote_futures.core import RemoteFuture
from remote_futures.jobs import JobStatus, TaskState, TaskStatus
from remote_futures.ledger import Call, Job, apply_status
from remote_futures.planning import Request, drop_cancelled, encode_job, plan_jobs, take_tasks
from remote_futures.resources import Resources


def _call(tag: str) -> Call:
    return Call(RemoteFuture(), tag.encode())


def _request(*tasks: list[str], coalesce: bool = False, partition: str | None = None) -> Request:
    return Request([[_call(tag) for tag in task] for task in tasks],
                   Resources(partition=partition), coalesce)


def _tags(job: Job) -> list[list[bytes | None]]:
    return [[call.blob for call in task.calls] for task in job.tasks]


def test_plan_keeps_arrival_order_and_coalesces_submits_in_place() -> None:
    jobs = plan_jobs(
        [_request(["s1"], coalesce=True), _request(["m1"], ["m2"]),
         _request(["s2"], coalesce=True), _request(["t1"], coalesce=True, partition="gpu")],
        max_tasks_per_job=100,
    )
    assert [_tags(job) for job in jobs] == [
        [[b"s1"], [b"s2"]],  # the submits, at the place of the first
        [[b"m1"], [b"m2"]],
        [[b"t1"]],  # other resources: another job
    ]


def test_plan_splits_at_the_array_limit_and_drops_cancelled_calls() -> None:
    request = _request(["a"], ["b"], ["c"], ["d", "e"], ["f"])
    assert request.tasks[1][0].future is not None
    request.tasks[1][0].future.cancel()
    jobs = plan_jobs([request], max_tasks_per_job=2)
    assert [_tags(job) for job in jobs] == [[[b"a"], [b"c"]], [[b"d", b"e"], [b"f"]]]


def test_take_tasks_carves_the_head_and_drop_cancelled_empties_tasks() -> None:
    (job,) = plan_jobs([_request(["a"], ["b"], ["c"])], max_tasks_per_job=10)
    head = take_tasks(job, 2)
    assert _tags(head) == [[b"a"], [b"b"]]
    assert _tags(job) == [[b"c"]]
    assert take_tasks(job, 5) is job
    future = job.tasks[0].calls[0].future
    assert future is not None
    future.cancel()
    drop_cancelled(job)
    assert job.tasks == []


def test_encode_numbers_calls_and_keeps_no_second_copy() -> None:
    (job,) = plan_jobs([_request(["a", "b"], ["c"])], max_tasks_per_job=10)
    spec = encode_job(job, max_concurrent=1, initializer=None, sys_path=["/x"])
    assert [task.call_indices for task in spec.tasks] == [(0, 1), (2,)]
    assert pickle.loads(spec.tasks[0].payload)["calls"] == [(0, b"a"), (1, b"b")]
    assert spec.max_concurrent == 1
    assert all(call.blob is None for task in job.tasks for call in task.calls)
    assert (job.unsettled, job.unended, sorted(job.by_index)) == (3, 2, [0, 1, 2])
    bare = spec.without_payloads()
    assert [t.payload for t in bare.tasks] == [b"", b""] and bare.code is None


def _encoded(n_tasks: int) -> Job:
    (job,) = plan_jobs([_request(*[[f"c{i}"] for i in range(n_tasks)])], max_tasks_per_job=100)
    encode_job(job, max_concurrent=None, initializer=None, sys_path=[])
    return job


def test_apply_status_takes_deltas_and_keeps_what_is_not_reported() -> None:
    job = _encoded(3)
    effects = apply_status(job, JobStatus({0: TaskStatus(TaskState.RUNNING)}))
    assert effects.changed and [c.index for c in effects.started] == [0]
    # Task 0 missing from the next status: it keeps RUNNING; task 1 ran between two polls.
    effects = apply_status(
        job, JobStatus({1: TaskStatus(TaskState.COMPLETED, exit_code=0)}, frozenset({1}))
    )
    assert job.tasks[0].state is TaskState.RUNNING
    assert [c.index for c in effects.started] == [1]
    assert [t.index for t in effects.ended] == [1]
    assert job.unended == 2 and job.ready == {1}
    # Terminal is final, and a repeat of the same state changes nothing.
    effects = apply_status(job, JobStatus({1: TaskStatus(TaskState.RUNNING),
                                           0: TaskStatus(TaskState.RUNNING)}))
    assert not effects.changed and job.tasks[1].state is TaskState.COMPLETED


def test_apply_status_ignores_outcomes_of_settled_calls() -> None:
    job = _encoded(2)
    call = job.by_index.pop(0)
    call.forget()
    apply_status(job, JobStatus({}, frozenset({0, 1, 7})))
    assert job.ready == {1}


def test_held_slots_follow_unended_tasks() -> None:
    job = _encoded(4)
    job.grant = 2
    assert job.held_slots() == 2
    for index in range(3):
        apply_status(job, JobStatus({index: TaskStatus(TaskState.FAILED, exit_code=1)}))
    assert job.held_slots() == 1
    job.released = True
    assert job.held_slots() == 0
