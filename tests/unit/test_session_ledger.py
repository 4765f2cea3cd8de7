"""The session ledger: its schema, what it records of an executor, and that it never stores
secrets; and the pruning rule that keeps the directories of uncollected jobs."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from remote_futures import RemoteExecutor
from remote_futures.envsync import EnvSpec
from remote_futures.resources import Resources
from remote_futures.session import (
    SCHEMA_VERSION,
    SessionRecorder,
    connect,
    list_sessions,
    load_session,
    sanitize_options,
)
from remote_futures.transports.remote import UNCOLLECTED, prune_command

SECRETS = ("hunter2", "s3cr3t-token", "AKIAEXAMPLE", "ghp_abcdef", "pa55phrase")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "state"
    monkeypatch.setenv("REMOTE_FUTURES_STATE_DIR", str(directory))
    return directory


def test_schema(state: Path) -> None:
    conn = connect()
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "sessions", "jobs", "calls"}
    columns = {name: [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
               for name in ("sessions", "jobs", "calls")}
    assert columns["sessions"] == ["session_id", "target", "transport", "options", "executor",
                                   "created", "hostname", "pid", "ended", "end_state"]
    assert columns["jobs"] == ["session_id", "name", "job_id", "location", "tasks",
                               "submitted", "released"]
    assert columns["calls"] == ["session_id", "seq", "job_name", "task", "call_index", "state"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == (
        str(SCHEMA_VERSION))
    assert (state / "sessions.sqlite3").stat().st_mode & 0o077 == 0


def test_sanitize_drops_credentials_and_keeps_the_rest() -> None:
    options = {
        "host": "login1", "port": 2222, "identity_file": "~/.ssh/id_ed25519",
        "password": "hunter2", "ssh_passphrase": "pa55phrase", "api_token": "s3cr3t-token",
        "aws_secret_access_key": "AKIAEXAMPLE",
        "env": EnvSpec(mode="explicit", requirements=("pkg @ https://me:ghp_abcdef@git.example/x",),
                       index_url="https://user:hunter2@pypi.example/simple"),
        "resources": Resources(cpus=2, job_script_prologue=(
            "module load python", "export API_TOKEN=s3cr3t-token", "export OMP_NUM_THREADS=2")),
        "callback": print,
    }
    clean = sanitize_options(options)
    text = repr(clean)
    for secret in SECRETS:
        assert secret not in text
    assert clean["host"] == "login1" and clean["port"] == 2222
    assert clean["identity_file"] == "~/.ssh/id_ed25519"  # a path, needed to reconnect
    assert "password" not in clean and "api_token" not in clean and "callback" not in clean
    assert clean["env"]["index_url"] == "https://pypi.example/simple"
    assert clean["env"]["requirements"] == ["pkg @ https://git.example/x"]
    prologue = clean["resources"]["job_script_prologue"]
    assert prologue == ["module load python", "export API_TOKEN=<redacted>",
                        "export OMP_NUM_THREADS=2"]


def test_no_secret_reaches_the_file(state: Path) -> None:
    recorder = SessionRecorder("s-1")
    recorder.session_started(
        target="slurm", transport="slurm",
        options={"host": "h", "password": "hunter2", "token": "s3cr3t-token",
                 "env": {"mode": "sync", "index_url": "https://u:AKIAEXAMPLE@idx/simple"},
                 "known_hosts": "/k", "ssh_passphrase": "pa55phrase",
                 "resources": {"job_script_prologue": ["export GITHUB_TOKEN=ghp_abcdef"]}},
        executor={"max_workers": 4, "retries": 1},
    )
    recorder.close()
    raw = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("sessions"))
    assert b"s-1" in raw
    for secret in SECRETS:
        assert secret.encode() not in raw
    session = list_sessions(connect())[0]
    assert session.options["host"] == "h" and session.options["known_hosts"] == "/k"
    assert session.executor == {"max_workers": 4, "retries": 1}
    assert session.end_state == "closed"


def _boom(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x * 10


def test_an_executor_records_its_calls_in_submission_order(state: Path) -> None:
    with RemoteExecutor("local", max_workers=2) as ex:
        single = ex.submit(_boom, 7)
        mapped = list(ex.map(_boom, [0, 1], chunksize=1))
        failed = ex.submit(_boom, 2)
        assert single.result() == 70 and mapped == [0, 10]
        assert isinstance(failed.exception(), ValueError)
    loaded = load_session(connect(), ex.session_id)
    assert loaded is not None
    session, jobs, calls = loaded
    assert session.transport == "local" and session.end_state == "closed"
    assert session.executor["max_workers"] == 2
    assert [c.seq for c in calls] == [0, 1, 2, 3]
    assert [c.state for c in calls] == ["done", "done", "done", "failed"]
    by_name = {job.name: job for job in jobs}
    assert all(job.released is not None for job in jobs)
    # Each call is found again in its job's task list by its index.
    for call in calls:
        assert call.job_name is not None and call.task is not None
        assert call.call_index in by_name[call.job_name].tasks[call.task]
    # A map is one job: its two calls share it.
    assert calls[1].job_name == calls[2].job_name != calls[0].job_name
    assert load_session(connect(), ex.session_id[:-3]) is not None  # a prefix is enough


def test_an_unwritable_ledger_does_not_stop_the_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("REMOTE_FUTURES_STATE_DIR", str(blocker / "state"))
    with (caplog.at_level(logging.WARNING, logger="remote_futures"),
          RemoteExecutor("local", max_workers=1) as ex):
        assert ex.submit(abs, -3).result() == 3
    assert "cannot write the session ledger" in caplog.text


def test_ledger_survives_a_killed_writer_process(state: Path, tmp_path: Path) -> None:
    """What was committed before the process died is readable (WAL recovery)."""
    script = (
        "import os, time\n"
        "from remote_futures.session import SessionRecorder\n"
        "r = SessionRecorder('killed')\n"
        "r.session_started(target='sge', transport='sge', options={}, executor={})\n"
        "r.calls_queued(0, 5)\n"
        "r.flush()\n"
        "os._exit(0)\n"  # no close(): as a SIGKILL, nothing runs after this
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    loaded = load_session(connect(), "killed")
    assert loaded is not None
    assert loaded[0].ended is None
    assert [c.state for c in loaded[2]] == ["queued"] * 5


def test_prune_keeps_uncollected_job_directories(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    for name in ("rf-collected", "rf-uncollected", "rf-running"):
        job = jobs / name
        job.mkdir(parents=True)
        (job / "task-0.in").write_bytes(b"")
        if name != "rf-running":
            (job / "task-0.exit").write_text("0")
        if name == "rf-uncollected":
            (job / UNCOLLECTED).touch()
    old = time.time() - 10 * 86400
    for job in jobs.iterdir():
        os.utime(job, (old, old))
    subprocess.run(["sh", "-c", prune_command(str(jobs), 7.0)], check=True)
    assert sorted(p.name for p in jobs.iterdir()) == ["rf-running", "rf-uncollected"]


def test_every_queued_call_is_written(state: Path) -> None:
    """Reports queued faster than the thread commits are all written, none lost."""
    recorder = SessionRecorder("batched")
    recorder.session_started(target="t", transport="slurm", options={}, executor={})
    for first in range(0, 2000, 10):
        recorder.calls_queued(first, 10)
    recorder.close()
    conn = sqlite3.connect(state / "sessions.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM calls WHERE session_id='batched'").fetchone()[0] == (
        2000)


def test_shutdown_waits_for_a_release_in_flight(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last outcome read, the poll loop starts releasing the job (removing its
    directory); a shutdown right then must let that finish, or the directory stays behind
    (marked uncollected, so never pruned)."""
    from remote_futures.transports.mock import MockTransport

    finished: list[str] = []
    original = MockTransport.release

    async def slow_release(self: MockTransport, job: Any) -> None:
        import anyio

        await anyio.sleep(0.5)
        await original(self, job)
        finished.append(job.job_id)

    monkeypatch.setattr(MockTransport, "release", slow_release)
    with RemoteExecutor("mock", max_workers=1) as ex:
        assert ex.submit(abs, -5).result() == 5
    assert len(finished) == 1
    loaded = load_session(connect(), ex.session_id)
    assert loaded is not None and loaded[1][0].released is not None


def _craft_session(session_id: str, *, pid: int, hostname: str) -> None:
    """A slurm session in the ledger: call 0 never submitted, call 1 in a collected job."""
    conn = connect()
    conn.execute(
        "INSERT INTO sessions (session_id, target, transport, options, executor, created, "
        "hostname, pid) VALUES (?, 'slurm', 'slurm', ?, '{}', ?, ?, ?)",
        (session_id, '{"host": "127.0.0.1", "port": 9}', time.time(), hostname, pid),
    )
    conn.execute("INSERT INTO jobs VALUES (?, 'rf-x', '77', '/nowhere/rf-x', '[[0]]', ?, ?)",
                 (session_id, time.time(), time.time()))
    conn.execute("INSERT INTO calls VALUES (?, 0, NULL, NULL, NULL, 'queued')", (session_id,))
    conn.execute("INSERT INTO calls VALUES (?, 1, 'rf-x', 0, 0, 'done')", (session_id,))
    conn.close()


def test_attach_says_which_calls_it_cannot_give(state: Path) -> None:
    import socket

    from remote_futures import OutcomeUnavailableError

    _craft_session("dead-one", pid=2**22 + 12345, hostname=socket.gethostname())
    with RemoteExecutor.attach("dead-one") as session:
        assert len(session.futures) == 2
        never, collected = (f.exception(timeout=5) for f in session.futures)
    assert isinstance(never, OutcomeUnavailableError) and "never submitted" in str(never)
    assert isinstance(collected, OutcomeUnavailableError)
    assert "collected by its client" in str(collected)


def test_attach_refuses_a_session_whose_client_runs(state: Path) -> None:
    import socket

    from remote_futures import ConfigurationError

    _craft_session("alive-one", pid=os.getpid(), hostname=socket.gethostname())
    with pytest.raises(ConfigurationError, match="still running in process"):
        RemoteExecutor.attach("alive-one")
    with pytest.raises(ConfigurationError, match="no session 'nobody'"):
        RemoteExecutor.attach("nobody")


def test_sessions_ended_long_ago_are_forgotten(state: Path) -> None:
    import socket

    _craft_session("old-ended", pid=1, hostname=socket.gethostname())
    _craft_session("old-dead", pid=2**22 + 1, hostname=socket.gethostname())
    conn = connect()
    long_ago = time.time() - 31 * 86400
    conn.execute("UPDATE sessions SET created = ?", (long_ago,))
    conn.execute("UPDATE sessions SET ended = ?, end_state = 'closed' WHERE session_id = "
                 "'old-ended'", (long_ago,))
    recorder = SessionRecorder("new")
    recorder.session_started(target="local", transport="local", options={}, executor={})
    recorder.close()
    assert [s.session_id for s in list_sessions(conn)] == ["old-dead", "new"]
    assert conn.execute("SELECT COUNT(*) FROM calls WHERE session_id = 'old-ended'"
                        ).fetchone()[0] == 0
    assert load_session(conn, "old-dead") is not None  # never ended: it may be attached


def test_jobs_command_counts_a_local_session_from_the_ledger(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from remote_futures.cli import main

    with RemoteExecutor("local", max_workers=2) as ex:
        assert list(ex.map(_boom, [0, 1, 3])) == [0, 10, 30]
        assert isinstance(ex.submit(_boom, 2).exception(), ValueError)
    assert main(["jobs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert (row["session_id"], row["client"], row["calls"]) == (ex.session_id, "ended", 4)
    assert (row["pending"], row["running"], row["done"], row["failed"]) == (0, 0, 3, 1)
    assert main(["jobs", "local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["SESSION", "TARGET", "CLIENT", "CALLS"]
    assert lines[1].split()[:8] == [ex.session_id, "local", "ended", "4", "0", "0", "3", "1"]
    assert main(["cancel", ex.session_id]) == 0
    assert "nothing to cancel" in capsys.readouterr().out
    assert load_session(connect(), ex.session_id)[0].end_state == "closed"  # type: ignore[index]
