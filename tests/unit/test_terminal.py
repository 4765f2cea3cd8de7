"""Colours on the command line: only on a terminal, never in ``--json`` or a pipe, and the
tables stay aligned under them."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remote_futures import RemoteExecutor
from remote_futures.check import CheckReport, format_report
from remote_futures.session_cli import SessionSummary, format_sessions
from remote_futures.terminal import colour_enabled, paint

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _summary(session_id: str, client: str, running: int, failed: int) -> SessionSummary:
    return SessionSummary(
        session_id=session_id, target="slurm", transport="slurm", client=client,
        calls=10, pending=0, running=running, done=10 - running - failed, failed=failed,
        jobs=["4242"], age=75.0,
    )


def test_colour_only_on_a_terminal_without_no_color(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty, open(tmp_path / "f", "w") as plain:
            assert colour_enabled(tty)
            assert not colour_enabled(plain)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not colour_enabled(tty)
            monkeypatch.delenv("NO_COLOR")
            monkeypatch.setenv("TERM", "dumb")
            assert not colour_enabled(tty)
    finally:
        os.close(master)
        os.close(slave)


def test_sessions_table_colours_cells_and_stays_aligned() -> None:
    rows = [_summary("aaaa", "dead", 0, 3), _summary("bbbb", "running", 2, 0)]
    plain = format_sessions(rows)
    coloured = format_sessions(rows, colour=True)
    assert ANSI.sub("", coloured) == plain
    lines = coloured.splitlines()
    assert lines[0].startswith(paint("SESSION", "bold"))
    assert paint("dead", "red") in lines[1] and paint("3", "red") in lines[1]
    assert paint("2", "yellow") in lines[2]
    assert "\x1b" not in plain


def test_check_verdict_coloured() -> None:
    ok = CheckReport(target="local", transport="local")
    bad = CheckReport(target="slurm", transport="slurm", problem_kind="connect",
                      problem="cannot connect to h:22")
    assert format_report(ok, colour=True).endswith(paint("ok", "green"))
    assert paint("PROBLEM (connect): cannot connect to h:22", "red") in format_report(
        bad, colour=True)
    assert "\x1b" not in format_report(bad)


def test_jobs_command_colours_a_terminal_and_not_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``remote-futures jobs`` run on a pseudo-terminal prints escape codes; piped, or with
    ``--json``, it prints none."""
    monkeypatch.setenv("REMOTE_FUTURES_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("NO_COLOR", raising=False)
    with RemoteExecutor("local", max_workers=1) as ex:
        assert ex.submit(abs, -3).result(timeout=60) == 3
    env = {**os.environ, "TERM": "xterm"}
    command = [sys.executable, "-m", "remote_futures", "jobs"]
    piped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "SESSION" in piped.stdout and "\x1b" not in piped.stdout
    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert as_json.stdout.lstrip().startswith("[") and "\x1b" not in as_json.stdout
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(command, env=env, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        assert process.wait(timeout=60) == 0
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break  # EIO: the terminal's other end closed
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert paint("SESSION", "bold").encode() in shown
