"""Getting a remote side ready to build venvs: a uv, and a base interpreter of our version."""

from __future__ import annotations

import logging
import platform
import shlex
from collections.abc import Sequence
from typing import Protocol

import anyio

from ..errors import RemoteEnvironmentError
from ..shell import CommandResult
from . import remote, ship, wheelhouse
from .remote import RemoteFacts
from .report import version_error
from .spec import EnvSpec

__all__ = ["PROBE_TIMEOUT", "Runner", "base_interpreter", "bootstrap_uv", "same_machine"]

log = logging.getLogger("remote_futures.envsync")

#: Seconds a probe may take (it starts Python once or twice and lists the installed packages).
PROBE_TIMEOUT = 120.0


class Runner(Protocol):
    """What the bootstrap needs of a shell (the sync's round-trip counting wrapper)."""

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        """Run one command."""

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write one file."""

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        """Create a directory and its parents."""


def same_machine(facts: RemoteFacts) -> bool:
    """Whether this machine's binaries (its uv) run on the remote side."""
    aliases = {"amd64": "x86_64", "arm64": "aarch64"}
    here = aliases.get(platform.machine().lower(), platform.machine().lower())
    there = aliases.get(facts.machine.lower(), facts.machine.lower())
    return (
        platform.system() == facts.system and here == there
        and platform.libc_ver()[0] == facts.libc[0]
    )


async def bootstrap_uv(
    shell: Runner, facts: RemoteFacts, work_dir: str, python: str, spec: EnvSpec,
    label: str,
) -> tuple[str, ...]:
    """Put a uv on the remote side: our own binary when the platforms match, else pip's."""
    local_uv = ship.local_uv_executable()
    target = remote.absolute_work_dir(work_dir, facts.home) + "/bin/uv"
    if local_uv and same_machine(facts):
        data = await anyio.Path(local_uv).read_bytes()
        await _upload_uv(shell, target, data)
        log.info("%s: no uv there; uploaded this machine's uv (%d MB) to %s",
                 label, len(data) >> 20, target)
        return (target,)
    if not spec.offline:
        done = await shell.run(
            f"{shlex.quote(facts.executable)} -m pip install --user --quiet uv", timeout=600
        )
        if done.ok:
            log.info("%s: no uv there; installed it with pip install --user uv", label)
            return (facts.executable, "-m", "uv")
        why = (done.stderr.strip() or done.stdout.strip())[-1000:]
        # No network there (or a pip that may not install): fetch uv's wheel for that
        # platform here, and upload the binary it holds.
        try:
            data = await wheelhouse.download_uv(facts, spec, label)
        except RemoteEnvironmentError as exc:
            why += f"; and here: {exc}"
        else:
            await _upload_uv(shell, target, data)
            log.info("%s: no uv there and pip could not install it; uploaded uv (%d MB) from "
                     "its wheel for %s %s to %s", label, len(data) >> 20, facts.system,
                     facts.machine, target)
            return (target,)
    else:
        why = "offline, and this machine's uv is for another platform"
    raise RemoteEnvironmentError(
        f"{label}: uv is needed on the remote side and could not be set up ({why}). Install it "
        f"there (`curl -LsSf https://astral.sh/uv/install.sh | sh`, or `{python} -m pip install "
        f"--user uv`) and try again, or use env='off' with a ready interpreter."
    )


async def _upload_uv(shell: Runner, target: str, data: bytes) -> None:
    await shell.makedirs(target.rsplit("/", 1)[0])
    await shell.write_file(target, data, mode=0o755)


async def base_interpreter(
    shell: Runner, facts: RemoteFacts, uv: Sequence[str], want: str, spec: EnvSpec,
    label: str,
) -> str:
    """The interpreter to create the venv from: the probed one, or a matching one uv finds."""
    if facts.major_minor == want:
        return facts.base_executable
    found = facts.matching_python
    if found is None and facts.uv is None:  # uv was just bootstrapped: ask it now
        done = await shell.run(
            shlex.join([*uv, "python", "find", want]), timeout=PROBE_TIMEOUT
        )
        found = done.stdout.strip().splitlines()[-1] if done.ok and done.stdout.strip() else None
    if found:
        log.info("%s: remote Python is %s; using uv's Python %s at %s",
                 label, facts.major_minor, want, found)
        return found
    if not spec.offline:
        log.info("%s: remote Python is %s; asking uv to provide Python %s",
                 label, facts.major_minor, want)
        return want  # `uv venv --python 3.11` downloads one if it may; checked after creation
    raise version_error(
        label, facts, want,
        f"uv found no Python {want} there: install one, pass python= pointing to it, "
        "or allow uv to download one (offline=False)",
    )
