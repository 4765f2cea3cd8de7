"""A cold ``map`` of 200 trivial calls on the testbed's Slurm with no ``max_workers``: the default
fitted to the partition's free slots against the former fixed default (64), in one run.

Each run times executor creation to the last result. The former default is reproduced by
passing ``max_workers=64``, which is what it was. Runs alternate (fitted, fixed, ...) because
the testbed scheduler's speed drifts; medians of ``RF_BENCH_REPEATS`` (default 3). Other runs
on the shared testbed change the free slots: each fitted run prints the value it got.
Needs the testbed (``nox -s testbed``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from remote_futures import RemoteExecutor
from remote_futures.jobs import JobHandle, JobSpec

STATE = os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed")
with open(os.path.join(STATE, "testbed.json")) as _facts:
    FACTS = json.load(_facts)
REPEATS = int(os.environ.get("RF_BENCH_REPEATS", "3"))
N = 200


def square(x: int) -> int:
    return x * x


def cold_map(**extra: Any) -> tuple[float, int, int]:
    """Seconds from executor creation to the last of ``N`` results; max_workers; tasks."""
    tasks = 0
    start = time.perf_counter()
    with RemoteExecutor("slurm", host=FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                        user=FACTS["RF_SLURM_USER"], identity_file=FACTS["RF_SSH_KEY"],
                        known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"], **extra) as ex:
        transport = ex.transport
        submit = transport.submit

        async def counting(spec: JobSpec) -> JobHandle:
            nonlocal tasks
            tasks += len(spec.tasks)
            return await submit(spec)

        transport.submit = counting  # type: ignore[method-assign]
        assert list(ex.map(square, range(N))) == [x * x for x in range(N)]
        elapsed = time.perf_counter() - start
        return elapsed, ex.max_workers, tasks


def main() -> None:
    runs: dict[str, list[tuple[float, int, int]]] = {"fitted default": [], "max_workers=64": []}
    for _ in range(REPEATS):
        runs["fitted default"].append(cold_map())
        runs["max_workers=64"].append(cold_map(max_workers=64))
        for label, rows in runs.items():
            print(f"  {label}: {rows[-1][0]:.2f} s, max_workers={rows[-1][1]}, "
                  f"{rows[-1][2]} tasks", flush=True)
    print(f"cold map of {N} on slurm           {'s':>8} {'max_workers':>12} {'tasks':>6}")
    for label, rows in runs.items():
        print(f"{label:34} {statistics.median(r[0] for r in rows):8.2f} "
              f"{'/'.join(str(r[1]) for r in rows):>12} "
              f"{int(statistics.median(r[2] for r in rows)):6d}")


if __name__ == "__main__":
    main()
