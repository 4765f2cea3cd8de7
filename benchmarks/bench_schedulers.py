"""`map` of 200 trivial calls on slurm / pbs / sge against each scheduler's own floor.

The floor is what the scheduler needs for the same 200 tasks with nothing of ours: one array
submission of `true` over an SSH connection, polled until every task is done. Runs are
interleaved (floor, ours, floor, ours, ...) because the testbed's scheduler speed drifts over
minutes. Also: one `submit` round trip against one plain `true` job's turnaround.
Needs the testbed (`nox -s testbed`); pass scheduler names to run a subset.
"""

from __future__ import annotations

import asyncio
import json
import os
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


def main() -> None:
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


if __name__ == "__main__":
    main()
