"""Bring a remote Python environment in line with the wanted set: :func:`sync_environment`.

Round trips, on a miss and on a hit::

    hit:   check ───────────────────────────────────────────────▶ venv python   (1 command)
    miss:  check+probe ─▶ [bootstrap uv] ─▶ [upload wheels] ─▶ installer ─▶ venv python
                                                                (lock, uv venv, ONE uv pip
                                                                 install, verify, marker)
    no index there: ... installer fails to connect ─▶ download wheels here for its platform
                         ─▶ upload them ─▶ installer (ONE uv pip install --no-index)

The venv's directory is named by a hash of the wanted set, the Python major.minor and the remote
platform (a local project by what it installs: its metadata, not its files, since the caller's
own modules travel with each job). A venv with a marker is complete and never changed again, so
jobs running in it are safe from a later sync; a changed set gets a new venv, which uv fills
from its cache. The check also starts the venv's Python (a venv whose base interpreter went
away is rebuilt) and removes all but ``keep_envs`` venvs, least recently used first.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import logging
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio

from ..errors import RemoteEnvironmentError
from ..shell import CommandResult, Shell
from . import bootstrap, remote, report, ship, wheelhouse
from .plan import InstallPlan, Wanted, WantedItem, env_key, plan_install, wanted_set
from .remote import MARKER_NAME, RemoteFacts
from .snapshot import LocalDist, canonical_name, local_distributions
from .spec import EnvSpec

__all__ = ["SyncResult", "sync_environment"]

log = logging.getLogger("remote_futures.envsync")

_PROBE_TIMEOUT = bootstrap.PROBE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_environment` did, and the interpreter to run the worker with."""

    #: The remote interpreter for jobs: ``<venv>/bin/python``, or the given one when "off".
    python: str
    #: The venv's absolute directory (None when "off").
    venv_dir: str | None
    #: Requirement lines installed by this call (empty when the venv was already complete).
    installed: list[str]
    #: (name, reason) of wanted distributions that cannot exist on the remote platform.
    skipped: list[tuple[str, str]]
    #: Distributions built into a wheel here and uploaded ("name (wheel)"), or whose modules
    #: are pickled by value instead ("name (by value)").
    shipped: list[str]
    #: Commands and file transfers this call made: 1 when nothing changed.
    round_trips: int
    #: (name, reason) of local distributions deliberately not mirrored (pip, uv...).
    excluded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: Modules registered with ``cloudpickle.register_pickle_by_value`` in this process.
    by_value: list[str] = dataclasses.field(default_factory=list)
    #: True when the venv was found complete (the marker matched) and nothing was installed.
    cached: bool = False
    #: (name, old, new) against the previous venv of this Python and platform (or against what
    #: the probed interpreter had); None stands for "absent".
    changed: list[tuple[str, str | None, str | None]] = dataclasses.field(default_factory=list)
    #: Wheels downloaded here and uploaded because the remote side could not reach the index.
    uploaded_wheels: list[str] = dataclasses.field(default_factory=list)


class _CountingShell:
    """Counts round trips; the sync reports them and the tests hold it to one on a hit."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.count = 0

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        self.count += 1
        return await self.shell.run(command, input=input, timeout=timeout)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        self.count += 1
        await self.shell.write_file(path, data, mode=mode)

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        self.count += 1
        await self.shell.makedirs(path, mode=mode)


def _local_dists(local: Mapping[str, str] | Iterable[LocalDist] | None) -> dict[str, LocalDist]:
    if local is None:
        return local_distributions()
    if isinstance(local, Mapping):
        return {
            canonical_name(name): LocalDist(canonical_name(name), str(version))
            for name, version in local.items()
        }
    return {dist.name: dist for dist in local}


async def sync_environment(
    shell: Shell,
    *,
    python: str,
    work_dir: str,
    spec: EnvSpec,
    local: Mapping[str, str] | Iterable[LocalDist] | None = None,
    lock_timeout: float = 1800.0,
    stale_lock_after: float = 120.0,
) -> SyncResult:
    """Make a remote venv under ``work_dir`` hold the wanted set; return its interpreter.

    ``python`` is the remote interpreter to start from (a name on the remote PATH or a path);
    ``work_dir`` a remote directory (relative paths are relative to the remote home). ``local``
    replaces the local snapshot (a ``{name: version}`` mapping or :class:`LocalDist` records),
    for tests and for tools that know better. Two clients syncing the same venv wait for each
    other on a lock directory; a holder silent for ``stale_lock_after`` seconds is presumed
    dead, and a waiter gives up after ``lock_timeout`` seconds.

    Raises :class:`~remote_futures.errors.RemoteEnvironmentError` when the remote Python is
    another major.minor and uv cannot provide a matching one, when uv is missing and cannot be
    bootstrapped, and when the installation fails (with uv's own message).
    """
    counting = _CountingShell(shell)
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if spec.mode == "off":
        return await _check_only(counting, shell.label, python=python, want=want, work_dir=work_dir)
    dists = await anyio.to_thread.run_sync(_local_dists, local)
    wanted = wanted_set(spec, dists, cloudpickle_version=importlib.metadata.version("cloudpickle"))
    fingerprints = await anyio.to_thread.run_sync(_fingerprints, wanted, dists)
    key = env_key(wanted, spec=spec, python_version=want, python=python, fingerprints=fingerprints)
    for name, reason in wanted.excluded:
        log.debug("not mirrored: %s (%s)", name, reason)

    uv_digests = await anyio.to_thread.run_sync(ship.local_uv_digests)
    done = await counting.run(
        remote.check_command(
            work_dir=work_dir, python=python, want=want, key=key, uv_sha256=uv_digests,
            keep=spec.keep_envs,
        ),
        timeout=_PROBE_TIMEOUT,
    )
    check = remote.parse_check(done.stdout)
    if check is None:
        raise report.probe_failed(shell.label, python, done)
    venv_dir = check.venv_dir
    for old in check.pruned:
        log.info("%s: removed the old environment %s (keep_envs=%s)", shell.label, old,
                 spec.keep_envs)
    if check.marker is not None and check.marker.get("key") == key:
        return _from_marker(check.marker, venv_dir, wanted, counting.count, shell.label)
    if check.broken:
        log.warning("%s: the environment %s no longer runs (was its base Python removed?); "
                    "rebuilding it", shell.label, venv_dir)
    facts = check.facts
    if facts is None:  # a damaged marker: probe the base interpreter on its own
        done = await counting.run(
            remote.probe_command(
                python=python, want=want, work_dir=work_dir, uv_sha256=uv_digests
            ),
            timeout=_PROBE_TIMEOUT,
        )
        facts = remote.parse_probe(done.stdout)
        if facts is None:
            raise report.probe_failed(shell.label, python, done)
    log.info(
        "%s: environment %s not there yet; remote Python %s at %s",
        shell.label, key, ".".join(map(str, facts.version)), facts.executable,
    )

    uv = facts.uv or await bootstrap.bootstrap_uv(
        counting, facts, work_dir, python, spec, shell.label
    )
    base = await bootstrap.base_interpreter(counting, facts, uv, want, spec, shell.label)
    requires = await anyio.to_thread.run_sync(_requires, dists, wanted) if local is None else {}
    # The probe ran in the target venv itself only when resuming an interrupted sync; a
    # `python` that merely is some venv of the user's is not where we install.
    in_target = facts.in_venv and facts.executable.startswith(venv_dir.rstrip("/") + "/")
    plan = plan_install(
        wanted,
        markers=facts.markers,
        remote_packages=facts.packages if in_target or spec.system_site_packages else {},
        requires=requires,
        remote_is_target=in_target,
    )
    report.log_plan(plan, shell.label)
    install, shipped, by_value, skipped = await _ship(counting, plan, dists, venv_dir, spec)

    lines = [item.requirement for item in install if item.origin != "option"]
    marker_data = {
        "key": key,
        "python": f"{venv_dir}/bin/python",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "installed": lines,
        "skipped": skipped,
        "shipped": shipped,
        "by_value": by_value,
        "fingerprints": fingerprints,
    }
    config = {
        "venv": venv_dir,
        "marker": f"{venv_dir}/{MARKER_NAME}",
        "marker_data": marker_data,
        "key": key,
        "lock": f"{venv_dir}.lock",
        "uv": list(uv),
        "python": base,
        "downloads": not spec.offline,
        "want": want,
        "requirements": "".join(f"{item.requirement}\n" for item in install),
        "requirements_path": f"{venv_dir}/.remote-futures-requirements.txt",
        "previous_path": remote.previous_record_path(venv_dir),
        "uv_options": spec.uv_options(),
        "offline": spec.offline,
        "system_site_packages": spec.system_site_packages,
        "lock_timeout": lock_timeout,
        "stale_after": stale_lock_after,
        "heartbeat": max(1.0, min(10.0, stale_lock_after / 4)),
    }
    log.info("%s: installing %d distribution(s) into %s", shell.label, len(install), venv_dir)
    outcome = await _install(counting, facts.executable, config, shell.label)
    uploaded: list[str] = []
    if (
        outcome["status"] == "error" and outcome.get("stage") == "install"
        and not spec.offline and wheelhouse.network_failure(str(outcome.get("detail", "")))
    ):
        # An air-gapped login node: resolve and download the wheels here, for its platform.
        log.warning("%s: the remote side cannot reach the package index; downloading the "
                    "wheels here and uploading them", shell.label)
        uploaded = await _upload_wheelhouse(counting, install, facts, spec, venv_dir,
                                            shell.label)
        config = dict(
            config,
            requirements="".join(f"{line}\n" for line in wheelhouse.offline_requirements(install)),
            uv_options=[*_without_indexes(spec.uv_options()), "--no-index", "--find-links",
                        f"{venv_dir}-wheels"],
        )
        outcome = await _install(counting, facts.executable, config, shell.label)
    if outcome["status"] == "error":
        error = report.install_error(outcome, config, install, shell.label)
        if outcome.get("stage") == "venv" and base == want:
            # We asked uv for a matching interpreter, and it could not provide one.
            error = report.version_error(
                shell.label, facts, want, f"uv could not provide Python {want} either: {error}"
            )
        raise error
    installed = lines if outcome["status"] == "installed" else []
    changed: list[tuple[str, str | None, str | None]] = (
        report.changes(check.previous, marker_data) if check.previous else list(plan.changes)
    )
    report.log_outcome(shell.label, outcome, venv_dir, installed, changed)
    return SyncResult(
        python=f"{venv_dir}/bin/python",
        venv_dir=venv_dir,
        installed=installed,
        skipped=[(name, reason) for name, reason in skipped],
        shipped=shipped,
        round_trips=counting.count,
        excluded=list(wanted.excluded),
        by_value=by_value,
        changed=changed,
        uploaded_wheels=uploaded,
    )


def _fingerprints(wanted: Wanted, dists: Mapping[str, LocalDist]) -> dict[str, str]:
    return {
        item.name: ship.install_fingerprint(dists.get(item.name), item.source.path)
        for item in wanted.to_ship if item.source.path
    }


def _requires(dists: Mapping[str, LocalDist], wanted: Wanted) -> dict[str, list[str]]:
    return {
        item.name: dists[item.name].requires()
        for item in wanted.items if item.origin == "local" and item.name in dists
    }


def _from_marker(
    marker: dict[str, Any], venv_dir: str, wanted: Wanted, round_trips: int, label: str
) -> SyncResult:
    by_value = ship.register_by_value([str(m) for m in marker.get("by_value", [])])
    skipped = [(str(n), str(r)) for n, r in marker.get("skipped", [])]
    for name, reason in skipped:
        log.info("%s: not installed remotely: %s: %s", label, name, reason)
    log.info("%s: environment up to date: %s", label, venv_dir)
    return SyncResult(
        python=str(marker.get("python") or f"{venv_dir}/bin/python"),
        venv_dir=venv_dir,
        installed=[],
        skipped=skipped,
        shipped=[str(s) for s in marker.get("shipped", [])],
        round_trips=round_trips,
        excluded=list(wanted.excluded),
        by_value=by_value,
        cached=True,
    )


async def _check_only(
    shell: _CountingShell, label: str, *, python: str, want: str, work_dir: str
) -> SyncResult:
    done = await shell.run(
        remote.probe_command(python=python, want=want, work_dir=work_dir), timeout=_PROBE_TIMEOUT
    )
    facts = remote.parse_probe(done.stdout)
    if facts is None:
        raise report.probe_failed(label, python, done)
    if facts.major_minor != want:
        raise report.version_error(label, facts, want, "env='off' uses the remote python as it is")
    if "cloudpickle" not in facts.packages:
        raise RemoteEnvironmentError(
            f"{label}: the remote {python} ({facts.executable}) has no cloudpickle, which the "
            f"worker needs: install it there (pip install --user cloudpickle) or use env='sync'"
        )
    return SyncResult(python=python, venv_dir=None, installed=[], skipped=[], shipped=[],
                      round_trips=shell.count)


async def _ship(
    shell: _CountingShell, plan: InstallPlan, dists: Mapping[str, LocalDist], venv_dir: str,
    spec: EnvSpec,
) -> tuple[list[WantedItem], list[str], list[str], list[list[str]]]:
    """Build and upload what cannot be installed by name; fall back to pickling by value."""
    install: list[WantedItem] = []
    shipped: list[str] = []
    by_value: list[str] = []
    skipped = [[name, reason] for name, reason in plan.skipped]
    wheel_dir = f"{venv_dir}-wheels"
    made_dir = False
    for item in plan.install:
        if item.source.kind != "ship" or item.source.path is None:
            install.append(item)
            continue
        try:
            wheel = await ship.build_wheel(item.source.path, offline=spec.offline)
        except ship.BuildError as exc:
            dist = dists.get(item.name)
            modules = ship.pure_modules(dist) if dist is not None else None
            registered = ship.register_by_value(modules) if modules else []
            if registered:
                log.warning("%s: no wheel could be built from %s; its modules %s are pickled by "
                            "value instead", item.name, item.source.path, ", ".join(registered))
                shipped.append(f"{item.name} (by value)")
                by_value += registered
            else:
                log.warning("%s: cannot ship it, not installed remotely: no wheel could be "
                            "built:\n%s", item.name, exc)
                skipped.append([item.name, f"local project {item.source.path}: no wheel could "
                                f"be built and it is not pure Python modules"])
            continue
        if not made_dir:
            await shell.makedirs(wheel_dir)
            made_dir = True
        target = f"{wheel_dir}/{wheel.name}"
        await shell.write_file(target, await anyio.Path(wheel).read_bytes())
        if wheel.parent.name.startswith("rf-wheel-"):
            shutil.rmtree(wheel.parent, ignore_errors=True)
        kind = "editable project" if item.source.editable else "local project"
        log.info("%s: %s %s built into %s and uploaded", item.name, kind, item.source.path,
                 wheel.name)
        shipped.append(f"{item.name} (wheel)")
        install.append(dataclasses.replace(item, requirement=f"{item.name} @ file://{target}"))
    return install, shipped, by_value, skipped


async def _upload_wheelhouse(
    shell: _CountingShell, install: Sequence[WantedItem], facts: RemoteFacts, spec: EnvSpec,
    venv_dir: str, label: str,
) -> list[str]:
    """Download the wheels of ``install`` for the remote platform; upload them beside the
    venv (where shipped wheels go). Returns the uploaded file names."""
    wheels = await wheelhouse.download_wheels(install, facts, spec, label)
    if not wheels:
        return []
    size = 0
    try:
        target = f"{venv_dir}-wheels"
        await shell.makedirs(target)
        for wheel in wheels:
            data = await anyio.Path(wheel).read_bytes()
            size += len(data)
            await shell.write_file(f"{target}/{wheel.name}", data)
    finally:
        shutil.rmtree(wheels[0].parent, ignore_errors=True)
    log.info("%s: uploaded %d wheels (%d MB) for an index it cannot reach", label, len(wheels),
             size >> 20)
    return [wheel.name for wheel in wheels]


def _without_indexes(options: Sequence[str]) -> list[str]:
    """uv options without the index ones (each of which takes a value)."""
    kept: list[str] = []
    skip = False
    for option in options:
        if skip:
            skip = False
        elif option in ("--index-url", "--extra-index-url", "--find-links"):
            skip = True
        elif option != "--no-index":
            kept.append(option)
    return kept


async def _install(
    shell: _CountingShell, python: str, config: dict[str, Any], label: str
) -> dict[str, Any]:
    """Run the installer; its outcome, with ``status`` installed, present or error."""
    done = await shell.run(
        remote.installer_command(python), input=json.dumps(config).encode(), timeout=None
    )
    outcome = remote.parse_installer(done.stdout)
    if outcome is None:
        raise RemoteEnvironmentError(
            f"{label}: the environment installer did not finish (exit {done.returncode}): "
            f"{(done.stderr.strip() or done.stdout.strip())[-3000:]}"
        )
    for why in outcome.get("broken_locks", []):
        log.warning("%s: broke a stale lock on %s: %s", label, config["lock"], why)
    if outcome.get("waited", 0) > 1:
        log.info("%s: waited %.1f s for another client's sync", label, outcome["waited"])
    for line in str(outcome.get("install_log", "")).splitlines():
        log.debug("uv: %s", line)
    return outcome

