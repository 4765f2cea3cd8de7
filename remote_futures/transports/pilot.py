"""``pool=True`` on a batch scheduler: pilot jobs that run warm workers, fed through a relay.

``RemoteExecutor("slurm" | "pbs" | "sge", pool=True, max_workers=N)`` submits pilot jobs, each
running ``workers_per_job`` persistent workers (:mod:`remote_futures.worker_loop`), and sends
calls to them as they come, through the same pool machinery as the ``local`` and ``ssh``
transports (:mod:`._pool`): a call costs a round trip over the existing SSH connection instead
of a scheduler submission.

The compute nodes never reach the client: the client starts a small relay
(:mod:`remote_futures.relay`) on the login host over its SSH connection (on this machine when
the scheduler is here). The relay listens on a TCP port of ``relay_bind`` (default
``0.0.0.0``: every interface of the login host, which is what compute nodes can reach on most
clusters; give the address of the cluster's internal network to narrow it, or ``127.0.0.1``
when jobs run on the login host itself); each worker connects to it and proves it knows a
random token, written 0600 in the client's 0700 work directory (shared with the compute nodes,
as job directories are). The relay carries every worker's stream to the client over its own
stdin and stdout.

Life of a pilot: it is submitted when calls wait and fewer than ``max_workers`` workers exist
or are starting; its workers join the pool when they connect. A worker stops taking calls
``pilot_margin`` seconds before its job's walltime (``resources.walltime``), leaves once idle,
and a replacement is started while work remains; a worker idle for ``idle_timeout`` seconds
leaves. When every worker of a pilot has left, its job ends. A pilot still pending when no
call waits any more (others did the work) is cancelled. At shutdown every pilot job is
cancelled with the scheduler's own command, and the relay's end makes every worker leave. A
client that goes without shutting down (killed, its connection dropped) leaves nothing either:
its relay sees its input end, cancels the pilot jobs still queued (the client keeps it told
how) and exits, and the running pilots' workers leave with it.

Calls of a ``with_resources`` view whose resources differ from the executor's (the pilots')
do not fit the pilots: they run as ordinary array jobs with their own resources, through the
batch transport this class also is (as with ``pool=False``: split at the scheduler's array
limit, polled with the scheduler's status command, cancelled with its own command), while the
executor's own calls keep using the pilots. Each job handle is one or the other, and every
method of the core's view (``poll``, ``fetch_outcomes``, ``cancel``...) dispatches on it.

A pilot that dies (``scancel``, a node failure, its walltime) fails the calls its workers were
running with :class:`~remote_futures.errors.WorkerDiedError` (retried per ``retries=``), and the
pool refills. A pilot the scheduler refuses fails the waiting calls with the scheduler's
message; one pending for a reason that never clears (``BadConstraints``, ``Eqw``...) is
cancelled after ``never_runs_grace`` seconds and the waiting calls fail with its job id and
state; one that ends before any of its workers connected fails them with the tail of its log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import posixpath
import secrets
import shlex
import struct
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .. import relay, worker, worker_loop
from ..errors import ConfigurationError, TransportError
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ..resources import Resources
from ..shell import LocalShell
from ._pool import PoolTransport, PoolWorker
from .batch import (
    BatchOptions,
    BatchTransport,
    PBSOptions,
    PBSTransport,
    SGEOptions,
    SGETransport,
    SlurmTransport,
)
from .dialect import ScriptRequest

__all__ = [
    "PBSPilotTransport",
    "PilotTransport",
    "SGEPilotTransport",
    "SlurmPilotTransport",
    "check_pool_options",
    "pilot_class",
    "pilot_script",
]

log = logging.getLogger("remote_futures")

_HEAD = struct.Struct(">IIc")
#: Seconds between two looks at the pilots' scheduler states (and at walltimes, idle workers).
_WATCH_EVERY = 2.0
#: A pilot job the status command does not show yet this long after its submission is gone.
_APPEAR_GRACE = 15.0
#: After the scheduler says a pilot ended, its workers' connections have this long to close
#: by themselves (their last outcomes may still be on the way) before they are taken for dead.
_END_GRACE = 5.0
#: How long ``prepare`` waits for the relay to listen.
_RELAY_START = 30.0
#: Seconds between two touches of the executor's pilot directory (kept from pruning).
_TOUCH_EVERY = 3600.0
#: How many times a relay that ended is replaced.
_RELAY_RESTARTS = 3


def check_pool_options(options: BatchOptions) -> None:
    """Raise :class:`ConfigurationError` for pool options that cannot work."""
    if options.workers_per_job is not None and (
        not isinstance(options.workers_per_job, int) or options.workers_per_job < 1
    ):
        raise ConfigurationError(
            f"workers_per_job must be a positive integer, got {options.workers_per_job!r}"
        )
    if options.idle_timeout <= 0:
        raise ConfigurationError(f"idle_timeout must be positive, got {options.idle_timeout!r}")
    if options.pilot_margin is not None and options.pilot_margin < 0:
        raise ConfigurationError(f"pilot_margin must be >= 0, got {options.pilot_margin!r}")


def pilot_resources(resources: Resources, workers: int) -> Resources:
    """What a pilot job of ``workers`` workers asks for: each worker gets what one array task
    would (``cpus``, ``memory``), the job their sum; walltime, partition and the rest as is."""
    if workers == 1:
        return resources
    memory = resources.memory_megabytes()
    return dataclasses.replace(
        resources,
        cpus=(resources.cpus or 1) * workers,
        memory=None if memory is None else f"{memory * workers}M",
    )


def pilot_script(
    transport: BatchTransport, request: ScriptRequest, worker_commands: list[str]
) -> str:
    """The pilot job's script: the scheduler header, the prologue, then one worker per
    command in the background, and a wait for all of them."""
    lines = ["#!/bin/bash", *transport.dialect.header(request)]
    lines += [f"cd {shlex.quote(transport.work_dir)}", *request.resources.job_script_prologue]
    for slot, command in enumerate(worker_commands):
        err = shlex.quote(posixpath.join(request.job_dir, f"worker-{slot}.stderr"))
        lines.append(f"{command} 2>>{err} &")
    lines += ["wait", ""]
    return "\n".join(lines)


@dataclasses.dataclass(eq=False)
class _Pilot:
    """One pilot job, as the client sees it."""

    name: str
    slots: int
    directory: str
    submitted_at: float
    job_id: str = ""
    #: Slots whose worker has not connected (counted in the pool's ``starting``).
    unconnected: int = 0
    workers: list[_PilotWorker] = dataclasses.field(default_factory=list)
    connected_once: bool = False
    state: str = "submitting"
    #: When the scheduler said it ended (its workers then get a grace to hang up).
    ended_at: float | None = None
    #: Since when it pends for a reason that never clears.
    never_runs_since: float | None = None
    done: bool = False


class _PilotWorker(PoolWorker):
    """A worker of a pilot job, one connection through the relay."""

    def __init__(self, transport: PilotTransport, conn: int, pilot: _Pilot, slot: str) -> None:
        super().__init__()
        self.transport = transport
        self.conn = conn
        self.pilot = pilot
        self.slot = slot
        self.buffer = bytearray()
        self.connected_at = time.monotonic()
        #: After this (monotonic), no new call: the pilot's walltime is near.
        self.deadline: float | None = None
        self.idle_since: float | None = time.monotonic()
        #: Told to leave (walltime, idle): takes no more calls.
        self.leaving = False
        self.exit: tuple[int | None, int | None] = (None, None)

    @property
    def pid(self) -> int | None:
        """The pid the worker reported on its compute node."""
        return self.reported_pid

    def send(self, *parts: bytes | memoryview) -> None:
        """One worker frame, inside one relay frame."""
        if parts and parts[0][:1] == b"X":
            self.idle_since = None  # busy until it has answered every task sent
        size = sum(len(part) for part in parts)
        self.transport.relay_send(self.conn, b"D", size.to_bytes(4, "big"), *parts)

    def kill(self) -> None:
        """Ask the worker's pilot process to kill it (its connection then closes)."""
        try:
            self.transport.relay_send(self.conn, b"K")
        except OSError:
            pass


class PilotTransport(PoolTransport, BatchTransport):
    """Warm workers in pilot jobs of a batch scheduler (see the module docstring)."""

    options: BatchOptions

    def __init__(self, options: BatchOptions, *, max_workers: int) -> None:
        check_pool_options(options)
        super().__init__(options, max_workers=max_workers)
        self._group: anyio.abc.TaskGroup | None = None
        self._relay: Any = None
        self._relay_stdin: Any = None
        self._relay_address = ""
        self._relay_ready = anyio.Event()
        self._relay_error: BaseException | None = None
        self._relay_stderr = bytearray()
        self._conns: dict[int, _PilotWorker] = {}
        self._pilots: dict[str, _Pilot] = {}
        self._session = uuid.uuid4().hex[:10]
        self._loop_path = ""
        self._relay_path = ""
        self._token_path = ""
        self._pilot_count = 0
        #: The scheduler's array limit: its class's (PoolTransport's unlimited one comes first
        #: in the MRO), until ``open`` learns the scheduler's own.
        self._array_limit: int = super(PoolTransport, self).max_tasks_per_job
        #: Jobs of other resources than the pilots' (``with_resources`` views): array jobs.
        self._arrays: set[JobHandle] = set()
        #: Their last status, and when to poll them next (backing off as the batch path's
        #: poll does: the core polls a pool far more often than a scheduler wants asked).
        self._arrays_seen: dict[JobHandle, JobStatus] = {}
        self._arrays_every = BatchTransport.poll_interval[0]
        self._arrays_due = 0.0
        self._told_arrays = False
        self._relay_restarts = 0
        self._relay_restarting = False

    @property
    def describe(self) -> str:
        """``slurm (pilot pool) on user@host:port``."""
        return f"{self.name} (pilot pool) on {self.shell.label}"

    @property
    def workers_per_job(self) -> int:
        """Workers per pilot job: the option, else one (a pilot then asks for what one array
        task would: it fits wherever the array would run)."""
        return self.options.workers_per_job or 1

    @property
    def pilots_dir(self) -> str:
        """This executor's directory of pilot jobs (their scripts and logs) and token."""
        return posixpath.join(self.work_dir, "pilots", self._session)

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and detect the scheduler (as the batch transport), start the task group."""
        # ``detect`` (in the batch transport's open) may replace the array limit with the one
        # the scheduler says.
        self.max_tasks_per_job = self._array_limit
        await BatchTransport.open(self)
        self._array_limit = self.max_tasks_per_job
        # Tasks are fed to workers one at a time: a pool job may be as large as the core
        # likes (array jobs keep the array limit: see job_rules).
        self.max_tasks_per_job = PoolTransport.max_tasks_per_job
        self._group = anyio.create_task_group()
        await self._group.__aenter__()

    def submit_chunks(self, n_calls: int) -> list[int] | None:
        """One call per task, as on every pool (not the array jobs' grouping of a burst): a
        free warm worker takes each call at once, and the next as soon as it answers."""
        return PoolTransport.submit_chunks(self, n_calls)

    def job_rules(
        self, resources: Resources
    ) -> tuple[int, Callable[[int], list[int] | None] | None]:
        """The pool's rules for the pilots' resources; for others (which run as array jobs)
        the batch path's: the scheduler's array limit, bursts grouped as ``pool=False``
        groups them."""
        if self._on_pilots(resources):
            return self.max_tasks_per_job, self.submit_chunks
        return self._array_limit, functools.partial(BatchTransport.submit_chunks, self)

    def _on_pilots(self, resources: Resources) -> bool:
        return resources == self.options.resources

    async def prepare(self) -> None:
        """Upload the worker (and sync the environment), the worker loop and the relay; write
        the token; start the relay and wait until it listens."""
        await BatchTransport.prepare(self)
        self._loop_path = await self._upload(Path(worker_loop.__file__).read_bytes(),
                                             "worker_loop")
        self._relay_path = await self._upload(Path(relay.__file__).read_bytes(), "relay")
        # Directories of executors that went away without closing (their pilots' scripts,
        # logs and token), once untouched for keep_days: a live executor touches its own.
        minutes = int(self.options.keep_days * 24 * 60)
        await self.shell.run(
            f"find {shlex.quote(posixpath.dirname(self.pilots_dir))} -mindepth 1 -maxdepth 1 "
            f"-type d -mmin +{minutes} -exec rm -rf {{}} + 2>/dev/null; true"
        )
        await self.shell.makedirs(self.pilots_dir, mode=0o700)
        self._token_path = posixpath.join(self.pilots_dir, "token")
        await self.shell.write_file(self._token_path, secrets.token_hex(32).encode(), mode=0o600)
        await self._start_relay()
        assert self._group is not None
        self._group.start_soon(self._watch)

    async def _upload(self, source: bytes, stem: str) -> str:
        digest = hashlib.sha256(source).hexdigest()[:16]
        path = posixpath.join(self.work_dir, f"{stem}-{digest}.py")
        found = await self.shell.read_files([path])
        if found.get(path) != source:
            await self.shell.write_file(path, source, mode=0o600)
        return path

    async def _start_relay(self) -> None:
        argv = [self.python, "-u", self._relay_path, "serve", "--bind",
                self.options.relay_bind, "--token-file", self._token_path]
        command = f"cd {shlex.quote(self.work_dir)} && exec {shlex.join(argv)}"
        if isinstance(self.shell, LocalShell):
            process = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
        else:
            connection = await self.shell._connection()  # type: ignore[attr-defined]
            process = await connection.create_process(command, encoding=None)
            stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
        self._relay, self._relay_stdin = process, stdin
        assert self._group is not None
        self._group.start_soon(self._read_relay, stdout)
        self._group.start_soon(self._read_relay_stderr, stderr)
        with anyio.move_on_after(_RELAY_START):
            await self._relay_ready.wait()
        if not self._relay_address:
            said = self._relay_stderr.decode(errors="replace").strip()[-2000:]
            raise TransportError(
                f"the pilot relay did not start on {self.shell.label}"
                + (f": {said}" if said else f" within {_RELAY_START:.0f} s")
            )
        log.info("%s: pilot relay listening on %s", self.describe, self._relay_address)
        self._tell_relay_how_to_cancel()

    async def close(self) -> None:
        """Cancel every pilot job, stop the relay (so every worker leaves), disconnect."""
        self.closing = True
        self.workers = []
        with anyio.CancelScope(shield=True):
            if self._relay_stdin is not None:
                try:
                    # The pilots are cancelled below: the relay need not do it when it sees
                    # its input end.
                    self.relay_send(0, b"Q")
                except OSError:
                    pass
                try:
                    self._relay_stdin.write_eof()
                except Exception:
                    try:
                        self._relay_stdin.close()
                    except Exception:
                        pass
            ids = self._live_pilot_ids()
            if ids:
                with anyio.move_on_after(30):
                    try:
                        await self.shell.run(self._cancel_command(ids) + " 2>/dev/null; true")
                    except Exception as exc:
                        log.warning("%s: cancelling pilot jobs %s failed: %r", self.describe,
                                    " ".join(ids), exc)
            if self._relay is not None:
                with anyio.move_on_after(5):
                    if isinstance(self._relay, asyncio.subprocess.Process):
                        await self._relay.wait()
                    else:
                        await self._relay.wait_closed()
                try:
                    if isinstance(self._relay, asyncio.subprocess.Process):
                        if self._relay.returncode is None:
                            self._relay.kill()
                    else:
                        self._relay.close()
                except Exception:
                    pass
            if self.work_dir and self.options.cleanup == "on_release":
                with anyio.move_on_after(10):
                    try:
                        await self.shell.run(f"rm -rf {shlex.quote(self.pilots_dir)}")
                    except Exception:
                        pass
        if self._group is not None:
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            self._group = None
        with anyio.CancelScope(shield=True):
            await BatchTransport.close(self)

    async def submit(self, job: JobSpec) -> JobHandle:
        """Upload the caller's code bundle if it is new, then hand the job's tasks to the
        workers (see the pool). A job of other resources than the pilots' (a
        ``with_resources`` view) is submitted as an array job with its own resources, as
        ``pool=False`` would: the pilots cannot give a call more than they hold."""
        if not self._on_pilots(job.resources):
            if not self._told_arrays:
                self._told_arrays = True
                log.info("%s: calls of with_resources views that ask for other resources "
                         "than the pilots' run as array jobs with their own resources",
                         self.describe)
            handle = await BatchTransport.submit(self, job)
            self._arrays.add(handle)
            self._arrays_due = 0.0
            return handle
        await self.upload_code(job)
        return await PoolTransport.submit(self, job)

    # --- the core's view, per job: pool jobs or array jobs ---------------------------------

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """The pool's jobs at every poll; the array jobs (and released ones still finishing)
        in one scheduler command when their turn comes, every 0.5 s while they change,
        backing off to 5 s while they do not, as the batch path polls."""
        arrays = [handle for handle in jobs if handle in self._arrays]
        statuses: dict[JobHandle, JobStatus] = {}
        # The scheduler first: if its command fails, the pool's changes (which a poll hands
        # over once) are still there for the next poll.
        if (arrays or self._finishing) and time.monotonic() >= self._arrays_due:
            statuses = await BatchTransport.poll(self, arrays)
            moved = any(self._arrays_seen.get(handle) != status
                        for handle, status in statuses.items())
            self._arrays_seen = dict(statuses)
            low, high = BatchTransport.poll_interval
            self._arrays_every = low if moved else min(high, self._arrays_every * 1.5)
            self._arrays_due = time.monotonic() + self._arrays_every
        statuses.update(await PoolTransport.poll(
            self, [handle for handle in jobs if handle not in self._arrays]
        ))
        return statuses

    async def wait_for_change(self, timeout: float) -> None:
        """Until a worker reports progress; while only array jobs run, until one of their
        directories changes (then they are polled at once), as the batch path waits."""
        if self._arrays and not self._pool_jobs:
            if await self.watch_job_dirs(timeout):
                self._arrays_due = 0.0
            return
        await PoolTransport.wait_for_change(self, timeout)

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """From the pool's memory, or the array jobs' outcome files."""
        arrays = {handle: calls for handle, calls in wanted.items() if handle in self._arrays}
        # The files first: if reading them fails, the pool's outcomes (handed over once)
        # are still there for the next try.
        found = await BatchTransport.fetch_outcomes(self, arrays) if arrays else {}
        found.update(await PoolTransport.fetch_outcomes(
            self, {handle: calls for handle, calls in wanted.items() if handle not in arrays}
        ))
        return found

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Cancel on the workers (see the pool), or with the scheduler's own command."""
        if job in self._arrays:
            self._arrays_due = 0.0  # learn that they ended soon
            await BatchTransport.cancel(self, job, tasks)
        else:
            await PoolTransport.cancel(self, job, tasks)

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Let the job use more workers, or raise its array's throttle."""
        if job in self._arrays:
            return await BatchTransport.raise_throttle(self, job, max_concurrent)
        return await PoolTransport.raise_throttle(self, job, max_concurrent)

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """What the dead worker wrote last, or the array task's stderr and scheduler log."""
        if job in self._arrays:
            return await BatchTransport.stderr_tail(self, job, task, lines=lines)
        return await PoolTransport.stderr_tail(self, job, task, lines=lines)

    async def release(self, job: JobHandle) -> None:
        """Forget the job (an array job's directory goes as the batch path removes it)."""
        if job in self._arrays:
            self._arrays.discard(job)
            self._arrays_seen.pop(job, None)
            await BatchTransport.release(self, job)
        else:
            await PoolTransport.release(self, job)

    # --- the relay ----------------------------------------------------------------------------

    def relay_send(self, conn: int, kind: bytes, *parts: bytes | memoryview) -> None:
        """One frame to the relay; OSError when it is gone."""
        stdin = self._relay_stdin
        if stdin is None or self._relay_error is not None or stdin.is_closing():
            raise OSError("the pilot relay is gone")
        size = 5 + sum(len(part) for part in parts)
        try:
            stdin.write(_HEAD.pack(size, conn, kind) + b"".join(parts))
        except Exception as exc:
            raise OSError(f"the pilot relay is gone: {exc!r}") from exc

    async def _read_relay(self, stdout: Any) -> None:
        try:
            while True:
                size, conn, kind = _HEAD.unpack(await stdout.readexactly(_HEAD.size))
                data = await stdout.readexactly(size - 5) if size > 5 else b""
                self._on_relay(conn, kind, data)
        except Exception as exc:
            self._relay_error = exc
        if not self.closing:
            said = self._relay_stderr.decode(errors="replace").strip()[-1000:]
            log.warning("%s: the pilot relay ended%s", self.describe,
                        f": {said}" if said else "")
            self._relay_ready.set()
            # Every worker was reached through it: they are lost (and leave: their pilots
            # see the relay go). Calls wait while another relay starts, for new pilots.
            self._relay_restarting = True
            for w in list(self._conns.values()):
                self._conns.pop(w.conn, None)
                self._left(w)
            if self._group is not None:
                self._group.start_soon(self._restart_relay)

    async def _restart_relay(self) -> None:
        """Cancel the pilots of the relay that ended and start another relay (a dropped SSH
        connection ends the relay with it); after ``_RELAY_RESTARTS`` of them, or if it cannot
        start, the waiting calls fail."""
        self._relay_restarts += 1
        old = [p for p in self._pilots.values() if not p.done]
        for pilot in old:
            self._pilot_gone(pilot, "its relay ended")
        error: BaseException | None = None
        try:
            ids = [p.job_id for p in old if p.job_id]
            if ids:
                await self.shell.run(self._cancel_command(ids) + " 2>/dev/null; true")
            if self._relay_restarts > _RELAY_RESTARTS:
                raise TransportError(f"the pilot relay on {self.shell.label} ended "
                                     f"{self._relay_restarts} times")
            try:
                if isinstance(self._relay, asyncio.subprocess.Process):
                    if self._relay.returncode is None:
                        self._relay.kill()
                elif self._relay is not None:
                    self._relay.close()
            except Exception:
                pass
            self._relay_address = ""
            self._relay_ready = anyio.Event()
            self._relay_stderr.clear()
            await self._start_relay()
        except Exception as exc:
            error = exc
        self._relay_restarting = False
        if error is not None:
            log.warning("%s: %s", self.describe, error)
            self.fail_waiting(error)
            return
        self._relay_error = None
        self.dispatch()

    async def _read_relay_stderr(self, stderr: Any) -> None:
        try:
            while True:
                chunk = await stderr.read(65536)
                if not chunk:
                    return
                self._relay_stderr += chunk
                del self._relay_stderr[:-16384]
        except Exception:
            return

    def _on_relay(self, conn: int, kind: bytes, data: bytes) -> None:
        if kind == b"D":
            w = self._conns.get(conn)
            if w is not None:
                self._take_frames(w, data)
        elif kind == b"N":
            self._connected(conn, data)
        elif kind == b"S":
            w = self._conns.get(conn)
            if w is not None:
                self._print_stderr(w, data)
        elif kind == b"X":
            w = self._conns.get(conn)
            if w is not None:
                code, _, sig = data.decode().partition(" ")
                w.exit = (int(code) if int(code) >= 0 else None, int(sig) or None)
        elif kind == b"E":
            w = self._conns.pop(conn, None)
            if w is not None:
                self._left(w)
        elif kind == b"P":
            host, _, port = data.decode().partition(" ")
            self._relay_address = f"{host}:{port}"
            self._relay_ready.set()

    def _take_frames(self, w: _PilotWorker, data: bytes) -> None:
        buffer = w.buffer
        buffer += data
        # Messages are cut at an offset, and what was read dropped once: a chunk may hold
        # thousands of small messages.
        start = 0
        while len(buffer) - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "big")
            if len(buffer) - start < 4 + size:
                break
            message = bytes(buffer[start + 4 : start + 4 + size])
            start += 4 + size
            if message:
                self.on_message(w, message)
        del buffer[:start]
        if not w.sent and w.idle_since is None:
            w.idle_since = time.monotonic()

    def _connected(self, conn: int, data: bytes) -> None:
        name, _, slot = data.decode(errors="replace").partition(" ")
        pilot = self._pilots.get(name)
        if pilot is None or pilot.done or pilot.unconnected <= 0 or self.closing:
            try:
                self.relay_send(conn, b"K")  # not one of ours (any more): it leaves
            except OSError:
                pass
            return
        pilot.unconnected -= 1
        pilot.connected_once = True
        self.starting -= 1
        w = _PilotWorker(self, conn, pilot, slot)
        walltime = self.options.resources.walltime_seconds()
        if walltime is not None:
            margin = self.options.pilot_margin
            if margin is None:
                margin = min(60.0, walltime / 10)
            w.deadline = w.connected_at + walltime - margin
        pilot.workers.append(w)
        self._conns[conn] = w
        self.worker_started(w)

    def _left(self, w: _PilotWorker) -> None:
        code, sig = w.exit
        if w in w.pilot.workers:
            w.pilot.workers.remove(w)
        known = "" if w.pilot.state == "submitted" else f", {self.name} state {w.pilot.state}"
        w.tail += f"[worker {w.slot} of pilot job {w.pilot.job_id}{known}]\n".encode()
        self.worker_exited(w, code, sig)

    def on_message(self, w: PoolWorker, message: bytes, body: bytes | None = None) -> None:
        """A worker's message; what a call printed to stderr (``E``) is printed here and kept
        for the worker's error tail."""
        if message[:1] == b"E":
            self._print_stderr(w, message[1:])
            return
        super().on_message(w, message, body)

    def _print_stderr(self, w: PoolWorker, data: bytes) -> None:
        w.keep_tail(data)
        if not self.output.enabled:
            return
        try:
            sys.stderr.write(data.decode(errors="replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    # --- pilots -------------------------------------------------------------------------------

    def _retired(self, w: PoolWorker) -> bool:
        if isinstance(w, _PilotWorker) and w.leaving:
            return True
        return super()._retired(w)

    def start_worker(self) -> PoolWorker | None:
        """Submit pilot jobs for as many workers as the queued tasks want (at most the room
        under ``max_workers``), ``workers_per_job`` per job; they join when they connect."""
        if self._group is None or self.closing:
            return None
        if self._relay_error is not None:
            if self._relay_restarting:
                return None  # new pilots once the new relay listens
            raise TransportError("the pilot relay is gone")
        wanted = sum(min(len(job.queue), max(0, job.grant - len(job.workers)))
                     for job in self._pool_jobs.values())
        room = self.max_workers - len(self.workers) - self.starting
        count = max(1, min(wanted - self.starting, room))
        while count > 0:
            slots = min(self.workers_per_job, count)
            count -= slots
            self._pilot_count += 1
            name = f"p{self._pilot_count}"
            pilot = _Pilot(name=name, slots=slots, unconnected=slots,
                           directory=posixpath.join(self.pilots_dir, name),
                           submitted_at=time.monotonic())
            self._pilots[name] = pilot
            self.starting += slots
            self._group.start_soon(self._submit_pilot, pilot)
        return None

    def _worker_command(self, pilot: _Pilot, slot: int) -> str:
        loop = [self.python, "-u", self._loop_path, "--serve", "--protocol", self.worker_path,
                "--code-dir", posixpath.join(self.work_dir, worker.CODE_DIR),
                "--capture-stderr", "--output", "live" if self.output.live else "end"]
        argv = [self.python, self._relay_path, "pilot", "--connect", self._relay_address,
                "--token-file", self._token_path, "--pilot", pilot.name, "--slot", str(slot),
                "--", *loop]
        return shlex.join(argv)

    async def _submit_pilot(self, pilot: _Pilot) -> None:
        request = ScriptRequest(
            job_name=f"rf-pilot-{self._session}-{pilot.name}",
            job_dir=pilot.directory,
            n_tasks=1,
            resources=pilot_resources(self.options.resources, pilot.slots),
            worker_command="",
        )
        script_path = posixpath.join(pilot.directory, "pilot.sh")
        try:
            await self.shell.makedirs(pilot.directory, mode=0o700)
            script = pilot_script(self, request, [self._worker_command(pilot, slot)
                                                  for slot in range(pilot.slots)])
            await self.shell.write_file(script_path, script.encode(), mode=0o700)
            pilot.job_id = await self.submit_script(request, script_path, what="the pilot job")
        except Exception as exc:
            log.warning("%s: submitting a pilot job failed: %s", self.describe, exc)
            self._pilot_gone(pilot, f"not submitted: {exc}")
            self.fail_waiting(exc)
            return
        pilot.state = "submitted"
        log.debug("%s: pilot job %s (%d worker(s))", self.describe, pilot.job_id, pilot.slots)
        self._tell_relay_how_to_cancel()
        if self.closing:
            await self.shell.run(shlex.join(self.dialect.cancel_argv(pilot.job_id)))

    def _pilot_gone(self, pilot: _Pilot, why: str) -> None:
        """The pilot's job is over: its unconnected slots are no longer starting."""
        if pilot.done:
            return
        pilot.done = True
        pilot.state = why
        self.starting -= pilot.unconnected
        pilot.unconnected = 0
        self._tell_relay_how_to_cancel()

    def _tell_relay_how_to_cancel(self) -> None:
        """Give the relay the command that cancels the pilot jobs not over yet: it runs it if
        this client goes without closing (killed, or its connection dropped), so that no pilot
        stays queued for a client that is gone."""
        try:
            self.relay_send(0, b"C", self._cancel_command(self._live_pilot_ids()).encode())
        except OSError:
            pass  # no relay now: the next one is told when it starts

    def _live_pilot_ids(self) -> list[str]:
        """The job ids of the pilots submitted and not over."""
        return [p.job_id for p in self._pilots.values() if p.job_id and not p.done]

    def _cancel_command(self, ids: Sequence[str]) -> str:
        """One shell command cancelling these jobs with the scheduler's own command."""
        return "; ".join(shlex.join(self.dialect.cancel_argv(i)) for i in ids)

    async def _watch(self) -> None:
        """Watch the pilots: their scheduler states, walltimes and idle workers."""
        touched = time.monotonic()
        while not self.closing:
            await anyio.sleep(_WATCH_EVERY)
            try:
                self._retire_workers()
                await self._check_pilots()
                if time.monotonic() - touched > _TOUCH_EVERY:
                    touched = time.monotonic()
                    await self.shell.run(f"touch -c {shlex.quote(self.pilots_dir)}")
            except Exception as exc:
                log.debug("%s: watching pilot jobs failed: %r", self.describe, exc)

    def _retire_workers(self) -> None:
        now = time.monotonic()
        for w in list(self._conns.values()):
            if w.leaving or not w.alive:
                continue
            idle = w.job is None and not w.sent
            past_walltime = w.deadline is not None and now >= w.deadline
            idle_too_long = (idle and w.idle_since is not None
                             and now - w.idle_since >= self.options.idle_timeout)
            if not (past_walltime or idle_too_long):
                continue
            w.leaving = True
            log.info("%s: worker %s of pilot job %s leaves (%s)", self.describe, w.slot,
                     w.pilot.job_id, "its walltime is near" if past_walltime else "idle")
            # It no longer counts against max_workers: a replacement may start now.
            if w in self.workers:
                self.workers.remove(w)
            if idle:
                try:
                    w.send(b"Q")
                except OSError:
                    pass
        self.dispatch()

    async def _check_pilots(self) -> None:
        live = [p for p in self._pilots.values() if p.job_id and not p.done]
        if not live:
            return
        ids = [p.job_id for p in live]
        result = await self.shell.run(shlex.join(self.dialect.status_argv(ids)))
        if not self.dialect.status_answered(result.returncode, result.stderr):
            return
        parsed = self.dialect.parse_status(result.stdout, ids)
        now = time.monotonic()
        for pilot in live:
            known = parsed.get(pilot.job_id, {})
            status = known.get(None) or known.get(0) or next(iter(known.values()), None)
            if status is None:
                if now - pilot.submitted_at < _APPEAR_GRACE:
                    continue
                status = TaskStatus(TaskState.VANISHED, raw_state="no longer listed")
            pilot.state = status.raw_state or status.state.value
            if status.state == TaskState.PENDING:
                if not pilot.connected_once and not self._waiting_tasks() and not self.closing:
                    # The work it was submitted for was done by others: it would only start
                    # to sit idle.
                    log.debug("%s: pilot job %s no longer needed: cancelling it",
                              self.describe, pilot.job_id)
                    self._pilot_gone(pilot, "cancelled: no longer needed")
                    await self.shell.run(shlex.join(self.dialect.cancel_argv(pilot.job_id)))
                    continue
                reason = self.dialect.never_runs(status)
                if reason is None:
                    pilot.never_runs_since = None
                elif pilot.never_runs_since is None:
                    pilot.never_runs_since = now
                elif now - pilot.never_runs_since >= self.options.never_runs_grace:
                    log.warning("%s: pilot job %s can never start (%s): cancelling it",
                                self.describe, pilot.job_id, reason)
                    await self.shell.run(shlex.join(self.dialect.cancel_argv(pilot.job_id)))
                    await self._pilot_ended(pilot, f"can never start: {reason}")
                continue
            if status.state.terminal:
                if pilot.ended_at is None:
                    pilot.ended_at = now
                if now - pilot.ended_at >= _END_GRACE or not pilot.workers:
                    await self._pilot_ended(pilot, pilot.state)

    def _waiting_tasks(self) -> int:
        """Tasks waiting for a worker."""
        return sum(len(job.queue) for job in self._pool_jobs.values())

    async def _pilot_ended(self, pilot: _Pilot, why: str) -> None:
        never_connected = not pilot.connected_once
        self._pilot_gone(pilot, why)
        for w in list(pilot.workers):
            # Still connected after its job ended (a node that vanished): it is dead.
            self._conns.pop(w.conn, None)
            w.kill()
            self._left(w)
        if never_connected and not self.closing:
            logs = await self.shell.run(
                f"tail -n 20 {shlex.quote(pilot.directory)}/*.log "
                f"{shlex.quote(pilot.directory)}/*.stderr 2>/dev/null; true"
            )
            said = logs.stdout.strip()[-2000:]
            self.fail_waiting(RuntimeError(
                f"{self.name} pilot job {pilot.job_id} ended ({why}) before its workers "
                "connected to the relay" + (f"; its log:\n{said}" if said else "")
            ))
        self.dispatch()


class SlurmPilotTransport(PilotTransport, SlurmTransport):
    """``slurm`` with ``pool=True``."""

    name = "slurm"


class PBSPilotTransport(PilotTransport, PBSTransport):
    """``pbs`` with ``pool=True``."""

    name = "pbs"
    options: PBSOptions


class SGEPilotTransport(PilotTransport, SGETransport):
    """``sge`` with ``pool=True``."""

    name = "sge"
    options: SGEOptions


_PILOT_CLASSES: dict[type[Any], type[PilotTransport]] = {
    SlurmTransport: SlurmPilotTransport,
    PBSTransport: PBSPilotTransport,
    SGETransport: SGEPilotTransport,
}


def pilot_class(cls: type[Any]) -> type[PilotTransport]:
    """The ``pool=True`` flavour of a batch transport class."""
    try:
        return _PILOT_CLASSES[cls]
    except KeyError:
        raise ConfigurationError(
            f"pool=True is for the batch schedulers (slurm, pbs, sge), not {cls.name!r}"
        ) from None

