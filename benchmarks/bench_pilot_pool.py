"""``slurm`` with ``pool=True`` (warm workers in pilot jobs, through the relay) beside ``slurm``
array jobs, interleaved in one run on the testbed (A B A B ...: the scheduler's start rate
drifts over minutes, so figures of different runs do not compare).

Figures (median of ``REPEATS`` runs each, ``max_workers=2``, ``env="sync"`` cached):

* cold map of 200: executor creation to the last of 200 trivial results (default chunksize);
* round trip: one ``submit(...).result()`` on a warm executor (pool: median of 50; arrays: of 5,
  each a scheduler submission);
* calls/s: a ``map`` of 2000 trivial calls with ``chunksize=1`` (pool only: on arrays every
  call would be its own array task) and with the default chunksize.

Beside them, when ``dask_jobqueue`` is importable and ``sbatch`` is on this machine's PATH:
dask-jobqueue's ``SLURMCluster`` with 2 worker jobs (1 core each, the scheduler on 127.0.0.1),
the same figures (cold: cluster creation to the 200th result, imports done before; its jobs
are submitted by this process's user on this machine, remote_futures' over SSH as the testbed's
Slurm user).

Needs the testbed (``RF_TESTBED_DIR``, default ``/tmp/rf-testbed``); skipped without it. The
relay listens on 127.0.0.1, the testbed's only network.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from remote_futures import RemoteExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ssh_pool import options  # the testbed's Slurm user over SSH

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def square(x: int) -> int:
    return x * x


def measure(pool: bool, opts: dict[str, Any]) -> dict[str, float]:
    extra: dict[str, Any] = {"pool": True, "relay_bind": "127.0.0.1"} if pool else {}
    start = time.perf_counter()
    with RemoteExecutor("slurm", **opts, **extra) as ex:
        assert list(ex.map(square, range(200))) == [x * x for x in range(200)]
        cold = time.perf_counter() - start
        times = []
        for i in range(50 if pool else 5):
            t = time.perf_counter()
            ex.submit(square, i).result()
            times.append(time.perf_counter() - t)
        per_call = float("nan")
        if pool:
            t = time.perf_counter()
            list(ex.map(square, range(2000), chunksize=1))
            per_call = 2000 / (time.perf_counter() - t)
        t = time.perf_counter()
        list(ex.map(square, range(2000)))
        chunked = 2000 / (time.perf_counter() - t)
    return {"cold map 200 s": cold, "round trip ms": statistics.median(times) * 1000,
            "calls/s chunksize=1": per_call, "calls/s default chunks": chunked}


def measure_dask(partition: str) -> dict[str, float]:
    """dask-jobqueue's figures (see the module docstring)."""
    import tempfile

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        cluster = SLURMCluster(
            cores=1, processes=1, memory="1GB", queue=partition, walltime="00:10:00",
            scheduler_options={"host": "127.0.0.1"}, local_directory=scratch,
            job_extra_directives=["--output=/dev/null"],
        )
        cluster.scale(jobs=2)
        client = Client(cluster)
        try:
            results = client.gather(client.map(square, range(200)))
            assert results == [x * x for x in range(200)]
            cold = time.perf_counter() - start
            times = []
            for i in range(50):
                t = time.perf_counter()
                client.submit(square, i, pure=False).result()
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.gather(client.map(square, range(2000), pure=False))
            per_call = 2000 / (time.perf_counter() - t)
        finally:
            client.close()
            cluster.close()
    return {"cold map 200 s": cold, "round trip ms": statistics.median(times) * 1000,
            "calls/s chunksize=1": per_call, "calls/s default chunks": float("nan")}


def dask_available() -> bool:
    import shutil

    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return False
    return shutil.which("sbatch") is not None


def main() -> None:
    opts = options()
    if opts is None:
        print("no testbed facts: skipped", file=sys.stderr)
        return
    runs: dict[str, list[dict[str, float]]] = {"slurm pool=True": [], "slurm (arrays)": []}
    dask = dask_available()
    if dask:
        runs["dask-jobqueue"] = []
    else:
        print("dask-jobqueue or a local sbatch missing: no dask-jobqueue figures",
              file=sys.stderr)
    for _ in range(REPEATS):
        runs["slurm pool=True"].append(measure(True, opts))
        runs["slurm (arrays)"].append(measure(False, opts))
        if dask:
            runs["dask-jobqueue"].append(measure_dask(os.environ.get("BENCH_PARTITION",
                                                                     "batch")))
    keys = list(runs["slurm pool=True"][0])
    print(f"{'slurm, max_workers=2':24}" + "".join(f"{k:>24}" for k in keys))
    for name, results in runs.items():
        row = [statistics.median(r[k] for r in results) for k in keys]
        print(f"{name:24}" + "".join(f"{v:24.2f}" for v in row))


if __name__ == "__main__":
    main()
