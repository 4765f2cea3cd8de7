"""What a sync tells the user: its errors (with uv's own words) and what changed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import RemoteEnvironmentError
from ..shell import CommandResult
from .plan import InstallPlan, WantedItem
from .remote import RemoteFacts
from .snapshot import canonical_name

__all__ = [
    "changes", "install_error", "log_outcome", "log_plan", "probe_failed", "version_error",
]

log = logging.getLogger("remote_futures.envsync")


def log_outcome(
    label: str, outcome: Mapping[str, Any], venv_dir: str, installed: Sequence[str],
    changed: Sequence[tuple[str, str | None, str | None]],
) -> None:
    """Log what changed and what the installer did."""
    for name, old, new in changed:
        log.info("%s: %s: %s -> %s", label, name, old or "(none)", new or "(none)")
    if outcome["status"] == "present":
        log.info("%s: %s was completed by another client meanwhile", label, venv_dir)
    elif installed:
        log.info("%s: installed %d distributions into %s: %s", label, len(installed), venv_dir,
                 ", ".join(installed))


def changes(
    previous: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, str | None, str | None]]:
    """What differs between two venv records, by distribution name."""
    def by_name(record: Mapping[str, Any]) -> dict[str, str]:
        found: dict[str, str] = {}
        builds = record.get("fingerprints", {})
        for line in record.get("installed", []):
            name, sep, version = str(line).partition("==")
            if sep:
                found[canonical_name(name)] = version.lstrip("=")
            else:  # a direct reference: a shipped wheel (named by its source) or a URL
                name = canonical_name(str(line).split("@")[0].strip())
                found[name] = f"local build {builds[name]}" if name in builds else str(line)
        return found

    old, new = by_name(previous), by_name(current)
    return [
        (name, old.get(name), new.get(name))
        for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)
    ]


def probe_failed(label: str, python: str, done: CommandResult) -> RemoteEnvironmentError:
    """The error for a remote python that could not be started or probed."""
    return RemoteEnvironmentError(
        f"{label}: cannot run the remote python {python!r} (exit {done.returncode}): "
        f"{(done.stderr.strip() or done.stdout.strip())[-2000:]}"
    )


def version_error(label: str, facts: RemoteFacts, want: str, hint: str) -> RemoteEnvironmentError:
    """The error for a remote Python of another major.minor, with ``hint`` and the probe's notes."""
    local = ".".join(map(str, sys.version_info[:3]))
    remote_version = ".".join(map(str, facts.version))
    notes = "".join(f"\n  {note}" for note in facts.notes)
    return RemoteEnvironmentError(
        f"{label}: the remote Python is {remote_version} ({facts.executable}) but this one is "
        f"{local}; cloudpickle needs the same major.minor ({want}). {hint}.{notes}"
    )


def install_error(
    outcome: Mapping[str, Any], config: Mapping[str, Any], install: Sequence[WantedItem],
    label: str,
) -> RemoteEnvironmentError:
    """The error for a failed installer run: what failed, which packages, and uv's words."""
    detail = str(outcome.get("detail", "")).strip()
    message = f"{label}: {outcome.get('message')} for {config['venv']}"
    if outcome.get("stage") == "install":
        packages = [item for item in install if item.origin != "option"]
        failing = _named_in(detail, packages)
        message += (
            f"; failing: {', '.join(failing)}" if failing
            else f"; uv named none of the {len(packages)} requirements"
        )
    return RemoteEnvironmentError(f"{message}\n--- uv says ---\n{detail[-4000:]}".rstrip())


def _named_in(text: str, items: Sequence[WantedItem]) -> list[str]:
    """The requirements whose distribution name appears in uv's message."""
    lowered = canonical_name(text)
    return [
        item.requirement for item in items
        if item.name and re.search(rf"(?<![a-z0-9-]){re.escape(item.name)}(?![a-z0-9-])", lowered)
    ]


def log_plan(plan: InstallPlan, label: str) -> None:
    """Log what will not be installed, and (debug) what is already there."""
    for name, reason in plan.skipped:
        log.warning("%s: not installed remotely: %s: %s", label, name, reason)
    if plan.satisfied:
        log.debug("%s: already there: %s", label, ", ".join(plan.satisfied))
