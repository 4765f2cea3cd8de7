"""The public API is pinned: what ``remote_futures`` exports, and that all of it is documented."""

from __future__ import annotations

import concurrent.futures
import inspect
import pickle

import pytest

import remote_futures
from remote_futures import (
    BrokenRemoteExecutor,
    ConfigurationError,
    JobFailedError,
    RemoteEnvironmentError,
    RemoteExecutor,
    RemoteFuture,
    RemoteFuturesError,
    RemoteTraceback,
    SerializationError,
    SubmissionError,
    TransportError,
)

EXPECTED_ALL = [
    "BrokenRemoteExecutor",
    "ConfigurationError",
    "JobFailedError",
    "OutcomeUnavailableError",
    "RemoteEnvironmentError",
    "RemoteExecutor",
    "RemoteFuture",
    "RemoteFuturesError",
    "RemoteTraceback",
    "ResourceView",
    "Resources",
    "SerializationError",
    "SubmissionError",
    "TransportError",
    "WorkerDiedError",
]


def test_all_is_pinned() -> None:
    assert remote_futures.__all__ == EXPECTED_ALL


def test_every_public_name_exists() -> None:
    for name in remote_futures.__all__:
        assert getattr(remote_futures, name) is not None


def test_module_has_a_docstring() -> None:
    assert (remote_futures.__doc__ or "").strip()


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_public_name_and_its_public_members_have_docstrings(name: str) -> None:
    obj = getattr(remote_futures, name)
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring of its own"
    if not inspect.isclass(obj):
        return
    for member, value in vars(obj).items():
        if member.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), f"{name}.{member} has no docstring"


def test_executor_and_future_are_the_stdlib_types() -> None:
    assert issubclass(RemoteExecutor, concurrent.futures.Executor)
    assert issubclass(RemoteFuture, concurrent.futures.Future)


def test_error_hierarchy() -> None:
    for error in (
        BrokenRemoteExecutor,
        ConfigurationError,
        JobFailedError,
        RemoteEnvironmentError,
        SerializationError,
        SubmissionError,
        TransportError,
    ):
        assert issubclass(error, RemoteFuturesError)
    assert issubclass(RemoteFuturesError, Exception)
    assert issubclass(BrokenRemoteExecutor, concurrent.futures.BrokenExecutor)
    assert issubclass(SerializationError, pickle.PicklingError)
    assert issubclass(ConfigurationError, ValueError)
    assert not issubclass(RemoteTraceback, RemoteFuturesError)  # it is a cause, not an error


def test_job_failed_error_message_and_pickling() -> None:
    error = JobFailedError(
        "the job ended",
        job_id="123",
        task=4,
        state="OUT_OF_MEMORY",
        exit_code=137,
        signal=9,
        stderr_tail="Killed\n",
    )
    text = str(error)
    for part in (
        "the job ended",
        "job 123 task 4",
        "state OUT_OF_MEMORY",
        "exit code 137",
        "signal 9",
        "Killed",
    ):
        assert part in text
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is JobFailedError and str(copy) == text
    assert (copy.job_id, copy.task, copy.state, copy.exit_code, copy.signal, copy.stderr_tail) == (
        "123",
        4,
        "OUT_OF_MEMORY",
        137,
        9,
        "Killed\n",
    )


def test_submission_error_carries_command_and_stderr() -> None:
    error = SubmissionError("refused", command="sbatch x", stderr="no partition")
    assert (str(error), error.command, error.stderr) == ("refused", "sbatch x", "no partition")
