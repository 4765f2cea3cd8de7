"""Where commands run and files live: the seam under every remote transport.

A :class:`Shell` runs shell command lines and moves files. :class:`LocalShell` does it on this
machine (a user already on a cluster's login node); ``remote_futures.ssh.SSHShell`` does it on a
host reached over SSH. Batch transports work identically through either. Callers build command
lines with :func:`shlex.quote` / :func:`shlex.join`: every path and argument is quoted.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import shlex
import subprocess
from collections.abc import Sequence

import anyio

from .errors import TransportError

__all__ = ["CommandResult", "LocalShell", "Shell", "posix_command"]

#: Bytes that reach ``/bin/sh`` unchanged through any login shell's single quotes (sh, bash,
#: zsh, csh/tcsh, fish) and sh's double quotes: printable ASCII except quotes, backslash, the
#: expansion characters and csh's history mark; ``%`` is special to printf.
_PASS_THROUGH = frozenset(range(0x20, 0x7F)) - set(b"\\'\"$`!%")


def posix_command(command: str) -> str:
    """``command`` wrapped so that ``/bin/sh`` runs it whatever the remote login shell is.

    sshd hands a command to the user's login shell, and every command here is POSIX sh. A
    tcsh or csh account would parse it (and stop at the first newline in a quoted string);
    so the login shell is only asked to ``exec /bin/sh``, with an argument it cannot
    misread: the command's bytes outside a small safe set become printf octal escapes, and
    sh decodes and evaluates them. Standard input, the exit status and signals (sh replaces
    the login shell's process) pass through unchanged.
    """
    encoded = "".join(
        chr(byte) if byte in _PASS_THROUGH else f"\\{byte:03o}" for byte in command.encode()
    )
    return f"exec /bin/sh -c 'eval \"$(printf \"{encoded}\")\"'"


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """The outcome of one command line."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.returncode == 0

    def check(self, what: str) -> CommandResult:
        """Return self, or raise :class:`TransportError` naming ``what`` failed and why."""
        if not self.ok:
            said = self.stderr.strip() or self.stdout.strip()
            raise TransportError(
                f"{what} failed (exit {self.returncode}): {said}\ncommand: {self.command}"
            )
        return self


class Shell(abc.ABC):
    """Runs commands and moves files on one host. Async context manager: open, then close."""

    #: How the host is named in messages (``user@host:port``, ``localhost``).
    label: str = "?"

    async def __aenter__(self) -> Shell:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (a no-op for the local shell)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and release every resource."""

    @abc.abstractmethod
    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> CommandResult:
        """Run one POSIX shell command line and return its result (never raises on exit != 0).

        ``retry=False`` marks a command that must not run twice (a submission): a shell that
        reconnects after a dropped connection then raises instead of running it again."""

    @abc.abstractmethod
    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` atomically (a temporary name, then a rename)."""

    @abc.abstractmethod
    async def read_file(self, path: str) -> bytes:
        """Return the contents of ``path``; raise :class:`FileNotFoundError` if it is missing."""

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Read many files; missing ones are left out of the result."""
        found: dict[str, bytes] = {}
        for path in paths:
            try:
                found[path] = await self.read_file(path)
            except FileNotFoundError:
                pass
        return found

    async def home(self) -> str:
        """The remote user's home directory."""
        result = (await self.run('printf %s "$HOME"')).check("finding the home directory")
        return result.stdout.strip()

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        """Create ``path`` and its parents (an existing directory is fine); every level this
        creates is private to the user (0700), and ``path`` itself gets ``mode``."""
        q = shlex.quote(path)
        (await self.run(f"umask 077 && mkdir -p {q} && chmod {mode:o} {q}")).check(
            f"creating {path}"
        )


class LocalShell(Shell):
    """Runs commands with ``/bin/sh`` on this machine."""

    label = "localhost"

    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> CommandResult:
        """Run ``command`` with ``/bin/sh -c`` (``retry`` is moot: nothing to reconnect)."""
        try:
            with anyio.fail_after(timeout):
                done = await anyio.run_process(
                    ["/bin/sh", "-c", command], input=input, check=False,
                    stdin=subprocess.DEVNULL if input is None else None,
                )
        except TimeoutError:
            raise TransportError(f"command timed out after {timeout} s: {command}") from None
        return CommandResult(
            command, done.returncode,
            done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
        )

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write atomically through a temporary file in the same directory."""
        await anyio.to_thread.run_sync(_write_atomic, path, data, mode)

    async def read_file(self, path: str) -> bytes:
        """Read the whole file."""
        return await anyio.Path(path).read_bytes()

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Read many files in one worker thread."""
        return await anyio.to_thread.run_sync(_read_existing, list(paths))

    async def home(self) -> str:
        """This user's home directory."""
        return os.path.expanduser("~")


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read_existing(paths: list[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                found[path] = f.read()
        except FileNotFoundError:
            pass
    return found
