"""A loop of single ``submit``s on an open Slurm executor: grouped into multi-call tasks (as
``map`` chunks its calls) against one task per call (the behaviour before grouping), in one run.

Each round times ``N`` ``submit(square, i)`` calls from the first submit to the last result, on
an executor that is already open and warm (environment synced, worker uploaded), with
``max_workers`` the testbed partition's CPUs. The ungrouped side is the same executor code with
the transport's ``submit_chunks`` forced to None (one call per task). Runs alternate
(grouped, ungrouped, ...) because the testbed scheduler's speed drifts; medians of
``RF_BENCH_REPEATS`` (default 2). Needs the testbed (``nox -s testbed``).
``python benchmarks/bench_bursts.py [N]``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from remote_futures import RemoteExecutor
from remote_futures.jobs import JobHandle, JobSpec

STATE = os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed")
with open(os.path.join(STATE, "testbed.json")) as _facts:
    FACTS = json.load(_facts)
REPEATS = int(os.environ.get("RF_BENCH_REPEATS", "2"))


def square(x: int) -> int:
    return x * x


def executor() -> RemoteExecutor:
    return RemoteExecutor("slurm", host=FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                          user=FACTS["RF_SLURM_USER"], identity_file=FACTS["RF_SSH_KEY"],
                          known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"],
                          max_workers=int(FACTS.get("RF_SLURM_CPUS", 4)))


def burst(ex: RemoteExecutor, n: int, grouped: bool) -> tuple[float, int]:
    """Seconds for ``n`` submits to their last result, and how many array tasks ran them."""
    transport = ex.transport
    tasks = 0
    submit = transport.submit

    async def counting(spec: JobSpec) -> JobHandle:
        nonlocal tasks
        tasks += len(spec.tasks)
        return await submit(spec)

    transport.submit = counting  # type: ignore[method-assign]
    if not grouped:
        transport.submit_chunks = lambda n_calls: None  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(n)]
        assert [f.result() for f in futures] == [i * i for i in range(n)]
        return time.perf_counter() - start, tasks
    finally:
        del transport.submit
        if not grouped:
            del transport.submit_chunks


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    runs: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    with executor() as ex:
        ex.submit(square, 2).result()  # warm
        for _ in range(REPEATS):
            for grouped in (True, False):
                runs[grouped].append(burst(ex, n, grouped))
                seconds, tasks = runs[grouped][-1]
                print(f"  {'grouped' if grouped else 'one task per call'}: {seconds:.2f} s, "
                      f"{tasks} tasks", flush=True)
    print(f"{n} submits on slurm, max_workers={ex.max_workers}   {'s':>8} {'calls/s':>8} "
          f"{'tasks':>6}")
    for grouped in (True, False):
        seconds = statistics.median(s for s, _ in runs[grouped])
        tasks = int(statistics.median(t for _, t in runs[grouped]))
        label = "grouped (multi-call tasks)" if grouped else "one task per call (before)"
        print(f"{label:40} {seconds:8.2f} {n / seconds:8.1f} {tasks:6d}")


if __name__ == "__main__":
    main()
