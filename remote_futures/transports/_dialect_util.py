"""Small pure helpers shared by the scheduler dialects (Slurm, PBS, SGE).

Nothing here does I/O; everything is a function of its arguments.
"""

from __future__ import annotations

import re

__all__ = ["expand_indices", "safe_job_name", "split_exit_status", "status_answered"]

#: Lines a status command prints for a job id it does not know: an answer ("gone"), not a
#: failure. Slurm: ``slurm_load_jobs error: Invalid job id specified``; PBS Pro / Torque:
#: ``qstat: Unknown Job Id 123.server``; SGE: ``Following jobs do not exist``.
_UNKNOWN_JOB = re.compile(
    r"invalid job id|unknown job id|do(?:es)? not exist|job has finished", re.IGNORECASE
)
_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: Longest job name used: PBS Pro's limit is 236 characters; the others allow more.
_MAX_NAME = 200


def expand_indices(spec: str) -> list[int]:
    """Array indices named by a scheduler's range expression, in order, without duplicates.

    Accepts what Slurm prints (``5-9%2``, ``5,7-9``, ``[1-3]``), PBS (``2-1000``, ``0-9:2``)
    and SGE (``4-5:1``, ``8,9``). A ``%N`` throttle suffix is ignored. Raises ``ValueError``
    on anything else, so that a format change shows up as an error rather than as no tasks.
    """
    text = spec.strip().removeprefix("[").removesuffix("]")
    text = text.split("%", 1)[0]
    if not text:
        raise ValueError(f"empty array index expression {spec!r}")
    indices: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"not an array index expression: {spec!r}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1:
            raise ValueError(f"not an array index expression: {spec!r}")
        for index in range(first, last + 1, step):
            if index not in seen:
                seen.add(index)
                indices.append(index)
    return indices


def safe_job_name(name: str) -> str:
    """A job name every scheduler accepts: letters, digits, ``_.-``, starting with a letter.

    SGE rejects names that start with a digit or contain ``/:@\\*?``; PBS rejects whitespace
    and, in older versions, a leading digit. Names are cosmetic, so they are rewritten rather
    than refused.
    """
    cleaned = _UNSAFE.sub("_", name.strip()) or "job"
    if not cleaned[0].isalpha():
        cleaned = "rf" + ("" if cleaned[0] in "_.-" else "_") + cleaned
    return cleaned[:_MAX_NAME]


def split_exit_status(status: int) -> tuple[int | None, int | None]:
    """Split a PBS/Torque ``exit_status`` into ``(exit_code, signal)``.

    Both report a job killed by signal N as ``256 + N``; 0..255 is the script's own exit
    code. Negative values are the scheduler's own ``JOB_EXEC_*`` failure codes and are
    returned as the exit code unchanged.
    """
    if status > 256:
        return None, status - 256
    return status, None


def status_answered(returncode: int, stderr: str, *, unknown_codes: frozenset[int] = frozenset()
                    ) -> bool:
    """Whether a status command answered: it exited 0, or it only said that some job ids are
    unknown (by its stderr, or by an exit status in ``unknown_codes`` with nothing on stderr).
    Anything else (a controller that is down, a timeout) is a failure: unknown, not gone."""
    if returncode == 0:
        return True
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return returncode in unknown_codes
    return all(_UNKNOWN_JOB.search(line) for line in lines)
