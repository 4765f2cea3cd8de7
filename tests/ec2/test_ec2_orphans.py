"""Nothing is left running: a client killed outright (SIGKILL) is covered by the in-VM guards
and by ``remote-futures sweep ec2``; SIGTERM terminates the instances before the client exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakecloud import Cloud

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).resolve().parent


def start_client(cloud: Cloud, **options: Any) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_client.py"), json.dumps(options)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    assert line[:1] == ["ready"], f"the client did not start: {line}"
    return process, line[1]


def state(cloud: Cloud, iid: str) -> str:
    described = cloud.ec2.describe_instances(InstanceIds=[iid])
    return str(described["Reservations"][0]["Instances"][0]["State"]["Name"])


def wait_for_state(cloud: Cloud, iid: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while state(cloud, iid) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"{iid} is {state(cloud, iid)}, not {wanted}")
        time.sleep(0.1)


def sweep(cloud: Cloud, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "remote_futures", "sweep", "ec2", "--region", "us-east-1",
         "--endpoint-url", cloud.endpoint, *extra],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sigkilled_client_is_swept_and_a_live_one_kept_unless_all(cloud: Cloud) -> None:
    dead, dead_iid = start_client(cloud, idle_timeout=None)
    alive, alive_iid = start_client(cloud, idle_timeout=None)
    try:
        dead.kill()
        dead.wait()
        assert state(cloud, dead_iid) == "running"  # nothing cleaned up by a killed client
        out = sweep(cloud)
        assert f"terminated {dead_iid}" in out and f"kept {alive_iid}" in out
        assert state(cloud, dead_iid) == "terminated"
        assert state(cloud, alive_iid) == "running"
        out = sweep(cloud, "--all")
        assert f"terminated {alive_iid}" in out
        assert state(cloud, alive_iid) == "terminated"
    finally:
        for process in (dead, alive):
            process.kill()
            process.wait()


def test_sigkilled_client_is_covered_by_the_idle_watchdog_in_the_vm(cloud: Cloud) -> None:
    client, iid = start_client(cloud, idle_timeout="3s")
    client.kill()
    client.wait()
    wait_for_state(cloud, iid, "terminated")
    log = (cloud.root / iid / "shutdown.log").read_text()
    assert "idle_timeout reached" in log


def test_sigkilled_client_is_covered_by_the_lifetime_guard_in_the_vm(cloud: Cloud) -> None:
    """60 s of lifetime arm ``shutdown -h +1``; the fake shutdown counts minutes as seconds."""
    client, iid = start_client(cloud, idle_timeout=None, max_lifetime="60s")
    client.kill()
    client.wait()
    wait_for_state(cloud, iid, "terminated")
    assert "shutdown -h +1" in (cloud.root / iid / "shutdown.log").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_terminates_the_instances_before_the_client_exits(
    cloud: Cloud, signum: int
) -> None:
    client, iid = start_client(cloud, idle_timeout=None)
    client.send_signal(signum)
    client.wait(timeout=120)
    # The handler waited for the termination: it is done when the process is gone.
    assert state(cloud, iid) == "terminated"
    assert (cloud.root / iid / "shutdown.log").read_text().count("-h now") == 0


def test_a_client_leaving_without_shutdown_terminates_its_instances_on_exit(
    cloud: Cloud,
) -> None:
    client, iid = start_client(cloud, idle_timeout=None, exit_at_once=True)
    assert client.wait(timeout=120) == 0
    assert state(cloud, iid) == "terminated"


def test_sweep_without_credentials_says_so(cloud: Cloud) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS")}
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "remote_futures", "sweep", "ec2", "--region", "us-east-1",
         "--endpoint-url", cloud.endpoint],
        capture_output=True, text=True, timeout=120,
        env={**env, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert done.returncode == 1
    assert "credentials" in done.stderr.lower() and "Traceback" not in done.stderr


def test_sweep_kubernetes_delegates_or_says_why_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    from remote_futures import cli

    name = "remote_futures.transports.kubernetes"
    without = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, without)
    assert cli.main(["sweep", "kubernetes"]) == 2
    assert "no sweep" in capsys.readouterr().err
    seen: list[dict[str, Any]] = []

    async def fake_sweep(
        *, namespace: str = "default", context: str | None = None, older_than: float = 900
    ) -> list[str]:
        seen.append({"namespace": namespace, "context": context, "older_than": older_than})
        return ["s1"]

    without.sweep = fake_sweep  # type: ignore[attr-defined]
    assert cli.main(["sweep", "kubernetes", "--namespace", "ns", "--all"]) == 0
    assert seen == [{"namespace": "ns", "context": None, "older_than": 0.0}]
    assert "swept session s1" in capsys.readouterr().out
