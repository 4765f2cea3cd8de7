"""``remote-futures jobs / logs / cancel / clean`` against the testbed's schedulers."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_attach_testbed import _kill, _options, _ssh, _start_client
from testbed_facts import TestbedFacts, executor_options, remote_python, require_testbed

from remote_futures.cli import main

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(400)]


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "state"
    monkeypatch.setenv("REMOTE_FUTURES_STATE_DIR", str(directory))
    return directory


@pytest.fixture
def work_dir() -> Iterator[str]:
    name = f".rf-cli-{uuid.uuid4().hex[:8]}"
    yield name
    facts = require_testbed("ssh")
    for user in (facts.slurm_user, facts.sge_user):
        _ssh(facts, user, f"rm -rf ~/{name}")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(list(argv))
    return status, capsys.readouterr().out


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out = _run(capsys, *argv, "--json")
    assert status == 0
    return json.loads(out)


def test_jobs_logs_and_cancel_a_dead_clients_session_on_slurm(
    state_dir: Path, work_dir: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facts = require_testbed("slurm")
    import test_attach_testbed as attach_tests

    # Six calls of 20 s, two at a time: at the kill, two are done and four wait or run.
    monkeypatch.setattr(attach_tests, "NAP", 20.0)
    client, session = _start_client("slurm", _options(facts, "slurm", work_dir), state_dir)
    _kill(client)
    rows = _json(capsys, "jobs")
    assert [row["session_id"] for row in rows] == [session]
    row = rows[0]
    assert row["client"] == "dead" and row["calls"] == 6 and row["target"] == "slurm"
    assert row["done"] >= 1 and row["done"] + row["failed"] < 6
    assert row["pending"] + row["running"] + row["done"] + row["failed"] == 6
    status, table = _run(capsys, "jobs", "slurm")
    assert status == 0
    assert table.splitlines()[0].split() == ["SESSION", "TARGET", "CLIENT", "CALLS", "PENDING",
                                             "RUNNING", "DONE", "FAILED", "AGE", "JOBS"]
    assert session in table and "dead" in table
    assert _json(capsys, "jobs", "sge") == []
    # What call 0 printed, from its task's file in the job directory.
    status, text = _run(capsys, "logs", session, "0")
    assert status == 0
    assert "nap 0 done" in text and "== call 0 (job " in text
    logs = _json(capsys, "logs", session[:-2])
    assert [log["call"] for log in logs] == list(range(6))
    assert logs[0]["stdout"] == "nap 0 done\n"
    # Cancel: the scheduler stops the job, and the ledger says so.
    job_id = row["jobs"][0]
    cancelled = _json(capsys, "cancel", session)
    assert cancelled == {"session_id": session, "cancelled": [job_id]}
    deadline = time.monotonic() + 60
    while _ssh(facts, facts.slurm_user, f"squeue -h -j {job_id}").strip():
        assert time.monotonic() < deadline, "the job is still in the queue"
        time.sleep(1)
    accounted = _ssh(facts, facts.slurm_user, f"sacct -n -X -P -j {job_id} -o State")
    assert "CANCELLED" in accounted
    assert _json(capsys, "jobs")[0]["client"] == "cancelled"
    # Every task is marked cancelled, so the directory counts as ended (pruning, clean).
    location = _ssh(facts, facts.slurm_user, f"ls -d ~/{work_dir}/jobs/rf-*").strip()
    markers = _ssh(facts, facts.slurm_user, f"ls {location}").split()
    assert {f"task-{t}.cancel" for t in range(6)} <= set(markers)


def test_logs_of_an_unknown_session_says_so(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["logs", "no-such-session"])
    assert status == 1
    assert "no session 'no-such-session'" in capsys.readouterr().err


def _stage(facts: TestbedFacts, user: str, work_dir: str) -> None:
    """Job directories and venvs, some old, some in use, in a work directory of this test."""
    old = "-d '3 days ago'"
    root = f"~/{work_dir}"
    envs = f"{root}/envs"
    marker = ".remote-futures-env.json"
    script = f"""
set -e
umask 077
mkdir -p {root}/jobs {envs}
for v in old-unused newest in-use; do mkdir -p {envs}/py3.11-Linux-x86_64-$v/bin; \
  touch {envs}/py3.11-Linux-x86_64-$v/{marker}; done
mkdir -p {envs}/py3.11-Linux-x86_64-old-unused-wheels
v={envs}/py3.11-Linux-x86_64
touch {old} $v-old-unused/{marker} $v-in-use/{marker}
cd {root}/jobs
for d in rf-collected rf-uncollected rf-running rf-recent; do mkdir $d; touch $d/task-0.in; done
for d in rf-collected rf-uncollected rf-recent; do echo 0 > $d/task-0.exit; done
touch rf-uncollected/uncollected
echo "exec $HOME/{work_dir}/envs/py3.11-Linux-x86_64-in-use/bin/python w.py" > rf-running/job.sh
touch {old} rf-collected rf-uncollected rf-running
"""
    result = subprocess.run([*facts.ssh_argv(user), script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_clean_on_sge(
    state_dir: Path, work_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = require_testbed("sge")
    _stage(facts, facts.sge_user, work_dir)
    options: list[str] = []
    for key, value in {**executor_options(facts, "sge"), "env": "off",
                       "python": remote_python(facts), "work_dir": f"~/{work_dir}"}.items():
        options += [f"--{key.replace('_', '-')}", str(value)]

    def listing() -> list[str]:
        return sorted(_ssh(facts, facts.sge_user,
                           f"cd ~/{work_dir} && ls jobs envs | grep -v :").split())

    before = listing()
    plan = _json(capsys, "clean", "sge", *options)
    decided = {Path(item["path"]).name: (item["remove"], item["why"]) for item in plan["items"]}
    assert decided == {
        "rf-collected": (True, "ended"),
        "rf-uncollected": (False, "not collected (attach it, or --uncollected)"),
        "rf-running": (False, "tasks still pending or running"),
        "rf-recent": (False, "too recent"),
        "py3.11-Linux-x86_64-old-unused": (True, "unused"),
        "py3.11-Linux-x86_64-newest": (False, "the most recently used"),
        "py3.11-Linux-x86_64-in-use": (False, "a job directory runs it"),
    }
    assert plan["removed"] is False and listing() == before  # a dry run removes nothing
    status, table = _run(capsys, "clean", "sge", *options)
    assert status == 0 and "dry run: would remove 2 item(s)" in table
    status, table = _run(capsys, "clean", "sge", *options, "--yes")
    assert status == 0 and "removed 2 item(s)" in table
    assert listing() == sorted(set(before) - {"rf-collected", "py3.11-Linux-x86_64-old-unused",
                                              "py3.11-Linux-x86_64-old-unused-wheels"})
    status, table = _run(capsys, "clean", "sge", *options, "--uncollected", "--yes")
    assert status == 0
    left = listing()
    assert "rf-uncollected" not in left and "rf-running" in left and "rf-recent" in left
