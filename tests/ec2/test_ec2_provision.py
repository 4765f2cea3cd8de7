"""The launch request and the user data, checked on the request itself: the emulator accepts
requests real EC2 refuses (user data over 16 KB) and ignores parts of others (ClientToken)."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from pathlib import Path

import asyncssh
import pytest

from remote_futures import ConfigurationError
from remote_futures.transports.ec2 import EC2Options
from remote_futures.transports.ec2_provision import (
    HOST_KEYS_BEGIN,
    HOST_KEYS_END,
    MAX_USER_DATA,
    LaunchPlan,
    host_keys_from_console,
    launch_request,
    parse_duration,
    render_user_data,
    session_tags,
)
from remote_futures.transports.ec2_sweep import session_is_dead

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def plan(**overrides: object) -> LaunchPlan:
    base: dict[str, object] = {
        "image_id": "ami-1", "instance_type": "t3.small", "count": 2,
        "user_data": render_user_data(public_key=KEY, user="ec2-user", max_lifetime=7200,
                                      idle_timeout=900),
        "tags": {"remote-futures:session": "s1"}, "security_group_ids": ["sg-1"],
    }
    base.update(overrides)
    return LaunchPlan(**base)  # type: ignore[arg-type]


def test_request_terminates_on_shutdown_requires_imdsv2_and_tags_everything() -> None:
    request = launch_request(plan(), "subnet-a")
    assert request["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert request["MetadataOptions"]["HttpTokens"] == "required"
    assert request["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is True
    kinds = {spec["ResourceType"] for spec in request["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface"}
    assert request["SubnetId"] == "subnet-a" and request["MinCount"] == request["MaxCount"] == 2
    assert "InstanceMarketOptions" not in request and "KeyName" not in request


def test_spot_is_one_time_and_terminates_on_interruption() -> None:
    options = launch_request(plan(spot=True, spot_max_price="0.05"), None)[
        "InstanceMarketOptions"
    ]
    assert options == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time",
                        "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.05"},
    }


def test_client_token_is_stable_per_plan_and_subnet() -> None:
    """A retried RunInstances must reuse the token (EC2 then returns the same instances; moto
    does not implement that, hence this check on the request)."""
    p = plan()
    assert launch_request(p, "subnet-a")["ClientToken"] == launch_request(p, "subnet-a")[
        "ClientToken"
    ]
    assert launch_request(p, "subnet-a")["ClientToken"] != launch_request(p, "subnet-b")[
        "ClientToken"
    ]
    assert len(launch_request(p, "subnet-" + "x" * 80)["ClientToken"]) <= 64


def test_user_data_over_16_kb_is_refused_before_any_call() -> None:
    with pytest.raises(ConfigurationError, match=str(MAX_USER_DATA)):
        launch_request(plan(user_data="#!/bin/bash\n" + "#" * MAX_USER_DATA), None)


def test_user_data_arms_the_lifetime_guard_first() -> None:
    text = render_user_data(public_key=KEY, user="ec2-user", max_lifetime=5400,
                            idle_timeout=None)
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("shutdown -h +90 ")
    assert "watchdog" not in text
    assert len(text.encode()) < MAX_USER_DATA


@pytest.mark.parametrize("bad", ["not a key", "ssh-ed25519 AAAA'; rm -rf /; '"])
def test_user_data_refuses_what_is_not_a_key(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        render_user_data(public_key=bad, user="ec2-user", max_lifetime=60, idle_timeout=None)


def test_user_data_refuses_a_user_name_that_is_not_a_login() -> None:
    with pytest.raises(ConfigurationError):
        render_user_data(public_key=KEY, user="x; reboot", max_lifetime=60, idle_timeout=None)


def test_user_data_is_valid_bash() -> None:
    text = render_user_data(public_key=KEY, user="ubuntu", max_lifetime=60, idle_timeout=30)
    done = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_host_keys_are_read_from_our_block_or_cloud_inits() -> None:
    ours = f"noise\n{HOST_KEYS_BEGIN}\n{KEY} root@vm\n{HOST_KEYS_END}\nmore"
    assert host_keys_from_console(ours) == [KEY]
    cloud_init = (
        "ec2: -----BEGIN SSH HOST KEY KEYS-----\n"
        f"ec2: {KEY}\n"
        "ec2: -----END SSH HOST KEY KEYS-----\n"
    )
    assert host_keys_from_console(cloud_init) == [KEY]
    assert host_keys_from_console(f"{HOST_KEYS_BEGIN}\n{KEY}\n") == []  # not finished yet
    assert host_keys_from_console("Linux version 6.1\n") == []


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200),
                                                (30, 30), ("1.5h", 5400), ("1d", 86400)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, what="x") == seconds


@pytest.mark.parametrize("bad", ["", "2 weeks", -1, 0, True, "h"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(bad, what="max_lifetime")


def test_options_are_checked_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="identity_file"):
        EC2Options(key_name="mine")
    with pytest.raises(ConfigurationError, match="instances"):
        EC2Options(instances=0)
    with pytest.raises(ConfigurationError, match="known_hosts"):
        EC2Options(known_hosts=str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        EC2Options(idle_timeout="soon")


def test_dead_sessions() -> None:
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(hours=1)
    mine_alive = session_tags("s", owner="o", expires_at=later)
    assert not session_is_dead(mine_alive)
    assert session_is_dead(session_tags("s", owner="o", expires_at=now - datetime.timedelta(1)))
    child = subprocess.Popen(["true"])
    child.wait()
    gone = session_tags("s", owner="o", expires_at=later,
                        client=f"{socket.gethostname()}:{child.pid}")
    assert session_is_dead(gone)
    elsewhere = session_tags("s", owner="o", expires_at=later, client="otherhost:1")
    assert not session_is_dead(elsewhere)
    assert mine_alive["remote-futures:client"] == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.parametrize(("work_dir", "watched"), [
    (".remote_futures", '"$home"/.remote_futures'), ("~/rf", '"$home"/rf'),
    ("/scratch/rf", "/scratch/rf"),
])
def test_the_watchdog_watches_the_work_directory(work_dir: str, watched: str) -> None:
    text = render_user_data(public_key=KEY, user="ec2-user", max_lifetime=60, idle_timeout=30,
                            work_dir=work_dir)
    assert f"w={watched};" in text
