"""A :class:`~remote_futures.shell.Shell` on a host reached over SSH, built on asyncssh.

One :class:`SSHShell` holds **one** SSH connection and runs every command as a channel on it,
at most ``max_channels`` at a time (sshd refuses channels beyond its ``MaxSessions``, 10 by
default, and the long-lived SFTP client permanently holds one). Every command runs under
``/bin/sh``, whatever the account's login shell. Files move over that one SFTP client, opened
lazily. Keepalives detect a dead peer; a dropped connection is re-established by the next
operation, one reconnect at a time, and an operation cut by the drop is run again once when it
may be (:meth:`SSHShell.run`'s ``retry``).

Connecting (the SSH config, ProxyJump, the strict host-key policy and back-off) is
:mod:`remote_futures.ssh_connect`'s :class:`~remote_futures.ssh_connect.Connector`.

asyncssh is an optional dependency (``pip install 'remote_futures[ssh]'``): this module imports
without it, and constructing an :class:`SSHShell` raises an actionable :class:`ImportError`.
asyncssh is asyncio-only, so an :class:`SSHShell` must be used on anyio's asyncio backend.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio

from .errors import ConfigurationError, TransportError
from .shell import CommandResult, Shell, posix_command
from .ssh_connect import Connector, _abort_all, _asyncssh, _describe
from .ssh_connect import _parse_jump as _parse_jump  # importable from here, where it lived

if TYPE_CHECKING:
    import asyncssh

__all__ = ["SSHShell"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Concurrent SFTP requests in :meth:`SSHShell.read_files`. They are requests on the one SFTP
#: channel, not channels, so MaxSessions does not apply; this bounds open remote handles.
_SFTP_PARALLEL = 16


class SSHShell(Shell):
    """Runs commands and moves files on one host over a single asyncssh connection.

    ``host`` may be an alias from the OpenSSH client config (``~/.ssh/config`` by default, or
    ``ssh_config``): its ``HostName``, ``User``, ``Port``, ``IdentityFile``, ``ProxyJump`` and
    the like apply, and explicit arguments override them.

    Host keys are checked strictly against ``known_hosts`` (default: the files the SSH config
    names with ``UserKnownHostsFile``, else ``~/.ssh/known_hosts``). An unknown host or a
    changed key raises :class:`~remote_futures.errors.TransportError` explaining how to fix it;
    ``insecure_no_host_key_check=True`` disables the check (and logs a warning on every
    connection).

    Use it as an async context manager, or call :meth:`open` / :meth:`close`; an operation on a
    shell that was never opened connects on demand.
    """

    def __init__(
        self,
        host: str,
        *,
        port: int | None = None,
        user: str | None = None,
        identity_file: str | None = None,
        known_hosts: str | None = None,
        insecure_no_host_key_check: bool = False,
        ssh_config: str | None = None,
        connect_timeout: float = 30,
        keepalive_interval: float = 15,
        max_channels: int = 8,
        reconnect_attempts: int = 5,
        reconnect_backoff: float = 0.5,
    ) -> None:
        """Describe the connection; nothing is opened until :meth:`open` or a first operation.

        ``reconnect_attempts`` bounds the connection attempts made each time the connection has
        to be (re)established; the pause between attempts starts at ``reconnect_backoff``
        seconds and doubles. ``max_channels`` bounds concurrent commands on the connection:
        keep it below the server's ``MaxSessions`` minus one (the SFTP client's channel).
        """
        _asyncssh()  # fail at construction, not at the first command, when asyncssh is missing
        if not host:
            raise ConfigurationError("SSHShell needs a host name")
        if max_channels < 1:
            raise ConfigurationError(f"max_channels must be at least 1, not {max_channels}")
        if reconnect_attempts < 1:
            raise ConfigurationError(
                f"reconnect_attempts must be at least 1, not {reconnect_attempts}"
            )
        if reconnect_backoff < 0:
            raise ConfigurationError(f"reconnect_backoff must be >= 0, not {reconnect_backoff}")
        if known_hosts is not None and insecure_no_host_key_check:
            raise ConfigurationError(
                "known_hosts and insecure_no_host_key_check=True contradict each other"
            )
        self.host = host
        self.port = port
        self.user = user
        self.identity_file = os.path.expanduser(identity_file) if identity_file else None
        self.known_hosts = os.path.expanduser(known_hosts) if known_hosts else None
        self.insecure_no_host_key_check = insecure_no_host_key_check
        self.ssh_config = os.path.expanduser(ssh_config) if ssh_config else None
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self.max_channels = max_channels
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff = reconnect_backoff
        self._connector = Connector(
            host,
            port=port,
            user=user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts,
            insecure_no_host_key_check=insecure_no_host_key_check,
            ssh_config=self.ssh_config,
            connect_timeout=connect_timeout,
            keepalive_interval=keepalive_interval,
            reconnect_attempts=reconnect_attempts,
            reconnect_backoff=reconnect_backoff,
        )
        # The best guess until the SSH config is resolved at connection time.
        self.label = self._connector.label

        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_conn: asyncssh.SSHClientConnection | None = None
        # ProxyJump connections carrying self._conn, outermost first.
        self._jumps: list[asyncssh.SSHClientConnection] = []
        self._home: str | None = None
        self._closed = False
        # Counts finished connection cycles, to tell tasks that waited for the lock what happened
        # meanwhile; the error of the last cycle if it failed.
        self._connect_cycles = 0
        self._connect_error: TransportError | None = None
        # One (re)connect at a time: concurrent operations that all see the drop must not each
        # open a connection of their own.
        self._connect_lock = anyio.Lock()
        self._sftp_lock = anyio.Lock()
        self._channels = anyio.Semaphore(max_channels)

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect now (with the bounded retries) instead of at the first operation."""
        await self._connection()

    async def close(self) -> None:
        """Close the SFTP client and the connection; later operations raise TransportError."""
        self._closed = True
        async with self._connect_lock:
            conn, self._conn = self._conn, None
            sftp, self._sftp, self._sftp_conn = self._sftp, None, None
            jumps, self._jumps = self._jumps, []
        if sftp is not None:
            sftp.exit()
        for each in [conn, *reversed(jumps)]:
            if each is not None:
                each.close()
                # A dead peer cannot acknowledge the close; do not let shutdown hang on it.
                with anyio.move_on_after(5):
                    await each.wait_closed()

    # -- commands ----------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> CommandResult:
        """Run ``command`` with the remote ``/bin/sh``; never raises on a non-zero exit.

        sshd starts every command with the user's login shell, which may be tcsh or csh: it
        is only asked to ``exec /bin/sh`` on the command (:func:`~remote_futures.shell.
        posix_command`), so POSIX command lines work for every account.

        ``timeout`` bounds the command's run time (connecting is bounded separately by
        ``connect_timeout`` and ``reconnect_attempts``); when it expires the remote process is
        sent SIGTERM (where sshd supports signals), its channel is closed, and
        :class:`TransportError` is raised.

        If the connection drops while the command runs, it is reconnected and the command is
        run **again** once when ``retry`` is true. Pass ``retry=False`` for commands that must
        not run twice (``sbatch``, ``qsub``, anything with side effects that are not
        idempotent): a drop then raises :class:`TransportError` and the caller decides, since
        the command may or may not have run. A command that never started (its channel could
        not be opened on a dead connection) is always retried.
        """
        ssh = _asyncssh()

        async def attempt(conn: asyncssh.SSHClientConnection) -> CommandResult:
            async with self._channels:
                process: asyncssh.SSHClientProcess[bytes] | None = None
                try:
                    # The timeout covers opening the channel too: on a connection that died
                    # silently, that waits until keepalive notices.
                    with anyio.fail_after(timeout):
                        process = await conn.create_process(
                            posix_command(command),
                            input=input,
                            # No input: give the command an immediate EOF, like LocalShell's
                            # DEVNULL, so a command that reads stdin cannot hang. (asyncssh
                            # skips empty input and would leave stdin open: DEVNULL then too.)
                            stdin=ssh.PIPE if input else ssh.DEVNULL,
                            encoding=None,
                        )
                        done = await process.wait()
                except TimeoutError:
                    if process is not None:
                        _stop(process)
                    raise TransportError(
                        f"command timed out after {timeout} s on {self.label}: {command}"
                    ) from None
                except BaseException:
                    if process is not None:
                        _stop(process)  # cancelled or failed: do not leave the channel open
                    raise
                if done.returncode is None:
                    # The channel closed without an exit status or signal: on OpenSSH this
                    # means the connection went away under the command.
                    if conn.is_closed():
                        raise ssh.ConnectionLost("connection closed during the command")
                    raise TransportError(
                        f"{self.label} closed the channel without an exit status: {command}"
                    )
                return CommandResult(
                    command,
                    done.returncode,
                    _text(done.stdout),
                    _text(done.stderr),
                )

        return await self._call(f"running {_abridged(command)!r}", attempt, retry=retry)

    # -- files -------------------------------------------------------------------------------

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` atomically over SFTP.

        The data goes to a temporary name in the same directory, gets ``mode``, and is renamed
        over ``path`` with the POSIX rename extension (atomic, replaces an existing file).
        Servers without that extension get a plain rename, preceded by a removal of an existing
        ``path`` (SFTPv3 rename refuses to overwrite): atomic only for new files there.
        Retrying after a dropped connection is safe: every attempt uses a fresh temporary name
        (and removes those of earlier attempts).
        """
        ssh = _asyncssh()
        directory, name = posixpath.split(path)
        leftovers: list[str] = []  # temporary files of attempts cut short by a dropped connection

        async def attempt(conn: asyncssh.SSHClientConnection) -> None:
            sftp = await self._sftp_client(conn)
            for old in leftovers:
                await _remove_quietly(sftp, old)
            tmp = posixpath.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
            leftovers.append(tmp)
            try:
                async with sftp.open(tmp, "wb", attrs=ssh.SFTPAttrs(permissions=mode)) as f:
                    await f.write(data)
                # Explicitly: the mode given at creation is filtered by the server's umask.
                await sftp.chmod(tmp, mode)
                try:
                    await sftp.posix_rename(tmp, path)
                except ssh.SFTPOpUnsupported:
                    try:
                        await sftp.rename(tmp, path)
                    except ssh.SFTPFailure:
                        await sftp.remove(path)
                        await sftp.rename(tmp, path)
                leftovers.remove(tmp)
            except ssh.SFTPError as exc:
                mapped = _sftp_error(exc, path, "writing", self.label)
                if mapped is None:
                    raise  # the SFTP channel or the connection dropped: _call handles it
                await _remove_quietly(sftp, tmp)
                raise mapped from exc
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await _remove_quietly(sftp, tmp)
                raise

        await self._call(f"writing {path}", attempt, retry=True)

    async def read_file(self, path: str) -> bytes:
        """Return the contents of ``path``; raise :class:`FileNotFoundError` if it is missing."""
        ssh = _asyncssh()

        async def attempt(conn: asyncssh.SSHClientConnection) -> bytes:
            sftp = await self._sftp_client(conn)
            try:
                async with sftp.open(path, "rb") as f:
                    data: bytes = await f.read()
            except ssh.SFTPError as exc:
                mapped = _sftp_error(exc, path, "reading", self.label)
                if mapped is None:
                    raise  # the SFTP channel or the connection dropped: _call handles it
                raise mapped from exc
            return data

        return await self._call(f"reading {path}", attempt, retry=True)

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Read many files concurrently over the one SFTP client; missing ones are left out."""
        found: dict[str, bytes] = {}
        errors: list[Exception] = []
        limiter = anyio.CapacityLimiter(_SFTP_PARALLEL)

        async def one(path: str, scope: anyio.CancelScope) -> None:
            async with limiter:
                try:
                    found[path] = await self.read_file(path)
                except FileNotFoundError:
                    pass
                except Exception as exc:
                    # One failure (the host is unreachable, say) fails the batch: stop the rest
                    # and raise it as itself, not wrapped in an ExceptionGroup.
                    errors.append(exc)
                    scope.cancel()

        async with anyio.create_task_group() as tg:
            for path in dict.fromkeys(paths):  # a path asked twice is read once
                tg.start_soon(one, path, tg.cancel_scope)
        if errors:
            raise errors[0]
        # Keep the caller's order (the task group finishes in any order).
        return {path: found[path] for path in paths if path in found}

    async def home(self) -> str:
        """The remote user's home directory: where the SFTP session starts, else ``$HOME``."""
        if self._home is None:
            ssh = _asyncssh()

            async def attempt(conn: asyncssh.SSHClientConnection) -> str:
                sftp = await self._sftp_client(conn)
                path: str = await sftp.realpath(".")
                return path

            try:
                self._home = await self._call("finding the home directory", attempt, retry=True)
            except ssh.SFTPError:
                # A chrooted or unusual SFTP server: ask the login shell instead.
                self._home = await super().home()
        return self._home

    # -- the connection ----------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        attempt: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
        *,
        retry: bool,
    ) -> T:
        """Run ``attempt`` on the live connection; after a drop, reconnect and maybe rerun it."""
        ssh = _asyncssh()
        conn = await self._connection()
        try:
            return await attempt(conn)
        except Exception as exc:
            if not self._lost(exc, conn):
                if isinstance(exc, ssh.ChannelOpenError):
                    raise self._refused(exc) from exc
                raise
            first = exc
        # A channel that could not be opened never ran anything: rerunning is always safe.
        if not retry and not isinstance(first, ssh.ChannelOpenError):
            raise TransportError(
                f"connection to {self.label} lost while {what}; not retried because the "
                f"command may not be idempotent (it may or may not have run): {_describe(first)}"
            ) from first
        logger.warning(
            "connection to %s lost while %s (%s); reconnecting", self.label, what, _describe(first)
        )
        conn = await self._reconnect(conn, connection_lost=self._connection_lost(first, conn))
        try:
            return await attempt(conn)
        except Exception as exc:
            if not self._lost(exc, conn):
                if isinstance(exc, ssh.ChannelOpenError):
                    raise self._refused(exc) from exc
                raise
            raise TransportError(
                f"connection to {self.label} lost again while {what} after reconnecting: "
                f"{_describe(exc)}"
            ) from exc

    def _refused(self, exc: BaseException) -> TransportError:
        """A channel refused on a live connection: most often sshd's MaxSessions."""
        return TransportError(
            f"{self.label} refused a new SSH channel ({_describe(exc)}); if its sshd "
            f"MaxSessions is below max_channels + 1 = {self.max_channels + 1} (one for SFTP), "
            "lower max_channels"
        )

    def _lost(self, exc: BaseException, conn: asyncssh.SSHClientConnection) -> bool:
        """Whether ``exc`` means the connection (or the SFTP channel on it) went away."""
        ssh = _asyncssh()
        if isinstance(exc, TransportError):  # already explained (a timeout, a refusal)
            return False
        if self._connection_lost(exc, conn):
            return True
        return isinstance(exc, (ssh.SFTPConnectionLost, ssh.SFTPNoConnection))

    def _connection_lost(self, exc: BaseException, conn: asyncssh.SSHClientConnection) -> bool:
        ssh = _asyncssh()
        if conn.is_closed():
            return True
        if isinstance(exc, ssh.ChannelOpenError):
            # On a live connection this is the server refusing a channel (MaxSessions, say):
            # not a drop, and reconnecting would not help.
            return False
        # ConnectionError covers BrokenPipeError and ConnectionResetError; it excludes
        # FileNotFoundError and friends, which are answers, not failures.
        return isinstance(exc, (ssh.DisconnectError, ConnectionError))

    async def _connection(self) -> asyncssh.SSHClientConnection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        return await self._reconnect(conn, connection_lost=True)

    async def _reconnect(
        self, dead: asyncssh.SSHClientConnection | None, *, connection_lost: bool
    ) -> asyncssh.SSHClientConnection:
        """Replace ``dead`` with a new connection, unless another task already did."""
        cycle = self._connect_cycles
        async with self._connect_lock:
            if self._closed:
                raise TransportError(f"the SSH shell for {self.label} is closed")
            current = self._conn
            if not connection_lost and current is dead and current is not None:
                # Only the SFTP channel died: reopen it on the next use, keep the connection.
                self._forget_sftp(current)
                return current
            if current is not None and current is not dead and not current.is_closed():
                return current  # another task reconnected while this one waited for the lock
            failed = self._connect_error
            if cycle != self._connect_cycles and failed is not None:
                # A full round of attempts failed while this task waited: share its verdict
                # rather than queueing another round of back-off behind it.
                raise TransportError(str(failed)) from failed.__cause__
            self._conn = None
            self._forget_sftp(current)
            if current is not None:
                current.abort()
            _abort_all(self._jumps)
            self._jumps = []
            try:
                self._conn, self._jumps = await self._connector.connect(lambda: self._closed)
            except TransportError as exc:
                self._connect_error = exc
                raise
            else:
                self._connect_error = None
            finally:
                self._connect_cycles += 1
                self.label = self._connector.label  # as the SSH config resolved it
            return self._conn

    def _forget_sftp(self, conn: asyncssh.SSHClientConnection | None) -> None:
        if self._sftp is not None and self._sftp_conn is conn:
            self._sftp.exit()
            self._sftp = self._sftp_conn = None

    async def _sftp_client(self, conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
        """The long-lived SFTP client on ``conn``, started on first use."""
        async with self._sftp_lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp = await conn.start_sftp_client()
                self._sftp_conn = conn
            return self._sftp


def _stop(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """Ask the remote command to stop and close its channel, without waiting."""
    try:
        # sshd has honoured "signal" requests since OpenSSH 7.9; elsewhere a no-op.
        process.terminate()
    except Exception:  # the channel may already be gone; closing below still applies
        pass
    process.close()


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    try:
        await sftp.remove(path)
    except Exception:  # best effort cleanup of a temporary file
        pass


def _sftp_error(exc: BaseException, path: str, doing: str, label: str) -> Exception | None:
    """Turn an SFTP status into the matching OSError, else a TransportError; None for a drop."""
    ssh = _asyncssh()
    if isinstance(exc, (ssh.SFTPNoSuchFile, ssh.SFTPNoSuchPath)):
        return FileNotFoundError(errno.ENOENT, f"no such file on {label}", path)
    if isinstance(exc, ssh.SFTPPermissionDenied):
        return PermissionError(errno.EACCES, f"permission denied on {label}", path)
    if isinstance(exc, (ssh.SFTPConnectionLost, ssh.SFTPNoConnection)):
        return None
    return TransportError(f"{doing} {path} on {label} failed: {_describe(exc)}")


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode(errors="replace")


def _abridged(command: str, limit: int = 120) -> str:
    """A command as messages show it: its first line, cut at ``limit`` characters (the
    environment probe is a whole script; one log line must not print it)."""
    first = command.split("\n", 1)[0]
    if len(first) > limit or first != command:
        return first[:limit] + " [...]"
    return command
