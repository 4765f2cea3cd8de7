"""Remote command lines and the parsing of what they print (no I/O here).

Every command is one shell line with every path and argument quoted; the small Python programs
that run remotely (``_probe.py``, ``_installer.py``) are sent with ``python -c``, so nothing has
to be uploaded before the first command. Their output is found by a line prefix, so text that a
login shell prints first (a banner, a module system's notice) does not get in the way.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER_NAME",
    "MIN_UV",
    "CheckOutcome",
    "RemoteFacts",
    "check_command",
    "installer_command",
    "parse_check",
    "parse_installer",
    "parse_probe",
    "previous_record_path",
    "probe_command",
]

#: The file whose presence (with the right key) means "this venv is complete".
MARKER_NAME = ".remote-futures-env.json"
#: The oldest remote uv whose ``venv`` / ``pip install`` options we rely on.
MIN_UV = "0.4.0"



def _compact(path: Path) -> str:
    """The program's source without docstrings and comments: it travels in every command."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and isinstance(body, list) and body and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
        ):
            body.pop(0)
            if not body:
                body.append(ast.Pass())
    return ast.unparse(tree) + "\n"


_HERE = Path(__file__).parent
_PROBE_SOURCE = _compact(_HERE / "_probe.py")
_INSTALLER_SOURCE = _compact(_HERE / "_installer.py")
_VENV_LINE = "@@rf-venv "
_MARKER_LINE = "@@rf-marker "
_PROBE_LINE = "@@rf-probe "
_PREVIOUS_LINE = "@@rf-previous "
_INSTALL_LINE = "@@rf-install "
_BROKEN_LINE = "@@rf-broken"
_PRUNED_LINE = "@@rf-pruned "


#: Minutes since its last use within which a venv is never pruned: jobs of the session that
#: used it (queued, or running for hours) still need it, however many others came since.
PRUNE_IDLE_MINUTES = 24 * 60


def _prune_snippet(root: str, platform: str, keep: int) -> str:
    """Shell lines removing all but the ``keep`` most recently used complete venvs.

    A venv's marker is touched at every cache hit, so ``ls -t`` of the markers orders venvs by
    last use. The venv of this sync (``$d``) is never removed, nor one used in the last
    ``PRUNE_IDLE_MINUTES`` (another session's jobs may still be queued in it), nor one whose
    sync is in progress (it has no marker yet, or holds a lock). A venv is first renamed away,
    so a job starting meanwhile fails to find it rather than running in a half-deleted tree."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    markers = f'{root}/{platform}-*/{MARKER_NAME}'
    return (
        f"ls -t {markers} 2>/dev/null | tail -n +{keep + 1} | while IFS= read -r m; do "
        f'v="${{m%/*}}"; if [ "$v" != "$d" ] && [ ! -d "$v".lock ] && '
        f'[ -z "$(find "$m" -mmin -{PRUNE_IDLE_MINUTES} 2>/dev/null)" ] && '
        f'mv "$v" "$v".old-$$ 2>/dev/null; then '
        f'rm -rf "$v".old-$$ "$v"-wheels; printf \'{_PRUNED_LINE}%s\\n\' "$v"; fi; done'
    )


@dataclasses.dataclass(frozen=True)
class RemoteFacts:
    """What the probe found out about the remote interpreter and host."""

    version: tuple[int, int, int]
    executable: str
    base_executable: str
    #: The probe ran in the (incomplete) target venv, not in the base interpreter.
    in_venv: bool
    system: str
    machine: str
    libc: tuple[str, str]
    markers: dict[str, str]
    packages: dict[str, str]
    home: str
    hostname: str
    #: argv prefix of a usable uv, or None.
    uv: tuple[str, ...] | None
    uv_version: str | None
    #: ``uv python find X.Y`` when this interpreter is another version and uv found one.
    matching_python: str | None
    notes: tuple[str, ...]

    @property
    def major_minor(self) -> str:
        """``"3.11"``."""
        return f"{self.version[0]}.{self.version[1]}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RemoteFacts:
        """Build from the probe's JSON."""
        return cls(
            version=(int(data["version"][0]), int(data["version"][1]), int(data["version"][2])),
            executable=str(data["executable"]),
            base_executable=str(data["base_executable"]),
            in_venv=bool(data["in_venv"]),
            system=str(data["system"]),
            machine=str(data["machine"]),
            libc=(str(data["libc"][0]), str(data["libc"][1])),
            markers={str(k): str(v) for k, v in data["markers"].items()},
            packages={str(k): str(v) for k, v in data["packages"].items()},
            home=str(data["home"]),
            hostname=str(data.get("hostname", "")),
            uv=tuple(data["uv"]) if data.get("uv") else None,
            uv_version=data.get("uv_version"),
            matching_python=data.get("matching_python"),
            notes=tuple(data.get("notes", ())),
        )


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """What the first command printed: the venv's path, and its marker or a probe."""

    venv_dir: str
    marker: dict[str, Any] | None
    facts: RemoteFacts | None
    #: The marker of the venv last built for this Python and platform (on a miss), if any.
    previous: dict[str, Any] | None = None
    #: The venv had a marker but its Python no longer starts: it is rebuilt.
    broken: bool = False
    #: Venvs removed because more than ``keep`` were there.
    pruned: tuple[str, ...] = ()


def home_relative(work_dir: str) -> str | None:
    """``work_dir`` relative to the remote home (commands start there), or None if absolute."""
    if work_dir.startswith("/"):
        return None
    return (work_dir[1:] if work_dir.startswith("~") else work_dir).strip("/")


def absolute_work_dir(work_dir: str, home: str) -> str:
    """``work_dir`` as an absolute path, given the remote home."""
    relative = home_relative(work_dir)
    if relative is None:
        return work_dir.rstrip("/")
    return f"{home.rstrip('/')}/{relative}".rstrip("/")


def envs_root(work_dir: str) -> str:
    """A shell word for ``<work_dir>/envs``; a relative work_dir is relative to ``$HOME``."""
    relative = home_relative(work_dir)
    if relative is None:
        return shlex.quote(work_dir.rstrip("/") + "/envs")
    return '"$HOME"/' + shlex.quote(f"{relative}/envs".lstrip("/"))


def uv_candidates(work_dir: str) -> list[str]:
    """Where the probe looks for uv, best first: our own copy, PATH, the usual install dirs."""
    relative = home_relative(work_dir)
    own = f"{work_dir.rstrip('/')}/bin/uv" if relative is None else f"./{relative}/bin/uv"
    own = own.replace("//", "/")
    return [own, "uv", "~/.local/bin/uv", "~/.cargo/bin/uv", "-m uv"]


def _probe_invocation(
    python_word: str, *, want: str, work_dir: str, uv_sha256: Sequence[str] = ()
) -> str:
    config = {
        "want": want, "uv_candidates": uv_candidates(work_dir), "min_uv": MIN_UV,
        # The work dir's own uv (the first candidate) is used only with one of these digests.
        "uv_sha256": list(uv_sha256),
    }
    return f"{python_word} -c {shlex.quote(_PROBE_SOURCE)} {shlex.quote(json.dumps(config))}"


def check_command(
    *, work_dir: str, python: str, want: str, key: str, uv_sha256: Sequence[str] = (),
    keep: int | None = None,
) -> str:
    """The first (and, when nothing changed, only) command of a sync.

    It prints the venv's absolute path, then either the marker (a complete venv whose Python
    still starts) or the probe of the interpreter (the half-made venv's own when it works,
    else the base ``python``) and the record of the previous venv, to tell what changed. A
    marked venv whose Python no longer starts (its base interpreter was removed, say) is
    reported broken and probed like a missing one, so it gets rebuilt. With ``keep``, it
    also removes all but the ``keep`` most recently used complete venvs of this Python and
    platform (never this one), in the same round trip.
    """
    root = envs_root(work_dir)
    platform = f'py{want}-"$(uname -s)-$(uname -m)"'
    marker = f'"$d"/{MARKER_NAME}'
    probe = _probe_invocation('"$p"', want=want, work_dir=work_dir, uv_sha256=uv_sha256)
    prune = "" if keep is None else _prune_snippet(root, platform, keep)
    return (
        f"d={root}/{platform}-{key}; l={root}/last-{platform}.json; "
        f"printf '{_VENV_LINE}%s\\n' \"$d\"; "
        # -S: whether the interpreter starts is the question (its base install may be gone);
        # skipping site saves a third of the start-up on every hit.
        f"if [ -f {marker} ] && \"$d\"/bin/python -S -c '' 2>/dev/null; then "
        f"touch {marker}; printf '{_MARKER_LINE}'; cat {marker}; echo; "
        f"else if [ -f {marker} ]; then printf '{_BROKEN_LINE}\\n'; fi; "
        f"if [ -f \"$l\" ]; then printf '{_PREVIOUS_LINE}'; cat \"$l\"; echo; fi; "
        f"if \"$d\"/bin/python -c '' 2>/dev/null; then p=\"$d\"/bin/python; "
        f"else p={shlex.quote(python)}; fi; {probe}; fi" + (f"; {prune}" if prune else "")
    )


def previous_record_path(venv_dir: str) -> str:
    """Where the installer records the last venv built for this Python and platform."""
    parent, _, name = venv_dir.rpartition("/")
    return f"{parent}/last-{name.rsplit('-', 1)[0]}.json"


def probe_command(
    *, python: str, want: str, work_dir: str, uv_sha256: Sequence[str] = ()
) -> str:
    """Probe ``python`` alone (``env="off"``, or after a damaged marker)."""
    return _probe_invocation(
        shlex.quote(python), want=want, work_dir=work_dir, uv_sha256=uv_sha256
    )


def installer_command(python: str) -> str:
    """Run the installer with ``python``; its JSON config goes to stdin."""
    return f"{shlex.quote(python)} -c {shlex.quote(_INSTALLER_SOURCE)}"


def _line(stdout: str, prefix: str) -> str | None:
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


def parse_probe(stdout: str) -> RemoteFacts | None:
    """The facts in a probe's output, or None when it printed none."""
    text = _line(stdout, _PROBE_LINE)
    if text is None:
        return None
    return RemoteFacts.from_json(json.loads(text))


def parse_check(stdout: str) -> CheckOutcome | None:
    """Parse :func:`check_command`'s output; None when it is not recognizable."""
    venv_dir = _line(stdout, _VENV_LINE)
    if venv_dir is None:
        return None
    return CheckOutcome(
        venv_dir.strip(),
        _json_object(_line(stdout, _MARKER_LINE)),
        parse_probe(stdout),
        _json_object(_line(stdout, _PREVIOUS_LINE)),
        broken=any(line.strip() == _BROKEN_LINE for line in stdout.splitlines()),
        pruned=tuple(
            line[len(_PRUNED_LINE):].strip()
            for line in stdout.splitlines() if line.startswith(_PRUNED_LINE)
        ),
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    """None when absent; an empty dict when damaged (present, but not ours)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_installer(stdout: str) -> dict[str, Any] | None:
    """The installer's JSON outcome, or None when it printed none (it crashed)."""
    text = _line(stdout, _INSTALL_LINE)
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None
