"""Helpers shared by the dialect tests: recorded outputs, script requests, golden scripts."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from remote_futures.resources import Resources
from remote_futures.transports.dialect import ScriptRequest

DATA = Path(__file__).parent.parent / "data"


def data(path: str) -> str:
    """A recorded output under tests/data."""
    return (DATA / path).read_text()


def request(
    n_tasks: int = 1, resources: Resources | None = None, **kwargs: object
) -> ScriptRequest:
    """A script request with fixed paths, so that rendered scripts can be compared."""
    defaults: dict[str, object] = {
        "job_name": "rf-job",
        "job_dir": "/scratch/rf/jobs/0a1b",
        "n_tasks": n_tasks,
        "resources": resources or Resources(),
        "worker_command": "python3 /scratch/rf/worker.py /scratch/rf/jobs/0a1b",
    }
    defaults.update(kwargs)
    return ScriptRequest(**defaults)  # type: ignore[arg-type]


def assert_golden(name: str, text: str) -> None:
    """Fail with a unified diff when ``text`` differs from tests/data/golden/NAME."""
    expected = (DATA / "golden" / name).read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"golden/{name}",
                "rendered",
            )
        )
        pytest.fail(f"job script differs from tests/data/golden/{name}:\n{diff}")
