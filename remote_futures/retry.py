"""When a failed call runs again: a small pure policy, and the record of a call's attempts.

``RemoteExecutor(..., retries=N)`` re-runs a call whose failure was not the call's own doing:
its task ended without an outcome because the worker process died (a signal, ``os._exit``,
the OOM killer) or the infrastructure lost it (``NODE_FAIL``, ``PREEMPTED``, ``BOOT_FAIL``,
``VANISHED``, an evicted pod or an interrupted spot instance, which transports report with
those states). A call that raised an exception is its own doing: it is never retried, unless
``retry_on=(ExcType, ...)`` names the exception's type.

Never retried either: a task cancelled (by the user or an administrator), one that ran out of
time (``TIMEOUT``, ``DEADLINE``: it would again), one whose worker could not even be started
(exit 126/127: not found, not executable), and submissions the scheduler refused.

The engine asks :meth:`RetryPolicy.should_retry` when it is about to fail a call, and carries
the call's :class:`Attempt` records over to the next attempt; the final error lists them all
(:func:`annotate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .errors import ConfigurationError, JobFailedError
from .jobs import TaskState

__all__ = ["LOST_STATES", "Attempt", "RetryPolicy", "annotate", "describe_failure"]

#: Task states that mean the call was lost, not that it failed: worth another attempt.
LOST_STATES = frozenset(
    {
        TaskState.FAILED,  # the worker process died (signal, os._exit) mid-call
        TaskState.COMPLETED,  # the worker exited 0 without writing the outcome (os._exit(0))
        TaskState.OUT_OF_MEMORY,
        TaskState.NODE_FAIL,
        TaskState.PREEMPTED,
        TaskState.BOOT_FAIL,
        TaskState.VANISHED,
    }
)
#: Shell exit codes meaning the worker command could not be run at all: it would not next time.
_COULD_NOT_START = frozenset({126, 127})


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One failed attempt of a call: its number (1 = the first run) and what happened."""

    number: int
    what: str

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.what}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many more times a lost call runs, and which raised exceptions also count."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()

    @classmethod
    def from_arguments(
        cls, retries: int | None, retry_on: Sequence[type[BaseException]] | None
    ) -> RetryPolicy:
        """Check ``RemoteExecutor``'s ``retries``/``retry_on`` (bad values raise now)."""
        retries = 0 if retries is None else retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        types = tuple(retry_on or ())
        for kind in types:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(
                    f"retry_on must name exception types, got {kind!r}"
                )
        if types and retries == 0:
            raise ConfigurationError("retry_on has no effect with retries=0; give retries=N")
        return cls(retries, types)

    def should_retry(self, failed_attempts: int, error: BaseException, *, lost: bool) -> bool:
        """Whether a call that has failed ``failed_attempts`` times (this one included) runs
        again. ``lost``: its task ended without its outcome (``error`` is then the
        :class:`JobFailedError` saying how); otherwise the call raised ``error``."""
        if failed_attempts > self.retries:
            return False
        if not lost:
            return isinstance(error, self.retry_on) if self.retry_on else False
        if not isinstance(error, JobFailedError):
            return False
        try:
            state = TaskState(error.state)
        except ValueError:
            return False
        if state not in LOST_STATES:
            return False
        return not (state is TaskState.FAILED and error.exit_code in _COULD_NOT_START)


def describe_failure(error: BaseException) -> str:
    """One line saying how an attempt failed (its state, or the exception it raised)."""
    if isinstance(error, JobFailedError):
        where = f"job {error.job_id}" + (f" task {error.task}" if error.task is not None else "")
        details = [f"state {error.state}", where]
        if error.exit_code is not None:
            details.append(f"exit code {error.exit_code}")
        if error.signal is not None:
            details.append(f"signal {error.signal}")
        return ", ".join(details)
    text = str(error).strip().splitlines()
    return f"raised {type(error).__name__}" + (f": {text[0]}" if text else "")


def annotate(error: BaseException, attempts: Sequence[Attempt]) -> None:
    """Give the final error of a call that was retried every attempt's story: a note for
    tracebacks and an ``attempts`` attribute (tuple of :class:`Attempt`) for code."""
    if len(attempts) < 2:
        return
    error.add_note(
        f"the call ran {len(attempts)} times:\n" + "\n".join(f"  {a}" for a in attempts)
    )
    try:
        error.attempts = tuple(attempts)  # type: ignore[attr-defined]
    except AttributeError:
        pass  # an exception type with __slots__: the note alone carries it
