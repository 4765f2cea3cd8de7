"""Connecting over SSH: configuration, ProxyJump, the host-key policy, back-off.

:class:`Connector` turns the settings of an :class:`~remote_futures.ssh.SSHShell` into a live
asyncssh connection. The OpenSSH client config (``~/.ssh/config`` or ``ssh_config``) is resolved
first, so an alias's ``HostName``, ``User``, ``Port``, ``IdentityFile`` and ``ProxyJump`` apply
and explicit arguments override them. ProxyJump hops are opened here, one by one, so the same
strict host-key policy applies to every hop. Host keys are always checked against
``known_hosts`` (the user's by default); nothing is ever added to a known_hosts file, and
turning the check off takes the loudly named ``insecure_no_host_key_check=True``. Transient
failures are retried a bounded number of times with exponential back-off; failures retrying
cannot fix (an unknown host key, a refused key) raise at once with a message saying what to do.

Commands and files on the connection are :mod:`remote_futures.ssh`'s business.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .errors import ConfigurationError, TransportError

if TYPE_CHECKING:
    import asyncssh

__all__ = ["Connector"]

# The shell's logger: connection messages keep the name users filter on.
logger = logging.getLogger("remote_futures.ssh")

#: Keepalive probes that may go unanswered before asyncssh declares the connection dead
#: (with the default 15 s interval: a silent peer is detected within about 45 s).
_KEEPALIVE_COUNT_MAX = 3

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


@dataclasses.dataclass
class Connector:
    """How to reach one host; :meth:`connect` opens a connection (and its ProxyJump hops).

    ``label`` names the target in messages: a best guess at first, then ``user@host:port``
    as the SSH config resolved it at the last attempt.
    """

    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    insecure_no_host_key_check: bool = False
    ssh_config: str | None = None
    connect_timeout: float = 30
    keepalive_interval: float = 15
    reconnect_attempts: int = 5
    reconnect_backoff: float = 0.5
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = f"{self.user or _local_user()}@{self.host}:{self.port or 22}"

    async def connect(
        self, closed: Callable[[], bool]
    ) -> tuple[asyncssh.SSHClientConnection, list[asyncssh.SSHClientConnection]]:
        """Connect with bounded attempts and exponential back-off.

        Returns the connection and the ProxyJump connections carrying it (outermost first).
        ``closed`` says the shell was closed meanwhile: then no further attempt is made.
        """
        ssh = _asyncssh()
        delay = self.reconnect_backoff
        last: BaseException | None = None
        for attempt in range(1, self.reconnect_attempts + 1):
            if closed():  # close() was called while this waited between attempts
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

    async def _connect_once(
        self,
    ) -> tuple[asyncssh.SSHClientConnection, list[asyncssh.SSHClientConnection]]:
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
        logger.info("connected to %s", self.label)
        return conn, jumps

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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
