"""``remote-futures check``: the testbed's users pass; each kind of problem is named, exit 1.

Runs the real command line (``python -m remote_futures``) in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testbed_facts import TestbedFacts, require_testbed

pytestmark = pytest.mark.timeout(300)


def _check(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "remote_futures", "check", *args, "--json"],
        capture_output=True, text=True, timeout=240, check=False, env=env,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def _ssh(facts: TestbedFacts, user: str) -> list[str]:
    return ["--host", facts.host, "--port", str(facts.port), "--user", user,
            "--identity-file", str(facts.key), "--known-hosts", str(facts.known_hosts)]


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REMOTE_FUTURES_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.mark.testbed
@pytest.mark.parametrize(("target", "user_key", "version"),
                         [("slurm", "slurm_user", "slurm"), ("sge", "sge_user", "SGE")])
def test_check_a_scheduler_on_the_testbed(target: str, user_key: str, version: str) -> None:
    facts = require_testbed(target)
    user = getattr(facts, user_key)
    status, report, _ = _check(target, *_ssh(facts, user))
    assert status == 0, report
    assert report["ok"] and report["problem"] is None
    assert report["scheduler"] == target and version in report["scheduler_version"]
    assert report["python_version"].split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert report["work_dir"] == f"/home/{user}/.remote_futures"
    assert report["env"] == "sync"
    # The dry run: what this interpreter has (cloudpickle at least) would go, or is there.
    assert any(line.startswith("cloudpickle==") for line in report["would_install"]) or any(
        "up to date" in note for note in report["notes"]
    )


@pytest.mark.testbed
def test_check_from_a_profile_for_people(tmp_path: Path) -> None:
    facts = require_testbed("slurm")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.cluster]\ntransport = "slurm"\nhost = "{facts.host}"\nport = {facts.port}\n'
        f'user = "{facts.slurm_user}"\nidentity_file = "{facts.key}"\n'
        f'known_hosts = "{facts.known_hosts}"\nmax_workers = 4\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "remote_futures", "check", "cluster", "--env", "off",
         "--python", "/opt/rf-remote-python/bin/python"],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "REMOTE_FUTURES_CONFIG": str(config)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scheduler   slurm slurm-wlm" in done.stdout
    assert done.stdout.rstrip().endswith("ok")


@pytest.mark.testbed
def test_cannot_connect_names_host_and_port() -> None:
    facts = require_testbed("ssh")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _ssh(facts, facts.slurm_user)
    args[args.index("--port") + 1] = str(port)
    status, report, _ = _check("slurm", *args)
    assert status == 1
    assert report["problem_kind"] == "connect"
    assert f"127.0.0.1:{port}" in report["problem"]


@pytest.mark.testbed
def test_host_key_mismatch(tmp_path: Path) -> None:
    facts = require_testbed("ssh")
    import asyncssh

    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known = tmp_path / "known_hosts"
    known.write_text(f"[{facts.host}]:{facts.port} {wrong}\n")
    args = _ssh(facts, facts.slurm_user)
    args[args.index("--known-hosts") + 1] = str(known)
    status, report, _ = _check("slurm", *args)
    assert status == 1
    assert report["problem_kind"] == "host-key", report


@pytest.mark.testbed
def test_python_missing() -> None:
    facts = require_testbed("slurm")
    status, report, _ = _check("slurm", *_ssh(facts, facts.slurm_user),
                               "--python", "/nonexistent/python3")
    assert status == 1
    assert report["problem_kind"] == "python-missing"
    assert "/nonexistent/python3" in report["problem"]


@pytest.mark.testbed
def test_wrong_scheduler_behind_qsub() -> None:
    """The SGE user's qsub is Grid Engine's: checking it as pbs says so."""
    facts = require_testbed("sge")
    status, report, _ = _check("pbs", *_ssh(facts, facts.sge_user))
    assert status == 1
    assert report["problem_kind"] == "wrong-scheduler"
    assert "sge" in report["problem"]


def test_scheduler_command_missing_here(tmp_path: Path) -> None:
    """No host: this machine; PATH without the scheduler (a shim directory)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    status, report, _ = _check("slurm", "--env", "off", "--python", sys.executable, env=env)
    assert status == 1
    assert report["problem_kind"] == "scheduler-missing"
    assert "sbatch" in report["problem"]


def test_version_mismatch_with_env_off(tmp_path: Path) -> None:
    """A python that reports another minor version (a shim rewriting this interpreter's
    answer to the probe): with env="off" it cannot run the calls."""
    major, minor = sys.version_info[:2]
    shim = tmp_path / "python3"
    shim.write_text(
        f'#!/bin/sh\n{sys.executable} "$@" | '
        f"sed 's/\"version\": \\[{major}, {minor}, [0-9]*\\]/\"version\": [{major}, 99, 0]/'\n"
    )
    shim.chmod(0o755)
    for command in ("sbatch", "squeue", "scancel"):  # this machine as a Slurm login node
        fake = tmp_path / command
        fake.write_text("#!/bin/sh\necho slurm 23.02.1\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    status, report, _ = _check("slurm", "--env", "off", "--python", str(shim), env=env)
    assert status == 1
    assert report["problem_kind"] == "version-mismatch", report
    assert f"{major}.99.0" in report["problem"]


def test_options_must_come_in_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    from remote_futures.cli import main

    assert main(["check", "slurm", "--host"]) == 2
    assert "--option value" in capsys.readouterr().err


def test_check_refuses_an_unknown_option_before_connecting() -> None:
    status, report, _ = _check("slurm", "--hots", "login1")
    assert status == 1
    assert report["problem_kind"] == "config" and "'hots'" in report["problem"]
