"""An in-process asyncssh server for SSHShell tests, after asyncssh's own ``tests/server.py``.

The server listens on 127.0.0.1 with an ephemeral port, has its own host key (listed in a
known_hosts file written for the test), accepts exactly one client key, runs each command with
the account's login shell (``/bin/sh -c`` unless a test sets ``login_shell``) on this machine
and serves SFTP on the local filesystem. Tests keep a handle on the server side of every
connection so they can drop it, and can stop the listener entirely.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

# tests/testbed_facts.py (require_testbed) is imported as a top-level module: make sure tests/
# is importable even when no conftest.py above this one puts it on sys.path.
_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

asyncssh = pytest.importorskip("asyncssh")

from remote_futures.ssh import SSHShell  # noqa: E402 - only once asyncssh is known present


@dataclasses.dataclass
class InProcessSSHServer:
    """Handles on a running in-process SSH server and the client-side files that trust it."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key: Any
    tmp: Path
    acceptor: Any = None
    #: Server-side connections currently open (in order of arrival).
    connections: list[Any] = dataclasses.field(default_factory=list)
    #: Every connection ever accepted (to count reconnects).
    accepted: int = 0
    #: Local /bin/sh processes currently running a client's command.
    processes: set[asyncio.subprocess.Process] = dataclasses.field(default_factory=set)
    #: The largest number of commands that ran at the same time.
    peak_processes: int = 0
    #: Server-side command handler tasks still running.
    handlers: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)
    #: The account's login shell: sshd runs every command as ``<login shell> -c <command>``.
    login_shell: str = "/bin/sh"
    #: Every command line the login shell was given, in order.
    received: list[str] = dataclasses.field(default_factory=list)

    def shell(self, **options: Any) -> SSHShell:
        """An SSHShell for this server: strict host keys, the accepted key, fast back-off."""
        options.setdefault("port", self.port)
        options.setdefault("user", self.user)
        options.setdefault("identity_file", str(self.client_key))
        if not options.get("insecure_no_host_key_check"):
            options.setdefault("known_hosts", str(self.known_hosts))
        options.setdefault("ssh_config", str(self.tmp / "empty_ssh_config"))
        options.setdefault("reconnect_backoff", 0.01)
        options.setdefault("connect_timeout", 10)
        return SSHShell(options.pop("host", self.host), **options)

    def drop_connections(self) -> None:
        """Abort every server-side connection, as a network failure or an sshd restart would."""
        for conn in list(self.connections):
            conn.abort()

    async def stop(self) -> None:
        """Stop listening and drop every connection: the server is gone."""
        if self.acceptor is not None:
            self.acceptor.close()
            await self.acceptor.wait_closed()
            self.acceptor = None
        self.drop_connections()
        self.kill_processes()
        if self.handlers:
            await asyncio.wait(list(self.handlers), timeout=5)

    def kill_processes(self) -> None:
        for proc in list(self.processes):
            _kill_group(proc)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's whole process group: sh's children hold its pipes open too."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _make_server_class(state: InProcessSSHServer) -> type[Any]:
    class _Server(asyncssh.SSHServer):  # type: ignore[misc]
        def connection_made(self, conn: Any) -> None:
            self._conn = conn
            state.connections.append(conn)
            state.accepted += 1

        def connection_requested(self, *args: Any) -> bool:
            return True  # allow direct-tcpip: the ProxyJump test tunnels through this server

        def connection_lost(self, exc: Exception | None) -> None:
            with contextlib.suppress(ValueError):
                state.connections.remove(self._conn)

    return _Server


def _make_process_handler(state: InProcessSSHServer) -> Any:
    """Run the client's command with the login shell's ``-c`` (as sshd does), piping
    stdin/stdout/stderr both ways."""

    async def handle(process: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.handlers.add(task)
        task.add_done_callback(state.handlers.discard)
        state.received.append(process.command or "")
        local = await asyncio.create_subprocess_exec(
            state.login_shell,
            "-c",
            process.command or "",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        state.processes.add(local)
        state.peak_processes = max(state.peak_processes, len(state.processes))

        async def feed_stdin() -> None:
            assert local.stdin is not None
            try:
                while data := await process.stdin.read(65536):
                    local.stdin.write(data)
                    await local.stdin.drain()
            except asyncssh.SignalReceived as sig:
                # SSHShell asks a timed-out command to stop with a "signal" request.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(local.pid, getattr(signal, f"SIG{sig.signal}", signal.SIGTERM))
            except (OSError, asyncssh.Error):
                pass
            finally:
                local.stdin.close()

        async def copy(src: asyncio.StreamReader | None, dst: Any) -> None:
            assert src is not None
            while data := await src.read(65536):
                dst.write(data)

        async def run_to_exit() -> int:
            await asyncio.gather(
                copy(local.stdout, process.stdout), copy(local.stderr, process.stderr)
            )
            return await local.wait()

        feeder = asyncio.ensure_future(feed_stdin())
        work = asyncio.ensure_future(run_to_exit())
        closed = asyncio.ensure_future(process.wait_closed())
        try:
            await asyncio.wait([work, closed], return_when=asyncio.FIRST_COMPLETED)
            if work.done() and work.exception() is None:
                process.exit(work.result())
            else:
                process.close()  # the client went away (or the copy failed)
        except Exception:
            pass
        finally:
            state.processes.discard(local)
            _kill_group(local)
            for pending in (feeder, work, closed):
                pending.cancel()
            await asyncio.gather(feeder, work, closed, return_exceptions=True)
            # Reap the child on this loop, or its transport complains after the loop closed.
            # (On 3.11, wait() also waits for the pipes: hence killing the whole group.)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(local.wait(), 5)

    return handle


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[Any, Path, Any]:
    """(host key, client key path, client key) generated for this test only."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(client_key_path))
    client_key.write_public_key(str(tmp_path / "id_ed25519.pub"))
    return host_key, client_key_path, client_key


@pytest_asyncio.fixture
async def ssh_server(
    tmp_path: Path, ssh_keys: tuple[Any, Path, Any]
) -> AsyncIterator[InProcessSSHServer]:
    """A running in-process SSH server that trusts only this test's client key."""
    host_key, client_key_path, client_key = ssh_keys
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(client_key.export_public_key())
    (tmp_path / "empty_ssh_config").write_text("")
    state = InProcessSSHServer(
        host="127.0.0.1",
        port=0,
        user=getpass.getuser(),
        client_key=client_key_path,
        known_hosts=tmp_path / "known_hosts",
        host_key=host_key,
        tmp=tmp_path,
    )
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_factory=_make_server_class(state),
        server_host_keys=[host_key],
        authorized_client_keys=str(authorized),
        process_factory=_make_process_handler(state),
        sftp_factory=True,
        encoding=None,
    )
    state.acceptor = acceptor
    state.port = acceptor.get_port()
    public = host_key.export_public_key().decode().strip()
    state.known_hosts.write_text(f"[127.0.0.1]:{state.port} {public}\n")
    try:
        yield state
    finally:
        await state.stop()
