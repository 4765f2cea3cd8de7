"""Attach after a client crash, on real schedulers: a client process starts a map, is killed
with SIGKILL while calls run, and ``RemoteExecutor.attach`` collects every result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed_facts import TestbedFacts, executor_options, remote_python, require_testbed

from remote_futures import RemoteExecutor
from remote_futures.session import connect, load_session

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(400)]

CLIENT = Path(__file__).resolve().parent / "_attach_client.py"
N_CALLS = 6
NAP = 4.0
FAIL = 4


def _ssh(facts: TestbedFacts, user: str, command: str) -> str:
    result = subprocess.run([*facts.ssh_argv(user), command], capture_output=True, text=True,
                            timeout=60, check=False)
    return result.stdout


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger of this test's own, shared with the client process."""
    directory = tmp_path / "state"
    monkeypatch.setenv("REMOTE_FUTURES_STATE_DIR", str(directory))
    return directory


def _start_client(target: str, options: dict[str, object], state: Path) -> tuple[
        subprocess.Popen[str], str]:
    """Start the client; return it (killed once the first call finished) and its session."""
    env = {**os.environ, "REMOTE_FUTURES_STATE_DIR": str(state)}
    client = subprocess.Popen(
        [sys.executable, str(CLIENT), target, json.dumps(options), str(N_CALLS), str(NAP),
         str(FAIL)], stdout=subprocess.PIPE, text=True, env=env,
    )
    assert client.stdout is not None
    session = ""
    deadline = time.monotonic() + 240
    for line in client.stdout:
        if line.startswith("SESSION "):
            session = line.split()[1]
        if line.strip() == "READY" or time.monotonic() > deadline:
            break
    else:
        raise AssertionError(f"the client ended early (exit {client.wait()})")
    assert session
    return client, session


def _kill(client: subprocess.Popen[str]) -> None:
    client.send_signal(signal.SIGKILL)
    assert client.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def work_dir() -> Iterator[str]:
    """A work directory of this test alone (its jobs directory shows every submission)."""
    name = f".rf-attach-{uuid.uuid4().hex[:8]}"
    yield name
    facts = require_testbed("ssh")
    for user in (facts.slurm_user, facts.sge_user, facts.pbs_user):
        _ssh(facts, user, f"rm -rf ~/{name}")


def _options(facts: TestbedFacts, target: str, work_dir: str) -> dict[str, object]:
    return {**executor_options(facts, target), "env": "off", "python": remote_python(facts),
            "work_dir": f"~/{work_dir}", "forward_output": False}


def _expected() -> list[object]:
    return [i * i for i in range(N_CALLS)]


def _collect(futures: list[object]) -> list[object]:
    out: list[object] = []
    for future in futures:
        exc = future.exception(timeout=240)  # type: ignore[attr-defined]
        out.append(exc if exc is not None else future.result())  # type: ignore[attr-defined]
    return out


def _check_results(results: list[object]) -> None:
    for i, got in enumerate(results):
        if i == FAIL:
            assert isinstance(got, ValueError) and "fails on purpose" in str(got)
        else:
            assert got == i * i


def test_attach_after_sigkill_on_slurm(state_dir: Path, work_dir: str) -> None:
    facts = require_testbed("slurm")
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    client, session = _start_client("slurm", _options(facts, "slurm", work_dir), state_dir)
    _kill(client)
    conn = connect()
    loaded = load_session(conn, session)
    assert loaded is not None
    _, jobs, calls = loaded
    assert [c.seq for c in calls] == list(range(N_CALLS))
    recorded = {job.job_id for job in jobs}
    with RemoteExecutor.attach(session) as attached:
        assert len(attached.futures) == N_CALLS
        results = _collect(list(attached.futures))
    _check_results(results)
    # Every job the scheduler ran from this work directory since the start is one the
    # crashed client submitted: attaching submitted nothing.
    home = _ssh(facts, facts.slurm_user, "echo $HOME").strip()
    seen = _ssh(facts, facts.slurm_user,
                f"sacct -X -n -P -u {facts.slurm_user} -S {started} -o JobID,WorkDir")
    ours = {line.split("|")[0].split("_")[0] for line in seen.splitlines()
            if f"{home}/{work_dir}/" in line}
    assert ours == recorded
    # Collected: the job directories are gone, and the ledger says so.
    assert _ssh(facts, facts.slurm_user, f"ls -A ~/{work_dir}/jobs").split() == []
    loaded = load_session(conn, session)
    assert loaded is not None
    assert all(job.released is not None for job in loaded[1])
    assert loaded[0].end_state == "attached"


@pytest.mark.parametrize("target", ["sge", "pbs"])
def test_attach_after_sigkill_on_sge_and_pbs(state_dir: Path, work_dir: str, target: str) -> None:
    facts = require_testbed(target)
    user = facts.sge_user if target == "sge" else facts.pbs_user
    client, session = _start_client(target, _options(facts, target, work_dir), state_dir)
    _kill(client)
    loaded = load_session(connect(), session)
    assert loaded is not None
    names = sorted(job.name for job in loaded[1])
    # The job directories show every submission (each job is uploaded to one first).
    assert _ssh(facts, user, f"ls ~/{work_dir}/jobs").split() == names
    assert _ssh(facts, user, f"ls ~/{work_dir}/jobs/*/uncollected").split()  # marked
    # Once every task has ended, another executor on the same work directory prunes at its
    # start, here everything that ended (keep_days=0): not the dead client's uncollected job.
    deadline = time.monotonic() + 240
    while len(_ssh(facts, user, f"ls ~/{work_dir}/jobs/*/task-*.exit").split()) < N_CALLS:
        assert time.monotonic() < deadline, "the tasks did not end"
        time.sleep(1)
    time.sleep(2)  # older than the prune's `-mmin +0`
    RemoteExecutor(target, **_options(facts, target, work_dir), keep_days=0).shutdown()
    assert _ssh(facts, user, f"ls ~/{work_dir}/jobs").split() == names
    with RemoteExecutor.attach(session, cleanup="never") as attached:
        results = _collect(list(attached.futures))
        time.sleep(1)
    _check_results(results)
    assert _ssh(facts, user, f"ls ~/{work_dir}/jobs").split() == names
    # Kept (cleanup="never") but collected: no longer marked as waiting for a client.
    left = _ssh(facts, user, f"ls ~/{work_dir}/jobs/*/uncollected 2>/dev/null")
    assert left.split() == []


def test_attach_refuses_a_local_session(state_dir: Path) -> None:
    with RemoteExecutor("local", max_workers=1) as ex:
        assert ex.submit(abs, -1).result() == 1
    with pytest.raises(Exception, match="cannot be attached: the local pool"):
        RemoteExecutor.attach(ex.session_id)
