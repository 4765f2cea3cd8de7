"""What differs between batch schedulers, as pure functions: no I/O anywhere in a dialect.

A :class:`Dialect` builds a job script's header and the submit, status and cancel command lines,
and parses what those commands print. :class:`~remote_futures.transports.batch.BatchTransport`
does all the I/O and is shared by SLURM, PBS and SGE. Dialects are tested against recorded
outputs of real scheduler versions (``tests/data/``) and golden job scripts.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from typing import Protocol

from .. import worker
from ..jobs import TaskStatus
from ..resources import Resources

__all__ = ["Dialect", "ParsedStatuses", "ScriptRequest", "render_script"]

#: job id -> {task index (0-based) or None: status}. ``None`` is a job-level status that applies
#: to every task not listed individually (a pending array shown as one line, a plain job).
ParsedStatuses = dict[str, dict[int | None, TaskStatus]]


@dataclasses.dataclass(frozen=True)
class ScriptRequest:
    """What the transport asks a dialect to express for one submission."""

    job_name: str
    #: Absolute directory of the job on the cluster's (shared) filesystem.
    job_dir: str
    #: Number of array tasks; 1 means a plain (non-array) job.
    n_tasks: int
    resources: Resources
    #: The worker command without the task index: ``python3 /path/worker.py /path/jobdir``.
    worker_command: str
    #: At most this many array tasks run at once (``%N`` on Slurm, ``-tc`` on SGE); None: no limit.
    max_concurrent: int | None = None


class Dialect(Protocol):
    """The pure, scheduler-specific half of a batch transport."""

    #: Short name: ``slurm``, ``pbspro``, ``torque``, ``sge``.
    name: str
    #: A shell expression that evaluates, inside the job, to the 0-based array task index
    #: (0 for a plain job): ``${SLURM_ARRAY_TASK_ID:-0}``, ``$((${SGE_TASK_ID:-1} - 1))``...
    task_index_expr: str

    def header(self, request: ScriptRequest) -> list[str]:
        """The directive lines after ``#!/bin/bash`` (``#SBATCH ...``, ``#PBS ...``, ``#$ ...``)."""
        ...

    def submit_argv(self, request: ScriptRequest, script_path: str) -> list[str]:
        """The command that submits ``script_path`` and prints the job id."""
        ...

    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output; raise ``SubmissionError`` if none."""
        ...

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command that reports the live state of all ``job_ids`` (and their tasks)."""
        ...

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse the status command's output; jobs it does not mention are simply absent."""
        ...

    def final_status_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """A command for the final state of finished jobs (``sacct``, ``qacct``), or None."""
        ...

    def parse_final_status(self, stdout: str, job_ids: Sequence[str]) -> ParsedStatuses:
        """Parse the final-state command's output."""
        ...

    def cancel_argv(self, job_id: str, tasks: Sequence[int] | None = None) -> list[str]:
        """The command that cancels the job, or only the given 0-based array tasks."""
        ...

    def throttle_argv(self, job_id: str, max_concurrent: int) -> list[str] | None:
        """The command that lets a submitted array job run ``max_concurrent`` tasks at once
        (``scontrol update ... ArrayTaskThrottle=``, ``qalter -tc``), or None if this scheduler
        cannot change it after submission."""
        ...

    def status_answered(self, returncode: int, stderr: str) -> bool:
        """Whether the status command answered (even "no such job"): False when it failed
        (controller down, timeout), so that its silence says nothing about the jobs."""
        ...

    def never_runs(self, status: TaskStatus) -> str | None:
        """Why a pending task can never start (``BadConstraints``, ``Eqw``...), or None."""
        ...


def render_script(dialect: Dialect, request: ScriptRequest) -> str:
    """The whole job script: header, then a body shared by every scheduler.

    The body sends the worker's output to per-task files, runs the prologue, runs the worker on
    this task, and records the task's exit code atomically, so the final state never depends on
    the scheduler still remembering a finished job.
    """
    job_dir = shlex.quote(request.job_dir)
    stdout = f'"$RF_JOB_DIR"/{worker.STDOUT_NAME.format("$RF_TASK")}'
    stderr = f'"$RF_JOB_DIR"/{worker.STDERR_NAME.format("$RF_TASK")}'
    exit_file = f'"$RF_JOB_DIR"/{worker.EXIT_NAME.format("$RF_TASK")}'
    started = f'"$RF_JOB_DIR"/{worker.STARTED_NAME.format("$RF_TASK")}'
    lines = ["#!/bin/bash", *dialect.header(request)]
    lines += [
        f"RF_JOB_DIR={job_dir}",
        f"RF_TASK={dialect.task_index_expr}",
        f"exec >{stdout} 2>{stderr}",
        # A requeued task (node failure, preemption) starts again: no exit file of an
        # earlier run may speak for this one.
        f"rm -f {exit_file}",
        f": >{started}",
        *request.resources.job_script_prologue,
        f'{request.worker_command} --task "$RF_TASK"',
        "rf_rc=$?",
        f'printf "%s\\n" "$rf_rc" >{exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}',
        'exit "$rf_rc"',
        "",
    ]
    return "\n".join(lines)
