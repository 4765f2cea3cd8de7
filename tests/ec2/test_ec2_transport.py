"""The ``ec2`` transport end to end: moto's EC2 API, VMs booted locally from their user data.

Each test stages one condition for real where the emulator allows (a VM that shuts itself
down through its own guard, an instance terminated under a running call) and through
aiobotocore event hooks where it does not (a pending phase, capacity and quota errors, the spot
interruption reason). Every "VM" is reached only through ``resolve_address`` on 127.0.0.1.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fakecloud import Cloud, api_error

from remote_futures import (
    BrokenRemoteExecutor,
    ConfigurationError,
    JobFailedError,
    RemoteExecutor,
    SubmissionError,
    TransportError,
)

pytestmark = pytest.mark.timeout(180)


def square(x: int) -> int:
    return x * x


def vm_of_call(_: object) -> str:
    """Which fake VM ran this call (the hypervisor marks every process of a VM)."""
    time.sleep(0.2)
    return os.environ["RF_VM_ID"]


def wait_for_file(path: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    return os.environ.get("RF_VM_ID", "")


def wait_until(predicate: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def tags_of(record: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in record.get("Tags", [])}


# --- launching, spreading, terminating --------------------------------------------------------


def test_calls_spread_over_instances_which_are_tagged_guarded_and_terminated(
    cloud: Cloud,
) -> None:
    with RemoteExecutor("ec2", max_workers=4, **cloud.options(max_lifetime="3h")) as ex:
        ran_on = set(ex.map(vm_of_call, range(8), chunksize=1))
        running = cloud.instances("running")
        assert ran_on == {i["InstanceId"] for i in running} and len(ran_on) == 2
        session = tags_of(running[0])["remote-futures:session"]
        for record in running:
            tags = tags_of(record)
            assert tags["remote-futures:managed-by"] == "remote-futures"
            assert tags["remote-futures:session"] == session
            assert "remote-futures:expires-at" in tags and "remote-futures:owner" in tags
            iid = record["InstanceId"]
            behaviour = cloud.ec2.describe_instance_attribute(
                InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior"
            )
            assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
            assert record["MetadataOptions"]["HttpTokens"] == "required"
            assert all(m["Ebs"]["DeleteOnTermination"] for m in record["BlockDeviceMappings"])
            # The user data really ran in the VM: the lifetime guard (3 h = 180 minutes) was
            # armed, and the session key was installed (the client could log in with it).
            log = (cloud.root / iid / "shutdown.log").read_text()
            assert "shutdown -h +180" in log
            assert "rf-" in (cloud.root / iid / "home/.ssh/authorized_keys").read_text()
        volumes = cloud.ec2.describe_volumes(
            Filters=[{"Name": "tag:remote-futures:session", "Values": [session]}]
        )["Volumes"]
        assert len(volumes) == 2
        # No key pair was created: the key travelled in the user data.
        assert cloud.ec2.describe_key_pairs()["KeyPairs"] == []
    assert {i["State"]["Name"] for i in cloud.instances()} == {"terminated"}
    # The session's own security group is gone too.
    groups = cloud.ec2.describe_security_groups(
        Filters=[{"Name": "tag:remote-futures:session", "Values": [session]}]
    )["SecurityGroups"]
    assert groups == []


def test_pending_phase_is_waited_out(cloud: Cloud) -> None:
    """Instances report ``pending`` without an address for a while (moto has no boot delay)."""
    seen_pending = []

    def pending(parsed: dict[str, Any], **_: Any) -> None:
        if len(seen_pending) < 6:
            for reservation in parsed.get("Reservations", []):
                for record in reservation["Instances"]:
                    record["State"] = {"Code": 0, "Name": "pending"}
                    record.pop("PublicIpAddress", None)
            seen_pending.append(1)

    cloud.hooks.append(lambda s: s.events.register("after-call.ec2.DescribeInstances", pending))
    with RemoteExecutor("ec2", **cloud.options(instances=1)) as ex:
        assert ex.submit(square, 9).result(timeout=60) == 81
    assert len(seen_pending) == 6


# --- specific errors --------------------------------------------------------------------------


def _subnets(cloud: Cloud) -> list[str]:
    subnets = cloud.ec2.describe_subnets()["Subnets"]
    by_zone = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    return list(by_zone.values())[:2]


def test_capacity_error_moves_to_the_next_subnet(cloud: Cloud) -> None:
    first, second = _subnets(cloud)
    tried: list[str] = []

    def no_room_in_first(params: dict[str, Any], **_: Any) -> Any:
        tried.append(params["body"].get("SubnetId"))
        if params["body"].get("SubnetId") == first:
            return api_error("InsufficientInstanceCapacity", "We currently do not have capacity")
        return None

    cloud.hooks.append(
        lambda s: s.events.register("before-call.ec2.RunInstances", no_room_in_first)
    )
    with RemoteExecutor("ec2", **cloud.options(instances=1, subnet_id=[first, second])) as ex:
        assert ex.submit(square, 3).result(timeout=60) == 9
        assert [i["SubnetId"] for i in cloud.instances("running")] == [second]
    assert tried == [first, second]


def _broken_start(cloud: Cloud, **options: Any) -> BaseException:
    ex = RemoteExecutor("ec2", **cloud.options(**options))
    try:
        with pytest.raises(BrokenRemoteExecutor) as info:
            ex.submit(square, 2).result(timeout=90)
    finally:
        ex.shutdown(wait=True)
    cause = info.value.__cause__
    assert cause is not None
    return cause


def test_capacity_everywhere_is_a_submission_error_naming_each_subnet(cloud: Cloud) -> None:
    subnets = _subnets(cloud)
    cloud.hooks.append(lambda s: s.events.register(
        "before-call.ec2.RunInstances",
        lambda **_: api_error("InsufficientInstanceCapacity", "no capacity"),
    ))
    cause = _broken_start(cloud, instances=1, subnet_id=subnets)
    assert isinstance(cause, SubmissionError)
    assert "no capacity" in str(cause) and all(s in str(cause) for s in subnets)
    assert cloud.instances() == []


def test_vcpu_quota_is_named_and_not_retried(cloud: Cloud) -> None:
    calls = []

    def quota(**_: Any) -> Any:
        calls.append(1)
        return api_error("VcpuLimitExceeded", "You have requested more vCPU capacity")

    cloud.hooks.append(lambda s: s.events.register("before-call.ec2.RunInstances", quota))
    cause = _broken_start(cloud, subnet_id=_subnets(cloud))
    assert isinstance(cause, SubmissionError)
    assert "VcpuLimitExceeded" in str(cause) and "quota" in str(cause)
    assert len(calls) == 1


def test_unknown_region_is_a_configuration_error(cloud: Cloud) -> None:
    cause = _broken_start(cloud, region="us-nowhere-7")
    assert isinstance(cause, ConfigurationError) and "us-nowhere-7" in str(cause)
    assert cloud.instances() == []


def test_missing_credentials_are_named(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    cause = _broken_start(cloud)
    assert isinstance(cause, ConfigurationError) and "credentials" in str(cause)


def test_bad_image_is_a_configuration_error(cloud: Cloud) -> None:
    cause = _broken_start(cloud, image_id="ami-00000000000000000")
    assert isinstance(cause, ConfigurationError) and "ami-00000000000000000" in str(cause)
    assert cloud.instances() == []


def test_unreachable_vm_is_terminated_and_named(cloud: Cloud) -> None:
    import socket

    def nowhere(instance: dict[str, Any]) -> tuple[str, int]:
        with socket.socket() as s:  # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", s.getsockname()[1]

    cause = _broken_start(cloud, instances=1, resolve_address=nowhere, boot_timeout="4s")
    assert isinstance(cause, TransportError)
    (record,) = cloud.instances()
    assert record["InstanceId"] in str(cause) and "reachable" in str(cause)
    assert record["State"]["Name"] == "terminated"


def test_a_host_key_other_than_the_console_one_is_refused(cloud: Cloud) -> None:
    """The console shows another key than the one the VM's sshd offers: no connection."""
    import asyncssh

    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()

    def wrong_key(parsed: dict[str, Any], **_: Any) -> None:
        text = (
            "-----BEGIN REMOTE-FUTURES HOST KEYS-----\n"
            f"{impostor.strip()}\n-----END REMOTE-FUTURES HOST KEYS-----\n"
        )
        parsed["Output"] = base64.b64encode(text.encode()).decode()

    cloud.hooks.append(
        lambda s: s.events.register("after-call.ec2.GetConsoleOutput", wrong_key)
    )
    cause = _broken_start(cloud, instances=1)
    assert isinstance(cause, TransportError) and "host key" in str(cause)
    assert {i["State"]["Name"] for i in cloud.instances()} == {"terminated"}


# --- instances that go away under running calls -----------------------------------------------


def test_spot_interruption_fails_the_calls_of_that_instance_only(
    cloud: Cloud, tmp_path: Path
) -> None:
    gate = str(tmp_path / "gate")
    interrupted: set[str] = set()

    def spot_reason(parsed: dict[str, Any], **_: Any) -> None:
        for reservation in parsed.get("Reservations", []):
            for record in reservation["Instances"]:
                if record["InstanceId"] in interrupted:
                    record["StateReason"] = {
                        "Code": "Server.SpotInstanceTermination",
                        "Message": "Server.SpotInstanceTermination: Spot instance termination",
                    }

    cloud.hooks.append(
        lambda s: s.events.register("after-call.ec2.DescribeInstances", spot_reason)
    )
    with RemoteExecutor("ec2", max_workers=2, **cloud.options(spot=True)) as ex:
        assert ex.submit(square, 2).result(timeout=60) == 4  # the instances are up
        assert {i.get("InstanceLifecycle") for i in cloud.instances("running")} == {"spot"}
        futures = [ex.submit(wait_for_file, gate) for _ in range(2)]
        wait_until(lambda: all(f.running() for f in futures), what="both calls running")
        victim = cloud.instances("running")[0]["InstanceId"]
        interrupted.add(victim)
        cloud.ec2.terminate_instances(InstanceIds=[victim])  # the VM and its processes die
        wait_until(lambda: (cloud.root / victim / "destroyed").exists(), what="VM destroyed")
        done, _ = cf.wait(futures, timeout=60, return_when=cf.FIRST_COMPLETED)
        assert len(done) == 1
        (failed,) = done
        error = failed.exception()
        assert isinstance(error, JobFailedError)
        assert error.state == "PREEMPTED" and victim in str(error)
        Path(gate).touch()
        (survivor,) = [f for f in futures if f is not failed]
        assert survivor.result(timeout=60) not in ("", victim)
        # New work goes to the instance that is left.
        assert ex.submit(vm_of_call, 0).result(timeout=60) != victim


def test_lifetime_guard_terminates_the_vm_and_fails_its_running_call(
    cloud: Cloud, tmp_path: Path
) -> None:
    """``max_lifetime=60s`` arms ``shutdown -h +1`` in the VM (the fake shutdown counts the
    minute as a second): the VM terminates itself and the blocked call fails; nothing hangs."""
    with RemoteExecutor(
        "ec2", **cloud.options(instances=1, max_lifetime="60s", idle_timeout=None)
    ) as ex:
        future = ex.submit(wait_for_file, str(tmp_path / "never"))
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=60)
        assert info.value.state == "NODE_FAIL"
        (record,) = cloud.instances()
        assert record["State"]["Name"] == "terminated"
        assert "shutdown -h +1" in (cloud.root / record["InstanceId"] / "shutdown.log").read_text()
        # With no instance left, new calls fail at once rather than wait.
        with pytest.raises(TransportError, match="no EC2 instance"):
            ex.submit(square, 1).result(timeout=60)


def test_idle_watchdog_shuts_an_unused_vm_down(cloud: Cloud) -> None:
    with RemoteExecutor("ec2", **cloud.options(instances=1, idle_timeout="3s")) as ex:
        assert ex.submit(square, 4).result(timeout=60) == 16
        (record,) = cloud.instances()
        iid = record["InstanceId"]
        wait_until(lambda: cloud.instances("terminated") != [], timeout=60, what="idle stop")
        log = (cloud.root / iid / "shutdown.log").read_text()
        assert "shutdown -h now remote-futures: idle_timeout reached" in log


def prefix_and_cloudpickle(_: object) -> str:
    import sys

    import cloudpickle

    return f"{sys.prefix}|{cloudpickle.__version__}"


def test_environment_is_synced_on_every_instance(cloud: Cloud) -> None:
    """The default ``env="sync"`` from the plain ``python3``: each instance gets its own venv
    with this interpreter's packages (the two syncs run in parallel)."""
    import cloudpickle

    with RemoteExecutor(
        "ec2", **cloud.options(env="sync", python="python3", boot_timeout="5m")
    ) as ex:
        seen = set(ex.map(prefix_and_cloudpickle, range(4), chunksize=1))
    prefixes = {s.split("|")[0] for s in seen}
    assert {s.split("|")[1] for s in seen} == {cloudpickle.__version__}
    assert len(prefixes) == 2  # one venv per instance, each in that instance's home
    assert all("/home/.remote_futures/envs/" in p for p in prefixes)


def test_a_given_identity_file_is_installed_instead_of_a_fresh_key(
    cloud: Cloud, tmp_path: Path
) -> None:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="mine")
    key.write_private_key(str(tmp_path / "id_mine"))
    (tmp_path / "id_mine").chmod(0o600)
    with RemoteExecutor(
        "ec2", **cloud.options(instances=1, identity_file=str(tmp_path / "id_mine"))
    ) as ex:
        assert ex.submit(square, 5).result(timeout=60) == 25
        (record,) = cloud.instances("running")
        installed = (cloud.root / record["InstanceId"] / "home/.ssh/authorized_keys").read_text()
    assert installed.split()[:2] == key.export_public_key().decode().split()[:2]


def test_tasks_for_an_instance_found_gone_at_submission_go_to_the_others(cloud: Cloud) -> None:
    """The instance died while idle and no state check has seen it yet (the interval is long):
    starting tasks there fails, the transport learns why and starts them on the other one."""
    with RemoteExecutor(
        "ec2", max_workers=4, **cloud.options(state_check_interval=600)
    ) as ex:
        both = set(ex.map(vm_of_call, range(4), chunksize=1))
        assert len(both) == 2
        victim = sorted(both)[0]
        cloud.ec2.terminate_instances(InstanceIds=[victim])
        wait_until(lambda: (cloud.root / victim / "destroyed").exists(), what="VM destroyed")
        assert set(ex.map(vm_of_call, range(4), chunksize=1)) == both - {victim}
