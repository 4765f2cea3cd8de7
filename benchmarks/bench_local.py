"""The `local` transport against ProcessPoolExecutor, interleaved in one run.

Each figure is the median wall time of a whole ``with`` block (executor start, work, shutdown),
so it includes worker process start-up for both. Scenarios: 1000 trivial calls via ``map`` with
chunksize 1 and 100 (max_workers=2), and 8 calls that each sleep 0.5 s (max_workers=4).
"""

from __future__ import annotations

import concurrent.futures as cf
import statistics
import time
from collections.abc import Callable
from functools import partial

from remote_futures import RemoteExecutor

REPEATS = 5


def square(x: int) -> int:
    return x * x


def nap(_: int) -> None:
    time.sleep(0.5)


def run(
    make: Callable[[], cf.Executor], fn: Callable[[int], object], n: int, chunksize: int
) -> float:
    start = time.perf_counter()
    with make() as ex:
        list(ex.map(fn, range(n), chunksize=chunksize))
    return time.perf_counter() - start


def main() -> None:
    scenarios = [
        ("1000 trivial, chunksize=1", 2, square, 1000, 1),
        ("1000 trivial, chunksize=100", 2, square, 1000, 100),
        ("8 x sleep(0.5), 4 workers", 4, nap, 8, 1),
    ]
    print(f"{'scenario':32} {'ProcessPool s':>14} {'local s':>10} {'ratio':>7}")
    for name, workers, fn, n, chunksize in scenarios:
        ppe: list[float] = []
        local: list[float] = []
        for _ in range(REPEATS):  # interleaved: A B A B ...
            ppe.append(run(partial(cf.ProcessPoolExecutor, workers), fn, n, chunksize))
            local.append(run(partial(RemoteExecutor, "local", max_workers=workers), fn, n,
                             chunksize))
        a, b = statistics.median(ppe), statistics.median(local)
        print(f"{name:32} {a:14.3f} {b:10.3f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
