"""``retries``: a lost call runs again, a raising call does not (unless ``retry_on``).

Staged for real on the local transport: the call's worker process ``os._exit``s (or kills
itself) on its first attempt, leaving a marker file so that the next attempt succeeds.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from remote_futures import ConfigurationError, JobFailedError, RemoteExecutor
from remote_futures.jobs import JobHandle, JobStatus, TaskState, TaskStatus
from remote_futures.retry import RetryPolicy
from remote_futures.transports import TRANSPORTS
from remote_futures.transports.mock import MockTransport

pytestmark = pytest.mark.timeout(120)


def _count(tally: str) -> int:
    with open(tally, "a") as f:
        f.write("x")
    return Path(tally).stat().st_size


def die_first_time(marker: str, tally: str, value: int) -> int:
    """Count the attempt; exit the worker without a result unless ``marker`` exists."""
    _count(tally)
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return value * 10


def killed_first_time(marker: str, tally: str) -> str:
    _count(tally)
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_die(tally: str) -> None:
    _count(tally)
    os._exit(5)


def raise_first_time(marker: str, tally: str, kind: type[BaseException]) -> str:
    _count(tally)
    if not os.path.exists(marker):
        Path(marker).touch()
        raise kind("first attempt fails")
    return "second attempt"


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "marker"), str(tmp_path / "tally")


@pytest.fixture
def make() -> Iterator[list[RemoteExecutor]]:
    made: list[RemoteExecutor] = []
    yield made
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


def _attempts(tally: str) -> int:
    return Path(tally).stat().st_size


def test_a_worker_that_exits_is_retried_and_the_call_succeeds(
    files: tuple[str, str], make: list[RemoteExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remote_futures")
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=1, retries=1)
    make.append(ex)
    assert ex.submit(die_first_time, marker, tally, 4).result(timeout=60) == 40
    assert _attempts(tally) == 2
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 1 and "attempt 2 of 2" in retried[0] and "FAILED" in retried[0]
    # The future stays RUNNING across attempts; marking it again would log CRITICAL.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_worker_killed_by_a_signal_is_retried(
    files: tuple[str, str], make: list[RemoteExecutor]
) -> None:
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=1, retries=1)
    make.append(ex)
    assert ex.submit(killed_first_time, marker, tally).result(timeout=60) == "survived"
    assert _attempts(tally) == 2


def test_without_retries_the_lost_call_fails(
    files: tuple[str, str], make: list[RemoteExecutor]
) -> None:
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=1)
    make.append(ex)
    with pytest.raises(JobFailedError) as info:
        ex.submit(die_first_time, marker, tally, 4).result(timeout=60)
    assert info.value.exit_code == 3
    assert _attempts(tally) == 1


def test_every_call_of_a_map_is_retried_when_its_worker_dies(
    files: tuple[str, str], make: list[RemoteExecutor]
) -> None:
    """A chunk of three calls whose first call kills the worker: all three run again."""
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=2, retries=1)
    make.append(ex)
    results = list(ex.map(die_first_time, [marker] * 3, [tally] * 3, [1, 2, 3], chunksize=3))
    assert results == [10, 20, 30]
    assert _attempts(tally) == 4  # one lost attempt, then the three calls


def test_a_raising_call_is_not_retried(
    files: tuple[str, str], make: list[RemoteExecutor]
) -> None:
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=1, retries=3)
    make.append(ex)
    with pytest.raises(ValueError, match="first attempt fails"):
        ex.submit(raise_first_time, marker, tally, ValueError).result(timeout=60)
    assert _attempts(tally) == 1


def test_retry_on_names_the_exceptions_that_are_retried(
    files: tuple[str, str], make: list[RemoteExecutor], tmp_path: Path
) -> None:
    marker, tally = files
    ex = RemoteExecutor("local", max_workers=1, retries=1, retry_on=(ConnectionError,))
    make.append(ex)
    future = ex.submit(raise_first_time, marker, tally, ConnectionResetError)
    assert future.result(timeout=60) == "second attempt"  # a subclass counts
    assert _attempts(tally) == 2

    other_marker, other_tally = str(tmp_path / "m2"), str(tmp_path / "t2")
    with pytest.raises(KeyError):  # not named: not retried
        ex.submit(raise_first_time, other_marker, other_tally, KeyError).result(timeout=60)
    assert _attempts(other_tally) == 1


def test_the_final_error_lists_every_attempt(
    files: tuple[str, str], make: list[RemoteExecutor]
) -> None:
    _, tally = files
    ex = RemoteExecutor("local", max_workers=1, retries=2)
    make.append(ex)
    with pytest.raises(JobFailedError) as info:
        ex.submit(always_die, tally).result(timeout=60)
    assert _attempts(tally) == 3
    attempts = info.value.attempts  # type: ignore[attr-defined]
    assert [a.number for a in attempts] == [1, 2, 3]
    assert all("state FAILED" in a.what and "exit code 5" in a.what for a in attempts)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "ran 3 times" in notes and "attempt 3:" in notes


# --- infrastructure losing a job (a fake scheduler) ---------------------------------------------

#: The state the first job's tasks end in, as a scheduler whose node failed would report it.
LOSE_STATE = TaskState.NODE_FAIL


class LosingMock(MockTransport):
    """The in-memory transport, except that the first job's tasks end in ``LOSE_STATE`` and
    their outcomes are never seen (the node that held them is gone)."""

    name = "losing-mock"

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        statuses = await super().poll(jobs)
        first = self.submitted[0].name
        for handle, status in list(statuses.items()):
            if handle.spec.name == first:
                tasks = {
                    index: TaskStatus(LOSE_STATE, LOSE_STATE.value) if seen.state.terminal
                    else seen
                    for index, seen in status.tasks.items()
                }
                statuses[handle] = JobStatus(tasks, frozenset())
        return statuses


@pytest.fixture
def losing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[TaskState], None]]:
    monkeypatch.setitem(TRANSPORTS, "losing-mock", f"{__name__}:LosingMock")

    def lose_with(state: TaskState) -> None:
        monkeypatch.setattr(sys.modules[__name__], "LOSE_STATE", state)

    yield lose_with


@pytest.mark.parametrize("state", [TaskState.NODE_FAIL, TaskState.PREEMPTED,
                                   TaskState.BOOT_FAIL, TaskState.VANISHED])
def test_a_call_the_infrastructure_lost_is_retried(
    losing: Callable[[TaskState], None], make: list[RemoteExecutor], state: TaskState
) -> None:
    losing(state)
    ex = RemoteExecutor("losing-mock", max_workers=2, retries=1)
    make.append(ex)
    assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    assert len(ex.transport.submitted) == 2  # type: ignore[attr-defined]
    # The three lost calls went out again together, one task each.
    assert len(ex.transport.submitted[1].tasks) == 3  # type: ignore[attr-defined]


def test_a_timed_out_call_is_not_retried(
    losing: Callable[[TaskState], None], make: list[RemoteExecutor]
) -> None:
    losing(TaskState.TIMEOUT)
    ex = RemoteExecutor("losing-mock", max_workers=1, retries=3)
    make.append(ex)
    with pytest.raises(JobFailedError) as info:
        ex.submit(abs, -1).result(timeout=60)
    assert info.value.state == "TIMEOUT"
    assert len(ex.transport.submitted) == 1  # type: ignore[attr-defined]


# --- the policy, pure ---------------------------------------------------------------------------


def _lost(state: TaskState, exit_code: int | None = None) -> JobFailedError:
    return JobFailedError("x", job_id="1", state=state.value, exit_code=exit_code)


@pytest.mark.parametrize(
    "state",
    [TaskState.NODE_FAIL, TaskState.PREEMPTED, TaskState.BOOT_FAIL, TaskState.VANISHED,
     TaskState.OUT_OF_MEMORY, TaskState.FAILED],
)
def test_policy_retries_lost_states(state: TaskState) -> None:
    policy = RetryPolicy(retries=1)
    assert policy.should_retry(1, _lost(state), lost=True)
    assert not policy.should_retry(2, _lost(state), lost=True)  # retries used up


@pytest.mark.parametrize("state", [TaskState.CANCELLED, TaskState.TIMEOUT, TaskState.DEADLINE])
def test_policy_does_not_retry_what_would_happen_again(state: TaskState) -> None:
    assert not RetryPolicy(retries=5).should_retry(1, _lost(state), lost=True)


def test_policy_does_not_retry_a_worker_that_could_not_start() -> None:
    assert not RetryPolicy(retries=5).should_retry(
        1, _lost(TaskState.FAILED, exit_code=127), lost=True
    )


@pytest.mark.parametrize(
    ("retries", "retry_on"),
    [(-1, None), (1.5, None), (True, None), (1, (int,)), (1, ("ValueError",)), (0, (OSError,))],
)
def test_bad_retry_arguments_are_refused_at_construction(
    retries: object, retry_on: object
) -> None:
    with pytest.raises(ConfigurationError):
        RemoteExecutor("local", retries=retries, retry_on=retry_on)  # type: ignore[arg-type]
