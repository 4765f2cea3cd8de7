"""The local environment: what ``pip list --format=freeze`` reports, without running pip.

The scan walks ``sys.path`` with :mod:`importlib.metadata` and keeps, for each distribution
name, the first one found, as pip does; that covers pip-, uv- and conda-installed distributions
alike (conda writes the same ``.dist-info`` / ``.egg-info`` metadata). It runs once per process
and is cached: an executor syncs once per target, never per submit.

Each distribution also says where it came from (PEP 610 ``direct_url.json``), which decides how
it reaches the remote side: by name from an index, by URL, or shipped (built into a wheel here).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LocalDist",
    "Source",
    "canonical_name",
    "clear_local_cache",
    "local_distributions",
    "local_snapshot",
    "scan_distributions",
]

_CANONICAL = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    """The PEP 503 normalized form of a distribution name (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return _CANONICAL.sub("-", name).lower()


@dataclasses.dataclass(frozen=True)
class Source:
    """How a distribution can be installed on the remote side.

    ``kind`` is ``"index"`` (by name and version), ``"url"`` (a PEP 508 direct reference, e.g. a
    VCS URL pinned to a commit) or ``"ship"`` (a local directory or archive, ``path``, built into
    a wheel here and uploaded). ``note`` explains a non-obvious choice, for the log.
    """

    kind: Literal["index", "url", "ship"]
    path: str | None = None
    url: str | None = None
    editable: bool = False
    note: str = ""


@dataclasses.dataclass(frozen=True)
class LocalDist:
    """One installed distribution: canonical name, version and where it was installed from."""

    name: str
    version: str
    #: The parsed ``direct_url.json`` (PEP 610), or None for a distribution from an index.
    direct_url: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)
    #: The content of the ``INSTALLER`` file (``pip``, ``uv``, ``conda``...), if any.
    installer: str | None = None
    #: The metadata directory (``.dist-info`` / ``.egg-info``), to read more of it on demand.
    metadata_path: str | None = None

    @property
    def source(self) -> Source:
        """Where the remote side gets this distribution from (see :class:`Source`)."""
        return classify(self)

    def requires(self) -> list[str]:
        """The ``Requires-Dist`` lines (read on demand: only a cache miss needs them)."""
        if self.metadata_path is None:
            return []
        dist = importlib.metadata.PathDistribution(Path(self.metadata_path))
        return list(dist.requires or ())

    def top_level(self) -> list[str]:
        """The importable top-level names this distribution provides, best effort."""
        names: list[str] = []
        if self.metadata_path is not None:
            dist = importlib.metadata.PathDistribution(Path(self.metadata_path))
            text = dist.read_text("top_level.txt")
            if text:
                names = [line.strip() for line in text.splitlines() if line.strip()]
        return names or [self.name.replace("-", "_")]


def classify(dist: LocalDist) -> Source:
    """Decide how ``dist`` reaches the remote side, from its PEP 610 record."""
    info = dist.direct_url
    if not info:
        return Source("index")
    if (dist.installer or "").strip() == "conda":
        # conda-build leaves file:// URLs of its own build directories: installable by name.
        return Source("index", note="conda package")
    url = str(info.get("url", ""))
    if "vcs_info" in info:
        vcs = info["vcs_info"]
        ref = f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}".rstrip("@")
        subdirectory = info.get("subdirectory")
        if subdirectory:
            ref += f"#subdirectory={subdirectory}"
        return Source("url", url=f"{dist.name} @ {ref}", note="VCS checkout, by commit")
    local = _file_url_path(url)
    editable = bool(info.get("dir_info", {}).get("editable", False))
    if local is None:
        if "archive_info" in info:
            return Source("url", url=f"{dist.name} @ {url}", note="archive URL")
        return Source("index", note=f"unrecognized direct URL {url!r}")
    if not os.path.exists(local):
        # A build directory that is gone (a CI or conda build): the name is all that is left.
        return Source("index", note=f"its source {local} no longer exists; by name instead")
    subdirectory = info.get("subdirectory")
    if subdirectory:
        local = os.path.join(local, subdirectory)
    return Source("ship", path=local, editable=editable)


def _file_url_path(url: str) -> str | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return urllib.request.url2pathname(parsed.path)


def scan_distributions(paths: Iterable[str]) -> dict[str, LocalDist]:
    """The distributions found on ``paths``, keyed by canonical name; the first found wins.

    This is pip's rule (``pip list`` walks ``sys.path`` in order), so a distribution shadowed
    by one earlier on the path is not reported. Metadata without a name is skipped, as pip does.
    """
    found: dict[str, LocalDist] = {}
    for entry in paths:
        if not entry or not os.path.isdir(entry):
            # '' is the current directory, which `pip list` does not look at; zip files hold
            # no installed distributions.
            continue
        for dist in importlib.metadata.distributions(path=[entry]):
            headers = _headers(dist)
            name, version = headers.get("name"), headers.get("version")
            if not name or not version:
                continue
            key = canonical_name(name)
            if key in found:
                continue
            found[key] = LocalDist(
                name=key,
                version=version,
                direct_url=_json(dist.read_text("direct_url.json")),
                installer=(dist.read_text("INSTALLER") or "").strip() or None,
                metadata_path=_metadata_path(dist),
            )
    return found


def _headers(dist: importlib.metadata.Distribution) -> dict[str, str]:
    # Reading only the header block is several times faster than `dist.metadata`, which parses
    # the whole file (long descriptions included) with the email package.
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    headers: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            headers.setdefault(key.strip().lower(), value.strip())
    return headers


def _json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _metadata_path(dist: importlib.metadata.Distribution) -> str | None:
    path = getattr(dist, "_path", None)  # PathDistribution keeps it private
    return os.fspath(path) if path is not None else None


@functools.cache
def _scan_sys_path() -> dict[str, LocalDist]:
    return scan_distributions(list(sys.path))


def local_distributions() -> dict[str, LocalDist]:
    """Every distribution of the running interpreter, scanned once per process (a copy)."""
    return dict(_scan_sys_path())


def local_snapshot() -> dict[str, str]:
    """``{canonical name: version}``: what ``pip list --format=freeze`` reports here.

    Computed once per process from ``sys.path`` at the first call and cached; call
    :func:`clear_local_cache` after installing packages into a running interpreter.
    """
    return {name: dist.version for name, dist in _scan_sys_path().items()}


def clear_local_cache() -> None:
    """Forget the cached scan, so that the next call sees newly installed distributions."""
    _scan_sys_path.cache_clear()
