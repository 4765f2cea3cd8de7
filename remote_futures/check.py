"""``remote-futures check``: can this target run calls? Look, change nothing, say what is wrong.

:func:`check_target` resolves a transport or profile as ``RemoteExecutor`` would, connects,
and reports the remote Python, the scheduler and its version, the work directory, and what
environment sync would install (a dry run: nothing is created, built or uploaded). The first
problem found stops the check and is named precisely (cannot connect to HOST:PORT, host key
mismatch, python missing, version mismatch, scheduler command missing).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import posixpath
import shlex
import sys
from typing import Any

import anyio

from .config import resolve_target
from .envsync import local_distributions, ship
from .envsync import remote as env_remote
from .envsync.plan import env_key, plan_install, wanted_set
from .errors import ConfigurationError, RemoteFuturesError
from .login_node import PROBE_COMMANDS, SCHEDULER_COMMANDS, identify_scheduler
from .runtime import make_transport
from .shell import Shell
from .terminal import paint
from .transports.remote import RemoteTransport

__all__ = ["CheckReport", "check_target", "format_report"]

_TIMEOUT = 60.0
#: Distributions listed in the report for people (all of them with --json).
_SHOWN = 12


@dataclasses.dataclass
class CheckReport:
    """What a check found; ``problem`` is None when the target is ready."""

    target: str
    transport: str
    where: str = ""
    python: str | None = None
    python_version: str | None = None
    scheduler: str | None = None
    scheduler_version: str | None = None
    work_dir: str | None = None
    work_dir_exists: bool | None = None
    env: str | None = None
    #: Requirement lines env sync would install (empty: the environment is up to date).
    would_install: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: A short kind (``connect``, ``host-key``, ``python-missing``, ``version-mismatch``,
    #: ``scheduler-missing``, ``wrong-scheduler``, ``config``...) and the full message.
    problem_kind: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dictionary (``--json``)."""
        return {**dataclasses.asdict(self), "ok": self.ok}


class _Problem(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_target(target: str, options: dict[str, Any]) -> CheckReport:
    """Check ``target`` (a transport or profile name) with ``options`` overriding the profile."""
    report = CheckReport(target=target, transport="?")
    try:
        resolved = resolve_target(target, options)
        report.transport = resolved.transport
        transport = make_transport(resolved, resolved.executor_options.get("max_workers"))
        if not isinstance(transport, RemoteTransport):
            raise _Problem(
                "unsupported",
                f"check supports ssh, slurm, pbs and sge targets, not {resolved.transport!r}",
            )
        report.where = transport.shell.label
        anyio.run(_check_remote, transport, report)
    except _Problem as problem:
        report.problem_kind, report.problem = problem.kind, str(problem)
    except ConfigurationError as exc:
        report.problem_kind, report.problem = "config", str(exc)
    return report


async def _check_remote(transport: RemoteTransport, report: CheckReport) -> None:
    shell = transport.shell
    options = transport.options
    if hasattr(shell, "reconnect_attempts"):
        shell.reconnect_attempts = 1  # a check reports a refusal at once, it does not insist
    try:
        with anyio.fail_after(_TIMEOUT):
            await shell.open()
    except TimeoutError:
        raise _Problem("connect", f"cannot connect to {shell.label}: no answer in "
                       f"{_TIMEOUT:.0f} s") from None
    except RemoteFuturesError as exc:
        text = str(exc)
        kind = "host-key" if "host key" in text.lower() else (
            "auth" if "authentication" in text.lower() else "connect")
        raise _Problem(kind, text) from None
    try:
        with anyio.fail_after(_TIMEOUT):
            await _inspect(shell, transport, report, options)
    finally:
        with anyio.move_on_after(10, shield=True):
            await shell.close()


async def _inspect(
    shell: Shell, transport: RemoteTransport, report: CheckReport, options: Any
) -> None:
    home = await shell.home()
    work = options.work_dir or "~/.remote_futures"
    if work == "~" or work.startswith("~/"):
        work = posixpath.join(home, work[2:])
    report.work_dir = work
    report.work_dir_exists = (await shell.run(f"test -d {shlex.quote(work)}")).ok

    if transport.name in SCHEDULER_COMMANDS:
        commands = SCHEDULER_COMMANDS[transport.name]
        found = await shell.run(
            "for c in " + " ".join(commands) + "; do command -v \"$c\" >/dev/null || echo \"$c\";"
            " done"
        )
        missing = found.stdout.split()
        if missing:
            raise _Problem(
                "scheduler-missing",
                f"{shell.label}: {', '.join(missing)} not found on the PATH of a login shell "
                f"there: is this {transport.name}'s login node?",
            )
        probe = await shell.run(f"{PROBE_COMMANDS[transport.name]} 2>&1; true")
        kind, version = identify_scheduler(probe.stdout + probe.stderr)
        report.scheduler, report.scheduler_version = kind or transport.name, version
        if kind is not None and kind != transport.name:
            raise _Problem(
                "wrong-scheduler",
                f"{shell.label}: {commands[0]} there belongs to {kind} ({version}), not "
                f"{transport.name}",
            )

    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    done = await shell.run(
        env_remote.probe_command(python=options.python, want=want, work_dir=work)
    )
    facts = env_remote.parse_probe(done.stdout)
    if facts is None:
        said = (done.stderr.strip() or done.stdout.strip())[-500:]
        raise _Problem(
            "python-missing",
            f"{shell.label}: cannot run the remote python {options.python!r} "
            f"(exit {done.returncode}): {said}",
        )
    report.python = facts.executable
    report.python_version = ".".join(map(str, facts.version))
    spec = options.env
    report.env = spec.mode if spec.mode in ("sync", "off") else "requirements"
    if facts.major_minor != want:
        message = (
            f"{shell.label}: the remote Python is {report.python_version} ({facts.executable}) "
            f"but this one is {'.'.join(map(str, sys.version_info[:3]))}; calls need the same "
            f"major.minor ({want})"
        )
        if spec.mode == "off":
            raise _Problem("version-mismatch", message + " (env='off' uses it as it is)")
        if facts.uv is None and facts.matching_python is None:
            raise _Problem("version-mismatch", message + ", and there is no uv there to "
                           "provide one")
        report.notes.append(message + f"; env sync will use uv's Python {want}")
    if spec.mode == "off":
        if "cloudpickle" not in facts.packages:
            raise _Problem("python-missing",
                           f"{shell.label}: the remote {options.python} has no cloudpickle")
        return
    await _dry_run(shell, report, options.python, work, want, spec, facts)


async def _dry_run(
    shell: Shell, report: CheckReport, python: str, work: str, want: str, spec: Any, facts: Any
) -> None:
    """What env sync would install: the same wanted set and key as a sync, nothing changed."""
    dists = await anyio.to_thread.run_sync(local_distributions)
    wanted = wanted_set(spec, dists, cloudpickle_version=importlib.metadata.version("cloudpickle"))
    fingerprints = {
        item.name: ship.fingerprint(item.source.path)
        for item in wanted.to_ship if item.source.path
    }
    key = env_key(wanted, spec=spec, python_version=want, python=python,
                  fingerprints=fingerprints)
    done = await shell.run(
        env_remote.check_command(work_dir=work, python=python, want=want, key=key)
    )
    check = env_remote.parse_check(done.stdout)
    if check is not None and check.marker is not None and check.marker.get("key") == key:
        report.notes.append(f"environment up to date: {check.venv_dir}")
        return
    probed = check.facts if check is not None and check.facts is not None else facts
    plan = plan_install(
        wanted, markers=probed.markers,
        remote_packages=probed.packages if spec.system_site_packages else {},
        remote_is_target=False,
    )
    report.would_install = [item.requirement for item in plan.packages]
    for name, reason in plan.skipped:
        report.notes.append(f"not installed there: {name} ({reason})")
    if check is not None:
        report.notes.append(f"env sync would build {check.venv_dir}")


def format_report(report: CheckReport, *, colour: bool = False) -> str:
    """The report for people (the verdict coloured where a terminal shows it)."""
    lines = [f"target      {report.target} ({report.transport}"
             + (f" on {report.where})" if report.where else ")")]
    if report.python:
        lines.append(f"python      {report.python_version} ({report.python})")
    if report.scheduler:
        lines.append(f"scheduler   {report.scheduler} {report.scheduler_version or ''}".rstrip())
    if report.work_dir:
        exists = "" if report.work_dir_exists else " (not created yet)"
        lines.append(f"work dir    {report.work_dir}{exists}")
    if report.env:
        lines.append(f"env         {report.env}")
    if report.would_install:
        shown = report.would_install[:_SHOWN]
        more = len(report.would_install) - len(shown)
        lines.append(f"would install {len(report.would_install)} distribution(s): "
                     + ", ".join(shown) + (f" and {more} more (--json lists all)" if more else ""))
    lines += [f"note        {note}" for note in report.notes]
    if report.problem:
        lines.append(paint(f"PROBLEM ({report.problem_kind}): {report.problem}", "red", colour))
    else:
        lines.append(paint("ok", "green", colour))
    return "\n".join(lines)
