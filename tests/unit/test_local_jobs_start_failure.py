"""``local-jobs``: a worker process that dies before it starts any task (a broken interpreter,
a module it cannot import) fails the task it was sent with its exit status and stderr, instead
of being started again for ever with the same task (its futures never resolved, and the loop
spun a CPU)."""

from __future__ import annotations

import concurrent.futures as cf
import stat
from pathlib import Path

import pytest

from remote_futures import JobFailedError, RemoteExecutor

pytestmark = pytest.mark.timeout(120)


def test_an_interpreter_that_exits_at_once_fails_every_call_with_its_status(
    tmp_path: Path,
) -> None:
    python = tmp_path / "broken-python"
    python.write_text("#!/bin/sh\necho 'cannot start: no such runtime' >&2\nexit 3\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with RemoteExecutor("local-jobs", python=str(python), max_workers=2) as ex:
        futures = [ex.submit(abs, -i) for i in range(5)]
        _, pending = cf.wait(futures, timeout=60)
        assert not pending, "calls on a broken interpreter never resolved"
        for future in futures:
            error = future.exception()
            assert isinstance(error, JobFailedError)
            assert error.exit_code == 3
            assert "cannot start: no such runtime" in str(error)
