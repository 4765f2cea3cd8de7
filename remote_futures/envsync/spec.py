"""What the user asks for: the ``env=`` option of an executor, parsed into an :class:`EnvSpec`.

``env="sync"`` mirrors the local environment, ``env="off"`` uses the remote ``python`` as it is,
and a list of requirements or the path of a requirements file installs exactly that (plus
cloudpickle, which the worker needs). Everything is validated here, at construction, so that a
typo fails before any connection is made.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from packaging.requirements import InvalidRequirement, Requirement

from ..errors import ConfigurationError

__all__ = ["EnvSpec", "env_spec_from_option", "read_requirements_file"]

Mode = Literal["sync", "off", "explicit"]

#: Requirement-file options that uv understands in a requirements file and that make sense on
#: the remote side (indexes are URLs, so they mean the same thing there).
_PASS_THROUGH_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How the remote environment is prepared.

    ``mode``: ``"sync"`` mirrors the local environment (what ``pip list`` reports) into a venv
    on the remote side; ``"off"`` uses the given remote ``python`` as it is (its version and
    cloudpickle are still checked); ``"explicit"`` installs exactly ``requirements`` (plus
    cloudpickle) into a venv.

    ``exclude``: distribution names (or ``fnmatch`` patterns such as ``"nvidia-*"``) not to
    install in ``"sync"`` mode. ``extra``: requirements added to the wanted set; one naming a
    distribution that is also installed locally replaces the local pin.

    ``find_links``, ``index_url``, ``extra_index_urls``, ``no_index``: passed to uv *on the
    remote side*, so paths in ``find_links`` are remote paths. ``offline``: uv uses only its
    cache and ``find_links`` (``--offline``) and never downloads a Python interpreter.
    ``no_deps``: install exactly the pinned set without resolving dependencies (a faithful
    mirror of an environment whose metadata is inconsistent; by default uv resolves, which also
    adds dependencies that only the remote platform needs). ``system_site_packages``: the venv
    sees the remote interpreter's own packages, and those already at the wanted version are not
    installed again (useful with a cluster's tuned numpy or mpi4py). ``keep_envs``: how many
    complete venvs of one Python and platform to keep in the work directory (the most recently
    used; the one in use, and any used in the last day, are never removed); None keeps every
    one.
    """

    mode: Mode = "sync"
    requirements: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    no_index: bool = False
    offline: bool = False
    no_deps: bool = False
    system_site_packages: bool = False
    keep_envs: int | None = 3

    def __post_init__(self) -> None:
        if self.keep_envs is not None and (
            not isinstance(self.keep_envs, int) or isinstance(self.keep_envs, bool)
            or self.keep_envs < 1
        ):
            raise ConfigurationError(
                f"env keep_envs must be a positive integer or None, not {self.keep_envs!r}"
            )
        if self.mode not in ("sync", "off", "explicit"):
            raise ConfigurationError(
                f"env mode must be 'sync', 'off' or 'explicit', not {self.mode!r}"
            )
        # Accept any sequence for convenience but store tuples, so the spec stays hashable.
        for name in ("requirements", "exclude", "extra", "find_links", "extra_index_urls"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigurationError(f"env {name} must be a list of strings, not a string")
            object.__setattr__(self, name, tuple(value))
        if self.mode != "explicit" and self.requirements:
            raise ConfigurationError("env requirements are only used in 'explicit' mode")
        for line in (*self.requirements, *self.extra):
            _validate_requirement(line)

    def uv_options(self) -> list[str]:
        """The index options for ``uv pip install`` (they also enter the environment's hash)."""
        options: list[str] = []
        if self.index_url:
            options += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            options += ["--extra-index-url", url]
        for link in self.find_links:
            options += ["--find-links", link]
        if self.no_index:
            options.append("--no-index")
        if self.no_deps:
            options.append("--no-deps")
        return options


def env_spec_from_option(
    value: str | os.PathLike[str] | Sequence[str] | EnvSpec | None,
    *,
    exclude: Iterable[str] = (),
    extra: Iterable[str] = (),
    find_links: Iterable[str] = (),
    index_url: str | None = None,
    no_index: bool = False,
    offline: bool = False,
    keep_envs: int | None = 3,
) -> EnvSpec:
    """Parse an executor's ``env=`` option.

    ``value`` is ``"sync"`` (also ``None``), ``"off"``, a list of requirement strings, the path
    of a requirements file (read now, ``-r`` includes followed), or an :class:`EnvSpec`, which
    is returned unchanged (the keyword arguments only apply to the other forms). Raises
    :class:`~remote_futures.errors.ConfigurationError` on anything else.
    """
    if isinstance(value, EnvSpec):
        return value
    def make(mode: Mode, requirements: tuple[str, ...] = ()) -> EnvSpec:
        return EnvSpec(
            mode=mode, requirements=requirements, exclude=tuple(exclude), extra=tuple(extra),
            find_links=tuple(find_links), index_url=index_url, no_index=no_index,
            offline=offline, keep_envs=keep_envs,
        )

    if value is None or value == "sync":
        return make("sync")
    if value == "off":
        return make("off")
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise ConfigurationError(
                f"env={os.fspath(value)!r}: expected 'sync', 'off', a list of requirements or the "
                "path of a requirements file, and no such file exists"
            )
        return make("explicit", read_requirements_file(path))
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return make("explicit", tuple(value))
    raise ConfigurationError(
        f"env= must be 'sync', 'off', a list of requirement strings, a requirements file path "
        f"or an EnvSpec, not {value!r}"
    )


def read_requirements_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The requirement lines of a requirements file, with ``-r`` includes expanded.

    Comments and blank lines are dropped; index options (``--index-url``, ``--find-links``...)
    are kept for uv. A local path or an editable (``-e``) line is refused: such a project has
    to be installed locally and synced with ``env="sync"``, which ships it.
    """
    return tuple(_read(Path(path), seen=set()))


def _read(path: Path, *, seen: set[Path]) -> list[str]:
    resolved = path.resolve()
    if resolved in seen:  # an include cycle would otherwise recurse forever
        return []
    seen.add(resolved)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read requirements file {path}: {exc}") from exc
    lines: list[str] = []
    for raw in _logical_lines(text):
        line = raw.split(" #", 1)[0].strip() if not raw.startswith("#") else ""
        if not line:
            continue
        first, _, rest = line.partition(" ")
        if first in ("-r", "--requirement"):
            lines += _read(path.parent / rest.strip(), seen=seen)
        elif first in _PASS_THROUGH_OPTIONS or first.startswith(("--index-url=", "--find-links=")):
            lines.append(line)
        elif first in ("-e", "--editable") or line.startswith((".", "/", "file:")):
            raise ConfigurationError(
                f"{path}: {line!r} is a local or editable project; install it locally and use "
                "env='sync' (which ships it), or give a requirement installable by name or URL"
            )
        elif first.startswith("-"):
            raise ConfigurationError(f"{path}: option {first!r} is not supported in env files")
        else:
            _validate_requirement(line, where=str(path))
            lines.append(line)
    return lines


def _logical_lines(text: str) -> Iterable[str]:
    # pip's format allows a trailing backslash to continue a line.
    pending = ""
    for physical in text.splitlines():
        if physical.endswith("\\"):
            pending += physical[:-1]
            continue
        yield (pending + physical).strip()
        pending = ""
    if pending:
        yield pending.strip()


def _validate_requirement(line: str, *, where: str = "env") -> None:
    if line.startswith("-"):
        return  # an index option line from a requirements file
    try:
        Requirement(line)
    except InvalidRequirement as exc:
        raise ConfigurationError(f"{where}: invalid requirement {line!r}: {exc}") from exc
