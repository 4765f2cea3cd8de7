"""The Grid Engine dialect (Son of Grid Engine 8.1.9, Univa/Altair GE, Sun GE 6.2): ``#$``
headers, ``qsub``/``qstat``/``qacct``/``qdel`` command lines and parsers. Pure functions
only (see :mod:`.dialect`).

Two things differ from the other schedulers:

- Array tasks are numbered from 1 (``qsub -t 1-N``); the dialect converts to the executor's
  0-based indices everywhere, in the job script and in every parser.
- A finished job leaves ``qstat`` at once; its final state comes from ``qacct``, which
  reports ``failed`` (SGE's own reason) and ``exit_status`` per task.
"""

from __future__ import annotations

import math
import re
import shlex
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence

from ..errors import SubmissionError
from ..jobs import TaskState, TaskStatus
from ._dialect_util import expand_indices, safe_job_name, status_answered
from .dialect import ParsedStatuses, ScriptRequest

__all__ = ["SGEDialect", "sge_state"]

#: ``qsub -terse``: ``123``, or ``123.1-5:1`` for an array; without ``-terse``:
#: ``Your job 123 ("name") has been submitted`` / ``Your job-array 123.1-5:1 ...``.
_TERSE = re.compile(r"^(\d+)(?:\.\d+-\d+:\d+)?$")
_VERBOSE = re.compile(r"^Your job(?:-array)? (\d+)")
_LEADING_INT = re.compile(r"^\s*(-?\d+)")
#: ``failed`` codes of qacct with a known cause (sge_status / execd's general.h).
_FAILED_TIMEOUT = 37  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
_FAILED_AFTER_JOB = 100  # "assumedly after job": killed by a signal, qdel's usual record
_SIGKILL_STATUS = 137  # 128 + SIGKILL


def sge_state(state: str) -> TaskState:
    """Map a ``qstat`` state string (``qw``, ``hqw``, ``r``, ``t``, ``Rr``, ``dr``, ``Eqw``...).

    The letters combine: E (error: the job will not start until an operator clears it, see
    :meth:`SGEDialect.never_runs`) is pending, then d (being deleted), then the running family
    (r, t, s, S, T), then the pending one (q, w, h). z (zombie, only with ``qstat -s z``) is a
    finished job.
    """
    if "E" in state:
        return TaskState.PENDING
    if "d" in state:
        return TaskState.CANCELLED
    if any(letter in state for letter in "rtsST"):
        return TaskState.RUNNING
    if any(letter in state for letter in "qwh"):
        return TaskState.PENDING
    if "z" in state:
        return TaskState.COMPLETED
    # Unknown letters: still alive as far as we know; outcome files settle the task.
    return TaskState.RUNNING


def _quote(value: str) -> str:
    """Quote a directive value for qsub's ``#$`` parser, which groups double-quoted words
    but is no shell: only values with whitespace get (double) quotes."""
    return f'"{value}"' if re.search(r"\s", value) else value


class SGEDialect:
    """Grid Engine. ``memory_resource`` names the per-slot memory limit (``h_vmem``,
    ``h_rss``, ``mem_free``, ``m_mem_free``...), ``parallel_environment`` the PE that gives a
    job several slots on one host, ``gpu_resource`` the consumable counting GPUs: all three
    are site configuration, not standard names."""

    name = "sge"
    #: SGE sets SGE_TASK_ID to the literal "undefined" in a non-array job.
    task_index_expr = (
        '$(case "${SGE_TASK_ID:-undefined}" in (undefined) echo 0 ;; '
        "(*) echo $((SGE_TASK_ID - 1)) ;; esac)"
    )

    def __init__(
        self,
        *,
        memory_resource: str = "h_vmem",
        parallel_environment: str = "smp",
        gpu_resource: str = "gpu",
    ) -> None:
        self.memory_resource = memory_resource
        self.parallel_environment = parallel_environment
        self.gpu_resource = gpu_resource

    def scheduler_log(self, job_dir: str, job_id: str, task: int | None = None) -> str:
        """The file holding Grid Engine's own messages for one (0-based) task: the ``-o`` of
        the job header, expanded."""
        if task is None:
            return f"{job_dir}/scheduler.log"
        return f"{job_dir}/scheduler-{task + 1}.log"

    def header(self, request: ScriptRequest) -> list[str]:
        """``#$`` lines. Memory is a per-slot limit in Grid Engine, so a job's memory is
        divided among its slots (``-pe``)."""
        res = request.resources
        lines = [f"-N {safe_job_name(request.job_name)}", "-S /bin/bash"]
        if request.n_tasks > 1:
            lines.append(f"-t 1-{request.n_tasks}")
            if request.max_concurrent:
                lines.append(f"-tc {request.max_concurrent}")
            # $TASK_ID is Grid Engine's own placeholder in output paths, not a shell variable.
            log = f"{request.job_dir}/scheduler-$TASK_ID.log"
        else:
            log = f"{request.job_dir}/scheduler.log"
        lines += ["-j y", f"-o {_quote(log)}"]
        slots = res.cpus or 1
        if slots > 1:
            lines.append(f"-pe {self.parallel_environment} {slots}")
        walltime = res.walltime_hms()
        if walltime is not None:
            lines.append(f"-l h_rt={walltime}")
        memory = res.memory_megabytes()
        if memory is not None:
            lines.append(f"-l {self.memory_resource}={math.ceil(memory / slots)}M")
        if res.gpus is not None:
            lines.append(f"-l {self.gpu_resource}={res.gpus}")
        if res.partition:
            lines.append(f"-q {_quote(res.partition)}")
        if res.account:
            lines.append(f"-P {_quote(res.account)}")
        return [f"#$ {line}" for line in lines] + [
            f"#$ {extra}" for extra in res.job_extra_directives
        ]

    def submit_argv(self, request: ScriptRequest, script_path: str) -> list[str]:
        """``qsub -terse SCRIPT``: everything else is in the script's header."""
        return ["qsub", "-terse", script_path]

    def parse_submit(self, stdout: str) -> str:
        """The job number: ``123``, ``123.1-5:1`` (array) -> ``123``. Raises
        :class:`SubmissionError` when qsub printed none."""
        for line in reversed([line.strip() for line in stdout.splitlines() if line.strip()]):
            match = _TERSE.match(line) or _VERBOSE.match(line)
            if match:
                return match.group(1)
        raise SubmissionError(f"qsub printed no job id: {stdout.strip()!r}")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """``qstat -xml``: all of the user's jobs in one call (qstat cannot select several
        jobs by id with their task states); the parser keeps the ones asked for."""
        return ["qstat", "-xml"]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse ``qstat -xml``. A running task is one ``job_list`` with ``<tasks>3</tasks>``;
        pending ones share one with a range (``<tasks>4-5:1</tasks>``); a plain job has no
        ``tasks`` and gets key None. Error states (``Eqw``) are PENDING, raw state kept."""
        wanted = {job_id.split(".", 1)[0]: job_id for job_id in job_ids}
        result: ParsedStatuses = {}
        for number, raw, spec in _qstat_job_lists(stdout):
            if number not in wanted:
                continue
            status = TaskStatus(sge_state(raw), raw)
            tasks = result.setdefault(wanted[number], {})
            if not spec:
                tasks[None] = status
                continue
            for task in expand_indices(spec):
                tasks[task - 1] = status
        return result

    def final_status_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """``qacct -j ID``. qacct reads only the last ``-j`` and takes ``1,2`` as job 1
        (verified on SGE 8.1.9), so several jobs need one qacct each, run by ``sh``; the
        loop ends with status 0 so that the records found are parsed even when some job is
        not in the accounting file yet (qacct prints ``error: job id N not found``)."""
        if len(job_ids) == 1:
            return ["qacct", "-j", job_ids[0]]
        ids = " ".join(shlex.quote(job_id) for job_id in job_ids)
        return ["sh", "-c", f'for id in {ids}; do qacct -j "$id"; done; exit 0']

    def parse_final_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse ``qacct -j`` records: ``taskid undefined`` is a plain job (key None),
        otherwise the 1-based task id. ``failed`` 37 (h_rt enforced by qmaster) is TIMEOUT,
        ``failed`` 100 with ``exit_status`` 137 is what ``qdel`` leaves (CANCELLED; an
        ``h_vmem`` kill looks the same), another ``failed`` or a non-zero ``exit_status`` is
        FAILED, else COMPLETED. When a task ran more than once, the last record wins."""
        wanted = {job_id.split(".", 1)[0]: job_id for job_id in job_ids}
        result: ParsedStatuses = {}
        for record in _qacct_records(stdout):
            number = record.get("jobnumber", "")
            if number not in wanted:
                continue
            taskid = record.get("taskid", "undefined")
            key = int(taskid) - 1 if taskid.isdigit() else None
            result.setdefault(wanted[number], {})[key] = _qacct_status(record)
        return result

    def status_answered(self, returncode: int, stderr: str) -> bool:
        """``qstat -xml`` lists all of the user's jobs and exits 0; anything else (``error:
        commlib error``, qmaster down) is a failure."""
        return status_answered(returncode, stderr)

    def never_runs(self, status: TaskStatus) -> str | None:
        """An ``E`` state (``Eqw``): the job failed to start and stays queued until an operator
        clears it (``qmod -cj``); ``qstat -j ID`` shows the error reason."""
        if "E" in status.raw_state:
            return f"{status.raw_state}: Grid Engine put the job in error state (see qstat -j)"
        return None

    def error_reason_argv(self, job_id: str) -> list[str]:
        """``qstat -j ID``: its ``error reason`` lines say why a job is in error state."""
        return ["qstat", "-j", job_id]

    def parse_error_reason(self, stdout: str) -> str:
        """The ``error reason`` lines of ``qstat -j`` output, joined (empty if none)."""
        reasons = [
            line.split(":", 1)[1].strip() for line in stdout.splitlines()
            if line.startswith("error reason") and ":" in line
        ]
        return "; ".join(reasons)

    def throttle_argv(self, job_id: str, max_concurrent: int) -> list[str] | None:
        """``qalter -tc N 123``: the array's task concurrency limit."""
        return ["qalter", "-tc", str(max_concurrent), job_id]

    def cancel_argv(self, job_id: str, tasks: Sequence[int] | None = None) -> list[str]:
        """``qdel 123``, or ``qdel 123 -t 5`` per task (1-based task ids)."""
        if tasks is None:
            return ["qdel", job_id]
        argv = ["qdel"]
        for task in tasks:
            argv += [job_id, "-t", str(task + 1)]
        return argv


_JOB_LIST = re.compile(r"<job_list\b[^>]*>(.*?)</job_list>", re.DOTALL)


def _tag(block: str, name: str) -> str:
    match = re.search(rf"<{name}>(.*?)</{name}>", block, re.DOTALL)
    return match.group(1).strip() if match else ""


def _qstat_job_lists(stdout: str) -> Iterator[tuple[str, str, str]]:
    """``(job number, state, tasks)`` of each ``job_list`` in ``qstat -xml`` output. Should
    the XML not parse (a job name with bytes invalid in XML, a truncated document), the
    same three elements are read from each ``job_list`` block with a regular expression."""
    if "<" not in stdout:
        return
    try:
        root = ElementTree.fromstring(stdout[stdout.index("<") :])
    except ElementTree.ParseError:
        for block in _JOB_LIST.findall(stdout):
            yield _tag(block, "JB_job_number"), _tag(block, "state"), _tag(block, "tasks")
        return
    for element in root.iter("job_list"):
        yield (
            (element.findtext("JB_job_number") or "").strip(),
            (element.findtext("state") or "").strip(),
            (element.findtext("tasks") or "").strip(),
        )


def _qacct_records(stdout: str) -> Iterator[dict[str, str]]:
    """One dict per ``====``-separated record; keys are the first word of each line."""
    record: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("====="):
            if record:
                yield record
            record = {}
            continue
        key, _, value = line.strip().partition(" ")
        if key:
            record[key] = value.strip()
    if record:
        yield record


def _qacct_status(record: dict[str, str]) -> TaskStatus:
    failed_text = record.get("failed", "0")
    failed_match = _LEADING_INT.match(failed_text)
    failed = int(failed_match.group(1)) if failed_match else 0
    exit_match = _LEADING_INT.match(record.get("exit_status", ""))
    exit_status = int(exit_match.group(1)) if exit_match else None
    # 128 + N: the job was killed by signal N.
    signal = exit_status - 128 if exit_status is not None and exit_status > 128 else None
    if failed == _FAILED_TIMEOUT:
        state = TaskState.TIMEOUT
    elif failed == _FAILED_AFTER_JOB and exit_status == _SIGKILL_STATUS:
        state = TaskState.CANCELLED
    elif failed != 0 or exit_status != 0:
        state = TaskState.FAILED
    else:
        state = TaskState.COMPLETED
    raw = f"failed {' '.join(failed_text.split())}"
    return TaskStatus(state, raw, exit_status, signal)
