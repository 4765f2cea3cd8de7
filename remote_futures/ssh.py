"""A :class:`~remote_futures.shell.Shell` on a host reached over SSH, built on asyncssh.

One :class:`SSHShell` holds **one** SSH connection and runs every command as a channel on it,
at most ``max_channels`` at a time (sshd refuses channels beyond its ``MaxSessions``, 10 by
default, and the long-lived SFTP client permanently holds one). Files move over that one SFTP
client, opened lazily. Keepalives detect a dead peer; a dropped connection is re-established
with exponential back-off by the next operation, one reconnect at a time.

Host keys are always checked strictly against ``known_hosts`` (the user's by default). Nothing
is ever added to a known_hosts file; turning the check off takes the loudly named
``insecure_no_host_key_check=True``.

asyncssh is an optional dependency (``pip install 'remote_futures[ssh]'``): this module imports
without it, and constructing an :class:`SSHShell` raises an actionable :class:`ImportError`.
asyncssh is asyncio-only, so an :class:`SSHShell` must be used on anyio's asyncio backend.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import posixpath
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .errors import ConfigurationError, TransportError
from .shell import CommandResult, Shell

if TYPE_CHECKING:
    import asyncssh

__all__ = ["SSHShell"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Keepalive probes that may go unanswered before asyncssh declares the connection dead
#: (with the default 15 s interval: a silent peer is detected within about 45 s).
_KEEPALIVE_COUNT_MAX = 3

#: Concurrent SFTP requests in :meth:`SSHShell.read_files`. They are requests on the one SFTP
#: channel, not channels, so MaxSessions does not apply; this bounds open remote handles.
_SFTP_PARALLEL = 16

#: Most ProxyJump hops followed for one connection (guards against a loop in the SSH config).
_MAX_JUMPS = 8

_INSTALL_HINT = "SSHShell needs asyncssh: pip install 'remote_futures[ssh]'"


def _asyncssh() -> Any:
    """Import asyncssh on first use, with an actionable message when it is missing."""
    try:
        import asyncssh
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return asyncssh


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
        # The best guess until the SSH config is resolved at connection time.
        self.label = f"{user or _local_user()}@{host}:{port or 22}"

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
        """Run ``command`` through the remote user's shell; never raises on a non-zero exit.

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
                            command,
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
                self._conn = await self._connect_with_backoff()
            except TransportError as exc:
                self._connect_error = exc
                raise
            else:
                self._connect_error = None
            finally:
                self._connect_cycles += 1
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

    async def _connect_with_backoff(self) -> asyncssh.SSHClientConnection:
        ssh = _asyncssh()
        delay = self.reconnect_backoff
        last: BaseException | None = None
        for attempt in range(1, self.reconnect_attempts + 1):
            if self._closed:  # close() was called while this waited between attempts
                raise TransportError(f"the SSH shell for {self.label} is closed")
            try:
                return await self._connect_once()
            except (
                OSError,  # refused, unreachable, reset, DNS (gaierror)
                TimeoutError,  # connect_timeout
                ssh.DisconnectError,  # fatal kinds are turned into TransportError earlier
                ssh.ChannelOpenError,  # a ProxyJump host could not reach the target
            ) as exc:
                last = exc
                logger.warning(
                    "connecting to %s failed (attempt %d of %d): %s",
                    self.label,
                    attempt,
                    self.reconnect_attempts,
                    _describe(exc),
                )
            if attempt < self.reconnect_attempts:
                await anyio.sleep(delay)
                delay *= 2
        assert last is not None
        raise TransportError(
            f"cannot connect to {self.label} after {self.reconnect_attempts} attempt(s): "
            f"{_describe(last)}"
        ) from last

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        """One connection attempt; errors that retrying cannot fix raise TransportError."""
        config = self._config_paths()
        jumps: list[asyncssh.SSHClientConnection] = []
        try:
            conn = await self._open_hop(
                self.host, self.port, self.user, self.identity_file, config, jumps, target=True
            )
        except BaseException:
            _abort_all(jumps)
            raise
        self._jumps = jumps
        logger.info("connected to %s", self.label)
        return conn

    async def _open_hop(
        self,
        host: str,
        port: int | None,
        user: str | None,
        identity_file: str | None,
        config: list[str],
        jumps: list[asyncssh.SSHClientConnection],
        *,
        target: bool = False,
        tunnel: asyncssh.SSHClientConnection | None = None,
        depth: int = 0,
    ) -> asyncssh.SSHClientConnection:
        """Connect to one host, first opening its ProxyJump hops (appended to ``jumps``).

        The hops are opened here rather than by asyncssh because asyncssh connects to a jump
        host with its defaults: the ``known_hosts`` policy of this shell would not apply there,
        and ``UserKnownHostsFile none`` in the SSH config would silently disable the check.
        """
        ssh = _asyncssh()
        kwargs: dict[str, Any] = {
            "host": host,
            "config": config,
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": _KEEPALIVE_COUNT_MAX,
        }
        if port is not None:
            kwargs["port"] = port
        if user is not None:
            kwargs["username"] = user
        if identity_file is not None:
            kwargs["client_keys"] = [identity_file]
        if tunnel is not None:
            kwargs["tunnel"] = tunnel  # also overrides this hop's own ProxyJump, as OpenSSH does
        try:
            # Resolve the SSH config (and load keys: file I/O) to learn the effective host,
            # port, user, ProxyJump and known_hosts before connecting.
            options = await anyio.to_thread.run_sync(
                lambda: ssh.SSHClientConnectionOptions(**kwargs)
            )
        except (OSError, ValueError, ssh.Error) as exc:
            raise ConfigurationError(f"invalid SSH settings for {host}: {_describe(exc)}") from exc
        where = f"{options.username}@{options.host}:{options.port}"
        if target:
            self.label = where
        if tunnel is None and isinstance(options.tunnel, str) and options.tunnel:
            if depth >= _MAX_JUMPS:
                raise ConfigurationError(
                    f"ProxyJump chain for {host} is longer than {_MAX_JUMPS} hops (a loop?)"
                )
            hop_tunnel: asyncssh.SSHClientConnection | None = None
            for hop in options.tunnel.split(","):
                hop_user, hop_host, hop_port = _parse_jump(hop)
                hop_tunnel = await self._open_hop(
                    hop_host,
                    hop_port,
                    hop_user,
                    None,  # an explicit identity_file is for the target, as with ssh -i
                    config,
                    jumps,
                    tunnel=hop_tunnel,
                    depth=depth + 1,
                )
                jumps.append(hop_tunnel)
            kwargs["tunnel"] = hop_tunnel
        known_hosts = self._known_hosts_for(options.known_hosts, where)
        if known_hosts is None:
            logger.warning(
                "connecting to %s WITHOUT host key verification "
                "(insecure_no_host_key_check=True): the server is not authenticated",
                where,
            )
        try:
            conn: asyncssh.SSHClientConnection = await ssh.connect(
                **kwargs, known_hosts=known_hosts
            )
        except ssh.HostKeyNotVerifiable as exc:
            raise TransportError(
                self._host_key_message(options.host, options.port, known_hosts, exc)
            ) from exc
        except ssh.PermissionDenied as exc:
            raise TransportError(
                f"authentication to {where} failed ({_describe(exc)}): check the user "
                "and the key (identity_file, IdentityFile in the SSH config, or ssh-agent)"
            ) from exc
        except (ssh.DisconnectError, ssh.ChannelOpenError):
            raise  # possibly transient: the caller retries with back-off
        except ssh.Error as exc:
            raise TransportError(f"cannot connect to {where}: {_describe(exc)}") from exc
        return conn

    def _config_paths(self) -> list[str]:
        if self.ssh_config is not None:
            if not os.path.exists(self.ssh_config):
                raise ConfigurationError(f"ssh_config file {self.ssh_config} does not exist")
            return [self.ssh_config]
        default = os.path.expanduser("~/.ssh/config")
        return [default] if os.access(default, os.R_OK) else []

    def _known_hosts_for(self, from_config: object, where: str) -> object:
        """The known_hosts argument for asyncssh: never None unless insecure was asked for."""
        if self.insecure_no_host_key_check:
            return None
        if self.known_hosts is not None:
            if not os.path.exists(self.known_hosts):
                raise TransportError(
                    f"known_hosts file {self.known_hosts} does not exist; create it with "
                    f"ssh-keyscan (see the error for an unknown host) or fix the path"
                )
            return self.known_hosts
        # asyncssh reads "UserKnownHostsFile none" in the SSH config as "check nothing"
        # (known_hosts=None). Strict checking is only given up by the explicit flag here.
        if from_config is None:
            logger.warning(
                "ignoring 'UserKnownHostsFile none' in the SSH config for %s: host keys are "
                "checked against ~/.ssh/known_hosts (insecure_no_host_key_check=True to skip)",
                where,
            )
            from_config = []
        files = [
            os.path.expanduser(str(f))
            for f in (from_config if isinstance(from_config, list) else [])
        ]
        files = [f for f in files if os.path.isfile(f)]  # OpenSSH also skips missing files
        if not files:
            default = os.path.expanduser("~/.ssh/known_hosts")
            if os.path.isfile(default):
                files = [default]
        # Empty known-hosts *data* (b""): no key is trusted, so every host fails the check.
        return files or b""

    def _host_key_message(
        self, host: str, port: int, known_hosts: object, exc: BaseException
    ) -> str:
        where = host if port == 22 else f"[{host}]:{port}"
        listed = [known_hosts] if isinstance(known_hosts, str) else known_hosts
        files = (
            ", ".join(map(str, listed))
            if isinstance(listed, list) and listed
            else "(no known_hosts file: ~/.ssh/known_hosts does not exist)"
        )
        keyscan = f"ssh-keyscan {'' if port == 22 else f'-p {port} '}{host}"
        kind = "is not in" if not self._listed(host, port, known_hosts) else "does NOT match"
        return (
            f"host key verification failed for {where} ({_describe(exc)}): the key the server "
            f"offered {kind} {files}.\n"
            f"- A new host: check its key fingerprint with the administrator, then add it with "
            f"`{keyscan} >> ~/.ssh/known_hosts`, or pass known_hosts='/path/to/file' to a file "
            f"that lists it.\n"
            f"- A changed key: someone may be intercepting the connection. If the host was "
            f"reinstalled, remove the old entry with `ssh-keygen -R '{where}'` and add the "
            f"new one.\n"
            f"Host keys are never accepted automatically; insecure_no_host_key_check=True "
            f"turns the check off (not recommended)."
        )

    @staticmethod
    def _listed(host: str, port: int, known_hosts: object) -> bool:
        """Whether known_hosts lists any key for host:port (a mismatch, not an unknown host)."""
        ssh = _asyncssh()
        try:
            matched = ssh.match_known_hosts(known_hosts, host, host, None if port == 22 else port)
        except Exception:  # only a hint for the message: never mask the real error
            return False
        return bool(matched[0])  # (trusted host keys, trusted CA keys, revoked keys, ...)


def _parse_jump(hop: str) -> tuple[str | None, str, int | None]:
    """Split one ProxyJump entry, ``[user@]host[:port]`` (``[v6addr]:port`` too)."""
    user, _, hostport = hop.strip().rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        port = int(port_text)
    return user or None, host, port


def _abort_all(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in reversed(conns):  # the first hop last: the later hops run through it
        conn.abort()


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode(errors="replace")


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def _abridged(command: str, limit: int = 120) -> str:
    """A command as messages show it: its first line, cut at ``limit`` characters (the
    environment probe is a whole script; one log line must not print it)."""
    first = command.split("\n", 1)[0]
    if len(first) > limit or first != command:
        return first[:limit] + " [...]"
    return command
