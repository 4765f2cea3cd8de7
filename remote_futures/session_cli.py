"""``remote-futures jobs / logs / cancel / clean``: sessions and job directories, by hand.

``jobs`` and ``logs`` read the session ledger (:mod:`remote_futures.session`) and ask the
scheduler and the job directories what the ledger cannot know (a client that died records
nothing after its death); ``cancel`` cancels a session's jobs with the scheduler's own command;
``clean`` removes old job directories and unused venvs of a target, as a dry run unless
``--yes``. Each prints a table for people, or JSON with ``--json``.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import worker
from .attach import ATTACHABLE, find_session, handle_of, open_session_transport
from .config import resolve_target
from .envsync.remote import MARKER_NAME
from .errors import ConfigurationError
from .jobs import TaskState
from .session import (
    CallRecord,
    JobRecord,
    SessionRecord,
    connect,
    list_sessions,
    load_session,
    mark_session,
)
from .terminal import paint
from .transports.remote import UNCOLLECTED, RemoteTransport

__all__ = [
    "CleanPlan",
    "SessionSummary",
    "cancel_session",
    "format_table",
    "plan_clean",
    "read_logs",
    "run_clean",
    "summarize_sessions",
]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]],
    style: Callable[[str, object], str | None] | None = None, *, colour: bool = False,
) -> str:
    """A left-aligned table (numbers right-aligned). With ``colour``, the headers are bold and
    a cell is painted in ``style(header, value)`` when that names a style: padding is worked
    out on the plain text, so the columns stay aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) and rows for i in range(len(headers))]
    lines = []
    for r, row in enumerate(cells):
        padded = []
        for i, cell in enumerate(row):
            text = cell
            if r == 0:
                text = paint(cell, "bold", colour)
            elif style is not None:
                chosen = style(headers[i], rows[r - 1][i])
                if chosen is not None:
                    text = paint(cell, chosen, colour)
            pad = " " * (widths[i] - len(cell))
            padded.append(pad + text if numeric[i] else text + pad)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    """``42s``, ``17m``, ``5h``, ``3d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


# --- jobs -----------------------------------------------------------------------------------


@dataclasses.dataclass
class SessionSummary:
    """One row of ``remote-futures jobs``."""

    session_id: str
    target: str
    transport: str
    #: ``running`` (its client is alive), ``ended`` (shut down), ``attached``, ``cancelled``,
    #: ``detached``, ``dead`` (its client died: attach it), ``unknown`` (another machine).
    client: str
    calls: int
    pending: int
    running: int
    done: int
    failed: int
    jobs: list[str]
    age: float
    #: What the scheduler could not tell (an unreachable target), if anything.
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return dataclasses.asdict(self)


def _client_state(session: SessionRecord) -> str:
    if session.ended is not None:
        return "ended" if session.end_state == "closed" else str(session.end_state)
    alive = session.client_alive()
    return {True: "running", False: "dead", None: "unknown"}[alive]


def _count_from_ledger(calls: Sequence[CallRecord]) -> dict[str, int]:
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for call in calls:
        if call.state in ("done", "failed"):
            counts[call.state] += 1
        else:
            counts["pending"] += 1
    return counts


async def _live_counts(
    session: SessionRecord, jobs: list[JobRecord], calls: list[CallRecord]
) -> tuple[dict[str, int], str]:
    """Counts with the scheduler's view of the jobs not collected yet: a call with an
    outcome file is done (a result or a raised exception), one whose task ended without
    one failed, one whose task runs is running."""
    counts = _count_from_ledger(calls)
    open_jobs = [job for job in jobs if job.released is None]
    if not open_jobs:
        return counts, ""
    transport = open_session_transport(session, {}, forward_output=False)
    handles = {job.name: handle_of(job) for job in open_jobs}
    async with transport:
        statuses = await transport.poll(list(handles.values()))
    by_name = {name: statuses.get(handle) for name, handle in handles.items()}
    for call in calls:
        if call.state in ("done", "failed") or call.job_name not in by_name:
            continue
        status = by_name[call.job_name]
        if status is None or call.task is None:
            continue
        counts["pending"] -= 1
        task = status.tasks.get(call.task)
        if call.call_index in status.ready_calls:
            counts["done"] += 1
        elif (task is not None and task.state.terminal) or session.end_state == "cancelled":
            # A cancelled session's calls without an outcome will never have one.
            counts["failed"] += 1
        elif task is not None and task.state is TaskState.RUNNING:
            counts["running"] += 1
        else:
            counts["pending"] += 1
    return counts, ""


async def summarize_sessions(target: str | None = None, limit: int = 20) -> list[SessionSummary]:
    """The ``limit`` most recent sessions (of ``target``), with live counts for those whose
    results were not all collected."""
    conn = connect()
    try:
        sessions = list_sessions(conn, target)[-limit:] if limit else list_sessions(conn, target)
        loaded = [load_session(conn, s.session_id) for s in sessions]
    finally:
        conn.close()
    now = time.time()
    summaries = []
    for item in loaded:
        if item is None:
            continue
        session, jobs, calls = item
        note = ""
        if session.transport in ATTACHABLE and any(j.released is None for j in jobs):
            try:
                counts, note = await _live_counts(session, jobs, calls)
            except Exception as exc:  # one unreachable target must not hide the others
                counts, note = _count_from_ledger(calls), f"scheduler not reached: {exc}"
        else:
            counts = _count_from_ledger(calls)
        summaries.append(SessionSummary(
            session.session_id, session.target, session.transport, _client_state(session),
            len(calls), counts["pending"], counts["running"], counts["done"],
            counts["failed"], [job.job_id for job in jobs], now - session.created, note,
        ))
    return summaries


def _session_style(header: str, value: object) -> str | None:
    """Failures and dead clients (sessions to attach) red, work in progress yellow, sessions
    that ended dim."""
    if header == "FAILED" and isinstance(value, int) and value:
        return "red"
    if header == "RUNNING" and isinstance(value, int) and value:
        return "yellow"
    if header == "CLIENT":
        if value == "dead":
            return "red"
        if value in ("ended", "attached", "cancelled", "detached"):
            return "dim"
    return None


def format_sessions(summaries: Sequence[SessionSummary], *, colour: bool = False) -> str:
    """The table of ``remote-futures jobs`` (coloured where a terminal shows it)."""
    if not summaries:
        return "no sessions in the ledger"
    rows = [[s.session_id, s.target, s.client, s.calls, s.pending, s.running, s.done,
             s.failed, format_age(s.age), ",".join(s.jobs[:3]) + ("..." if len(s.jobs) > 3
                                                                 else "")]
            for s in summaries]
    table = format_table(["SESSION", "TARGET", "CLIENT", "CALLS", "PENDING", "RUNNING",
                          "DONE", "FAILED", "AGE", "JOBS"], rows, _session_style, colour=colour)
    notes = [f"{s.session_id}: {s.note}" for s in summaries if s.note]
    return "\n".join([table, *notes])


# --- logs -----------------------------------------------------------------------------------


@dataclasses.dataclass
class CallLog:
    """What one call's task printed (a task of several calls holds all of theirs)."""

    call: int
    job_id: str
    task: int
    stdout: str | None
    stderr: str | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return dataclasses.asdict(self)


def _job_dirs_transport(session: SessionRecord, why_not: str) -> RemoteTransport:
    """The session's transport (not opened yet), to reach its job directories; a session on a
    transport whose jobs do not outlive the client is a :class:`ConfigurationError` saying
    ``why_not``."""
    if session.transport not in ATTACHABLE:
        raise ConfigurationError(
            f"session {session.session_id} ran on {session.transport!r}: {why_not}"
        )
    transport = open_session_transport(session, {}, forward_output=False)
    assert isinstance(transport, RemoteTransport)
    return transport


async def read_logs(session_id: str, call: int | None = None) -> list[CallLog]:
    """The captured stdout and stderr of a session's call (or of every call)."""
    session, jobs, calls = find_session(session_id)
    if call is not None:
        chosen = [c for c in calls if c.seq == call]
        if not chosen:
            raise ConfigurationError(f"session {session.session_id} has no call {call} (it has "
                                     f"calls 0 to {len(calls) - 1})")
        calls = chosen
    by_name = {job.name: job for job in jobs}
    wanted: list[tuple[CallRecord, JobRecord]] = []
    logs: list[CallLog] = []
    for record in calls:
        job = by_name.get(record.job_name or "")
        if job is None or record.task is None:
            logs.append(CallLog(record.seq, "", -1, None, None, "never submitted"))
        else:
            wanted.append((record, job))
    if wanted:
        transport = _job_dirs_transport(
            session, "its output was printed by its client, not kept in job directories"
        )
        async with transport:
            paths = [posixpath.join(job.location, name.format(record.task))
                     for record, job in wanted
                     for name in (worker.STDOUT_NAME, worker.STDERR_NAME)]
            found = await transport.shell.read_files(paths)
        for record, job in wanted:
            assert record.task is not None
            out = found.get(posixpath.join(job.location, worker.STDOUT_NAME.format(record.task)))
            err = found.get(posixpath.join(job.location, worker.STDERR_NAME.format(record.task)))
            note = ""
            if out is None and err is None:
                note = ("collected and removed by its client" if job.released is not None
                        else "no output files (the task has not started, or they were removed)")
            logs.append(CallLog(record.seq, job.job_id, record.task,
                                None if out is None else out.decode(errors="replace"),
                                None if err is None else err.decode(errors="replace"), note))
    logs.sort(key=lambda log: log.call)
    return logs


def format_logs(logs: Sequence[CallLog]) -> str:
    """What ``remote-futures logs`` prints."""
    parts = []
    for log in logs:
        where = f"job {log.job_id} task {log.task}" if log.job_id else "not submitted"
        if log.note:
            parts.append(f"== call {log.call} ({where}): {log.note}")
            continue
        for kind, text in (("stdout", log.stdout), ("stderr", log.stderr)):
            parts.append(f"== call {log.call} ({where}) {kind} ==")
            if text:
                parts.append(text.rstrip("\n"))
    return "\n".join(parts)


# --- cancel ---------------------------------------------------------------------------------


async def cancel_session(session_id: str) -> tuple[SessionRecord, list[JobRecord]]:
    """Cancel every job of the session whose results were not collected; returns them."""
    session, jobs, _ = find_session(session_id)
    open_jobs = [job for job in jobs if job.released is None]
    if open_jobs:
        transport = _job_dirs_transport(
            session, "its work ended with its client; there is nothing to cancel"
        )
        async with transport:
            for job in open_jobs:
                # A cancel marker per task first: a task the scheduler starts anyway skips
                # its calls, and the directory counts as ended for pruning and `clean`
                # (tasks cancelled before they started write no exit file).
                markers = " ".join(
                    shlex.quote(posixpath.join(job.location, worker.CANCEL_NAME.format(t)))
                    for t in range(len(job.tasks))
                )
                await transport.shell.run(f"touch {markers} 2>/dev/null; true")
                await transport.cancel(handle_of(job), None)
        conn = connect()
        try:
            mark_session(conn, session.session_id, "cancelled")
        finally:
            conn.close()
    return session, open_jobs


# --- clean ----------------------------------------------------------------------------------

_LINE = "@@rf-clean "


@dataclasses.dataclass
class CleanItem:
    """A job directory or a venv on the target, and whether ``clean`` removes it."""

    kind: str  # "job" or "venv"
    path: str
    age: float
    kilobytes: int
    remove: bool
    why: str

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CleanPlan:
    """What ``clean`` found on a target."""

    target: str
    work_dir: str
    items: list[CleanItem]
    removed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"target": self.target, "work_dir": self.work_dir, "removed": self.removed,
                "items": [item.as_dict() for item in self.items]}


def _survey_command(work_dir: str) -> str:
    """List job directories (age, size, ended, uncollected, the venv their script runs) and
    venvs (age of last use, size, locked) under ``work_dir``, one line each."""
    jobs = shlex.quote(posixpath.join(work_dir, "jobs"))
    envs = shlex.quote(posixpath.join(work_dir, "envs"))
    return (
        f"now=$(date +%s); for d in {jobs}/rf-*; do [ -d \"$d\" ] || continue; ended=1; "
        'for f in "$d"/task-*.in; do [ -e "$f" ] || continue; t=${f%.in}; '
        '[ -e "$t.exit" ] || [ -e "$t.cancel" ] || { ended=0; break; }; done; '
        f'u=0; [ -e "$d/{UNCOLLECTED}" ] && u=1; '
        'py=$(sed -n "s/.*\\(\\/envs\\/[^/ ]*\\)\\/bin\\/python.*/\\1/p" "$d/job.sh" '
        '2>/dev/null | head -n 1); '
        f'printf \'{_LINE}job %s %s %s %s %s %s\\n\' "$d" $((now - $(stat -c %Y "$d"))) '
        '$(du -sk "$d" | cut -f1) $ended $u "${py:--}"; done; '
        f'for v in {envs}/*/; do v=${{v%/}}; [ -e "$v/{MARKER_NAME}" ] || continue; '
        f'l=0; [ -d "$v.lock" ] && l=1; '
        f'printf \'{_LINE}venv %s %s %s %s\\n\' "$v" '
        f'$((now - $(stat -c %Y "$v/{MARKER_NAME}"))) $(du -sk "$v" | cut -f1) $l; done; true'
    )


def _running_locations() -> set[str]:
    """Job directories of sessions whose client runs on this machine (never removed)."""
    try:
        conn = connect()
    except (OSError, sqlite3.Error):
        return set()
    try:
        live = [s.session_id for s in list_sessions(conn) if s.client_alive() is not False]
        return {row[0] for sid in live for row in conn.execute(
            "SELECT location FROM jobs WHERE session_id = ?", (sid,))}
    finally:
        conn.close()


async def plan_clean(
    target: str, options: dict[str, Any], *, older_than_days: float, uncollected: bool,
    remove: bool,
) -> CleanPlan:
    """Survey the target's work directory and decide, per job directory and venv, whether it
    goes; remove those if ``remove``.

    A job directory goes when every task has ended, it is older than ``older_than_days``,
    and its outcomes were collected (or ``uncollected`` is given: a dead client's results),
    unless the ledger says its session's client still runs here. A venv goes when its last
    use is older than that, it is not the most recently used one, no job directory's script
    runs it, and no sync holds its lock."""
    from .runtime import make_transport

    resolved = resolve_target(target, {**options, "forward_output": False})
    transport = make_transport(resolved, None)
    if not isinstance(transport, RemoteTransport):
        raise ConfigurationError(f"{target!r} has no job directories to clean (only the batch "
                                 "schedulers and ssh-jobs keep them)")
    limit = older_than_days * 86400
    protected = _running_locations()
    async with transport:
        result = await transport.shell.run(_survey_command(transport.work_dir))
        items: list[CleanItem] = []
        used_envs: set[str] = set()
        venvs: list[tuple[str, float, int, bool]] = []
        for line in result.stdout.splitlines():
            if not line.startswith(_LINE):
                continue
            fields = line[len(_LINE):].split(" ")
            if fields[0] == "job" and len(fields) == 7:
                _, path, age, kb, ended, marked, env = fields
                if env != "-":
                    used_envs.add(posixpath.basename(env))
                if ended == "0":
                    why, go = "tasks still pending or running", False
                elif path in protected:
                    why, go = "its session's client is running", False
                elif float(age) < limit:
                    why, go = "too recent", False
                elif marked == "1" and not uncollected:
                    why, go = "not collected (attach it, or --uncollected)", False
                else:
                    why, go = "ended" + (", not collected" if marked == "1" else ""), True
                items.append(CleanItem("job", path, float(age), int(kb), go, why))
            elif fields[0] == "venv" and len(fields) == 5:
                venvs.append((fields[1], float(fields[2]), int(fields[3]), fields[4] == "1"))
        newest = min((used for _, used, _, _ in venvs), default=None)
        for venv, used, size, locked in venvs:
            if locked:
                why, go = "a sync is using it", False
            elif posixpath.basename(venv) in used_envs:
                why, go = "a job directory runs it", False
            elif used == newest:
                why, go = "the most recently used", False
            elif used < limit:
                why, go = "used recently", False
            else:
                why, go = "unused", True
            items.append(CleanItem("venv", venv, used, size, go, why))
        plan = CleanPlan(target, transport.work_dir, items)
        doomed = [item for item in items if item.remove]
        if remove and doomed:
            await run_clean(transport, doomed)
            plan.removed = True
    return plan


async def run_clean(transport: RemoteTransport, doomed: Sequence[CleanItem]) -> None:
    """Remove what the plan says; a job directory only if its tasks still have all ended
    (checked again, in the same command), a venv renamed away first (a job starting
    meanwhile fails to find it rather than running in a half-deleted tree)."""
    jobs = [item.path for item in doomed if item.kind == "job"]
    envs = [item.path for item in doomed if item.kind == "venv"]
    parts = []
    if jobs:
        parts.append(
            'for d in ' + " ".join(shlex.quote(p) for p in jobs) + '; do ended=1; '
            'for f in "$d"/task-*.in; do [ -e "$f" ] || continue; t=${f%.in}; '
            '[ -e "$t.exit" ] || [ -e "$t.cancel" ] || { ended=0; break; }; done; '
            '[ "$ended" = 1 ] && rm -rf "$d"; done'
        )
    for env in envs:
        quoted = shlex.quote(env)
        parts.append(f"[ -d {quoted}.lock ] || {{ mv {quoted} {quoted}.old-$$ && "
                     f"rm -rf {quoted}.old-$$ {quoted}-wheels; }}")
    if parts:
        result = await transport.shell.run("; ".join(parts) + "; true")
        if not result.ok:
            raise ConfigurationError(f"removing failed: {result.stderr.strip()}")


def format_clean(plan: CleanPlan) -> str:
    """What ``remote-futures clean`` prints."""
    if not plan.items:
        return f"nothing in {plan.work_dir}"
    rows = [[item.kind, posixpath.basename(item.path), format_age(item.age),
             f"{item.kilobytes} KiB", ("removed" if plan.removed else "remove") if item.remove
             else "keep", item.why] for item in plan.items]
    table = format_table(["KIND", "NAME", "AGE", "SIZE", "ACTION", "WHY"], rows)
    doomed = [item for item in plan.items if item.remove]
    total = sum(item.kilobytes for item in doomed)
    if plan.removed:
        tail = f"removed {len(doomed)} item(s), {total} KiB, from {plan.work_dir}"
    elif doomed:
        tail = (f"dry run: would remove {len(doomed)} item(s), {total} KiB, from "
                f"{plan.work_dir}; run again with --yes to remove them")
    else:
        tail = f"nothing to remove in {plan.work_dir}"
    return f"{table}\n{tail}"


def dumps(data: Any) -> str:
    """JSON for ``--json``."""
    return json.dumps(data, indent=2)
