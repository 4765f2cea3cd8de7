"""The PBS dialects: PBS Professional / OpenPBS, and Torque (also the right dialect for
SchedMD's Slurm "Torque wrappers"). Pure functions only (see :mod:`.dialect`).

What differs between the flavors, and why it matters here:

- Arrays: PBS Pro ``qsub -J 0-9`` (at least two tasks; ``PBS_ARRAY_INDEX``), Torque
  ``qsub -t 0-9%2`` (``PBS_ARRAYID``). The Slurm wrappers accept both but set no ``PBS_*``
  variable at all, only ``SLURM_ARRAY_TASK_ID``, hence :data:`PBS_TASK_INDEX_EXPR`.
- Output and array options go on the ``qsub`` command line, not only in ``#PBS`` lines: the
  wrappers override ``#PBS -o/-e`` and make per-task files only for a command-line array.
- Status: PBS Pro prints JSON (``qstat -f -F json``, with history through ``-x``); Torque
  prints ``key = value`` text (``qstat -f``). Neither needs ``Exit_status`` to be present:
  the wrappers never print one, and a finished job without it is reported as COMPLETED with
  ``exit_code=None``; the transport then decides from its own ``task-<i>.exit`` files.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from ..errors import SubmissionError
from ..jobs import TaskState, TaskStatus
from ._dialect_util import expand_indices, safe_job_name, split_exit_status, status_answered
from .dialect import ParsedStatuses, ScriptRequest

__all__ = [
    "PBS_TASK_INDEX_EXPR",
    "PBSProDialect",
    "TorqueDialect",
    "detect_pbs_flavor",
    "is_slurm_torque_wrapper",
    "pbs_numeric_id",
]

#: The 0-based task index inside a job on PBS Pro, Torque, or the Slurm Torque wrappers.
PBS_TASK_INDEX_EXPR = "${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}}"

#: ``123.server``, ``123[].server``, ``123[4].server``, bare ``123`` / ``123[]`` (wrappers).
_JOB_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<index>\d*)\])?(?:\.(?P<server>\S+))?$")
_VERSION = re.compile(r"pbs_version\s*=", re.IGNORECASE)
_TORQUE_VERSION = re.compile(r"^\s*version:\s*\d", re.IGNORECASE | re.MULTILINE)

#: Live states. C (Torque), F (PBS Pro job) and X (PBS Pro subjob) are terminal and are
#: mapped from the exit status instead.
_LIVE_STATES: dict[str, TaskState] = {
    "Q": TaskState.PENDING,  # queued
    "H": TaskState.PENDING,  # held
    "W": TaskState.PENDING,  # waiting for its start time
    "T": TaskState.PENDING,  # in transit between servers
    "M": TaskState.PENDING,  # moved to another server (PBS Pro)
    "R": TaskState.RUNNING,
    "E": TaskState.RUNNING,  # exiting: the exit status is not final yet
    "S": TaskState.RUNNING,  # suspended; resumes later
    "U": TaskState.RUNNING,  # suspended for workstation activity (PBS Pro)
    "B": TaskState.RUNNING,  # array begun: some subjobs started (PBS Pro)
}
_TERMINAL_STATES = frozenset("CFX")
#: qstat's exit status for an unknown job id: PBSE_UNKJOBID (15001) modulo 256 on Torque and
#: the wrappers; 35 on PBS Pro.
_UNKNOWN_JOB_CODES = frozenset({153, 35})

#: PBS Pro's own JOB_EXEC_* codes that name a cause (openpbs src/include/job.h).
_PBSPRO_EXEC_CODES: dict[int, TaskState] = {
    -29: TaskState.TIMEOUT,  # JOB_EXEC_KILL_WALLTIME
    -27: TaskState.OUT_OF_MEMORY,  # JOB_EXEC_KILL_MEM
    -26: TaskState.OUT_OF_MEMORY,  # JOB_EXEC_KILL_VMEM
}


def pbs_numeric_id(job_id: str) -> str:
    """The sequence number of a PBS job id: ``123[].server`` -> ``123``."""
    match = _JOB_ID.match(job_id.strip())
    if not match:
        raise ValueError(f"not a PBS job id: {job_id!r}")
    return match.group("seq")


def detect_pbs_flavor(
    qstat_version_output: str, qsub_version_output: str = ""
) -> Literal["pbspro", "torque"]:
    """Which PBS answers: ``pbspro`` (PBS Professional, OpenPBS) or ``torque``.

    PBS Pro and OpenPBS print ``pbs_version = 19.1.3`` for ``qstat --version``; Torque prints
    ``Version: 6.1.3`` (``version: 2.4.16`` in old releases). Anything else, including the
    Slurm Torque wrappers (which reject ``--version`` and print only a usage text), is treated
    as Torque, whose command line the wrappers imitate. Pass stdout and stderr together.
    """
    text = f"{qstat_version_output}\n{qsub_version_output}"
    return "pbspro" if _VERSION.search(text) else "torque"


def is_slurm_torque_wrapper(qstat_version_output: str) -> bool:
    """Whether ``qstat --version`` output (stdout and stderr) comes from SchedMD's Slurm
    Torque wrappers rather than a real PBS: they print no version at all. Use it to build a
    :class:`TorqueDialect` with ``list_subjobs=False``: the wrappers reject ``qstat -t``."""
    text = qstat_version_output
    return not (_VERSION.search(text) or _TORQUE_VERSION.search(text))


def _terminal_status(
    raw: str, exit_status: int | None, exec_codes: dict[int, TaskState]
) -> TaskStatus:
    """A finished job's status from its ``Exit_status``; without one (the wrappers, a job
    deleted before it ran on some versions), COMPLETED with an unknown exit code."""
    if exit_status is None:
        return TaskStatus(TaskState.COMPLETED, raw)
    exit_code, signal = split_exit_status(exit_status)
    if exit_status == 0:
        state = TaskState.COMPLETED
    else:
        state = exec_codes.get(exit_status, TaskState.FAILED)
    return TaskStatus(state, raw, exit_code, signal)


def _status(raw: str, exit_status: int | None, exec_codes: dict[int, TaskState]) -> TaskStatus:
    if raw in _TERMINAL_STATES:
        return _terminal_status(raw, exit_status, exec_codes)
    # An unknown letter is treated as still alive; the outcome files settle the task.
    return TaskStatus(_LIVE_STATES.get(raw, TaskState.RUNNING), raw)


#: PBS Pro's scheduler comment on a queued job it will never start (the request exceeds the
#: whole complex, a malformed ``select``): ``Can Never Run: Insufficient amount of resource:
#: ncpus (R: 3 A: 2 T: 2)``. ``Not Running: ...`` is a plain wait.
_NEVER_RUNS_COMMENT = "Can Never Run"


def _with_comment(status: TaskStatus, attrs: Mapping[str, Any]) -> TaskStatus:
    """A pending job's status with the scheduler's ``comment`` (why it waits) as its reason:
    ``Q (Not Running: ...)``, shown in the log, or ``Q (Can Never Run: ...)``, which ends it
    (:meth:`_PBSBase.never_runs`)."""
    comment = " ".join(str(attrs.get("comment", "")).split())
    if status.state is not TaskState.PENDING or not comment:
        return status
    return dataclasses.replace(status, raw_state=f"{status.raw_state} ({comment})")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


class _PBSBase:
    """What PBS Pro and Torque share: ids, headers, submit and cancel command lines."""

    name: str
    task_index_expr = PBS_TASK_INDEX_EXPR
    #: The array option: ``-J`` on PBS Pro, ``-t`` on Torque.
    array_flag: str

    def _resource_lines(self, request: ScriptRequest) -> list[str]:
        raise NotImplementedError

    def _array_option(self, request: ScriptRequest) -> list[str]:
        # A single task is a plain job (PBS Pro refuses a one-task array). The %N limit
        # (max_run_subjobs on PBS Pro) needs PBS Pro 2020.1 / OpenPBS 20.0 or newer.
        if request.n_tasks < 2:
            return []
        spec = f"0-{request.n_tasks - 1}"
        if request.max_concurrent:
            spec += f"%{request.max_concurrent}"
        return [self.array_flag, spec]

    def header(self, request: ScriptRequest) -> list[str]:
        """``#PBS`` lines: name, shell, resources, queue, account, then the user's extras.

        ``-S /bin/bash`` because PBS runs a job script with the user's login shell, not its
        ``#!`` line. Output and array options are on the command line (:meth:`submit_argv`).
        """
        res = request.resources
        lines = [f"-N {safe_job_name(request.job_name)}", "-S /bin/bash"]
        lines += self._resource_lines(request)
        if res.partition:
            lines.append(f"-q {shlex.quote(res.partition)}")
        if res.account:
            lines.append(f"-A {shlex.quote(res.account)}")
        return [f"#PBS {line}" for line in lines] + [
            f"#PBS {extra}" for extra in res.job_extra_directives
        ]

    def _output_options(self, request: ScriptRequest) -> list[str]:
        raise NotImplementedError

    def submit_argv(self, request: ScriptRequest, script_path: str) -> list[str]:
        """``qsub`` with the scheduler's own output joined into one file in the job
        directory, and the array option, on the command line."""
        return ["qsub", *self._output_options(request), *self._array_option(request), script_path]

    def parse_submit(self, stdout: str) -> str:
        """The job id exactly as qsub printed it (``123.server``, ``123[].server``, ``123``,
        ``123[]``): that is what later ``qstat``/``qdel`` calls must use. Raises
        :class:`SubmissionError` when qsub printed no job id."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if not lines or not _JOB_ID.match(lines[-1]):
            raise SubmissionError(f"qsub printed no job id: {stdout.strip()!r}")
        return lines[-1]

    def status_answered(self, returncode: int, stderr: str) -> bool:
        """qstat exits non-zero when some id is unknown (Torque and the wrappers: 153 with
        nothing or ``Unknown Job Id`` on stderr; PBS Pro: ``Unknown Job Id``) and still prints
        the others: an answer. ``cannot connect to server`` is not."""
        return status_answered(returncode, stderr, unknown_codes=_UNKNOWN_JOB_CODES)

    def never_runs(self, status: TaskStatus) -> str | None:
        """The reason when PBS's scheduler says the job can never run (its comment ``Can
        Never Run: ...``); None otherwise: a held or queued job may be released or started
        later."""
        if f"({_NEVER_RUNS_COMMENT}" in status.raw_state:
            return status.raw_state
        return None

    def _map_ids(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Sequence number -> the job id as the caller knows it, so that ``123.server``,
        ``123[].server`` and a bare ``123`` in the output all find their job."""
        mapping: dict[str, str] = {}
        for job_id in job_ids:
            match = _JOB_ID.match(job_id.strip())
            if match:
                mapping[match.group("seq")] = job_id
        return mapping


class PBSProDialect(_PBSBase):
    """PBS Professional and OpenPBS: ``select`` resources, ``-J`` arrays, JSON ``qstat``."""

    name = "pbspro"
    array_flag = "-J"

    def scheduler_log(self, job_dir: str, job_id: str, task: int | None = None) -> str:
        """The file holding PBS's own messages for one task (``=>> PBS: job killed: walltime
        ... exceeded limit``): the ``-o`` of :meth:`submit_argv`, expanded."""
        return f"{job_dir}/scheduler.log" if task is None else f"{job_dir}/scheduler-{task}.log"

    def _resource_lines(self, request: ScriptRequest) -> list[str]:
        res = request.resources
        chunk = []
        if res.cpus is not None:
            chunk.append(f"ncpus={res.cpus}")
        memory = res.memory_megabytes()
        if memory is not None:
            chunk.append(f"mem={memory}mb")
        if res.gpus is not None:
            chunk.append(f"ngpus={res.gpus}")
        lines = [f"-l select=1:{':'.join(chunk)}"] if chunk else []
        walltime = res.walltime_hms()
        if walltime is not None:
            lines.append(f"-l walltime={walltime}")
        return lines

    def _output_options(self, request: ScriptRequest) -> list[str]:
        # ^array_index^ is PBS Pro's per-subjob substitution in output paths.
        name = "scheduler-^array_index^.log" if request.n_tasks > 1 else "scheduler.log"
        return ["-j", "oe", "-o", f"{request.job_dir}/{name}"]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """``qstat -f -F json -x -t IDS``: full JSON, finished jobs from the history (``-x``),
        each array subjob listed (``-t``). qstat exits non-zero when one of the ids is
        unknown but still prints the others: parse stdout regardless."""
        return ["qstat", "-f", "-F", "json", "-x", "-t", *job_ids]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse :meth:`status_argv` output.

        A plain job gets key None; a subjob ``123[4].server`` gets key 4; an array's indices
        still queued (``array_indices_remaining``) are PENDING unless listed on their own.
        ``job_state`` F or X without ``Exit_status`` is COMPLETED with ``exit_code=None``.
        Exit codes: 0..255 from the script, 256+N killed by signal N, negative values are
        PBS's own (-29 walltime -> TIMEOUT, -27/-26 memory -> OUT_OF_MEMORY).
        """
        mapping = self._map_ids(job_ids)
        result: ParsedStatuses = {}
        remaining: dict[str, list[int]] = {}
        for key, attrs in _pbspro_jobs(stdout):
            match = _JOB_ID.match(key)
            if not match or match.group("seq") not in mapping:
                continue
            job_id = mapping[match.group("seq")]
            tasks = result.setdefault(job_id, {})
            raw = str(attrs.get("job_state", "")).strip()
            status = _status(raw, _int_or_none(attrs.get("Exit_status")), _PBSPRO_EXEC_CODES)
            status = _with_comment(status, attrs)
            index = match.group("index")
            if index:
                tasks[int(index)] = status
            elif index == "":
                # The array itself: its queued indices are pending; a finished array's
                # state stands for every subjob not listed.
                spec = str(attrs.get("array_indices_remaining", "")).strip()
                if spec and spec != "-":
                    remaining[job_id] = expand_indices(spec)
                if raw in _TERMINAL_STATES:
                    tasks[None] = status
            else:
                tasks[None] = status
        for job_id, indices in remaining.items():
            for index in indices:
                result[job_id].setdefault(index, TaskStatus(TaskState.PENDING, "Q"))
        return result

    def final_status_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """The same history query as :meth:`status_argv` (needs ``job_history_enable``)."""
        return self.status_argv(job_ids)

    def parse_final_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Same as :meth:`parse_status`."""
        return self.parse_status(stdout, job_ids)

    def throttle_argv(self, job_id: str, max_concurrent: int) -> list[str] | None:
        """``qalter -W max_run_subjobs=N 123[].server`` (PBS Pro 2020.1 / OpenPBS 20.0 or
        newer, the versions that know the ``%N`` limit at all)."""
        return ["qalter", "-W", f"max_run_subjobs={max_concurrent}", job_id]

    def cancel_argv(self, job_id: str, tasks: Sequence[int] | None = None) -> list[str]:
        """``qdel 123[].server``, or ``qdel 123[4].server 123[7].server`` for subjobs."""
        if tasks is None:
            return ["qdel", job_id]
        match = _JOB_ID.match(job_id.strip())
        if not match:
            raise ValueError(f"not a PBS job id: {job_id!r}")
        server = f".{match.group('server')}" if match.group("server") else ""
        return ["qdel", *(f"{match.group('seq')}[{task}]{server}" for task in tasks)]


class TorqueDialect(_PBSBase):
    """Torque (and the Slurm Torque wrappers): ``nodes:ppn`` resources, ``-t`` arrays, text
    ``qstat -f``.

    ``list_subjobs=False`` leaves out ``qstat -t``, which the Slurm wrappers reject (see
    :func:`is_slurm_torque_wrapper`). The wrappers then show an array as one job: its state
    is not per task, and a ``C`` there does not prove that every task has ended; the
    transport must rely on each task's exit file.
    """

    name = "torque"
    array_flag = "-t"

    def __init__(self, *, list_subjobs: bool = True) -> None:
        self.list_subjobs = list_subjobs

    def throttle_argv(self, job_id: str, max_concurrent: int) -> list[str] | None:
        """None: Torque's array slot limit cannot be changed portably after submission (the
        Slurm Torque wrappers have no way at all)."""
        return None

    def scheduler_log(self, job_dir: str, job_id: str, task: int | None = None) -> str:
        """The file holding Torque's own messages for one task: the ``-o`` of
        :meth:`submit_argv`, to which Torque appends ``-<index>`` for array tasks (the
        wrappers do not: all tasks share one file)."""
        return f"{job_dir}/scheduler.log" if task is None else f"{job_dir}/scheduler.log-{task}"

    def _resource_lines(self, request: ScriptRequest) -> list[str]:
        res = request.resources
        lines = []
        if res.cpus is not None or res.gpus is not None:
            nodes = f"nodes=1:ppn={res.cpus or 1}"
            if res.gpus is not None:
                nodes += f":gpus={res.gpus}"
            lines.append(f"-l {nodes}")
        memory = res.memory_megabytes()
        if memory is not None:
            lines.append(f"-l mem={memory}mb")
        walltime = res.walltime_hms()
        if walltime is not None:
            lines.append(f"-l walltime={walltime}")
        return lines

    def _output_options(self, request: ScriptRequest) -> list[str]:
        # The wrappers paste these into an sbatch command line unquoted: a job directory
        # with whitespace cannot work there.
        return ["-j", "oe", "-o", f"{request.job_dir}/scheduler.log"]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """``qstat -f [-t] IDS``. Finished jobs stay visible for ``keep_completed`` (Torque)
        or ``MinJobAge`` (wrappers); after that qstat exits 153 and prints nothing for them."""
        return ["qstat", "-f", *(["-t"] if self.list_subjobs else []), *job_ids]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse ``qstat -f`` text: ``Job Id: 123.server`` blocks of ``key = value`` lines.

        ``123[4].server`` is array task 4 (``job_array_id``); a plain job gets key None.
        ``job_state = C`` without ``exit_status`` (always so on the wrappers) is COMPLETED
        with ``exit_code=None``. ``exit_status`` 256+N means killed by signal N.
        """
        mapping = self._map_ids(job_ids)
        result: ParsedStatuses = {}
        for key, attrs in _torque_jobs(stdout):
            match = _JOB_ID.match(key)
            if not match or match.group("seq") not in mapping:
                continue
            tasks = result.setdefault(mapping[match.group("seq")], {})
            status = _status(
                attrs.get("job_state", "").strip(), _int_or_none(attrs.get("exit_status")), {}
            )
            status = _with_comment(status, attrs)
            index = match.group("index") or attrs.get("job_array_id", "").strip()
            if index.isdigit():
                tasks[int(index)] = status
            elif match.group("index") is None:
                tasks[None] = status
            elif status.state.terminal:
                # An array summary ("123[]"): only a finished one says anything about
                # every task.
                tasks[None] = status
        return result

    def final_status_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """None: Torque keeps no queryable history (``tracejob`` needs log access on the
        server and is unreliable); the exit files are authoritative."""
        return None

    def parse_final_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Same as :meth:`parse_status` (there is no final-state command)."""
        return self.parse_status(stdout, job_ids)

    def cancel_argv(self, job_id: str, tasks: Sequence[int] | None = None) -> list[str]:
        """``qdel 123[].server``, or ``qdel -t 4,7 123[].server`` for some array tasks."""
        if tasks is None:
            return ["qdel", job_id]
        return ["qdel", "-t", ",".join(str(task) for task in tasks), job_id]


_JSON_JOB_KEY = re.compile(r'^\s*"(\d+(?:\[\d*\])?(?:\.[^"]*)?)"\s*:\s*\{')
_JSON_ATTR = re.compile(
    r'^\s*"(job_state|Exit_status|array_indices_remaining|comment)"\s*:\s*"?([^",]*)"?'
)


def _pbspro_jobs(stdout: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(job id, attributes)`` from ``qstat -F json``. Some PBS versions print invalid JSON
    (unescaped quotes or control characters in ``Variable_List``); then the attributes
    needed here are taken line by line from the pretty-printed text instead."""
    start = stdout.find("{")
    if start < 0:
        return
    try:
        document = json.loads(stdout[start:], strict=False)
    except json.JSONDecodeError:
        yield from _pbspro_jobs_by_line(stdout)
        return
    jobs = document.get("Jobs", {}) if isinstance(document, dict) else {}
    for key, attrs in jobs.items():
        if isinstance(attrs, dict):
            yield key, attrs


def _pbspro_jobs_by_line(stdout: str) -> Iterator[tuple[str, dict[str, Any]]]:
    key: str | None = None
    attrs: dict[str, Any] = {}
    for line in stdout.splitlines():
        job = _JSON_JOB_KEY.match(line)
        if job:
            if key is not None:
                yield key, attrs
            key, attrs = job.group(1), {}
            continue
        attr = _JSON_ATTR.match(line)
        if attr and key is not None:
            attrs[attr.group(1)] = attr.group(2).strip()
    if key is not None:
        yield key, attrs


def _torque_jobs(stdout: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(job id, attributes)`` from ``qstat -f`` text. Long values wrap onto lines indented
    deeper than the attribute lines; only the first line of a value is kept, which is all
    that the attributes read here ever have."""
    key: str | None = None
    attrs: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("Job Id:"):
            if key is not None:
                yield key, attrs
            key, attrs = line.split(":", 1)[1].strip(), {}
        elif key is not None and " = " in line:
            name, _, value = line.strip().partition(" = ")
            if name and " " not in name:
                attrs.setdefault(name, value.strip())
    if key is not None:
        yield key, attrs
