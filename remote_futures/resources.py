"""What a job asks the scheduler for, in one scheduler-neutral vocabulary.

Names follow the DESIGN and, where it has one, dask-jobqueue's vocabulary: ``cores`` is accepted
for ``cpus`` and ``queue`` for ``partition`` (:meth:`Resources.from_mapping`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

__all__ = ["Resources", "check_line"]

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$|^(\d+)$")
_ALIASES = {"cores": "cpus", "queue": "partition", "project": "account"}
#: Characters that could end a line of the job script (or hide text in it): every C0 control
#: character except tab, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def check_line(value: str, what: str) -> str:
    """Return ``value``, or raise :class:`ConfigurationError` when it holds a newline or
    another control character.

    Resource values end up on lines of a job script (``#SBATCH --partition=...``): a newline
    in one would start a line of the caller's choosing, such as an extra directive or a shell
    command, so it is refused before anything is submitted."""
    found = _CONTROL.search(value)
    if found is not None:
        raise ConfigurationError(
            f"{what} {value!r} contains the control character {found.group()!r} at position "
            f"{found.start()}: resource values must be single lines"
        )
    return value


@dataclasses.dataclass(frozen=True)
class Resources:
    """Resources of one job (each array task of a ``map`` gets the same).

    ``memory`` is a size such as ``"8G"`` or ``"512M"``; ``walltime`` is ``"HH:MM:SS"``,
    ``"D-HH:MM:SS"`` or a number of minutes. ``job_extra_directives`` are added verbatim to the
    scheduler header (without the ``#SBATCH``/``#PBS``/``#$`` prefix); ``job_script_prologue``
    lines run before the worker (``module load python``, ``source ~/env``...).
    """

    cpus: int | None = None
    memory: str | None = None
    walltime: str | None = None
    gpus: int | None = None
    partition: str | None = None
    account: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("memory", "walltime", "partition", "account"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str | int | float) or isinstance(value, bool):
                    raise ConfigurationError(
                        f"Resources.{name} must be a string, got {type(value).__name__}"
                    )
                check_line(str(value), f"Resources.{name}")
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"Resources.{name} must be a positive integer, got {value!r}"
                )
        if self.memory is not None:
            self.memory_megabytes()  # validates
        if self.walltime is not None:
            self.walltime_seconds()  # validates
        for name in ("job_extra_directives", "job_script_prologue"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigurationError(
                    f"Resources.{name} must be a list of strings, not a string"
                )
            lines = tuple(str(v) for v in value)
            for index, line in enumerate(lines):
                check_line(line, f"Resources.{name}[{index}]")
            object.__setattr__(self, name, lines)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "resources") -> Resources:
        """Build from a dict (a TOML table or keyword options), accepting dask-style aliases."""
        fields = {f.name for f in dataclasses.fields(cls)}
        normalized: dict[str, Any] = {}
        for key, value in values.items():
            name = _ALIASES.get(key, key)
            if name not in fields:
                valid = ", ".join(sorted(fields | set(_ALIASES)))
                raise ConfigurationError(f"unknown resource {key!r} in {where}; valid: {valid}")
            normalized[name] = value
        return cls(**normalized)

    @classmethod
    def coerce(cls, value: Any) -> Resources:
        """A :class:`Resources` as it is, or one built from a table of its fields (an option's
        value from a profile or a keyword); anything else is a :class:`ConfigurationError`."""
        if isinstance(value, Resources):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        raise ConfigurationError(f"must be a Resources or a table of resources, got {value!r}")

    def merged(self, other: Resources | None) -> Resources:
        """These resources with every field that ``other`` sets taken from ``other``."""
        if other is None:
            return self
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(other)
            if getattr(other, f.name) not in (None, ())
        }
        return dataclasses.replace(self, **changes)

    def memory_megabytes(self) -> int | None:
        """The memory request in MiB (``"8G"`` -> 8192), or None."""
        if self.memory is None:
            return None
        match = _MEMORY.match(str(self.memory))
        if not match:
            raise ConfigurationError(
                f"Resources.memory {self.memory!r} is not a size like '512M' or '8G'"
            )
        number, unit = float(match.group(1)), match.group(2).upper()
        factor = {"": 1 / 1024 / 1024, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
        if unit == "" and "b" not in str(self.memory).lower():
            factor = 1  # a bare number means megabytes, as sbatch --mem does
        return max(1, int(number * factor + 0.999))

    def walltime_seconds(self) -> int | None:
        """The walltime in seconds, or None."""
        if self.walltime is None:
            return None
        match = _WALLTIME.match(str(self.walltime).strip())
        if not match:
            raise ConfigurationError(
                f"Resources.walltime {self.walltime!r} is not 'HH:MM:SS', 'D-HH:MM:SS' or minutes"
            )
        if match.group(5) is not None:
            return int(match.group(5)) * 60
        days = int(match.group(1) or 0)
        hours, minutes, seconds = (int(match.group(i)) for i in (2, 3, 4))
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds

    def walltime_hms(self) -> str | None:
        """The walltime as ``HH:MM:SS`` (hours may exceed 24), or None."""
        total = self.walltime_seconds()
        if total is None:
            return None
        return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
