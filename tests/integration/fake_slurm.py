"""A fake Slurm for tests: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and ``scontrol`` on
this machine, installed as small scripts (``python fake_slurm.py sbatch "$@"``) in a ``bin``
directory put first on PATH.

Jobs really run: ``sbatch`` starts each array task of the script as a detached process with
``SLURM_ARRAY_TASK_ID`` set, and records its state in ``$FAKE_SLURM_STATE/tasks/<id>_<task>``
(``RUNNING``, then ``COMPLETED``/``FAILED`` when it exits, ``CANCELLED`` when scancel kills it).
A task gets ``SLURM_JOB_ID`` (and ``SLURM_CPUS_PER_TASK`` when the script asks for CPUs), as
on a real cluster. A job whose script says ``#SBATCH --begin=...`` stays ``PENDING`` (reason
``BeginTime``) and never starts; ``scancel`` cancels it. Scripts that are not remote_futures
array jobs (pilot jobs) run the same way. Faults and limits are staged with files in
``$FAKE_SLURM_STATE``:

- ``max-array-size``: Slurm's MaxArraySize (default 1001): ``scontrol show config`` says it,
  and ``sbatch`` refuses an array whose last index is not below it, as Slurm does.
- ``ctld-down``: squeue, sacct and scancel fail as when slurmctld is unreachable.
- ``scancel.log`` receives one line per scancel call (the arguments).
- ``dir-gone.log`` receives the task's name when its job directory was gone by the time its
  script ended (something removed it under the running task).

Only the command lines remote_futures uses are understood.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_STATE"])
TASKS = STATE / "tasks"
DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


def _down() -> bool:
    return (STATE / "ctld-down").exists()


def _max_array_size() -> int:
    path = STATE / "max-array-size"
    return int(path.read_text()) if path.exists() else 1001


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    match = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.MULTILINE)
    tasks = range(int(match.group(1)), int(match.group(2)) + 1) if match else [None]
    if match and int(match.group(2)) >= _max_array_size():
        print("sbatch: error: Batch job submission failed: Invalid job array specification",
              file=sys.stderr)
        return 1
    TASKS.mkdir(parents=True, exist_ok=True)
    counter = STATE / "next-id"
    job_id = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job_id + 1))
    job_dir = re.search(r"^RF_JOB_DIR=(.*)$", text, re.MULTILINE)
    cpus = re.search(r"^#SBATCH --cpus-per-task=(\d+)", text, re.MULTILINE)
    held = re.search(r"^#SBATCH --begin=", text, re.MULTILINE)
    for task in tasks:
        name = f"{job_id}_{task}" if task is not None else str(job_id)
        state = TASKS / name
        if held:
            state.write_text("PENDING\n")
            continue
        env = dict(os.environ, SLURM_JOB_ID=str(job_id))
        if task is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(task)
        if cpus:
            env["SLURM_CPUS_PER_TASK"] = cpus.group(1)
        state.write_text("RUNNING\n")
        gone = (f'[ -d {job_dir.group(1)} ] || echo {name} >>{_q(str(STATE / "dir-gone.log"))}; '
                if job_dir else "")
        # The task's exit status decides its final state, as slurmstepd does; a cancelled
        # task keeps CANCELLED (the runner only replaces RUNNING).
        runner = (
            f'bash {_q(str(script))}; rc=$?; {gone}'
            f'if grep -q RUNNING {_q(str(state))}; then '
            f'if [ "$rc" = 0 ]; then echo COMPLETED >{_q(str(state))}; '
            f'else echo "FAILED $rc" >{_q(str(state))}; fi; fi'
        )
        process = subprocess.Popen(
            ["sh", "-c", runner], env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        (TASKS / f"{name}.pid").write_text(str(process.pid))
    print(job_id)
    return 0


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _rows(ids: list[str]) -> list[tuple[str, str, str]]:
    rows = []
    for job_id in ids:
        for path in sorted(TASKS.glob(f"{job_id}*")):
            if path.suffix == ".pid" or not re.fullmatch(rf"{job_id}(_\d+)?", path.name):
                continue
            words = path.read_text().split()
            state = words[0] if words else "RUNNING"
            code = words[1] if len(words) > 1 else "0"
            rows.append((path.name, state, code))
    return rows


def _ids(args: list[str]) -> list[str]:
    return args[args.index("-j") + 1].split(",")


def squeue(args: list[str]) -> int:
    if _down():
        print(DOWN, file=sys.stderr)
        return 1
    for name, state, _code in _rows(_ids(args)):
        print(f"{name}|{state}|{'BeginTime' if state == 'PENDING' else 'None'}")
    return 0


def sacct(args: list[str]) -> int:
    if _down():
        print("sacct: error: slurm_persist_conn_open_without_init: failed to open persistent "
              "connection", file=sys.stderr)
        return 1
    for name, state, code in _rows(_ids(args)):
        print(f"{name}|{state}|{code}:0")
    return 0


def scancel(args: list[str]) -> int:
    with open(STATE / "scancel.log", "a") as log:
        log.write(" ".join(args) + "\n")
    if _down():
        print("scancel: error: Kill job error on job id: Unable to contact slurm controller",
              file=sys.stderr)
        return 1
    names = [arg for arg in args if not arg.startswith("-")]
    for name in names:
        for path in TASKS.glob(f"{name}*"):
            if path.suffix == ".pid" or not re.fullmatch(rf"{name}(_\d+)?", path.name):
                continue
            was = path.read_text()
            if "RUNNING" in was or "PENDING" in was:
                path.write_text("CANCELLED\n")
                pid_file = path.with_name(path.name + ".pid")
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
    return 0


def scontrol(args: list[str]) -> int:
    print(f"MaxArraySize            = {_max_array_size()}")
    return 0


def main() -> int:
    handlers = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel,
                "scontrol": scontrol}
    return handlers[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
