"""The ``ec2`` transport: launch EC2 instances, run calls on them over SSH, always terminate them.

One executor session launches ``instances`` VMs (one RunInstances call), reaches each over SSH
with the same shell, worker and environment sync as the ``ssh`` transport (one
:class:`~remote_futures.transports.ssh_host.SSHHostTransport` per instance), spreads the tasks
of every job over the instances by load, and terminates the instances when the executor shuts
down. Nothing is left running by accident:

* ``shutdown()`` (and the executor's exit hook) terminates the instances and waits for it;
  an ``atexit`` hook and SIGTERM/SIGINT handlers do the same, synchronously, if the executor
  never got to close;
* inside each VM, a lifetime guard (``shutdown -h +N`` for ``max_lifetime``) and an idle
  watchdog (``idle_timeout``) shut it down, and ``InstanceInitiatedShutdownBehavior=terminate``
  turns that into termination: this covers a client killed with SIGKILL or a lost laptop;
* ``remote-futures sweep ec2`` (:mod:`.ec2_sweep`) terminates what dead sessions left.

No key pair is created: a fresh ed25519 key is generated here and its public half installed
by the user data, so the private key never leaves this machine. Host keys are pinned: the VM
prints them to its console and the client reads them with ``GetConsoleOutput`` (or the user
gives a ``known_hosts`` file); an unknown key is never accepted silently.

aioboto3 is an optional dependency (``pip install 'remote_futures[aws]'``), imported lazily.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime
import getpass
import inspect
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import FrameType
from typing import Any, ClassVar

import anyio

from ..envsync import EnvSpec
from ..errors import ConfigurationError, SubmissionError, TransportError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskSpec, TaskState, TaskStatus
from .base import Transport
from .ec2_provision import (
    LaunchPlan,
    default_image_parameter,
    host_keys_from_console,
    launch_request,
    new_session_id,
    parse_duration,
    render_user_data,
    session_tags,
)
from .remote import RemoteOptions
from .ssh_host import SSHHostOptions, SSHHostTransport

__all__ = ["EC2Options", "EC2Transport", "default_address"]

log = logging.getLogger("remote_futures")

_INSTALL_HINT = "the 'ec2' transport needs aioboto3: pip install 'remote_futures[aws]'"

#: Errors that mean "no room here": try the next subnet (availability zone) if one was given.
_CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported",
    "InsufficientFreeAddressesInSubnet", "SpotMaxPriceTooLow", "InsufficientHostCapacity",
})
#: Account limits: retrying elsewhere does not help.
_QUOTA_CODES = frozenset({
    "VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded",
    "PendingVerification",
})
_CREDENTIAL_CODES = frozenset({
    "AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId",
    "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired",
})
_DEAD_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})

#: Test seam: callables run on every new aioboto3 session (e.g. to register event hooks that
#: stage a pending phase or a capacity error). Empty in normal use.
_session_hooks: list[Callable[[Any], None]] = []


def _aioboto3() -> Any:
    try:
        import aioboto3
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return aioboto3


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _owner() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclasses.dataclass(frozen=True)
class EC2Options:
    """Options of the ``ec2`` transport."""

    #: The AWS region; default: the profile's or ``AWS_DEFAULT_REGION``.
    region: str | None = None
    instance_type: str = "t3.small"
    #: How many instances this executor launches (all at once, at start).
    instances: int = 1
    #: The image; default: the current Amazon Linux 2023 for the instance type's architecture,
    #: found through the SSM public parameter.
    image_id: str | None = None
    #: One-time spot instances that terminate on interruption (the calls running on an
    #: interrupted instance fail with ``JobFailedError``, state ``PREEMPTED``).
    spot: bool = False
    spot_max_price: str | None = None
    #: One subnet, or several (in different availability zones): a capacity error in one moves
    #: the launch to the next.
    subnet_id: str | list[str] | None = None
    #: Security groups; default: a group of this session allowing SSH from ``ssh_cidr`` (deleted
    #: with the instances).
    security_group_ids: list[str] | None = None
    ssh_cidr: str = "0.0.0.0/0"
    #: An existing key pair's name (then ``identity_file`` is its private key). Default: a fresh
    #: ed25519 key made here and installed through the user data (no key pair to leave behind).
    key_name: str | None = None
    identity_file: str | None = None
    user: str = "ec2-user"
    #: A known_hosts file listing the instances' host keys; default: pin the keys each instance
    #: prints to its console.
    known_hosts: str | None = None
    #: Hard lifetime of every instance (the in-VM guard); also its ``expires-at`` tag.
    max_lifetime: Any = "2h"
    #: An instance with no work for this long shuts itself down; None: no watchdog.
    idle_timeout: Any = "15m"
    #: How long an instance may take to become reachable over SSH before it is given up.
    boot_timeout: Any = "10m"
    #: Another endpoint (an emulator) and a named profile of the AWS config.
    endpoint_url: str | None = None
    aws_profile: str | None = None
    #: ``callable(instance: dict) -> (host, port)``: how to reach an instance (its
    #: DescribeInstances record). Default: the public IP, else the private IP, port 22.
    resolve_address: Any = None
    #: The remote interpreter (None: ``python3``) and the environment (as for ``ssh``).
    python: str | None = None
    env: Any = "sync"
    work_dir: str | None = None
    volume_size_gb: int | None = None
    forward_output: bool = True
    #: Seconds between DescribeInstances checks for interrupted or vanished instances.
    state_check_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ConfigurationError(f"instances must be at least 1, not {self.instances}")
        if self.key_name is not None and self.identity_file is None:
            raise ConfigurationError(
                "key_name needs identity_file (the private key of that key pair)"
            )
        if self.resolve_address is not None and not callable(self.resolve_address):
            raise ConfigurationError("resolve_address must be callable(instance) -> (host, port)")
        if self.known_hosts is not None and not os.path.isfile(
            os.path.expanduser(self.known_hosts)
        ):
            raise ConfigurationError(f"known_hosts file {self.known_hosts} does not exist")
        if self.identity_file is not None and not os.path.isfile(
            os.path.expanduser(self.identity_file)
        ):
            raise ConfigurationError(f"identity_file {self.identity_file} does not exist")
        for what in ("max_lifetime", "boot_timeout"):
            parse_duration(getattr(self, what), what=what)
        if self.idle_timeout is not None:
            parse_duration(self.idle_timeout, what="idle_timeout")
        if self.state_check_interval <= 0:
            raise ConfigurationError("state_check_interval must be positive")

    @staticmethod
    def convert_env(value: Any) -> EnvSpec:
        """Parse ``env`` now, as the ``ssh`` transport does."""
        return RemoteOptions.convert_env(value)

    @staticmethod
    def convert_subnet_id(value: Any) -> str | list[str] | None:
        """One subnet id or a list of them."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigurationError(f"must be a subnet id or a list of them, not {value!r}")

    @staticmethod
    def convert_security_group_ids(value: Any) -> list[str] | None:
        """A list of security group ids (one id as a string is accepted)."""
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigurationError(f"must be a list of security group ids, not {value!r}")

    @property
    def subnets(self) -> list[str | None]:
        """The subnets to try in order (``[None]``: the default VPC's choice)."""
        if self.subnet_id is None:
            return [None]
        return [self.subnet_id] if isinstance(self.subnet_id, str) else list(self.subnet_id)


def default_address(instance: Mapping[str, Any]) -> tuple[str, int]:
    """The public IP of an instance, else its private IP; port 22."""
    host = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
    if not host:
        raise TransportError(f"instance {instance.get('InstanceId')} has no IP address")
    return str(host), 22


# --- the per-instance transport ---------------------------------------------------------------


class _InstanceTransport(SSHHostTransport):
    """The ``ssh`` transport on one instance, with the session's key and pinned host keys."""

    name = "ec2"

    def __init__(self, options: SSHHostOptions, *, max_workers: int, instance_id: str) -> None:
        super().__init__(options, max_workers=max_workers)
        self.instance_id = instance_id

    @property
    def describe(self) -> str:
        """``ec2 instance i-... (user@host:port)``."""
        return f"ec2 instance {self.instance_id} ({self.shell.label})"


@dataclasses.dataclass(eq=False)
class _Instance:
    instance_id: str
    record: dict[str, Any]
    transport: _InstanceTransport | None = None
    #: Set once the instance is gone (interrupted, terminated, stopped): why, for errors.
    dead: str | None = None
    spot_interrupted: bool = False
    #: Tasks started here and not seen ending yet.
    load: int = 0


@dataclasses.dataclass(eq=False)
class _Part:
    """The tasks of one job that run on one instance."""

    instance: _Instance
    handle: JobHandle
    #: local task index -> the job's task index.
    tasks: list[int]
    ended: set[int] = dataclasses.field(default_factory=set)
    fetched: set[int] = dataclasses.field(default_factory=set)


# --- cleanup at exit and on signals -----------------------------------------------------------

_live: weakref.WeakSet[EC2Transport] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_installed = False
_previous_handlers: dict[int, Any] = {}


def _terminate_all_sync(why: str) -> None:
    for transport in list(_live):
        with contextlib.suppress(Exception):
            transport.terminate_now(why)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _terminate_all_sync(f"signal {signal.Signals(signum).name}")
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    """atexit always; SIGTERM and SIGINT handlers when this is the main thread, chaining to the
    handlers that were there (the default ones still end the process afterwards)."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_terminate_all_sync, "interpreter exit")
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if current is None:  # installed from C: leave it alone
                continue
            _previous_handlers[signum] = current
            signal.signal(signum, _on_signal)


# --- the transport ----------------------------------------------------------------------------


class EC2Transport(Transport):
    """Runs jobs on EC2 instances it launches for the executor's lifetime."""

    name = "ec2"
    Options: ClassVar[type[Any]] = EC2Options
    poll_interval = (0.2, 2.0)
    coalesce_window = 0.02
    max_tasks_per_job = 100_000

    def __init__(self, options: EC2Options, *, max_workers: int) -> None:
        _aioboto3()  # fail at construction when the extra is missing
        super().__init__(options, max_workers=max_workers)
        self.options: EC2Options = options
        self.session_id = new_session_id()
        self.lifetime = parse_duration(options.max_lifetime, what="max_lifetime")
        self.idle = (
            None if options.idle_timeout is None
            else parse_duration(options.idle_timeout, what="idle_timeout")
        )
        self.boot_timeout = parse_duration(options.boot_timeout, what="boot_timeout")
        self.region = options.region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION"
        )
        self.instances: dict[str, _Instance] = {}
        self.security_group_id: str | None = None  # one this session created
        self._launched: list[str] = []
        self._terminated = False
        self._session: Any = None
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._key_dir: str | None = None
        self._parts: dict[JobHandle, list[_Part]] = {}
        self._last_state_check = 0.0
        self._sync_lock = threading.Lock()
        _live.add(self)
        _install_exit_hooks()

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """Two tasks per instance at once when the user says nothing."""
        return 2 * int(getattr(options, "instances", 1))

    def default_chunksize(self, n_calls: int) -> int:
        """About 16 tasks per slot: a small map gets one call per task (so a call that has not
        started can be cancelled, as with ProcessPoolExecutor), a large one is chunked so that
        each process start (a few SSH round trips) carries many calls, and the tasks are still
        numerous enough to even out the load over the instances."""
        return max(1, -(-n_calls // (16 * max(1, self.max_workers))))

    @property
    def describe(self) -> str:
        """``ec2 (2 x t3.small in us-east-1)``."""
        return f"ec2 ({self.options.instances} x {self.options.instance_type} in {self.region})"

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Launch the instances, wait until each is reachable over SSH with a pinned host key.
        On any failure, everything launched so far is terminated before the error propagates."""
        try:
            await self._open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._teardown()
            raise

    async def _open(self) -> None:
        aioboto3 = _aioboto3()
        self._session = aioboto3.Session(profile_name=self.options.aws_profile)
        for hook in _session_hooks:
            hook(self._session)
        if self.region is None:
            self.region = self._session.region_name
        if not self.region:
            raise ConfigurationError(
                "no AWS region: pass region='us-east-1' (or set AWS_DEFAULT_REGION)"
            )
        # Checked with an emulator too: every endpoint serves only real region names.
        known = self._session.get_available_regions("ec2")
        if inspect.isawaitable(known):
            known = await known
        if known and self.region not in known:
            raise ConfigurationError(
                f"unknown AWS region {self.region!r}; EC2 regions: {', '.join(known)}"
            )
        credentials = self._session.get_credentials()
        if inspect.isawaitable(credentials):
            credentials = await credentials
        if credentials is None:
            raise ConfigurationError(
                "no AWS credentials found: configure them (aws configure, AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or aws_profile=..., or an instance role)"
            )
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            self._session.client(
                "ec2", region_name=self.region, endpoint_url=self.options.endpoint_url
            )
        )
        image = await self._image()
        root_device, root_size = await self._root_volume(image)
        public_key = self._client_key()
        groups = self.options.security_group_ids or [await self._create_security_group()]
        tags = session_tags(
            self.session_id,
            owner=_owner(),
            expires_at=datetime.datetime.now(datetime.UTC)
            + datetime.timedelta(seconds=self.lifetime),
        )
        user_data = render_user_data(
            public_key=public_key,
            user=self.options.user,
            max_lifetime=self.lifetime,
            idle_timeout=self.idle,
            work_dir=self.options.work_dir or ".remote_futures",
        )
        plan = LaunchPlan(
            image_id=image,
            instance_type=self.options.instance_type,
            count=self.options.instances,
            user_data=user_data,
            tags=tags,
            security_group_ids=groups,
            key_name=self.options.key_name,
            spot=self.options.spot,
            spot_max_price=self.options.spot_max_price,
            volume_size_gb=self.options.volume_size_gb or root_size,
            root_device_name=root_device,
        )
        records = await self._launch(plan)
        for record in records:
            self.instances[record["InstanceId"]] = _Instance(record["InstanceId"], record)
        log.info("%s: launched %s", self.describe, ", ".join(self.instances))
        await self._wait_running()
        await self._on_every_instance(self._connect)

    async def prepare(self) -> None:
        """Upload the worker and sync the environment on every instance, in parallel."""

        async def prepare_one(instance: _Instance) -> None:
            assert instance.transport is not None
            await instance.transport.prepare()

        await self._on_every_instance(prepare_one)

    async def _on_every_instance(self, step: Callable[[_Instance], Awaitable[None]]) -> None:
        """Run ``step`` on every instance at once; raise the first failure once all have ended.

        Every instance's step runs to its end even when another fails, so that no half-made
        connection is abandoned mid-handshake (``close`` tears them all down afterwards)."""
        errors: list[BaseException] = []

        async def one(instance: _Instance) -> None:
            try:
                await step(instance)
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for instance in self.instances.values():
                tg.start_soon(one, instance)
        if errors:
            raise errors[0]

    async def close(self) -> None:
        """Disconnect, terminate every instance and wait for it, delete what was created."""
        with anyio.CancelScope(shield=True):
            await self._teardown()

    async def _teardown(self) -> None:
        for instance in self.instances.values():
            if instance.transport is not None:
                with anyio.move_on_after(10), contextlib.suppress(Exception):
                    await instance.transport.close()
        try:
            if self._client is not None:
                await self._terminate_and_wait()
        finally:
            if self._stack is not None:
                with contextlib.suppress(Exception):
                    await self._stack.aclose()
                self._stack = None
                self._client = None
            if self._key_dir is not None:
                shutil.rmtree(self._key_dir, ignore_errors=True)
                self._key_dir = None
            _live.discard(self)

    async def _terminate_and_wait(self) -> None:
        ids = list(self._launched)
        if ids and not self._terminated:
            try:
                await self._client.terminate_instances(InstanceIds=ids)
            except Exception as exc:
                log.error("terminating %s failed: %s; run `remote-futures sweep ec2 --region %s`",
                          ", ".join(ids), exc, self.region)
                raise TransportError(f"terminating {', '.join(ids)} failed: {exc}") from exc
            self._terminated = True
            log.info("%s: terminating %s", self.describe, ", ".join(ids))
            with anyio.move_on_after(600):
                while True:
                    states = await self._states(ids)
                    if all(s == "terminated" for s, _ in states.values()):
                        break
                    await anyio.sleep(2 if self.options.endpoint_url is None else 0.2)
        if self.security_group_id is not None:
            group, self.security_group_id = self.security_group_id, None
            with anyio.move_on_after(120):
                while True:
                    try:
                        await self._client.delete_security_group(GroupId=group)
                        break
                    except Exception as exc:
                        if _error_code(exc) != "DependencyViolation":
                            log.warning("deleting security group %s failed: %s", group, exc)
                            break
                    await anyio.sleep(5)

    def terminate_now(self, why: str) -> None:
        """Terminate this session's instances synchronously (exit hooks and signal handlers,
        when the event loop may be gone), and wait a bounded time for it."""
        with self._sync_lock:
            ids = list(self._launched)
            if not ids or self._terminated:
                return
            import botocore.session  # a dependency of aioboto3

            session = botocore.session.Session(profile=self.options.aws_profile)
            client = session.create_client(
                "ec2", region_name=self.region, endpoint_url=self.options.endpoint_url
            )
            print(f"remote_futures: {why}: terminating EC2 instances {', '.join(ids)}",
                  file=sys.stderr)
            client.terminate_instances(InstanceIds=ids)
            self._terminated = True
            waiter = client.get_waiter("instance_terminated")
            with contextlib.suppress(Exception):
                waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 60})

    # --- launching ----------------------------------------------------------------------------

    async def _image(self) -> str:
        if self.options.image_id is not None:
            return self.options.image_id
        try:
            described = await self._client.describe_instance_types(
                InstanceTypes=[self.options.instance_type]
            )
        except Exception as exc:
            raise self._api_error(exc, "looking up the instance type") from exc
        archs = described["InstanceTypes"][0]["ProcessorInfo"]["SupportedArchitectures"]
        parameter = default_image_parameter("arm64" if "arm64" in archs else "x86_64")
        async with self._session.client(
            "ssm", region_name=self.region, endpoint_url=self.options.endpoint_url
        ) as ssm:
            try:
                found = await ssm.get_parameter(Name=parameter)
            except Exception as exc:
                raise self._api_error(exc, f"reading the SSM parameter {parameter}") from exc
        return str(found["Parameter"]["Value"])

    async def _root_volume(self, image: str) -> tuple[str, int | None]:
        """The image's root device and size, to mark that volume DeleteOnTermination."""
        try:
            described = await self._client.describe_images(ImageIds=[image])
        except Exception as exc:
            raise self._api_error(exc, f"looking up image {image}") from exc
        if not described["Images"]:
            raise ConfigurationError(f"image {image} does not exist in {self.region}")
        found = described["Images"][0]
        root = str(found.get("RootDeviceName") or "/dev/xvda")
        for mapping in found.get("BlockDeviceMappings", []):
            if mapping.get("DeviceName") == root and "VolumeSize" in mapping.get("Ebs", {}):
                return root, int(mapping["Ebs"]["VolumeSize"])
        return root, None

    def _client_key(self) -> str:
        """The public key to install; writes a fresh private key when none was given."""
        import asyncssh

        if self.options.identity_file is not None:
            key = asyncssh.read_private_key(os.path.expanduser(self.options.identity_file))
            self.identity_file = os.path.expanduser(self.options.identity_file)
        else:
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"rf-{self.session_id}")
            self._key_dir = tempfile.mkdtemp(prefix="rf-ec2-")
            self.identity_file = os.path.join(self._key_dir, "id_ed25519")
            key.write_private_key(self.identity_file)
            os.chmod(self.identity_file, 0o600)
        return str(key.export_public_key().decode().strip())

    async def _create_security_group(self) -> str:
        subnets = [s for s in self.options.subnets if s is not None]
        try:
            if subnets:
                described = await self._client.describe_subnets(SubnetIds=subnets[:1])
                vpc = described["Subnets"][0]["VpcId"]
            else:
                vpcs = await self._client.describe_vpcs(
                    Filters=[{"Name": "isDefault", "Values": ["true"]}]
                )
                if not vpcs["Vpcs"]:
                    raise ConfigurationError(
                        f"region {self.region} has no default VPC: pass subnet_id and "
                        "security_group_ids"
                    )
                vpc = vpcs["Vpcs"][0]["VpcId"]
            tags = [{"Key": k, "Value": v} for k, v in session_tags(
                self.session_id, owner=_owner(),
                expires_at=datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(seconds=self.lifetime),
            ).items()]
            group = await self._client.create_security_group(
                GroupName=f"remote-futures-{self.session_id}",
                Description="remote_futures executor session (SSH in)",
                VpcId=vpc,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            )
            group_id: str = group["GroupId"]
            self.security_group_id = group_id
            await self._client.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[{
                    "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                    "IpRanges": [{"CidrIp": self.options.ssh_cidr,
                                  "Description": "remote_futures SSH"}],
                }],
            )
        except ConfigurationError:
            raise
        except Exception as exc:
            raise self._api_error(exc, "creating the security group") from exc
        return group_id

    async def _launch(self, plan: LaunchPlan) -> list[dict[str, Any]]:
        """RunInstances in each subnet in turn until one has room."""
        refusals: list[str] = []
        for subnet in self.options.subnets:
            request = launch_request(plan, subnet)
            try:
                response = await self._client.run_instances(**request)
            except Exception as exc:
                code = _error_code(exc)
                if code in _CAPACITY_CODES:
                    refusals.append(f"{subnet or 'default subnet'}: {code}: {_message(exc)}")
                    log.warning("no capacity in %s (%s); trying the next subnet",
                                subnet or "the default subnet", code)
                    continue
                raise self._api_error(exc, "launching instances") from exc
            records: list[dict[str, Any]] = response["Instances"]
            self._launched = [r["InstanceId"] for r in records]
            return records
        raise SubmissionError(
            f"no capacity for {plan.count} x {plan.instance_type} in {self.region}: "
            + "; ".join(refusals)
            + ("" if len(refusals) > 1 else " (give several subnet_id in other availability "
               "zones to try them in turn)")
        )

    def _api_error(self, exc: BaseException, doing: str) -> Exception:
        code = _error_code(exc)
        text = f"{doing} in {self.region} failed: {code or type(exc).__name__}: {_message(exc)}"
        if code in _QUOTA_CODES:
            return SubmissionError(
                f"{text} (an account quota: request an increase in the Service Quotas console, "
                "or use fewer/smaller instances)"
            )
        if code in _CAPACITY_CODES:
            return SubmissionError(text)
        if code in _CREDENTIAL_CODES:
            return ConfigurationError(f"{text} (check the AWS credentials)")
        if code.startswith("Invalid") or code in ("MissingParameter", "ParameterNotFound"):
            return ConfigurationError(text)
        return TransportError(text)

    async def _describe(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        described = await self._client.describe_instances(InstanceIds=list(ids))
        return {
            record["InstanceId"]: record
            for reservation in described["Reservations"]
            for record in reservation["Instances"]
        }

    async def _states(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        records = await self._describe(ids)
        return {
            iid: (r["State"]["Name"], r.get("StateReason", {}).get("Code", ""))
            for iid, r in records.items()
        }

    async def _wait_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        pause = 2.0 if self.options.endpoint_url is None else 0.1
        while True:
            records = await self._describe(list(self.instances))
            waiting = []
            for iid, record in records.items():
                self.instances[iid].record = record
                state = record["State"]["Name"]
                if state in _DEAD_STATES:
                    reason = record.get("StateReason", {}).get("Message", "")
                    raise TransportError(f"instance {iid} went {state} while booting: {reason}")
                if state != "running":
                    waiting.append(iid)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"instance(s) {', '.join(waiting)} not running after "
                    f"{self.boot_timeout:.0f} s (boot_timeout); terminated"
                )
            await anyio.sleep(pause)

    async def _connect(self, instance: _Instance) -> None:
        """Resolve, pin the host key, and connect, retrying until ``boot_timeout``."""
        deadline = time.monotonic() + self.boot_timeout
        resolve = self.options.resolve_address or default_address
        host, port = await anyio.to_thread.run_sync(resolve, dict(instance.record))
        known_hosts = self.options.known_hosts
        if known_hosts is None:
            keys = await self._console_host_keys(instance, deadline)
            assert self._key_dir is not None or self.identity_file
            where = host if port == 22 else f"[{host}]:{port}"
            directory = self._key_dir or tempfile.mkdtemp(prefix="rf-ec2-")
            self._key_dir = directory
            known_hosts = os.path.join(directory, f"known_hosts-{instance.instance_id}")
            with open(known_hosts, "w") as f:
                f.writelines(f"{where} {key}\n" for key in keys)
        options = SSHHostOptions(
            host=host,
            port=port,
            user=self.options.user,
            identity_file=self.identity_file,
            known_hosts=known_hosts,
            ssh_config=os.devnull,  # the user's ~/.ssh/config must not redirect this host
            python=self.options.python or "python3",
            env=self.options.env,
            work_dir=self.options.work_dir,
            forward_output=self.options.forward_output,
        )
        transport = _InstanceTransport(
            options, max_workers=self.max_workers, instance_id=instance.instance_id
        )
        transport.output = self.output  # the executor's output= and tags
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                with anyio.fail_after(max(1.0, deadline - time.monotonic())):
                    await transport.open()
            except (TransportError, OSError, TimeoutError) as exc:
                last = exc
                with contextlib.suppress(Exception):
                    await transport.shell.close()
                if "host key verification failed" in str(exc):
                    break  # a different key than the instance printed: never retried
                transport = _InstanceTransport(
                    options, max_workers=self.max_workers, instance_id=instance.instance_id
                )
                transport.output = self.output
                await anyio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                continue
            instance.transport = transport
            return
        raise TransportError(
            f"instance {instance.instance_id} ({host}:{port}) did not become reachable over SSH "
            f"within {self.boot_timeout:.0f} s (boot_timeout); all instances of this session "
            f"are terminated. Last error: {last}"
        )

    async def _console_host_keys(self, instance: _Instance, deadline: float) -> list[str]:
        pause = 5.0 if self.options.endpoint_url is None else 0.1
        while True:
            try:
                output = await self._client.get_console_output(
                    InstanceId=instance.instance_id, Latest=True
                )
            except Exception as exc:
                raise self._api_error(exc, "reading the console output") from exc
            text = output.get("Output") or ""
            with contextlib.suppress(ValueError):
                text = base64.b64decode(text, validate=True).decode(errors="replace")
            keys = host_keys_from_console(text)
            if keys:
                return keys
            if time.monotonic() > deadline:
                raise TransportError(
                    f"instance {instance.instance_id} printed no SSH host keys to its console "
                    f"within {self.boot_timeout:.0f} s: cannot pin its host key (give a "
                    "known_hosts file, or an image whose cloud-init prints the keys)"
                )
            await anyio.sleep(pause)

    # --- jobs ---------------------------------------------------------------------------------

    def _alive(self) -> list[_Instance]:
        return [i for i in self.instances.values() if i.dead is None and i.transport]

    async def submit(self, job: JobSpec) -> JobHandle:
        """Spread the job's tasks over the live instances (least loaded first) and start them.

        Tasks meant for an instance found gone while starting them go to the others; nothing
        that started is started twice. Raises TransportError when no instance is left."""
        await self._check_states()
        waiting = list(job.tasks)
        parts: list[_Part] = []
        try:
            while waiting:
                alive = self._alive()
                if not alive:
                    gone = "; ".join(f"{i.instance_id}: {i.dead}" for i in self.instances.values())
                    raise TransportError(f"no EC2 instance of this session is left ({gone})")
                share: dict[_Instance, list[TaskSpec]] = {}
                load = {i: i.load for i in alive}
                for task in waiting:
                    target = min(alive, key=lambda i: (load[i], i.instance_id))
                    share.setdefault(target, []).append(task)
                    load[target] += 1
                waiting = []
                for instance, tasks in share.items():
                    try:
                        parts.append(await self._start_part(job, len(parts), instance, tasks))
                    except Exception:
                        await self._check_states(force=True)
                        if instance.dead is None:
                            raise
                        waiting += tasks  # the instance is gone: place these elsewhere
        except BaseException:
            with anyio.CancelScope(shield=True):
                for part in parts:
                    assert part.instance.transport is not None
                    with contextlib.suppress(Exception):
                        await part.instance.transport.cancel(part.handle)
            raise
        handle = JobHandle(job_id=job.name, spec=job, location=job.name)
        self._parts[handle] = parts
        return handle

    async def _start_part(
        self, job: JobSpec, number: int, instance: _Instance, tasks: list[TaskSpec]
    ) -> _Part:
        assert instance.transport is not None
        spec = JobSpec(
            # Distinct per part: tasks placed again may land where another part runs.
            name=job.name if number == 0 else f"{job.name}-{number}",
            tasks=tuple(
                TaskSpec(local, t.payload, t.call_indices) for local, t in enumerate(tasks)
            ),
            resources=job.resources,
            code=job.code,
        )
        handle = await instance.transport.submit(spec)
        instance.load += len(tasks)
        return _Part(instance, handle, [t.index for t in tasks])

    async def _check_states(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_state_check < self.options.state_check_interval:
            return
        self._last_state_check = now
        live = [i.instance_id for i in self.instances.values() if i.dead is None]
        if not live:
            return
        records = await self._describe(live)
        for iid in live:
            instance = self.instances[iid]
            record = records.get(iid)
            if record is None:
                instance.dead = "no longer listed by DescribeInstances"
                continue
            state = record["State"]["Name"]
            if state in _DEAD_STATES:
                reason = record.get("StateReason", {})
                code = reason.get("Code", "")
                instance.spot_interrupted = code == "Server.SpotInstanceTermination"
                instance.dead = f"{state} ({reason.get('Message') or code or 'no reason given'})"
                log.warning("%s: instance %s is %s", self.describe, iid, instance.dead)
                if instance.transport is not None:
                    with anyio.move_on_after(2), contextlib.suppress(Exception):
                        await instance.transport.close()

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """Poll every instance that has tasks of ``jobs`` at once; the tasks of an instance that
        is gone (spot interruption, idle or lifetime guard, terminated elsewhere) end as
        ``PREEMPTED`` or ``NODE_FAIL`` so that their calls fail instead of waiting forever."""
        await self._check_states()
        by_instance: dict[_Instance, list[_Part]] = {}
        for handle in jobs:
            for part in self._parts.get(handle, []):
                by_instance.setdefault(part.instance, []).append(part)
        seen: dict[JobHandle, JobStatus] = {}
        failures: list[tuple[_Instance, BaseException]] = []

        async def one(instance: _Instance, parts: list[_Part]) -> None:
            if instance.dead is not None or instance.transport is None:
                return
            try:
                # A dead VM can leave SSH waiting for keepalives; the API answers sooner.
                with anyio.fail_after(max(30.0, 4 * self.options.state_check_interval)):
                    result = await instance.transport.poll([p.handle for p in parts])
            except Exception as exc:
                failures.append((instance, exc))
                return
            seen.update(result)

        async with anyio.create_task_group() as tg:
            for instance, parts in by_instance.items():
                tg.start_soon(one, instance, parts)
        if failures:
            await self._check_states(force=True)
            for instance, exc in failures:
                if instance.dead is None:
                    raise exc
        statuses: dict[JobHandle, JobStatus] = {}
        for handle in jobs:
            tasks: dict[int, TaskStatus] = {}
            ready: set[int] = set()
            for part in self._parts.get(handle, []):
                instance = part.instance
                if instance.dead is not None:
                    state = TaskState.PREEMPTED if instance.spot_interrupted else (
                        TaskState.NODE_FAIL
                    )
                    for local, task in enumerate(part.tasks):
                        calls = handle.spec.tasks[task].call_indices
                        if not set(calls) <= part.fetched:
                            tasks[task] = TaskStatus(
                                state, raw_state=f"instance {instance.instance_id} {instance.dead}"
                            )
                        if local not in part.ended:
                            part.ended.add(local)
                            instance.load -= 1
                    continue
                status = seen.get(part.handle)
                if status is None:
                    continue
                for local, task_status in status.tasks.items():
                    tasks[part.tasks[local]] = task_status
                    if task_status.state.terminal and local not in part.ended:
                        part.ended.add(local)
                        instance.load -= 1
                ready |= set(status.ready_calls)
            statuses[handle] = JobStatus(tasks, frozenset(ready))
        return statuses

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """Read the outcomes from the instances that ran the calls."""
        result: dict[JobHandle, dict[int, bytes]] = {handle: {} for handle in wanted}
        for handle, calls in wanted.items():
            for part in self._parts.get(handle, []):
                if part.instance.dead is not None or part.instance.transport is None:
                    continue
                mine = {c for t in part.tasks for c in handle.spec.tasks[t].call_indices}
                asked = [c for c in calls if c in mine]
                if not asked:
                    continue
                try:
                    found = await part.instance.transport.fetch_outcomes({part.handle: asked})
                except Exception:
                    await self._check_states(force=True)
                    if part.instance.dead is None:
                        raise
                    continue  # the next poll reports these tasks as ended on a lost instance
                got = found.get(part.handle, {})
                part.fetched |= set(got)
                result[handle].update(got)
        return result

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Cancel the job's tasks on the instances that run them."""
        for part in self._parts.get(job, []):
            if part.instance.dead is not None or part.instance.transport is None:
                continue
            local = None if tasks is None else [
                i for i, task in enumerate(part.tasks) if task in set(tasks)
            ]
            if local == []:
                continue
            await part.instance.transport.cancel(part.handle, local)

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """The task's stderr from its instance (or why the instance is gone)."""
        for part in self._parts.get(job, []):
            if task in part.tasks:
                if part.instance.dead is not None or part.instance.transport is None:
                    return f"(instance {part.instance.instance_id} is gone: {part.instance.dead})"
                return await part.instance.transport.stderr_tail(
                    part.handle, part.tasks.index(task), lines=lines
                )
        return ""

    async def release(self, job: JobHandle) -> None:
        """Forget the job and remove its directories on the instances still running."""
        for part in self._parts.pop(job, []):
            instance = part.instance
            instance.load -= len(part.tasks) - len(part.ended)
            if instance.dead is None and instance.transport is not None:
                await instance.transport.release(part.handle)


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)

