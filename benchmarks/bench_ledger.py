"""The session ledger's cost on the hot path: a 2000-call ``map`` on a warm ``local`` executor
with the ledger on and off (``REMOTE_FUTURES_LEDGER=off``), interleaved in one run.

Each figure is the median of ``REPEATS`` runs (A B A B ...), ``max_workers=2``, ``chunksize=1``
(2000 tasks: the most ledger rows a 2000-call map can make), and separately ``submit`` of 2000
single calls (2000 ``calls_queued`` reports). The ledger is written to a temporary directory.
The time until the ledger holds every row (``flush``) is reported on its own: it is not on the
caller's path.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from remote_futures import RemoteExecutor

REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
N = 2000


def square(x: int) -> int:
    return x * x


def run(ledger: bool) -> tuple[float, float, float]:
    os.environ["REMOTE_FUTURES_LEDGER"] = "on" if ledger else "off"
    with RemoteExecutor(2) as ex:
        list(ex.map(square, range(8)))  # workers up
        start = time.perf_counter()
        assert list(ex.map(square, range(N), chunksize=1))[-1] == (N - 1) ** 2
        mapped = time.perf_counter() - start
        start = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(N)]
        assert futures[-1].result() == (N - 1) ** 2
        for future in futures:
            future.result()
        submitted = time.perf_counter() - start
        start = time.perf_counter()
        ex._recorder.flush()
        flushed = time.perf_counter() - start
    return mapped, submitted, flushed


def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        os.environ["REMOTE_FUTURES_STATE_DIR"] = state
        results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        run(True)  # warm-up: imports, the ledger file's creation
        for _ in range(REPEATS):
            for ledger in (False, True):
                results[ledger].append(run(ledger))
    for ledger in (False, True):
        rows = results[ledger]
        mapped = statistics.median(r[0] for r in rows)
        submitted = statistics.median(r[1] for r in rows)
        flushed = statistics.median(r[2] for r in rows)
        print(f"ledger {'on ' if ledger else 'off'}: map {N} calls {mapped * 1000:7.1f} ms, "
              f"{N} submits {submitted * 1000:7.1f} ms, flush after {flushed * 1000:5.1f} ms "
              f"(median of {REPEATS})")


if __name__ == "__main__":
    main()
