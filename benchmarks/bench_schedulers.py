"""`map` of 200 trivial calls on slurm / pbs / sge against each scheduler's own floor.

The floor is what the scheduler needs for the same 200 tasks with nothing of ours: one array
submission of `true` over an SSH connection, polled until every task is done. Runs are
interleaved (floor, ours, floor, ours, ...) because the testbed's scheduler speed drifts over
minutes. Also: one `submit` round trip against one plain `true` job's turnaround.
Needs the testbed (`nox -s testbed`); pass scheduler names to run a subset.

``slurm-latency`` (run by default after the table) measures the core's own overhead on an
already-open Slurm executor, interleaved in one run (A B A B ...):

- one ``submit(f).result()`` against the floor: one ``sbatch --wrap true`` round trip over
  one open SSH connection, polling ``squeue`` every 0.05 s until the job is gone;
- one ``map`` of 200 calls with ``chunksize=1`` against Slurm's own span for the same jobs
  (``sacct`` Submit of the first task to End of the last, 1 s resolution).

Medians of ``RF_BENCH_REPEATS`` pairs (at least 3 here).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time

import asyncssh

from remote_futures import RemoteExecutor

STATE = os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed")
with open(os.path.join(STATE, "testbed.json")) as _facts:
    FACTS = json.load(_facts)
PYTHON = FACTS.get("RF_REMOTE_PYTHON", "/opt/rf-remote-python/bin/python")
N = 200
REPEATS = int(os.environ.get("RF_BENCH_REPEATS", "2"))
USERS = {"slurm": FACTS["RF_SLURM_USER"], "pbs": FACTS["RF_PBS_USER"], "sge": FACTS["RF_SGE_USER"]}
# Submit an array of `true`, then wait until the scheduler lists none of it.
FLOOR = {
    "slurm": ("sbatch --parsable --array=0-{last} -o /dev/null --wrap true",
              "squeue -h -j {id} | wc -l"),
    "pbs": ("cd /tmp && echo '#!/bin/sh' > rf-true.sh && "
            "qsub -t 0-{last} -o /dev/null -e /dev/null rf-true.sh",
            "squeue -h -j {id} | wc -l"),
    "sge": ("qsub -terse -b y -t 1-{n} -o /dev/null -e /dev/null true",
            "qstat | awk '$1 == \"{id}\"' | wc -l"),
}
SINGLE = {
    "slurm": ("sbatch --parsable -o /dev/null --wrap true", "squeue -h -j {id} | wc -l"),
    "pbs": ("cd /tmp && echo '#!/bin/sh' > rf-true.sh && qsub -o /dev/null -e /dev/null rf-true.sh",
            "squeue -h -j {id} | wc -l"),
    "sge": ("qsub -terse -b y -o /dev/null -e /dev/null true",
            "qstat | awk '$1 == \"{id}\"' | wc -l"),
}


def square(x: int) -> int:
    return x * x


async def floor(user: str, submit: str, pending: str) -> float:
    async with asyncssh.connect(FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]), username=user,
                                client_keys=[FACTS["RF_SSH_KEY"]],
                                known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"]) as conn:
        start = time.perf_counter()
        result = await conn.run(submit.format(last=N - 1, n=N), check=True)
        job_id = result.stdout.strip().split(".")[0].split(";")[0]
        while int((await conn.run(pending.format(id=job_id))).stdout.strip() or 0):
            await asyncio.sleep(0.2)
        return time.perf_counter() - start


def ours(scheduler: str, calls: int) -> float:
    start = time.perf_counter()
    with RemoteExecutor(scheduler, host=FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                        user=USERS[scheduler], identity_file=FACTS["RF_SSH_KEY"],
                        known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"], python=PYTHON,
                        max_workers=int(FACTS.get("RF_SLURM_CPUS", 2))) as ex:
        if calls == 1:
            ex.submit(square, 3).result()
        else:
            list(ex.map(square, range(calls)))
    return time.perf_counter() - start


async def submitit_run(calls: int) -> float:
    """submitit on the same SLURM as the same user (it needs a local sbatch: run it there)."""
    with open(os.path.join(os.path.dirname(__file__), "submitit_run.py"), "rb") as source:
        script = source.read()
    async with asyncssh.connect(FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                                username=USERS["slurm"], client_keys=[FACTS["RF_SSH_KEY"]],
                                known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"]) as conn:
        async with conn.start_sftp_client() as sftp, sftp.open("submitit_run.py", "wb") as f:
            await f.write(script)
        workers = int(FACTS.get("RF_SLURM_CPUS", 2))
        result = await conn.run(
            f"{PYTHON} submitit_run.py {calls} {FACTS['RF_SLURM_PARTITION']} {workers}",
            check=True)
        return float(result.stdout.strip().splitlines()[-1])


def array_job_id(x: int) -> str:
    """Runs in an array task: the Slurm array job it belongs to (for ``sacct``)."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")


def _slurm_seconds(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


async def _span(conn: asyncssh.SSHClientConnection, job_ids: set[str]) -> float:
    """Slurm's own span for these jobs: first Submit to last End, from accounting (which
    may lag the jobs' end by a moment: wait until every task has an End)."""
    for _ in range(100):
        result = await conn.run(f"sacct -X -P -n -j {','.join(sorted(job_ids))} "
                                "--format=JobID,Submit,End,State")
        rows = [line.split("|") for line in result.stdout.splitlines() if line.strip()]
        if rows and all(row[2] not in ("Unknown", "") for row in rows):
            return (max(_slurm_seconds(row[2]) for row in rows)
                    - min(_slurm_seconds(row[1]) for row in rows))
        await asyncio.sleep(0.5)
    raise RuntimeError(f"sacct never showed every end: {result.stdout[-500:]}")


async def _connect() -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                                  username=USERS["slurm"], client_keys=[FACTS["RF_SSH_KEY"]],
                                  known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"])


async def _single_floor(conn: asyncssh.SSHClientConnection) -> float:
    start = time.perf_counter()
    result = await conn.run("sbatch --parsable -o /dev/null --wrap true", check=True)
    job_id = result.stdout.strip().split(";")[0]
    while int((await conn.run(f"squeue -h -j {job_id} | wc -l")).stdout.strip() or 0):
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


def slurm_latency(repeats: int) -> None:
    """The interleaved latency table of the module docstring. A trivial job's turnaround
    swings by 0.1-0.6 s between Slurm's scheduling passes: one calls get 5x the pairs."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(_connect())
    singles: list[tuple[float, float]] = []
    maps: list[tuple[float, float]] = []
    with RemoteExecutor("slurm", host=FACTS["RF_SSH_HOST"], port=int(FACTS["RF_SSH_PORT"]),
                        user=USERS["slurm"], identity_file=FACTS["RF_SSH_KEY"],
                        known_hosts=FACTS["RF_SSH_KNOWN_HOSTS"], python=PYTHON) as ex:
        ex.submit(square, 2).result()  # warm: environment sync, worker upload
        for _ in range(5 * repeats):
            # Slurm starts jobs in scheduling passes: a job submitted right after the
            # previous one ended meets the pass at the same phase every time. A random pause
            # before each measurement samples the phase evenly for both.
            time.sleep(random.uniform(0, 1))
            floor_s = loop.run_until_complete(_single_floor(conn))
            time.sleep(random.uniform(0, 1))
            start = time.perf_counter()
            ex.submit(square, 3).result()
            singles.append((floor_s, time.perf_counter() - start))
            print(f"  one call: floor {floor_s:.3f} s, ours {singles[-1][1]:.3f} s", flush=True)
        for _ in range(repeats):
            start = time.perf_counter()
            ids = set(ex.map(array_job_id, range(N), chunksize=1))
            wall = time.perf_counter() - start
            span = loop.run_until_complete(_span(conn, ids))
            maps.append((span, wall))
            print(f"  map of {N}: span {span:.0f} s, ours {wall:.2f} s", flush=True)
    conn.close()
    loop.close()
    print(f"{'slurm':10} {'scenario':22} {'floor s':>8} {'ours s':>8} {'overhead s':>11}")
    for label, pairs in (("one submit (warm)", singles), (f"map {N}, chunksize=1", maps)):
        a = statistics.median(p[0] for p in pairs)
        b = statistics.median(p[1] for p in pairs)
        d = statistics.median(p[1] - p[0] for p in pairs)
        print(f"{'slurm':10} {label:22} {a:8.3f} {b:8.3f} {d:11.3f}", flush=True)


def main() -> None:
    if sys.argv[1:] == ["slurm-latency"]:
        slurm_latency(max(3, REPEATS))
        return
    schedulers = sys.argv[1:] or ["slurm", "pbs", "sge"]
    print(f"{'scheduler':10} {'scenario':12} {'floor s':>9} {'ours s':>8} {'ours/floor':>10}"
          f" {'submitit s':>11} {'submitit/floor':>15}")
    for name in schedulers:
        for label, calls, commands in (("map of 200", N, FLOOR), ("one call", 1, SINGLE)):
            floors, mine, peer = [], [], []
            for _ in range(REPEATS):  # interleaved: floor, ours, submitit, floor, ...
                floors.append(asyncio.run(floor(USERS[name], *commands[name])))
                mine.append(ours(name, calls))
                if name == "slurm":
                    peer.append(asyncio.run(submitit_run(calls)))
            a, b = statistics.median(floors), statistics.median(mine)
            row = f"{name:10} {label:12} {a:9.2f} {b:8.2f} {b / a:10.3f}"
            if peer:
                c = statistics.median(peer)
                row += f" {c:11.2f} {c / a:15.3f}"
            print(row, flush=True)
    if "slurm" in schedulers:
        slurm_latency(max(3, REPEATS))


if __name__ == "__main__":
    main()
