"""Pure decisions: what the remote environment should contain, and what is missing there.

Two steps, no I/O in either (tested in ``tests/envsync/test_plan.py``):

1. :func:`wanted_set` (before any remote command): the local snapshot minus exclusions, plus
   extra requirements and cloudpickle, each with the way it reaches the remote side. Its
   :func:`env_key` names the remote venv, so an unchanged set is found with one command.
2. :func:`plan_install` (after the remote probe): drop what cannot exist on the remote platform
   (reported, with the reason), and diff against what the remote interpreter already has.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from .snapshot import LocalDist, Source, canonical_name
from .spec import EnvSpec

__all__ = [
    "DEFAULT_EXCLUDES",
    "PLATFORM_ONLY",
    "InstallPlan",
    "Wanted",
    "WantedItem",
    "env_key",
    "pin",
    "plan_install",
    "wanted_set",
]

#: Never mirrored: installers and build tools (uv provides its own), which make no sense in a
#: venv that only runs calls. remote_futures itself IS mirrored (from a checkout, as a wheel):
#: the worker does not need it, but the user's own modules, imported there, often do.
DEFAULT_EXCLUDES = frozenset({"pip", "setuptools", "wheel", "uv", "distribute", "pkg-resources"})

#: Distributions that exist on one platform only (``sys_platform`` values), and whose absence
#: elsewhere is expected: their users import them behind platform checks. Names ending in ``-``
#: are prefixes (``pyobjc-framework-cocoa``...).
PLATFORM_ONLY: Mapping[str, str] = {
    "pywin32": "win32",
    "pywin32-ctypes": "win32",
    "pypiwin32": "win32",
    "pywinpty": "win32",
    "wmi": "win32",
    "comtypes": "win32",
    "winshell": "win32",
    "windows-curses": "win32",
    "pyreadline3": "win32",
    "win32-setctime": "win32",
    "winkerberos": "win32",
    "pyobjc": "darwin",
    "pyobjc-core": "darwin",
    "pyobjc-framework-": "darwin",
    "appnope": "darwin",
}

_PLATFORM_NAMES = {"win32": "Windows", "darwin": "macOS", "linux": "Linux"}

Origin = Literal["local", "extra", "explicit", "cloudpickle", "option"]
_FROM_INDEX = Source("index")


@dataclasses.dataclass(frozen=True)
class WantedItem:
    """One line of the wanted set.

    ``requirement`` is what uv gets (``name==version``, a requirement, a direct URL or an index
    option line); for a shipped distribution it is filled in once the wheel is uploaded.
    """

    name: str
    requirement: str
    origin: Origin
    source: Source = _FROM_INDEX
    #: The local version, for a mirrored distribution.
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class Wanted:
    """The wanted set, and what was left out on purpose (name, why), for the log."""

    items: tuple[WantedItem, ...]
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def to_ship(self) -> list[WantedItem]:
        """Items that must be built into a wheel here and uploaded."""
        return [item for item in self.items if item.source.kind == "ship"]


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    """What to install on the remote side, and why the rest is not installed."""

    #: Lines for the remote requirements file (the diff plus the index options).
    install: tuple[WantedItem, ...]
    #: (name, reason) of wanted distributions that cannot exist on the remote platform.
    skipped: tuple[tuple[str, str], ...]
    #: Names already present at a satisfying version.
    satisfied: tuple[str, ...]
    #: (name, remote version, wanted version) of distributions whose version changes.
    changes: tuple[tuple[str, str, str], ...]

    @property
    def packages(self) -> list[WantedItem]:
        """The install lines that are distributions (not index options)."""
        return [item for item in self.install if item.origin != "option"]


def pin(name: str, version: str) -> str:
    """``name==version``, or ``name===version`` for a version that is not PEP 440."""
    try:
        Version(version)
    except InvalidVersion:
        return f"{name}==={version}"
    return f"{name}=={version}"


def wanted_set(
    spec: EnvSpec, local: Mapping[str, LocalDist], *, cloudpickle_version: str
) -> Wanted:
    """The wanted set for ``spec``, given the local distributions (canonical name -> dist)."""
    items: list[WantedItem] = []
    excluded: list[tuple[str, str]] = []
    extra = [_item_from_line(line, "extra") for line in spec.extra]
    overridden = {item.name for item in extra if item.name}
    if spec.mode == "sync":
        patterns = [canonical_name(p) for p in spec.exclude]
        for name in sorted(local):
            dist = local[name]
            source = dist.source
            reason = _exclusion(name, source, patterns)
            if name in overridden:
                reason = "replaced by an extra requirement"
            if reason:
                if name != "cloudpickle" or name in overridden:
                    excluded.append((name, reason))
                    continue
                excluded.append((name, f"{reason}, but kept: the worker needs it"))
            requirement = source.url if source.kind == "url" and source.url else pin(
                name, dist.version
            )
            items.append(WantedItem(name, requirement, "local", source, dist.version))
    elif spec.mode == "explicit":
        items += [_item_from_line(line, "explicit") for line in spec.requirements]
    items += extra
    if not any(item.name == "cloudpickle" for item in items):
        items.append(
            WantedItem(
                "cloudpickle", pin("cloudpickle", cloudpickle_version), "cloudpickle",
                version=cloudpickle_version,
            )
        )
    return Wanted(tuple(items), tuple(excluded))


def _exclusion(name: str, source: Source, patterns: Sequence[str]) -> str:
    if name in DEFAULT_EXCLUDES:
        return "an installer or build tool"
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return f"excluded by {pattern!r}"
    return ""


def _item_from_line(line: str, origin: Origin) -> WantedItem:
    if line.startswith("-"):
        return WantedItem("", line, "option")
    requirement = Requirement(line)
    return WantedItem(canonical_name(requirement.name), line, origin)


def env_key(
    wanted: Wanted,
    *,
    spec: EnvSpec,
    python_version: str,
    python: str,
    fingerprints: Mapping[str, str],
) -> str:
    """A short hash naming the remote venv: same inputs, same venv.

    It covers the wanted lines (a shipped distribution by the ``fingerprints`` of its source),
    the Python major.minor, the remote interpreter asked for, and the uv options that change
    what gets installed. The remote platform is added to the venv's path on the remote side.
    """
    lines = sorted(
        f"{item.name} ship {fingerprints.get(item.name, '?')}"
        if item.source.kind == "ship" else item.requirement
        for item in wanted.items
    )
    material = {
        "format": 1,
        "python": python_version,
        "interpreter": python,
        "lines": lines,
        "uv": spec.uv_options(),
        "system_site_packages": spec.system_site_packages,
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def plan_install(
    wanted: Wanted,
    *,
    markers: Mapping[str, str],
    remote_packages: Mapping[str, str],
    requires: Mapping[str, Sequence[str]] = {},
    remote_is_target: bool = True,
) -> InstallPlan:
    """Diff the wanted set against the remote side.

    ``markers`` is the remote PEP 508 marker environment; ``remote_packages`` what the probed
    interpreter has (canonical name -> version); ``requires`` the local ``Requires-Dist`` lines
    of mirrored distributions, used to find those only needed on another platform.
    ``remote_is_target`` says the probed packages are in the target venv itself (a resumed
    sync), where a shipped distribution at the same version is the same build.
    """
    skipped = dict(_platform_skips(wanted, markers, requires))
    install: list[WantedItem] = []
    satisfied: list[str] = []
    changes: list[tuple[str, str, str]] = []
    for item in wanted.items:
        if item.origin == "option" or item.name in skipped:
            continue
        have = remote_packages.get(item.name)
        if have is not None and _satisfied(item, have, remote_is_target=remote_is_target):
            satisfied.append(item.name)
            continue
        if have is not None:
            changes.append((item.name, have, item.version or item.requirement))
        install.append(item)
    if install:
        install = [item for item in wanted.items if item.origin == "option"] + install
    return InstallPlan(
        install=tuple(install),
        skipped=tuple(sorted(skipped.items())),
        satisfied=tuple(satisfied),
        changes=tuple(changes),
    )


def _satisfied(item: WantedItem, have: str, *, remote_is_target: bool) -> bool:
    if item.source.kind != "index" and not remote_is_target:
        # Same version number elsewhere says nothing about a local build or a checkout.
        return False
    if item.version is not None:
        return _same_version(have, item.version)
    try:
        requirement = Requirement(item.requirement)
    except InvalidRequirement:
        return False
    if requirement.url:
        return False
    try:
        return SpecifierSet(str(requirement.specifier)).contains(have, prereleases=True)
    except InvalidVersion:
        return False


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _platform_skips(
    wanted: Wanted, markers: Mapping[str, str], requires: Mapping[str, Sequence[str]]
) -> Iterable[tuple[str, str]]:
    platform = markers.get("sys_platform", "")
    here = _PLATFORM_NAMES.get(platform, platform)
    skips: dict[str, str] = {}
    for item in wanted.items:
        if not item.name:
            continue
        only = _platform_only(item.name)
        if only and not platform.startswith(only):
            skips[item.name] = f"{_PLATFORM_NAMES.get(only, only)}-only (the remote is {here})"
        elif item.origin in ("extra", "explicit"):
            marker = Requirement(item.requirement).marker
            if marker is not None and not _evaluate(marker, markers):
                skips[item.name] = f"its marker {marker} is false on the remote"
    skips.update(_unneeded_dependencies(wanted, markers, requires, dict(skips)))
    return skips.items()


def _platform_only(name: str) -> str | None:
    if name in PLATFORM_ONLY:
        return PLATFORM_ONLY[name]
    for prefix, platform in PLATFORM_ONLY.items():
        if prefix.endswith("-") and name.startswith(prefix):
            return platform
    return None


def _unneeded_dependencies(
    wanted: Wanted,
    markers: Mapping[str, str],
    requires: Mapping[str, Sequence[str]],
    skipped: dict[str, str],
) -> dict[str, str]:
    """Mirrored distributions that every local dependent requires only on another platform.

    For instance ``colorama`` when the only dependent says ``colorama; sys_platform ==
    "win32"``. A distribution nothing depends on was installed on purpose and is kept; an edge
    with an ``extra`` marker cannot be judged here and counts as needed. Repeated until nothing
    changes, since a skipped dependent's own dependencies may then be unneeded too.
    """
    mirrored = {item.name for item in wanted.items if item.origin == "local"}
    edges: dict[str, list[tuple[str, Marker | None]]] = {}
    for dependent, lines in requires.items():
        if dependent not in mirrored:
            continue
        for line in lines:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            edges.setdefault(canonical_name(requirement.name), []).append(
                (dependent, requirement.marker)
            )
    found: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for name in sorted(mirrored - skipped.keys() - found.keys()):
            live = [
                (dependent, marker) for dependent, marker in edges.get(name, [])
                if dependent not in skipped and dependent not in found
            ]
            if not edges.get(name) or any(
                marker is None or "extra" in str(marker) or _evaluate(marker, markers)
                for _, marker in live
            ):
                continue
            why = ", ".join(
                f"{dependent} ({marker})" for dependent, marker in edges[name]
                if dependent not in skipped and dependent not in found
            ) or "dependents skipped: " + ", ".join(sorted({d for d, _ in edges[name]}))
            found[name] = f"only needed on other platforms by {why}"
            changed = True
    return found


def _evaluate(marker: Marker, environment: Mapping[str, str]) -> bool:
    try:
        return bool(marker.evaluate({**environment, "extra": ""}))
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        return True  # cannot tell: keep it, and let uv decide
