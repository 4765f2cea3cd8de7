"""Turning requests into jobs: pure functions, no I/O and no event loop.

* :func:`plan_jobs` groups the requests that arrived together: single ``submit`` calls with the
  same resources and code become one array job (schedulers launch one job far faster than
  many), and on transports that ask for it several of them share one task, as a ``map``'s
  chunk does (schedulers also start tasks at a limited rate); a ``map`` becomes its own job;
  anything larger than the transport's array limit is split.
* :func:`take_tasks` carves off the first tasks of a planned job, for transports that can only
  start jobs all of whose tasks fit the slots the core can grant (no array throttle).
* :func:`encode_job` numbers a job's calls and encodes each task's payload, dropping the
  calls' own pickled bytes as it goes (they now live in the payload only).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .jobs import CodeBundle, JobSpec, TaskSpec
from .ledger import Call, Job, Task
from .resources import Resources
from .serialization import encode_task

__all__ = [
    "Chunks",
    "JobRules",
    "Request",
    "drop_cancelled",
    "encode_job",
    "plan_jobs",
    "take_tasks",
]


@dataclasses.dataclass(eq=False)
class Request:
    """Work handed over by the facade: tasks of calls, with the resources they need.

    ``coalesce`` marks a single ``submit``: such requests that arrive together (the same
    resources) are merged into one array job. ``auto_chunk`` marks a ``map`` given no
    chunksize: its one-call tasks are grouped when planned, by the transport's default, which
    may depend on what the transport learnt when it opened (``max_workers``).
    """

    tasks: list[list[Call]]
    resources: Resources
    coalesce: bool = False
    #: The caller's own modules at the time of the request (remote transports).
    code: CodeBundle | None = None
    auto_chunk: bool = False


#: How many calls each task of a burst of ``n`` single submits runs (see :func:`plan_jobs`).
Chunks = Callable[[int], list[int] | None]
#: The planning rules of jobs of given resources: the most tasks one job may hold, and how a
#: burst of single submits is cut into tasks (see :meth:`.Transport.job_rules`).
JobRules = Callable[[Resources], tuple[int, Chunks | None]]


def plan_jobs(
    requests: Iterable[Request],
    max_tasks_per_job: int,
    submit_chunks: Chunks | None = None,
    map_chunksize: Callable[[int], int] | None = None,
    *,
    rules: JobRules | None = None,
) -> list[Job]:
    """Group ``requests`` into jobs, dropping calls already cancelled (they never go out).

    ``submit_chunks(n)``: how ``n`` single submits that arrived together are cut into tasks,
    the number of calls of each task in turn (a task runs its calls one after the other, as a
    ``map`` chunk); None: one call per task. ``map_chunksize(n)``: the calls per task of a
    ``map`` of ``n`` calls given no chunksize (``auto_chunk``). ``rules(resources)``, when
    given, replaces ``max_tasks_per_job`` and ``submit_chunks`` for the jobs of those
    resources (a transport that runs some resources another way than the rest).
    """

    def rules_of(resources: Resources) -> tuple[int, Chunks | None]:
        return (max_tasks_per_job, submit_chunks) if rules is None else rules(resources)

    # In order of arrival (admission is first come, first served); a group of coalesced
    # submits takes the place of its first one. Each entry: the tasks' calls, resources,
    # code, how its calls are grouped, and whether that grouping is a burst's.
    planned: list[tuple[list[list[Call]], Resources, CodeBundle | None, Chunks | None,
                        bool]] = []
    map_chunks = None if map_chunksize is None else _uniform(map_chunksize)
    singles: dict[tuple[Resources, CodeBundle | None], list[list[Call]]] = {}
    for request in requests:
        if request.coalesce:
            key = (request.resources, request.code)
            if key not in singles:
                singles[key] = []
                planned.append((singles[key], request.resources, request.code,
                                rules_of(request.resources)[1], True))
            singles[key].extend(request.tasks)
        else:
            planned.append((request.tasks, request.resources, request.code,
                            map_chunks if request.auto_chunk else None, False))
    jobs: list[Job] = []
    for task_calls, resources, code, chunks, burst in planned:
        tasks = [Task(-1, live) for calls in task_calls if (live := _live(calls))]
        if chunks is not None:
            tasks = _group(tasks, chunks, rerun_unstarted=burst)
        limit = max(1, rules_of(resources)[0])
        for start in range(0, len(tasks), limit):
            jobs.append(Job(tasks[start : start + limit], resources, code))
    return jobs


def _group(
    tasks: list[Task], chunks: Callable[[int], list[int] | None], *, rerun_unstarted: bool
) -> list[Task]:
    """The calls of one-call ``tasks`` (a burst of submits, a map) regrouped into tasks of
    ``chunks(n)`` calls each, in order; None: left as they are."""
    sizes = chunks(sum(len(task.calls) for task in tasks))
    if sizes is None:
        return tasks
    calls = [call for task in tasks for call in task.calls]
    if sum(sizes) != len(calls) or min(sizes, default=1) < 1:
        return tasks  # a transport's mistake must not lose or duplicate calls
    grouped = []
    start = 0
    for size in sizes:
        grouped.append(Task(-1, calls[start : start + size],
                            rerun_unstarted=rerun_unstarted and size > 1))
        start += size
    return grouped


def _uniform(chunksize: Callable[[int], int]) -> Callable[[int], list[int] | None]:
    """``chunks`` for tasks of ``chunksize(n)`` calls (the last one may hold fewer)."""

    def chunks(n_calls: int) -> list[int] | None:
        size = max(1, chunksize(n_calls))
        if size == 1:
            return None
        return [size] * (n_calls // size) + ([n_calls % size] if n_calls % size else [])

    return chunks


def take_tasks(job: Job, count: int) -> Job:
    """The first ``count`` tasks of ``job`` as a job of their own; ``job`` keeps the rest."""
    if count >= len(job.tasks):
        return job
    head = Job(job.tasks[:count], job.resources, job.code)
    del job.tasks[:count]
    return head


def drop_cancelled(job: Job) -> None:
    """Remove calls cancelled while the job waited for admission, and tasks left empty."""
    tasks = []
    for task in job.tasks:
        task.calls = _live(task.calls)
        if task.calls:
            tasks.append(task)
    job.tasks = tasks


def encode_job(
    job: Job,
    *,
    max_concurrent: int | None,
    initializer: bytes | None,
    sys_path: Sequence[str],
    out_of_band: bool = False,
) -> JobSpec:
    """Number the job's calls and tasks, and build the spec a transport submits
    (``out_of_band``: the transport takes large buffers beside the payloads)."""
    counter = 0
    specs = []
    code = job.code
    for position, task in enumerate(job.tasks):
        task.index = position
        entries: list[tuple[int, bytes]] = []
        for call in task.calls:
            call.index, call.job, call.task = counter, job, task
            job.by_index[counter] = call
            assert call.blob is not None
            entries.append((counter, call.blob))
            call.blob = None
            counter += 1
        payload = encode_task(
            entries,
            initializer=initializer,
            sys_path=sys_path,
            code=code.name if code is not None else None,
            out_of_band=out_of_band,
        )
        specs.append(TaskSpec(position, payload, tuple(index for index, _ in entries)))
    job.unsettled = counter
    job.unended = len(specs)
    job.code = None
    return JobSpec(
        name=f"rf-{uuid.uuid4().hex[:12]}",
        tasks=tuple(specs),
        resources=job.resources,
        max_concurrent=max_concurrent,
        code=code,
    )


def _live(calls: list[Call]) -> list[Call]:
    return [call for call in calls if call.unsettled and not _cancelled(call.future)]


def _cancelled(future: Any) -> bool:
    return future is None or bool(future.cancelled())
