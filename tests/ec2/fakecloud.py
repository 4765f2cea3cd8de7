"""A fake cloud for the ``ec2`` transport: moto's EC2 server plus a local "hypervisor".

* :class:`MotoServer`: moto's EC2/SSM server on 127.0.0.1 (one per test process, reset per
  test), with moto's key-pair, AMI and instance-type validation switched on.
* :class:`Hypervisor`: watches moto for instances of the transport and "boots" each running one
  on this machine: a directory as its disk, a fresh SSH host key, the instance's **own user
  data fetched back from moto** run with bash (so the key install, the lifetime guard, the
  host-key console print and the idle watchdog are the real script), then an asyncssh server on
  127.0.0.1:<port> that accepts only keys in the ``authorized_keys`` the user data wrote. Every
  exec runs as a local subprocess in the VM's home. A fake ``shutdown`` on the VM's PATH
  terminates (or stops, per ``instanceInitiatedShutdownBehavior``) the instance in moto, with
  ``shutdown -h +N`` scaled to N seconds. A terminated instance's server and processes go away.
* The instance's console (what the user data printed) is served through an aiobotocore
  ``after-call.ec2.GetConsoleOutput`` hook, since moto returns a canned boot log.
* :func:`install_network_guard`: any socket connection to a non-loopback address fails loudly.
  moto hands out real-looking public IPs, which must never be dialled.

Everything a client needs is on disk under the cloud's directory (``<vm>/port``,
``<vm>/console``), so a client in another process (the SIGKILL test) can use it too, through
:func:`resolve_address` and :func:`console_hook` with ``RF_FAKE_CLOUD`` set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

for _name in (
    "MOTO_ENABLE_KEYPAIR_VALIDATION",
    "MOTO_ENABLE_AMI_VALIDATION",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION",
):
    os.environ.setdefault(_name, "1")  # before moto is imported: off by default there

import asyncssh  # noqa: E402
import boto3  # noqa: E402

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
MANAGED_TAG = "remote-futures:managed-by"

_FAKE_SHUTDOWN = """#!/bin/sh
# A fake shutdown(8) for a fake VM: records the call, then terminates the instance in moto
# ("+N" waits N seconds instead of minutes; "-c" cancels a pending one).
echo "shutdown $*" >> "$RF_VM_DIR/shutdown.log"
when=now
for arg in "$@"; do case "$arg" in now) when=now ;; +*) when="${arg#+}" ;; -c) \
  [ -f "$RF_VM_DIR/shutdown.pid" ] && kill "$(cat "$RF_VM_DIR/shutdown.pid")"; exit 0 ;; esac; done
if [ "$when" = now ]; then exec {python} {helper}; fi
( sleep "$when"; exec {python} {helper} ) </dev/null >/dev/null 2>&1 &
echo $! > "$RF_VM_DIR/shutdown.pid"
"""

_HELPER = """
import os, boto3
ec2 = boto3.client("ec2", region_name=os.environ["RF_REGION"],
                   endpoint_url=os.environ["RF_MOTO_ENDPOINT"],
                   aws_access_key_id="testing", aws_secret_access_key="testing")
iid = os.environ["RF_INSTANCE_ID"]
how = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
if how["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate":
    ec2.terminate_instances(InstanceIds=[iid])
else:
    ec2.stop_instances(InstanceIds=[iid])
with open(os.path.join(os.environ["RF_VM_DIR"], "shut-down"), "w") as f:
    f.write("yes")
"""


# --- the network guard ------------------------------------------------------------------------


def _allowed(address: Any) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: resolving it could reach anything


class _Patcher:
    """``monkeypatch.setattr`` for a process with no pytest (a client subprocess)."""

    @staticmethod
    def setattr(target: Any, name: str, value: Any) -> None:
        setattr(target, name, value)


def install_network_guard(monkeypatch: Any = None) -> None:
    """Make every connect() to a non-loopback address raise (and say so loudly)."""
    monkeypatch = monkeypatch or _Patcher()
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if not _allowed(address):
            message = f"NETWORK GUARD: a test tried to connect to {address!r} (not loopback)"
            print(message, file=sys.stderr)
            raise AssertionError(message)

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# --- moto -------------------------------------------------------------------------------------


class MotoServer:
    """moto's server on loopback; one per test process (:func:`moto_server`), reset per test."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        _, port = self._server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{port}"

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def client(self, service: str = "ec2") -> Any:
        return boto3.client(
            service, region_name=REGION, endpoint_url=self.endpoint,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self._server.stop()


_moto: MotoServer | None = None


def moto_server() -> MotoServer:
    global _moto
    if _moto is None:
        _moto = MotoServer()
    return _moto


# --- the hypervisor ---------------------------------------------------------------------------


class _VMServer(asyncssh.SSHServer):
    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def begin_auth(self, username: str) -> bool:
        keys = self.vm.home / ".ssh" / "authorized_keys"
        if keys.exists():
            self._conn.set_authorized_keys(str(keys))  # what the user data installed
        return True

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self.vm.connections.add(conn)
        if self.vm.server is None and self.vm.destroyed:
            conn.abort()

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False


class VM:
    """One booted fake instance."""

    def __init__(self, cloud: Hypervisor, instance_id: str) -> None:
        self.cloud = cloud
        self.instance_id = instance_id
        self.dir = cloud.root / instance_id
        self.home = self.dir / "home"
        self.etc = self.dir / "etc-ssh"
        self.bin = self.dir / "bin"
        self.console = self.dir / "console"
        self.server: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.destroyed = False
        self.user_data_rc: int | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.home),
            PATH=f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            RF_VM_ID=self.instance_id,  # marks every process of this VM, to kill them all
            RF_VM_DIR=str(self.dir),
            RF_HOME=str(self.home),
            RF_ETC_SSH=str(self.etc),
            RF_CONSOLE=str(self.console),
            RF_INSTANCE_ID=self.instance_id,
            RF_MOTO_ENDPOINT=self.cloud.endpoint,
            RF_REGION=REGION,
        )
        env.pop("VIRTUAL_ENV", None)
        return env

    async def boot(self, user_data: str) -> None:
        for path in (self.home, self.etc, self.bin):
            path.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(str(self.etc / "ssh_host_ed25519_key"))
        host_key.write_public_key(str(self.etc / "ssh_host_ed25519_key.pub"))
        helper = self.dir / "terminate_self.py"
        helper.write_text(_HELPER)
        shutdown = self.bin / "shutdown"
        shutdown.write_text(
            _FAKE_SHUTDOWN.replace("{python}", sys.executable).replace("{helper}", str(helper))
        )
        shutdown.chmod(0o755)
        self.console.write_text("Linux version 6.1 (fake)\ncloud-init: running user data\n")
        (self.dir / "user-data").write_text(user_data)
        with open(self.dir / "user-data.log", "wb") as log:
            process = await asyncio.create_subprocess_exec(
                "bash", str(self.dir / "user-data"), cwd=self.dir, env=self.env(),
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )
            self.user_data_rc = await process.wait()
        self.server = await asyncssh.listen(
            "127.0.0.1", 0,
            server_factory=lambda: _VMServer(self),
            server_host_keys=[host_key],
            process_factory=self._exec,
            encoding=None,
            sftp_factory=lambda chan: _VMSFTP(chan, self.home),
            allow_scp=False,
        )
        port = self.server.sockets[0].getsockname()[1]
        (self.dir / "port.tmp").write_text(str(port))
        (self.dir / "port.tmp").rename(self.dir / "port")

    async def _exec(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        # The client sends all input up front and then EOF (or nothing): read it, run, reply.
        try:
            data = await process.stdin.read()
            child = await asyncio.create_subprocess_exec(
                "bash", "-c", process.command or "true", cwd=self.home, env=self.env(),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await child.communicate(data or b"")
            process.stdout.write(out)
            process.stderr.write(err)
            code = child.returncode or 0
            process.exit(code if code >= 0 else 128 - code)
        except Exception as exc:
            process.stderr.write(f"fake VM: {exc!r}\n".encode())
            process.exit(255)

    async def destroy(self) -> None:
        """A terminated VM: its address stops answering and its connections drop."""
        self.destroyed = True
        if self.server is not None:
            self.server.close()
            self.server = None
            (self.dir / "port").unlink(missing_ok=True)
        for conn in list(self.connections):
            conn.abort()
        kill_marked(self.instance_id)
        (self.dir / "destroyed").write_text("yes")


class _VMSFTP(asyncssh.SFTPServer):
    """SFTP with relative paths (and the initial directory) in the VM's home."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], home: Path) -> None:
        super().__init__(chan)
        self._home = os.fsencode(home)

    def map_path(self, path: bytes) -> bytes:
        if not path.startswith(b"/"):
            path = os.path.join(self._home, path)
        return path

    def reverse_map_path(self, path: bytes) -> bytes:
        return path


def kill_marked(instance_id: str) -> None:
    """Kill every process carrying the VM's marker (the watchdog, workers, sleepers)."""
    marker = f"RF_VM_ID={instance_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


class Hypervisor:
    """Boots every running instance of the transport found in moto; destroys terminated ones."""

    def __init__(self, moto: MotoServer, root: Path) -> None:
        self.moto = moto
        self.endpoint = moto.endpoint
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "cloud.json").write_text(json.dumps({"endpoint": self.endpoint}))
        self.vms: dict[str, VM] = {}
        self._ec2 = moto.client()
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-hypervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._watch())

    async def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                described = await asyncio.to_thread(
                    self._ec2.describe_instances,
                    Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": ["remote-futures"]}],
                )
            except Exception:
                await asyncio.sleep(0.1)
                continue
            for reservation in described["Reservations"]:
                for record in reservation["Instances"]:
                    iid, state = record["InstanceId"], record["State"]["Name"]
                    vm = self.vms.get(iid)
                    if state == "running" and vm is None:
                        vm = self.vms[iid] = VM(self, iid)
                        raw = await asyncio.to_thread(
                            self._ec2.describe_instance_attribute,
                            InstanceId=iid, Attribute="userData",
                        )
                        text = base64.b64decode(raw["UserData"]["Value"]).decode()
                        try:
                            await vm.boot(text)
                        except Exception as exc:  # a broken VM: the client must notice
                            print(f"fake VM {iid} failed to boot: {exc!r}", file=sys.stderr)
                    elif (
                        state in ("shutting-down", "terminated", "stopping", "stopped")
                        and vm is not None
                        and vm.server is not None
                    ):
                        await vm.destroy()
            await asyncio.sleep(0.05)
        for vm in self.vms.values():
            await vm.destroy()

    def vm(self, instance_id: str, timeout: float = 30) -> VM:
        deadline = time.monotonic() + timeout
        while instance_id not in self.vms or not (self.vms[instance_id].dir / "port").exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"{instance_id} was never booted")
            time.sleep(0.05)
        return self.vms[instance_id]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for iid in list(self.vms):
            kill_marked(iid)


# --- the client side: addresses and console, from disk ----------------------------------------


def _cloud_root() -> Path:
    return Path(os.environ["RF_FAKE_CLOUD"])


def resolve_address(instance: dict[str, Any]) -> tuple[str, int]:
    """Map an instance to its fake VM's port on 127.0.0.1 (never to moto's IP addresses)."""
    vm_dir = _cloud_root() / instance["InstanceId"]
    deadline = time.monotonic() + 30
    while not (vm_dir / "port").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"fake VM {instance['InstanceId']} never booted")
        time.sleep(0.05)
    return "127.0.0.1", int((vm_dir / "port").read_text())


def console_hook(session: Any) -> None:
    """Register on an aioboto3 session: GetConsoleOutput returns what the VM printed."""

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        iid = parsed.get("InstanceId")
        if not iid:
            return
        console = _cloud_root() / iid / "console"
        text = console.read_text() if console.exists() else ""
        parsed["Output"] = base64.b64encode(text.encode()).decode()

    session.events.register("after-call.ec2.GetConsoleOutput", rewrite)


# --- one fake cloud per test ------------------------------------------------------------------


class Cloud:
    """What a test gets: moto, the hypervisor, and executor options that use both."""

    def __init__(
        self, moto: MotoServer, hypervisor: Hypervisor, hooks: list[Any] | None = None
    ) -> None:
        #: The session hooks the transport runs (append to stage API behaviour).
        self.hooks = hooks if hooks is not None else []
        self.moto = moto
        self.hypervisor = hypervisor
        self.endpoint = moto.endpoint
        self.root = hypervisor.root
        self.ec2 = moto.client()

    def options(self, **overrides: Any) -> dict[str, Any]:
        """``RemoteExecutor("ec2", **cloud.options())``: fast, with the worker's own Python."""
        base: dict[str, Any] = {
            "region": REGION,
            "endpoint_url": self.endpoint,
            "resolve_address": resolve_address,
            "instances": 2,
            "instance_type": "t3.small",
            "python": sys.executable,
            "env": "off",
            "boot_timeout": "60s",
            "state_check_interval": 0.5,
        }
        base.update(overrides)
        return base

    def instances(self, *states: str) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["remote-futures"]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        described = self.ec2.describe_instances(Filters=filters)
        return [i for r in described["Reservations"] for i in r["Instances"]]


def start_cloud(request: Any) -> Cloud:
    """Start (or reset) moto, a hypervisor in this test's tmp dir, the guard and the hooks;
    everything is undone at the test's teardown."""
    from remote_futures.transports import ec2

    monkeypatch = request.getfixturevalue("monkeypatch")
    tmp_path_factory = request.getfixturevalue("tmp_path_factory")
    install_network_guard(monkeypatch)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        # Never ask the instance metadata service (a link-local address) for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    moto = moto_server()
    moto.reset()
    root = tmp_path_factory.mktemp("cloud")
    monkeypatch.setenv("RF_FAKE_CLOUD", str(root))
    hypervisor = Hypervisor(moto, root)
    request.addfinalizer(hypervisor.stop)
    hooks = [console_hook]
    monkeypatch.setattr(ec2, "_session_hooks", hooks)
    return Cloud(moto, hypervisor, hooks)


class FakeHTTP:
    """Enough of an HTTP response for a ``before-call`` hook to fake an API error."""

    status_code = 400

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}


def api_error(code: str, message: str) -> tuple[FakeHTTP, dict[str, Any]]:
    """What a ``before-call`` hook returns to make the call fail with ``code``."""
    return FakeHTTP(), {"Error": {"Code": code, "Message": message}}
