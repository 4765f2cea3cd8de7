"""The exceptions remote_futures raises: one base class, a small flat hierarchy.

A *user* exception raised by the remote function is never wrapped: it comes back as itself,
with the remote traceback chained as ``__cause__`` (a :class:`RemoteTraceback`), as
``ProcessPoolExecutor`` does. Everything here is about the machinery around the call.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import pickle

__all__ = [
    "BrokenRemoteExecutor",
    "ConfigurationError",
    "JobFailedError",
    "OutcomeUnavailableError",
    "RemoteEnvironmentError",
    "RemoteFuturesError",
    "RemoteTraceback",
    "SerializationError",
    "SubmissionError",
    "TransportError",
    "WorkerDiedError",
]


class RemoteFuturesError(Exception):
    """Base class of every error raised by remote_futures itself."""


class ConfigurationError(RemoteFuturesError, ValueError):
    """Bad executor options, an unknown transport or profile, or a malformed config file."""


class SerializationError(RemoteFuturesError, pickle.PicklingError):
    """A function, an argument or a result could not be pickled or unpickled."""


class RemoteEnvironmentError(RemoteFuturesError):
    """The remote Python cannot run the call: wrong version, a missing package, a failed sync."""


class TransportError(RemoteFuturesError):
    """The transport could not reach or command the remote side (connection, shell, API)."""


class SubmissionError(RemoteFuturesError):
    """The scheduler (or the transport) refused to start a job; carries its own message."""

    def __init__(self, message: str, *, command: str | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.stderr = stderr


class JobFailedError(RemoteFuturesError):
    """A job (or one task of an array job) ended without producing the call's result.

    Attributes name what a user needs to investigate: the scheduler's job id, the array task,
    the state (normalized: ``TIMEOUT``, ``CANCELLED``, ``OUT_OF_MEMORY``...), the scheduler's
    own words for it, the exit code or signal, and the tail of the job's stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        task: int | None = None,
        state: str = "UNKNOWN",
        scheduler_state: str = "",
        exit_code: int | None = None,
        signal: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        where = f"job {job_id}" + (f" task {task}" if task is not None else "")
        said = f" ({scheduler_state})" if scheduler_state and scheduler_state != state else ""
        details = [where, f"state {state}{said}"]
        if exit_code is not None:
            details.append(f"exit code {exit_code}")
        if signal is not None:
            details.append(f"signal {signal}")
        text = f"{message} ({', '.join(details)})"
        if stderr_tail.strip():
            text += "\n--- tail of the job's stderr ---\n" + stderr_tail.rstrip()
        super().__init__(text)
        self.job_id = job_id
        self.task = task
        self.state = state
        self.scheduler_state = scheduler_state
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes need an explicit reduce to survive pickling.
        return (_rebuild_job_failed, (self.args[0], self.__dict__))


def _rebuild_job_failed(text: str, state: dict[str, object]) -> JobFailedError:
    error = JobFailedError.__new__(JobFailedError)
    Exception.__init__(error, text)
    error.__dict__.update(state)
    return error


class OutcomeUnavailableError(RemoteFuturesError):
    """An attached session cannot give this call's outcome: the call was never submitted
    before the client died, or its result was collected (and its files removed) already."""


class BrokenRemoteExecutor(RemoteFuturesError, concurrent.futures.BrokenExecutor):
    """The executor can no longer run work: its transport is gone or an initializer failed."""


class RemoteTraceback(Exception):
    """The formatted traceback of a remote exception, chained as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class WorkerDiedError(JobFailedError, concurrent.futures.process.BrokenProcessPool):
    """A pool worker process died (a signal, ``os._exit``, the OOM killer) while it ran the
    call, or before it could. Also a ``BrokenProcessPool`` (so a ``BrokenExecutor``), so that
    code written for ``ProcessPoolExecutor`` handles it; unlike there, the pool replaces the
    worker and the executor goes on."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_died, (self.args[0], self.__dict__))


def _rebuild_worker_died(text: str, state: dict[str, object]) -> WorkerDiedError:
    error = WorkerDiedError.__new__(WorkerDiedError)
    Exception.__init__(error, text)
    error.__dict__.update(state)
    return error
