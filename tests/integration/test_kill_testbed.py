"""A job the user kills at the scheduler (``scancel``, ``qdel``) fails its calls promptly with
the scheduler's word, instead of waiting out the latency wait for an exit file that a killed
job never writes (60 s by default)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testbed_facts import COMPONENT_OF, require_testbed

from remote_futures import JobFailedError, RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

#: The scheduler's job id of the running task, as its environment says, and the command that
#: kills it, by target.
_JOB_ID_VARIABLE = {"slurm": "SLURM_JOB_ID", "sge": "JOB_ID"}
_KILL = {"slurm": "scancel", "sge": "qdel"}
_USER = {"slurm": "slurm_user", "sge": "sge_user"}


def record_job_then_sleep(path: str, variable: str, seconds: float) -> None:
    """Write the task's job id to ``path``, then sleep (until it is killed)."""
    Path(path + ".tmp").write_text(os.environ.get(variable, ""))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the testbed's users (who run the calls on this machine) may write."""
    path = Path(tempfile.mkdtemp(prefix="rf-kill-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Not "pbs": the testbed's Torque wrappers show a deleted job as a plain "C" with no exit
# status, which cannot be told from a finished job whose files are late (a real PBS records
# Exit_status 271, as the recorded outputs in the unit tests show).
@pytest.mark.parametrize("target", ["slurm", "sge"])
def test_a_job_killed_by_the_user_fails_promptly(
    remote_executor: Callable[..., RemoteExecutor], shared_dir: Path, target: str
) -> None:
    facts = require_testbed(COMPONENT_OF[target])
    # The default latency wait (60 s): the call must end long before it.
    ex = remote_executor(target)
    marker = shared_dir / f"job-{target}"
    future = ex.submit(record_job_then_sleep, str(marker), _JOB_ID_VARIABLE[target], 600.0)
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert not future.done(), future.exception()
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.2)
    job_id = marker.read_text().strip()
    assert job_id.isdigit(), job_id
    killed = time.monotonic()
    subprocess.run([*facts.ssh_argv(getattr(facts, _USER[target])), _KILL[target], job_id],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=120)
    took = time.monotonic() - killed
    assert info.value.state == "CANCELLED", info.value
    assert took < 40, f"the killed job's call failed {took:.0f} s after the kill"
