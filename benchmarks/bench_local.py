"""The `local` pool against ProcessPoolExecutor (spawn), interleaved in one run.

Scenarios, each figure the median of ``REPEATS`` interleaved runs (A B A B ...), both with
``max_workers=2`` and the spawn start method:

* cold: executor creation to the first result (one trivial call), then shutdown (not timed);
* warm map: 2000 trivial calls, ``chunksize=1``, on an executor whose workers are up;
* round trip: one ``submit(...).result()`` on an idle, warm executor (median of 200);
* big global: 100 ``submit``s of a ``__main__`` function reading a 300k-entry global, warm.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable

from remote_futures import RemoteExecutor

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
WORKERS = 2
BIG = {i: i for i in range(300_000)}


def square(x: int) -> int:
    return x * x


def read_big(x: int) -> int:
    return BIG[x]


def ppe() -> cf.Executor:
    return cf.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))


def pool() -> cf.Executor:
    return RemoteExecutor(WORKERS)


def warm(ex: cf.Executor) -> None:
    list(ex.map(square, range(4 * WORKERS)))


def cold(make: Callable[[], cf.Executor]) -> float:
    start = time.perf_counter()
    ex = make()
    ex.submit(square, 3).result()
    elapsed = time.perf_counter() - start
    ex.shutdown()
    return elapsed


def warm_map(ex: cf.Executor) -> float:
    start = time.perf_counter()
    list(ex.map(square, range(2000)))
    return time.perf_counter() - start


def round_trip(ex: cf.Executor) -> float:
    times = []
    for i in range(200):
        start = time.perf_counter()
        ex.submit(square, i).result()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def big_global(ex: cf.Executor) -> float:
    start = time.perf_counter()
    futures = [ex.submit(read_big, i) for i in range(100)]
    for future in futures:
        future.result()
    return time.perf_counter() - start


def main() -> None:
    results: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in ("cold", "warm map 2000", "round trip", "big global x100")
    }
    for _ in range(REPEATS):
        for side, make in ((0, ppe), (1, pool)):
            results["cold"][side].append(cold(make))
        executors = (ppe(), pool())
        for ex in executors:
            warm(ex)
        for name, scenario in (("warm map 2000", warm_map), ("round trip", round_trip),
                               ("big global x100", big_global)):
            for side, ex in enumerate(executors):
                results[name][side].append(scenario(ex))
        for ex in executors:
            ex.shutdown()
    print(f"{'scenario (max_workers=2, spawn)':34} {'ProcessPool':>12} {'local':>10} {'ratio':>7}")
    for name, (a_runs, b_runs) in results.items():
        a, b = statistics.median(a_runs), statistics.median(b_runs)
        unit, scale = ("ms", 1000.0) if name == "round trip" else ("s", 1.0)
        print(f"{name:34} {a * scale:10.3f}{unit:>2} {b * scale:8.3f}{unit:>2} {b / a:7.2f}")


if __name__ == "__main__":
    main()
