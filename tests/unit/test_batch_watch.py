"""The command a batch transport runs between polls to notice new files in job directories."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from remote_futures.transports.batch import watch_dirs_command


def _run(command: str) -> int:
    return subprocess.run(["/bin/sh", "-c", command], check=False, timeout=60).returncode


def test_an_unchanged_directory_waits_every_step_then_says_so(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    assert _run(watch_dirs_command([str(tmp_path / "job")], 3, 0.05)) == 3


def test_a_new_file_ends_the_wait(tmp_path: Path) -> None:
    """A file created while it watches (as a task's outcome is): exit 0, long before the
    200 looks (10 s) are over."""
    jobs = [tmp_path / "a", tmp_path / "b b"]
    for job in jobs:
        job.mkdir()
    later = f"(sleep 0.3; : > {shlex.quote(str(jobs[1] / 'call-0.out'))}) &"
    assert _run(f"{later} {watch_dirs_command([str(j) for j in jobs], 200, 0.05)}") == 0


def test_a_directory_that_goes_ends_the_wait(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    later = f"(sleep 0.3; rmdir {shlex.quote(str(job))}) &"
    assert _run(f"{later} {watch_dirs_command([str(job)], 200, 0.05)}") == 0
