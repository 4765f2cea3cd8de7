"""Profiles: named option sets in a TOML file, so ``RemoteExecutor("pbs")`` needs no arguments.

The file is ``$REMOTE_FUTURES_CONFIG``, else ``remote_futures/config.toml`` in the platform's user
config directory (``~/.config/remote_futures/config.toml`` on Linux)::

    [profiles.pbs]
    transport = "pbs"
    host = "login.hpc.example.org"
    user = "me"
    resources = { cpus = 4, memory = "8G", walltime = "01:00:00", queue = "short" }

A profile's ``transport`` key names the transport; ``max_workers``, ``retries`` and ``progress``
are the executor's own keywords (:data:`EXECUTOR_KEYS`); its other keys are that transport's options
(``resources``, ``env``, ``host``...). Keyword arguments given to ``RemoteExecutor`` override the
profile's.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

from .errors import ConfigurationError
from .transports import PLANNED, TRANSPORTS

__all__ = [
    "EXECUTOR_KEYS",
    "ResolvedTarget",
    "config_path",
    "load_profiles",
    "resolve_target",
]

#: Keywords of ``RemoteExecutor`` itself (not of a transport) that a profile may set, and what
#: each accepts: an integer of at least this value, a boolean (None), or a string (``str``;
#: its value is checked by the executor, as a keyword's). ``initializer`` and ``retry_on`` are
#: code, not data: they have no place in a file.
EXECUTOR_KEYS: dict[str, int | type[str] | None] = {
    "max_workers": 1, "retries": 0, "progress": None, "output": str, "output_prefix": str,
}


def config_path() -> Path:
    """Where profiles are read from."""
    override = os.environ.get("REMOTE_FUTURES_CONFIG")
    if override:
        return Path(override).expanduser()
    return platformdirs.user_config_path("remote_futures") / "config.toml"


def load_profiles(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """All profiles in the config file (none if the file does not exist)."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if os.environ.get("REMOTE_FUTURES_CONFIG"):
            raise ConfigurationError(
                f"config file {path} (from $REMOTE_FUTURES_CONFIG) does not exist"
            ) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"profiles"})
    if unknown:
        raise ConfigurationError(
            f"config file {path}: unknown top-level key {unknown[0]!r}; only [profiles.NAME] "
            "tables are allowed"
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigurationError(f"config file {path}: 'profiles' must be a table")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ConfigurationError(f"config file {path}: profile {name!r} must be a table")
    return profiles


@dataclasses.dataclass(frozen=True)
class ResolvedTarget:
    """A transport name and its options, with where they came from (for error messages)."""

    transport: str
    #: The profile's options overridden by the keyword arguments.
    options: dict[str, Any]
    #: ``"keyword arguments"`` or ``"profile 'pbs' in /home/me/.config/..."``.
    source: str
    #: The keys that came from the profile, so that a bad one is reported against the file.
    profile_keys: frozenset[str] = frozenset()
    profile_source: str = ""
    #: The profile's executor keywords (:data:`EXECUTOR_KEYS`), checked; the caller's own
    #: keyword arguments override them.
    executor_options: dict[str, Any] = dataclasses.field(default_factory=dict)


def resolve_target(target: str, overrides: dict[str, Any]) -> ResolvedTarget:
    """Resolve a transport or profile name. A profile of that name wins over a transport."""
    if not isinstance(target, str) or not target:
        raise ConfigurationError(f"target must be a transport or profile name, got {target!r}")
    path = config_path()
    profiles = load_profiles(path)
    if target in profiles:
        table = dict(profiles[target])
        where = f"profile {target!r} in {path}"
        transport = table.pop("transport", None)
        if transport is None:
            raise ConfigurationError(f"{where}: missing key 'transport' (one of "
                                     f"{', '.join(TRANSPORTS)})")
        if transport in PLANNED:
            raise ConfigurationError(
                f"{where}: key 'transport' = {transport!r}: the {transport!r} transport is not "
                f"available in this version of remote_futures yet; available: "
                f"{', '.join(TRANSPORTS)}"
            )
        if not isinstance(transport, str) or transport not in TRANSPORTS:
            raise ConfigurationError(
                f"{where}: key 'transport' = {transport!r} is not a transport; valid: "
                f"{', '.join(TRANSPORTS)}"
            )
        executor_options = {
            key: _executor_value(key, table.pop(key), where)
            for key in EXECUTOR_KEYS
            if key in table
        }
        return ResolvedTarget(
            transport, {**table, **overrides}, f"{where} or the keyword arguments",
            frozenset(set(table) - set(overrides)), where, executor_options,
        )
    if target in TRANSPORTS or target in PLANNED:
        return ResolvedTarget(target, dict(overrides), "keyword arguments")
    known = f"; profiles in {path}: {', '.join(profiles)}" if profiles else (
        f"; no profiles defined ({path})"
    )
    raise ConfigurationError(
        f"unknown transport or profile {target!r}; transports: {', '.join(TRANSPORTS)}{known}"
    )


def _executor_value(key: str, value: Any, where: str) -> int | bool | str:
    """Check an executor keyword read from a profile; the error names the file and the key."""
    least = EXECUTOR_KEYS[key]
    if least is str:
        if not isinstance(value, str):
            raise ConfigurationError(f"{where}: key {key!r} must be a string, got {value!r}")
        return value
    if least is None:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{where}: key {key!r} must be true or false, got {value!r}")
        return value
    assert isinstance(least, int)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(
            f"{where}: key {key!r} must be an integer >= {least}, got {value!r}"
        )
    return value
