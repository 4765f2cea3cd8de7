"""``retries`` on real schedulers: a call whose worker exits on its first attempt runs again."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_futures import JobFailedError, RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def die_first_time(marker: str, value: int) -> int:
    """Exit the worker without a result unless ``marker`` exists (then create it)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return value + 1


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the testbed's users (who run the calls on this machine) may write. Not
    under pytest's base temporary directory: every pytest run resets that one to mode 0700."""
    path = Path(tempfile.mkdtemp(prefix="rf-retries-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("target", ["slurm", "sge", "pbs"])
def test_a_lost_call_is_retried_on_a_scheduler(
    remote_executor: Callable[..., RemoteExecutor], shared_dir: Path, target: str
) -> None:
    ex = remote_executor(target, retries=1)
    marker = str(shared_dir / f"marker-{target}")
    assert ex.submit(die_first_time, marker, 41).result(timeout=240) == 42
    assert os.path.exists(marker)


def test_without_retries_it_fails_with_the_schedulers_story(
    remote_executor: Callable[..., RemoteExecutor], shared_dir: Path
) -> None:
    ex = remote_executor("slurm")
    with pytest.raises(JobFailedError) as info:
        ex.submit(die_first_time, str(shared_dir / "marker"), 41).result(timeout=240)
    assert info.value.exit_code == 3
