"""The Slurm dialect: ``#SBATCH`` headers, ``sbatch``/``squeue``/``sacct``/``scancel`` command
lines, and parsers for what they print. Pure functions only (see :mod:`.dialect`).

Live state comes from ``squeue`` (only until ``MinJobAge`` after a job ends), the final
state from ``sacct`` (needs accounting through slurmdbd). Both print one ``|``-separated line
per job or array task in a format fixed by the dialect, so parsing never depends on column
widths or the user's ``SQUEUE_FORMAT``/``SACCT_FORMAT``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from ..errors import SubmissionError
from ..jobs import TaskState, TaskStatus
from ._dialect_util import expand_indices, safe_job_name, status_answered
from .dialect import ParsedStatuses, ScriptRequest

__all__ = [
    "NEVER_RUNS_REASONS",
    "SLURM_STATES",
    "SlurmDialect",
    "parse_max_array_size",
    "pending_reason",
    "slurm_state",
]

#: Slurm's job state words (``squeue %T``, ``sacct State``) -> normalized state. States in
#: which the job can still run again (suspended, requeued, completing...) are not terminal.
SLURM_STATES: dict[str, TaskState] = {
    "PENDING": TaskState.PENDING,
    "CONFIGURING": TaskState.PENDING,
    "REQUEUED": TaskState.PENDING,
    "REQUEUE_FED": TaskState.PENDING,
    "REQUEUE_HOLD": TaskState.PENDING,
    "RESV_DEL_HOLD": TaskState.PENDING,
    "RUNNING": TaskState.RUNNING,
    "COMPLETING": TaskState.RUNNING,
    "SUSPENDED": TaskState.RUNNING,
    "STOPPED": TaskState.RUNNING,
    "RESIZING": TaskState.RUNNING,
    "SIGNALING": TaskState.RUNNING,
    "STAGE_OUT": TaskState.RUNNING,
    "COMPLETED": TaskState.COMPLETED,
    "FAILED": TaskState.FAILED,
    "SPECIAL_EXIT": TaskState.FAILED,
    "CANCELLED": TaskState.CANCELLED,
    # A federated sibling removed because another cluster started the job: it will never
    # run here.
    "REVOKED": TaskState.CANCELLED,
    "TIMEOUT": TaskState.TIMEOUT,
    "OUT_OF_MEMORY": TaskState.OUT_OF_MEMORY,
    "NODE_FAIL": TaskState.NODE_FAIL,
    "PREEMPTED": TaskState.PREEMPTED,
    "BOOT_FAIL": TaskState.BOOT_FAIL,
    "DEADLINE": TaskState.DEADLINE,
}

#: ``123``, ``123_4``, ``123_[5-9%2]``; anything after is a step (``123.batch``) or a
#: heterogeneous component (``123+0``) and is not ours to report.
_JOB_ID = re.compile(r"^(?P<job>\d+)(?:_(?P<task>\d+|\[[^\]]*\]))?$")
_SUBMITTED = re.compile(r"^(\d+(?:;\S+)?)$")
_MAX_ARRAY_SIZE = re.compile(r"^\s*MaxArraySize\s*=\s*(\d+)", re.MULTILINE)
#: Pending reasons (``squeue %r``) that never clear by themselves: the job would pend for ever.
NEVER_RUNS_REASONS = frozenset({
    "BadConstraints",
    "PartitionConfig",
    "DependencyNeverSatisfied",
    "JobHeldAdmin",
    "launch failed requeued held",
    "InvalidAccount",
    "InvalidQOS",
})
#: Pending reasons that say nothing worth logging.
_QUIET_REASONS = frozenset({"", "None"})
#: Slurm's default ``MaxArraySize`` (slurm.conf(5)).
DEFAULT_MAX_ARRAY_SIZE = 1001


def slurm_state(word: str) -> TaskState:
    """Map one Slurm state word to a :class:`TaskState`.

    Accepts sacct's decorated forms (``CANCELLED by 1001``, a truncated ``CANCELLED+``). An
    unknown word maps to RUNNING: a state added by a newer Slurm must not fail a task that
    may still succeed; its outcome files and ``sacct`` settle it.
    """
    base = word.strip().split(" ", 1)[0].rstrip("+").upper()
    return SLURM_STATES.get(base, TaskState.RUNNING)


def parse_max_array_size(scontrol_show_config: str) -> int:
    """``MaxArraySize`` from ``scontrol show config`` output (default 1001 when absent).

    Array indices must be below this value, so an array may have at most this many tasks
    when indexed from 0.
    """
    match = _MAX_ARRAY_SIZE.search(scontrol_show_config)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def _exit_code(field: str) -> tuple[int | None, int | None]:
    """sacct's ``ExitCode`` ``exit:signal`` -> ``(exit_code, signal)``; a killed job has no
    meaningful exit code."""
    code, _, sig = field.strip().partition(":")
    if not code.isdigit():
        return None, None
    signal = int(sig) if sig.isdigit() and int(sig) else None
    if signal is not None and int(code) == 0:
        return None, signal
    return int(code), signal


class SlurmDialect:
    """Slurm (tested with 22.05 on the test bed; output formats unchanged through 24.x)."""

    name = "slurm"
    task_index_expr = "${SLURM_ARRAY_TASK_ID:-0}"

    def scheduler_log(self, job_dir: str, job_id: str, task: int | None = None) -> str:
        """Where Slurm writes its own messages for one task (``CANCELLED ... DUE TO TIME
        LIMIT``, out-of-memory kills): the ``--output`` of the job header, expanded."""
        number = job_id.partition(";")[0]
        if task is None:
            return f"{job_dir}/scheduler-{number}.log"
        return f"{job_dir}/scheduler-{number}_{task}.log"

    def header(self, request: ScriptRequest) -> list[str]:
        """``#SBATCH`` lines. sbatch splits directive lines with shell-like quoting, so values
        that may contain spaces are ``shlex``-quoted."""
        res = request.resources
        opts = [f"--job-name={shlex.quote(safe_job_name(request.job_name))}"]
        # '%' starts a filename pattern in --output; a literal one must be doubled.
        log_dir = request.job_dir.replace("%", "%%")
        if request.n_tasks > 1:
            spec = f"0-{request.n_tasks - 1}"
            if request.max_concurrent:
                spec += f"%{request.max_concurrent}"
            opts.append(f"--array={spec}")
            # %A_%a: a plain job would get %a = 4294967294, hence the two patterns.
            log = f"{log_dir}/scheduler-%A_%a.log"
        else:
            log = f"{log_dir}/scheduler-%j.log"
        # Without --error, stderr shares --output's file descriptor. Naming the same file in
        # both would open it twice, each stream truncating and overwriting the other.
        opts.append(f"--output={shlex.quote(log)}")
        if res.cpus is not None:
            opts.append(f"--cpus-per-task={res.cpus}")
        memory = res.memory_megabytes()
        if memory is not None:
            opts.append(f"--mem={memory}M")
        seconds = res.walltime_seconds()
        if seconds is not None:
            opts.append(f"--time={_slurm_time(seconds)}")
        if res.gpus is not None:
            opts.append(f"--gres=gpu:{res.gpus}")
        if res.partition:
            opts.append(f"--partition={shlex.quote(res.partition)}")
        if res.account:
            opts.append(f"--account={shlex.quote(res.account)}")
        return [f"#SBATCH {opt}" for opt in opts] + [
            f"#SBATCH {extra}" for extra in res.job_extra_directives
        ]

    def submit_argv(self, request: ScriptRequest, script_path: str) -> list[str]:
        """``sbatch --parsable SCRIPT``: everything else is in the script's header."""
        return ["sbatch", "--parsable", script_path]

    def parse_submit(self, stdout: str) -> str:
        """The job id from ``sbatch --parsable``: ``123``, or ``123;cluster`` on a
        multi-cluster setup (the cluster is kept: every later command needs ``-M``). Raises
        :class:`SubmissionError` on anything else."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        match = _SUBMITTED.match(lines[-1]) if lines else None
        if not match:
            raise SubmissionError(f"sbatch printed no job id: {stdout.strip()!r}")
        return match.group(1)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One ``squeue`` for all jobs: every array task on its own line (``-r``), finished
        jobs included (``-t all``), as ``id|STATE|reason``; ``-M`` names the clusters of
        ``123;cluster`` ids."""
        numbers, clusters = _split_ids(job_ids)
        return ["squeue", *clusters, "-h", "-r", "-t", "all", "-j", ",".join(numbers),
                "-o", "%i|%T|%r"]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse :meth:`status_argv` output: ``123`` (plain job, key None), ``123_4`` (array
        task 4), ``123_[5-9%2]`` (a pending range, expanded to one entry per task). A pending
        task's reason is kept in its raw state: ``PENDING (Resources)``."""
        return _parse_rows(stdout, job_ids, with_exit_code=False)

    def final_status_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """``sacct`` for the jobs themselves (``-X``: no steps), one array task per line."""
        numbers, clusters = _split_ids(job_ids)
        return ["sacct", *clusters, "-X", "-P", "-n", "-j", ",".join(numbers),
                "--format=JobID,State,ExitCode"]

    def parse_final_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse :meth:`final_status_argv` output, with exit codes (``3:0`` -> exit code 3,
        ``0:9`` -> signal 9). Tasks that never started show as a range (``123_[0-4]``)."""
        return _parse_rows(stdout, job_ids, with_exit_code=True)

    def cancel_argv(self, job_id: str, tasks: Sequence[int] | None = None) -> list[str]:
        """``scancel 123``, or ``scancel 123_4 123_7`` for some array tasks (``-M cluster``
        for a ``123;cluster`` id)."""
        number, _, cluster = job_id.partition(";")
        where = ["-M", cluster] if cluster else []
        if tasks is None:
            return ["scancel", *where, number]
        return ["scancel", *where, *(f"{number}_{task}" for task in tasks)]

    def throttle_argv(self, job_id: str, max_concurrent: int) -> list[str] | None:
        """``scontrol update JobId=123 ArrayTaskThrottle=N`` (``-M cluster`` for a
        ``123;cluster`` id)."""
        number, _, cluster = job_id.partition(";")
        where = ["-M", cluster] if cluster else []
        return ["scontrol", *where, "update", f"JobId={number}",
                f"ArrayTaskThrottle={max_concurrent}"]

    def status_answered(self, returncode: int, stderr: str) -> bool:
        """squeue exits 1 with ``Invalid job id specified`` when it knows none of the ids
        (an answer); any other failure (``Unable to contact slurm controller``) is not."""
        return status_answered(returncode, stderr)

    def never_runs(self, status: TaskStatus) -> str | None:
        """The pending reason, if it is one that never clears (:data:`NEVER_RUNS_REASONS`)."""
        reason = pending_reason(status)
        return status.raw_state if reason in NEVER_RUNS_REASONS else None


def pending_reason(status: TaskStatus) -> str:
    """The reason of a ``PENDING (reason)`` raw state; empty if there is none."""
    raw = status.raw_state
    if raw.endswith(")") and " (" in raw:
        return raw[raw.index(" (") + 2 : -1]
    return ""


def _split_ids(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Job numbers, and the ``-M`` option for the clusters of ``123;cluster`` ids."""
    numbers: list[str] = []
    clusters: list[str] = []
    for job_id in job_ids:
        number, _, cluster = job_id.partition(";")
        numbers.append(number)
        if cluster and cluster not in clusters:
            clusters.append(cluster)
    return numbers, (["-M", ",".join(clusters)] if clusters else [])


def _slurm_time(seconds: int) -> str:
    """Slurm's ``D-HH:MM:SS`` form (``HH:MM:SS`` under a day), rounded up to whole minutes
    by Slurm itself."""
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


def _parse_rows(stdout: str, job_ids: Sequence[str], *, with_exit_code: bool) -> ParsedStatuses:
    # Output names the job by number; results are keyed by the id as the caller knows it.
    wanted = {job_id.partition(";")[0]: job_id for job_id in job_ids}
    result: ParsedStatuses = {}
    # Columns of the dialect's own commands (no header); a header line, as sacct prints
    # without -n, names them instead, so that output of a hand-run sacct parses too.
    state_col, exit_col = 1, 2 if with_exit_code else None
    # A task listed on its own line wins over the same task inside a range line.
    from_range: set[tuple[str, int]] = set()
    for line in stdout.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) < 2:
            continue
        names = [field.upper() for field in fields]
        if names[0] in ("JOBID", "JOBIDRAW"):
            state_col = names.index("STATE") if "STATE" in names else state_col
            exit_col = names.index("EXITCODE") if with_exit_code and "EXITCODE" in names else None
            continue
        match = _JOB_ID.match(fields[0])
        if not match or match.group("job") not in wanted or len(fields) <= state_col:
            continue
        job = wanted[match.group("job")]
        state_word = fields[state_col]
        exit_code, signal = (
            _exit_code(fields[exit_col])
            if exit_col is not None and exit_col < len(fields)
            else (None, None)
        )
        state = slurm_state(state_word)
        raw = state_word
        if state is TaskState.PENDING and not with_exit_code and state_col + 1 < len(fields):
            reason = fields[state_col + 1]
            if reason not in _QUIET_REASONS:
                raw = f"{state_word} ({reason})"
        status = TaskStatus(state, raw, exit_code, signal)
        tasks = result.setdefault(job, {})
        task = match.group("task")
        if task is None:
            tasks[None] = status
        elif task.startswith("["):
            for index in expand_indices(task):
                if index not in tasks or (job, index) in from_range:
                    tasks[index] = status
                    from_range.add((job, index))
        else:
            tasks[int(task)] = status
            from_range.discard((job, int(task)))
    return result
