"""Helpers shared by the envsync tests: a counting shell and the local cloudpickle version."""

from __future__ import annotations

import importlib.metadata
import shlex
from collections.abc import Sequence

from remote_futures.shell import CommandResult, LocalShell, Shell

CLOUDPICKLE = importlib.metadata.version("cloudpickle")


class CountingShell(Shell):
    """A LocalShell that counts every operation, and can prefix every command (environment)."""

    label = "counting-localhost"

    def __init__(self, prefix: str = "") -> None:
        self.inner = LocalShell()
        self.prefix = prefix
        self.commands: list[str] = []
        self.transfers = 0

    @property
    def round_trips(self) -> int:
        return len(self.commands) + self.transfers

    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> CommandResult:
        self.commands.append(command)
        return await self.inner.run(self.prefix + command, input=input, timeout=timeout,
                                    retry=retry)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        self.transfers += 1
        await self.inner.write_file(path, data, mode=mode)

    async def read_file(self, path: str) -> bytes:
        self.transfers += 1
        return await self.inner.read_file(path)

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes]:
        self.transfers += 1
        return await self.inner.read_files(paths)


def env_prefix(**variables: str) -> str:
    """A command prefix that sets environment variables for the rest of the command line.

    It also unsets VIRTUAL_ENV: the test's pretend remote host is this process, and an active
    virtualenv here (nox sets one) is an interpreter uv would find, which a remote host lacks.
    """
    sets = "".join(f"{k}={shlex.quote(v)}; export {k}; " for k, v in variables.items())
    return f"unset VIRTUAL_ENV; {sets}"
