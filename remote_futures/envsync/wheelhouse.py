"""Wheels for a remote side that cannot reach the package index (an air-gapped login node).

Many clusters' login nodes have no outbound network. When the remote ``uv pip install`` fails
because it could not connect (:func:`network_failure`), the wheels are resolved and downloaded
here, for the remote platform and Python (:func:`download_command`: ``pip download
--only-binary=:all: --platform ... --python-version ...``), uploaded, and installed by the same
single uv call with ``--no-index --find-links <uploaded dir>`` (:func:`offline_requirements`).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from ..errors import RemoteEnvironmentError
from .plan import WantedItem
from .remote import RemoteFacts
from .spec import EnvSpec

__all__ = [
    "download_command", "download_uv", "download_wheels", "network_failure",
    "offline_requirements", "platform_tags",
]

#: What uv (reqwest) and pip print when the index could not be reached at all, as opposed to
#: an answer from it (a 404, a version that does not exist).
_NETWORK = re.compile(
    r"error sending request|tcp connect error|dns error|failed to lookup address|"
    r"connection refused|network is unreachable|no route to host|could not connect|"
    r"operation timed out|connection reset|name or service not known|"
    r"temporary failure in name resolution|failed to establish a new connection|"
    r"max retries exceeded",
    re.IGNORECASE,
)

#: manylinux aliases older than PEP 600, by the glibc minor version they stand for.
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def network_failure(detail: str) -> bool:
    """Whether uv's error output says it could not reach an index at all."""
    return bool(_NETWORK.search(detail))


def platform_tags(facts: RemoteFacts) -> list[str]:
    """The wheel platform tags the remote side accepts, best first (pure wheels always fit).

    Raises :class:`RemoteEnvironmentError` for a platform this cannot name (only Linux with
    glibc or musl is supported: the platform of clusters' login nodes)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(facts.machine.lower(),
                                                          facts.machine.lower())
    libc, version = facts.libc
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if facts.system == "Linux" and libc == "glibc" and len(numbers) == 2 and numbers[0] == 2:
        tags: list[str] = []
        for minor in range(numbers[1], 4, -1):
            tags.append(f"manylinux_2_{minor}_{machine}")
            if minor in _LEGACY_MANYLINUX:
                tags.append(f"{_LEGACY_MANYLINUX[minor]}_{machine}")
        return tags
    if facts.system == "Linux" and libc in ("", "musl"):
        return [f"musllinux_1_{minor}_{machine}" for minor in range(2, -1, -1)]
    raise RemoteEnvironmentError(
        f"cannot pick wheels for a {facts.system} {facts.machine} host ({libc} {version}): "
        "install what it needs there, or give it an index it can reach (index_url, find_links)"
    )


def offline_requirements(install: Sequence[WantedItem]) -> list[str]:
    """The requirement lines to install from the uploaded wheels: no index option lines."""
    return [item.requirement for item in install if item.origin != "option"]


def _downloadable(install: Sequence[WantedItem]) -> list[str]:
    """What must be downloaded: every line but index options and wheels already uploaded."""
    return [
        item.requirement for item in install
        if item.origin != "option" and "@ file://" not in item.requirement
    ]


def _index_options(spec: EnvSpec, install: Sequence[WantedItem]) -> list[str]:
    """The index options that mean the same here as there: URLs, not remote paths."""
    options: list[str] = []
    if spec.index_url:
        options += ["--index-url", spec.index_url]
    for url in spec.extra_index_urls:
        options += ["--extra-index-url", url]
    for link in spec.find_links:
        if re.match(r"^https?://", link):
            options += ["--find-links", link]
    if spec.no_index:
        options.append("--no-index")
    for item in install:
        if item.origin != "option":
            continue
        flag, _, value = item.requirement.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if flag in ("--index-url", "-i", "--extra-index-url") or (
            flag in ("--find-links", "-f") and re.match(r"^https?://", value)
        ):
            options += [flag, value]
    return options


def _pip() -> list[str]:
    """A pip to download with: this interpreter's, else one on PATH, else uv's pip tool."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    from .ship import local_uv

    uv = local_uv()
    if uv:
        return [uv, "tool", "run", "pip"]
    raise RemoteEnvironmentError(
        "the remote side cannot reach the package index, and there is no pip here to "
        "download the wheels for it: install pip (or uv) here, or give the remote side an "
        "index it can reach"
    )


def download_command(
    install: Sequence[WantedItem], facts: RemoteFacts, spec: EnvSpec, dest: str,
) -> list[str]:
    """``pip download`` of binary wheels for the remote platform and Python into ``dest``."""
    argv = [*_pip(), "download", "--only-binary=:all:", "--dest", dest,
            "--python-version", facts.major_minor, "--disable-pip-version-check", "--quiet"]
    for tag in platform_tags(facts):
        argv += ["--platform", tag]
    argv += _index_options(spec, install)
    if spec.no_deps:
        argv.append("--no-deps")
    return [*argv, *_downloadable(install)]


async def download_wheels(
    install: Sequence[WantedItem], facts: RemoteFacts, spec: EnvSpec, label: str,
) -> list[Path]:
    """Download the wheels of ``install`` for the remote side into a new temporary directory.

    Raises :class:`RemoteEnvironmentError` with pip's own words when that fails (a
    distribution with no wheel for that platform, say)."""
    dest = tempfile.mkdtemp(prefix="rf-wheelhouse-")
    argv = download_command(install, facts, spec, dest)
    done = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        said = (done.stderr.decode(errors="replace").strip()
                or done.stdout.decode(errors="replace").strip())
        raise RemoteEnvironmentError(
            f"{label}: the remote side cannot reach the package index, and downloading its "
            f"wheels here failed (exit {done.returncode}): {said[-3000:]}\n"
            f"command: {' '.join(argv)}"
        )
    return sorted(Path(dest).glob("*.whl"))


async def download_uv(facts: RemoteFacts, spec: EnvSpec, label: str) -> bytes:
    """The uv binary for the remote platform, taken from the ``uv`` wheel downloaded here.

    For a remote side with no uv, no network and another platform than this machine (whose
    own uv binary would not run there)."""
    dest = tempfile.mkdtemp(prefix="rf-uv-")
    try:
        argv = [*_pip(), "download", "--only-binary=:all:", "--no-deps", "--dest", dest,
                "--python-version", facts.major_minor, "--disable-pip-version-check", "--quiet"]
        for tag in platform_tags(facts):
            argv += ["--platform", tag]
        argv += [*_index_options(spec, ()), "uv"]
        done = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            said = (done.stderr.decode(errors="replace").strip()
                    or done.stdout.decode(errors="replace").strip())
            raise RemoteEnvironmentError(
                f"{label}: downloading uv here for the remote platform failed: {said[-2000:]}"
            )
        for wheel in Path(dest).glob("uv-*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if re.fullmatch(r"uv-[^/]+\.data/scripts/uv", name):
                        return archive.read(name)
        raise RemoteEnvironmentError(f"{label}: the downloaded uv wheel holds no uv binary")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
