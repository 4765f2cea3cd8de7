"""The session ledger: a small local SQLite file recording what each executor submitted.

Every :class:`~remote_futures.RemoteExecutor` has a ``session_id``. It records here its target
and options (never secrets: see :func:`sanitize_options`), every call as it is handed over (in
submission order), every job as the scheduler accepts it (job id, directory, which calls each
task runs) and how each call ended. After the client process dies, this is what
:meth:`RemoteExecutor.attach <remote_futures.RemoteExecutor.attach>` and the ``remote-futures
jobs/logs/cancel`` commands read.

The file is ``sessions.sqlite3`` in ``$REMOTE_FUTURES_STATE_DIR``, else in the platform's user
state directory (``~/.local/state/remote-futures`` on Linux). It is opened in WAL mode, and
written by one background thread per executor that commits whatever accumulated in one
transaction: the event loop and the caller's thread only append to a queue. A ledger that
cannot be written (a read-only home) is logged once and never stops an executor;
``REMOTE_FUTURES_LEDGER=off`` turns recording off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs

from .jobs import JobHandle
from .ledger import Call, Job

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "JobRecord",
    "SessionRecord",
    "SessionRecorder",
    "connect",
    "forget_ended",
    "ledger_enabled",
    "ledger_path",
    "list_sessions",
    "load_session",
    "mark_session",
    "new_session_id",
    "sanitize_options",
    "state_dir",
]

log = logging.getLogger("remote_futures")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    transport TEXT NOT NULL,
    options TEXT NOT NULL,
    executor TEXT NOT NULL,
    created REAL NOT NULL,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    ended REAL,
    end_state TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    location TEXT NOT NULL,
    tasks TEXT NOT NULL,
    submitted REAL NOT NULL,
    released REAL,
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job_name TEXT,
    task INTEGER,
    call_index INTEGER,
    state TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""

#: Option names whose values are never written: anything that looks like a credential.
SECRET_NAME = re.compile(
    r"pass(word|phrase)?|secret|token|credential|private_?key|api_?key|access_?key|"
    r"session_?key|auth", re.IGNORECASE,
)
#: ``scheme://user:password@host``: the user info of a URL is dropped.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
#: ``NAME=value`` (a prologue's ``export TOKEN=...``) with a secret-looking name.
_ASSIGNMENT = re.compile(r"\b(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>\"[^\"]*\"|'[^']*'|\S+)")
REDACTED = "<redacted>"
#: Sessions that ended (shut down, attached, cancelled) longer ago than this are forgotten
#: when an executor starts writing; sessions whose client died are kept until attached.
KEEP_ENDED_DAYS = 30.0
#: Seconds the writer lets reports gather before a transaction (the most a crash can lose).
_GATHER = 0.05


def ledger_enabled() -> bool:
    """False when ``$REMOTE_FUTURES_LEDGER`` is ``off`` (or ``0``/``false``/``no``): then
    executors record nothing, and cannot be attached."""
    return os.environ.get("REMOTE_FUTURES_LEDGER", "").strip().lower() not in (
        "off", "0", "false", "no")


def state_dir() -> Path:
    """Where the ledger lives: ``$REMOTE_FUTURES_STATE_DIR`` or the user state directory."""
    override = os.environ.get("REMOTE_FUTURES_STATE_DIR")
    if override:
        return Path(override).expanduser()
    return platformdirs.user_state_path("remote-futures")


def ledger_path() -> Path:
    """The ledger file."""
    return state_dir() / "sessions.sqlite3"


def new_session_id() -> str:
    """A fresh session id: sortable by creation time, then random."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the ledger, in WAL mode, with its schema."""
    path = path or ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL keeps the database consistent at a crash; NORMAL only risks the last commits on a
    # power loss, which is what the ledger can afford.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    try:
        os.chmod(path, 0o600)
    except OSError:
        pass
    return conn


# --- secrets ------------------------------------------------------------------------------


def _clean_string(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: m.group("scheme"), text)
    return _ASSIGNMENT.sub(
        lambda m: f"{m.group('name')}={REDACTED}" if SECRET_NAME.search(m.group("name"))
        else m.group(0),
        text,
    )


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data with secrets removed, or a ``_Drop`` if it is not data."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _clean_string(value)
    if isinstance(value, os.PathLike):
        return _clean_string(os.fspath(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or SECRET_NAME.search(key):
                continue
            converted = _jsonable(item)
            if converted is not _DROP:
                out[key] = converted
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(item) for item in value]
        return [item for item in items if item is not _DROP]
    return _DROP


_DROP: Any = object()


def sanitize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options worth saving, as JSON data, without secrets: options named like a
    credential (password, token, secret, key...) are left out, the user info of URLs
    (``https://user:token@index``) is removed, ``NAME=value`` assignments with such a name
    (a prologue's ``export API_TOKEN=...``) are redacted, and values that are not data
    (callables, objects) are left out."""
    result = _jsonable(dict(options))
    assert isinstance(result, dict)
    return result


# --- reading --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionRecord:
    """A session as the ledger knows it."""

    session_id: str
    target: str
    transport: str
    options: dict[str, Any]
    executor: dict[str, Any]
    created: float
    hostname: str
    pid: int
    ended: float | None
    end_state: str | None

    def client_alive(self) -> bool | None:
        """Whether the process that created the session still runs (None: another host)."""
        if self.ended is not None:
            return False
        if self.hostname != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A submitted job: its scheduler id, directory and which calls each task runs."""

    name: str
    job_id: str
    location: str
    tasks: list[list[int]]
    submitted: float
    released: float | None


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """A call, by its position in submission order (``seq``)."""

    seq: int
    job_name: str | None
    task: int | None
    call_index: int | None
    #: ``queued`` (handed over, never submitted), ``submitted``, ``done`` or ``failed``.
    state: str


def _session(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]),
                         row[5], row[6], row[7], row[8], row[9])


_SESSION_COLUMNS = ("session_id, target, transport, options, executor, created, hostname, pid, "
                    "ended, end_state")


def list_sessions(conn: sqlite3.Connection, target: str | None = None) -> list[SessionRecord]:
    """Every session (of ``target``, a profile or transport name), oldest first."""
    sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
    args: tuple[Any, ...] = ()
    if target is not None:
        sql += " WHERE target = ? OR transport = ?"
        args = (target, target)
    return [_session(row) for row in conn.execute(sql + " ORDER BY created", args)]


def load_session(
    conn: sqlite3.Connection, session_id: str
) -> tuple[SessionRecord, list[JobRecord], list[CallRecord]] | None:
    """A session, its jobs and its calls (in submission order); None if unknown. A unique
    prefix of the id is enough."""
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id LIKE ? ESCAPE '\\'",
        (session_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
    ).fetchall()
    exact = [row for row in rows if row[0] == session_id]
    if exact:
        rows = exact
    if len(rows) != 1:
        return None
    session = _session(rows[0])
    jobs = [
        JobRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])
        for row in conn.execute(
            "SELECT name, job_id, location, tasks, submitted, released FROM jobs "
            "WHERE session_id = ? ORDER BY submitted", (session.session_id,)
        )
    ]
    calls = [
        CallRecord(*row)
        for row in conn.execute(
            "SELECT seq, job_name, task, call_index, state FROM calls WHERE session_id = ? "
            "ORDER BY seq", (session.session_id,)
        )
    ]
    return session, jobs, calls


# --- writing --------------------------------------------------------------------------------


class SessionRecorder:
    """Writes one session's records from a background thread (the engine's observer).

    Each method only appends to a queue; the thread commits whatever accumulated since its
    last commit in one transaction, so a 2000-call ``map`` costs a handful of commits."""

    def __init__(
        self, session_id: str, path: Path | None = None, *, enabled: bool = True
    ) -> None:
        self.session_id = session_id
        self._path = path or ledger_path()
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: Disabled, or the file could not be opened: every report is dropped at once.
        self._failed = not enabled

    # --- what the executor and the engine report ----------------------------------------

    def session_started(
        self, *, target: str, transport: str, options: Mapping[str, Any],
        executor: Mapping[str, Any],
    ) -> None:
        """Record the session: where it runs and with which (sanitized) options."""
        self._put("session", (
            self.session_id, target, transport, json.dumps(sanitize_options(options)),
            json.dumps(sanitize_options(executor)), time.time(), socket.gethostname(),
            os.getpid(),
        ))

    def calls_queued(self, first_seq: int, count: int) -> None:
        """Calls ``first_seq .. first_seq + count - 1`` were handed over."""
        self._put("queued", (first_seq, count))

    def job_submitted(self, job: Job, handle: JobHandle) -> None:
        """The scheduler accepted ``job`` (engine hook, event-loop thread)."""
        tasks = [[call.index for call in task.calls] for task in job.tasks]
        calls = [(call.seq, task.index, call.index) for task in job.tasks for call in task.calls]
        self._put("job", (handle.spec.name, handle.job_id, handle.location, tasks, calls))

    def call_settled(self, call: Call, ok: bool) -> None:
        """The engine settled ``call`` (engine hook)."""
        if call.seq >= 0:
            self._put("settled", (call.seq, "done" if ok else "failed"))

    def job_released(self, handle: JobHandle) -> None:
        """Every call of the job was collected (engine hook)."""
        self._put("released", handle.spec.name)

    def close(self, end_state: str | None = "closed") -> None:
        """Write what is queued, mark the session ended (unless ``end_state`` is None), and
        stop the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        if end_state is not None:
            self._queue.put(("ended", end_state))
        self._queue.put(None)
        thread.join(timeout=30)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what was reported so far is committed (for tests and the CLI)."""
        done = threading.Event()
        self._put("flush", done)
        if self._thread is not None and not self._failed:
            done.wait(timeout)

    # --- the thread -------------------------------------------------------------------------

    def _put(self, kind: str, data: Any) -> None:
        if self._failed:
            return
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="remote_futures-ledger", daemon=True
                )
                self._thread.start()
        self._queue.put((kind, data))

    def _run(self) -> None:
        try:
            conn = connect(self._path)
        except (OSError, sqlite3.Error) as exc:
            self._failed = True
            log.warning("cannot write the session ledger %s: %s (attach will not find this "
                        "session)", self._path, exc)
            return
        try:
            try:
                forget_ended(conn, time.time() - KEEP_ENDED_DAYS * 86400)
            except sqlite3.Error as exc:  # another writer holds the lock: next time
                log.debug("forgetting old sessions failed: %s", exc)
            while True:
                batch = [self._queue.get()]
                stop = False
                if batch[0] is not None and batch[0][0] != "flush":
                    # Let reports gather for a moment: one transaction for a burst, and the
                    # threads reporting are not made to wait for this one's GIL turns.
                    time.sleep(_GATHER)
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if None in batch:
                    stop = True
                try:
                    self._write(conn, [item for item in batch if item is not None])
                except sqlite3.Error as exc:
                    log.warning("writing the session ledger failed: %s", exc)
                for item in batch:
                    if item is not None and item[0] == "flush":
                        item[1].set()
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _settle(conn: sqlite3.Connection, settled: list[tuple[str, str, int]]) -> None:
        if settled:
            conn.executemany("UPDATE calls SET state = ? WHERE session_id = ? AND seq = ?",
                             settled)

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[str, Any]]) -> None:
        sid = self.session_id
        now = time.time()
        conn.execute("BEGIN")
        try:
            settled = [(data[1], sid, data[0]) for kind, data in batch if kind == "settled"]
            for kind, data in batch:
                if kind == "session":
                    conn.execute(
                        "INSERT OR REPLACE INTO sessions (session_id, target, transport, "
                        "options, executor, created, hostname, pid) VALUES (?,?,?,?,?,?,?,?)",
                        data,
                    )
                elif kind == "queued":
                    first, count = data
                    conn.executemany(
                        "INSERT OR IGNORE INTO calls (session_id, seq, state) VALUES (?,?,?)",
                        ((sid, seq, "queued") for seq in range(first, first + count)),
                    )
                elif kind == "job":
                    name, job_id, location, tasks, calls = data
                    conn.execute(
                        "INSERT OR REPLACE INTO jobs (session_id, name, job_id, location, "
                        "tasks, submitted) VALUES (?,?,?,?,?,?)",
                        (sid, name, job_id, location, json.dumps(tasks), now),
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO calls (session_id, seq, job_name, task, "
                        "call_index, state) VALUES (?,?,?,?,?,'submitted')",
                        ((sid, seq, name, task, index) for seq, task, index in calls
                         if seq >= 0),
                    )
                elif kind == "released":
                    conn.execute("UPDATE jobs SET released = ? WHERE session_id = ? AND "
                                 "name = ?", (now, sid, data))
                elif kind == "ended":
                    # Settled calls first: a session is never marked ended with calls open.
                    self._settle(conn, settled)
                    settled = []
                    conn.execute("UPDATE sessions SET ended = ?, end_state = ? WHERE "
                                 "session_id = ?", (now, data, sid))
            self._settle(conn, settled)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def forget_ended(conn: sqlite3.Connection, before: float) -> None:
    """Delete sessions that ended before ``before`` (a time), with their jobs and calls."""
    old = "SELECT session_id FROM sessions WHERE ended IS NOT NULL AND ended < ?"
    conn.execute("BEGIN")
    try:
        conn.execute(f"DELETE FROM calls WHERE session_id IN ({old})", (before,))
        conn.execute(f"DELETE FROM jobs WHERE session_id IN ({old})", (before,))
        conn.execute("DELETE FROM sessions WHERE ended IS NOT NULL AND ended < ?", (before,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def mark_session(conn: sqlite3.Connection, session_id: str, end_state: str) -> None:
    """Mark a session ended (``attached``, ``cancelled``) from outside its executor."""
    conn.execute("UPDATE sessions SET ended = COALESCE(ended, ?), end_state = ? WHERE "
                 "session_id = ?", (time.time(), end_state, session_id))
