"""The ``ssh`` transport's warm workers on the testbed's sshd, beside the previous transport
(``ssh-jobs``: a detached process and job files per task), interleaved in one run.

Figures (median of ``REPEATS`` runs each, ``max_workers=2``, ``env="sync"`` cached):

* round trip: one ``submit(...).result()`` on a warm executor (median of 50);
* calls/s: a ``map`` of 2000 trivial calls with ``chunksize=1`` (every call its own task), and
  with the default chunksize;
* cold: executor creation to the first result.

Needs the testbed (``RF_TESTBED_DIR``, default ``/tmp/rf-testbed``); skipped without it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from remote_futures import RemoteExecutor

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def square(x: int) -> int:
    return x * x


def options() -> dict[str, Any] | None:
    path = os.path.join(os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed"), "testbed.json")
    try:
        with open(path) as f:
            facts = json.load(f)
    except OSError:
        return None
    return {
        "host": facts.get("RF_SSH_HOST", "127.0.0.1"),
        "port": int(facts.get("RF_SSH_PORT", 2222)),
        "user": facts.get("RF_SLURM_USER", "slurmuser"),
        "identity_file": facts["RF_SSH_KEY"],
        "known_hosts": facts["RF_SSH_KNOWN_HOSTS"],
        "max_workers": 2,
    }


def measure(target: str, opts: dict[str, Any], trips: int, calls: int) -> dict[str, float]:
    start = time.perf_counter()
    with RemoteExecutor(target, **opts) as ex:
        ex.submit(square, 1).result()
        cold = time.perf_counter() - start
        list(ex.map(square, range(4)))  # every worker up
        times = []
        for i in range(trips):
            t = time.perf_counter()
            ex.submit(square, i).result()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        list(ex.map(square, range(calls), chunksize=1))
        per_call = calls / (time.perf_counter() - t)
        t = time.perf_counter()
        list(ex.map(square, range(calls)))
        chunked = calls / (time.perf_counter() - t)
    return {"cold s": cold, "round trip ms": statistics.median(times) * 1000,
            "calls/s chunksize=1": per_call, "calls/s default chunks": chunked}


def main() -> None:
    opts = options()
    if opts is None:
        print("no testbed facts: skipped", file=sys.stderr)
        return
    runs: dict[str, list[dict[str, float]]] = {"ssh": [], "ssh-jobs": []}
    for _ in range(REPEATS):
        runs["ssh"].append(measure("ssh", opts, trips=50, calls=2000))
        # The previous transport is far slower per call: fewer calls, same measures.
        runs["ssh-jobs"].append(measure("ssh-jobs", opts, trips=5, calls=100))
    keys = list(runs["ssh"][0])
    print(f"{'ssh host, max_workers=2':24}" + "".join(f"{k:>24}" for k in keys))
    for target, results in runs.items():
        row = [statistics.median(r[k] for r in results) for k in keys]
        print(f"{target:24}" + "".join(f"{v:24.2f}" for v in row))


if __name__ == "__main__":
    main()
