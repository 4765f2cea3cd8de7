"""How the core's cost grows with the work, against ProcessPoolExecutor in the same run.

* ``map`` of N trivial calls on ``local`` with chunksize 1 (each call its own array task), for
  N = 10k, 40k, 160k: the time should grow about linearly. ProcessPoolExecutor beside it.
* The client memory of 100k pending futures (peak RSS growth of a fresh process that submits
  100k calls to an executor whose only slot is blocked), and ``shutdown(cancel_futures=True)``
  of those 100k.

Each memory/shutdown figure comes from a fresh interpreter (``python bench_scale.py
--pending <executor>``), so that one measurement does not inherit another's heap.
``BENCH_SCALE_SIZES=10000,40000`` picks other map sizes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from remote_futures import RemoteExecutor

WORKERS = 2
PENDING = 100_000


def ident(x: int) -> int:
    return x


def block(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def timed_map(make: Callable[[], cf.Executor], n: int) -> float:
    start = time.perf_counter()
    with make() as ex:
        for _ in ex.map(ident, range(n), chunksize=1):
            pass
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pending(kind: str) -> dict[str, float]:
    """In a fresh process: client memory of PENDING pending futures, and cancelling them."""
    gate = f"/tmp/rf-bench-gate-{os.getpid()}"
    ex: cf.Executor = (
        RemoteExecutor("local", max_workers=1) if kind == "remote" else cf.ProcessPoolExecutor(1)
    )
    ex.submit(ident, 0).result()  # workers up, imports done: measure the futures only
    before = _rss_mib()
    first = ex.submit(block, gate)
    start = time.perf_counter()
    futures = [ex.submit(ident, i) for i in range(PENDING)]
    submit_s = time.perf_counter() - start
    time.sleep(2.0)  # let the core plan and hand them over
    after = _rss_mib()
    start = time.perf_counter()
    threading.Timer(0.0, lambda: open(gate, "w").close()).start()
    ex.shutdown(wait=True, cancel_futures=True)
    shutdown_s = time.perf_counter() - start
    os.unlink(gate)
    cancelled = sum(f.cancelled() for f in futures)
    del first
    return {"rss_mib": after - before, "submit_s": submit_s, "shutdown_s": shutdown_s,
            "cancelled": cancelled}


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "10000,40000,160000").split(",")]
    print(f"map of N trivial calls, chunksize=1, max_workers={WORKERS} (seconds)")
    print(f"{'N':>8} {'ProcessPool':>12} {'local':>10} {'local/N us':>11}")
    for n in sizes:
        ppe = timed_map(lambda: cf.ProcessPoolExecutor(WORKERS), n)
        local = timed_map(lambda: RemoteExecutor("local", max_workers=WORKERS), n)
        print(f"{n:>8} {ppe:12.2f} {local:10.2f} {local / n * 1e6:11.1f}", flush=True)
    print(f"\n{PENDING} pending futures (fresh process each)")
    print(f"{'executor':>12} {'client MiB':>11} {'submit s':>9} {'shutdown s':>11} "
          f"{'cancelled':>10}")
    for kind in ("processpool", "remote"):
        out = subprocess.run([sys.executable, __file__, "--pending", kind], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{kind:>12} {r['rss_mib']:11.0f} {r['submit_s']:9.2f} {r['shutdown_s']:11.2f} "
              f"{r['cancelled']:>10}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pending":
        print(json.dumps(pending(sys.argv[2])))
    else:
        main()
