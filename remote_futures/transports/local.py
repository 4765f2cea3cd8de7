"""The embedded default: jobs run in fresh Python subprocesses on this machine.

It speaks the same job-directory protocol a remote host does (payload files in a per-job
directory, the worker executed as a file, outcomes written atomically), so it is both what
``RemoteExecutor()`` runs with no configuration and the test double of every other transport.

A job runs in as many worker processes ("lanes") as the core granted it slots
(``JobSpec.max_concurrent``: the core owns ``max_workers`` across all jobs). A process runs the
job's array tasks one after another, fed their indices on stdin, and reports progress on a
private pipe; a process that dies takes only its current task with it: the rest of the job
continues in a fresh process. ``poll`` reports what changed since the previous poll, so a poll
cycle costs what happened, not the size of the job.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO

import anyio
import anyio.abc

from .. import worker
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ._deltas import take_changes
from .base import Transport

__all__ = ["LocalOptions", "LocalTransport"]

_STDERR_TAIL_BYTES = 16384
#: Tasks sent ahead to a worker process, so that it never waits for the next one.
_PIPELINE = 2
_MAX_PIPELINE = 16
#: Input files up to this size are written on the event loop; larger ones in a thread.
_INLINE_WRITE = 64 * 1024


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    """Options of the ``local`` transport."""

    #: Where job directories are created; default: a fresh temporary directory (in /dev/shm
    #: where it exists).
    work_dir: str | None = None
    #: The interpreter that runs the worker; default: this one.
    python: str = sys.executable
    #: Keep each job's directory after its results were read (for debugging).
    keep_job_dirs: bool = False


@dataclasses.dataclass(eq=False)
class _LocalJob:
    handle: JobHandle
    queue: collections.deque[int]
    states: dict[int, TaskStatus]
    #: Outcomes written since the last poll.
    ready: list[int] = dataclasses.field(default_factory=list)
    #: Tasks whose state changed since the last poll.
    dirty: set[int] = dataclasses.field(default_factory=set)
    lanes: int = 0
    tails: dict[int, str] = dataclasses.field(default_factory=dict)
    #: task index -> the process running it, for cancellation.
    running: dict[int, anyio.abc.Process] = dataclasses.field(default_factory=dict)
    cancelled: set[int] = dataclasses.field(default_factory=set)
    #: Tasks a worker reported starting (``running`` also holds tasks only sent ahead).
    started: set[int] = dataclasses.field(default_factory=set)
    #: Payloads not written yet: a task's input file is written just before a worker gets it
    #: (and removed when it ends), so a large queued job costs its bytes in memory, not a
    #: page of the memory-backed filesystem per task.
    payloads: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def set_state(self, index: int, status: TaskStatus) -> None:
        self.states[index] = status
        self.dirty.add(index)


class LocalTransport(Transport):
    """Runs jobs as subprocesses of this process (see the module docstring)."""

    name = "local"
    Options = LocalOptions
    poll_interval = (0.5, 0.5)  # progress arrives by events; polling is only a safety net
    coalesce_window = 0.01  # a new job costs a process start (~0.1-0.2 s)
    max_tasks_per_job = 1_000_000
    #: A job runs in as many worker processes as it was granted slots.
    supports_throttle = True

    def __init__(self, options: LocalOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self._root = ""
        self._owns_root = False
        self._jobs: dict[JobHandle, _LocalJob] = {}
        self._changed = anyio.Event()
        self._count = 0
        #: Input files of ended tasks, to remove.
        self._spent: list[str] = []
        #: Job directories created and not removed yet (removed at close at the latest).
        self._dirs: set[str] = set()
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def ships_user_code(self) -> bool:
        """False: the worker gets the caller's ``sys.path`` and imports its modules itself."""
        return False

    def default_chunksize(self, n_calls: int) -> int:
        """One call per task: worker processes are reused across a job's tasks already."""
        return 1

    async def open(self) -> None:
        """Create the work directory and the task group that runs worker processes."""
        if self.options.work_dir:
            self._root = os.path.abspath(self.options.work_dir)
            os.makedirs(self._root, mode=0o700, exist_ok=True)
        else:
            # Job files are small and short-lived: a memory-backed filesystem, where there is
            # one, makes each outcome file cost microseconds instead of a disk metadata write.
            shm = "/dev/shm"
            memory_fs = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
            self._root = tempfile.mkdtemp(prefix="remote_futures-", dir=memory_fs)
            self._owns_root = True
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()

    async def close(self) -> None:
        """Kill every worker process still running and remove the temporary directory (or,
        in a ``work_dir`` of the user's, the directories of the jobs not released yet: the
        executor was stopped under them, by a Ctrl-C say)."""
        for job in self._jobs.values():
            job.queue.clear()
            for process in job.running.values():
                _kill(process)
        try:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            # Even when cancelled: close() often runs because the executor is being stopped
            # (a Ctrl-C), and what it must do then is exactly this. Shielded, and bounded.
            if not self.options.keep_job_dirs:
                leftovers = [self._root] if self._owns_root else sorted(self._dirs)
                self._jobs.clear()
                self._dirs.clear()
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    for directory in leftovers:
                        await anyio.to_thread.run_sync(shutil.rmtree, directory, True)

    async def submit(self, job: JobSpec) -> JobHandle:
        """Write the job directory and start one worker process per granted slot."""
        assert self._task_group is not None, "transport not open"
        self._count += 1
        job_dir = os.path.join(self._root, job.name)
        self._dirs.add(job_dir)  # before it exists: a submission cut short leaves none behind
        await anyio.to_thread.run_sync(os.makedirs, job_dir, 0o700)
        handle = JobHandle(job_id=f"local-{self._count}", spec=job, location=job_dir)
        state = _LocalJob(
            handle,
            queue=collections.deque(task.index for task in job.tasks),
            states={task.index: TaskStatus(TaskState.PENDING) for task in job.tasks},
            payloads={task.index: task.payload for task in job.tasks},
        )
        self._jobs[handle] = state
        self._add_lanes(state, job.max_concurrent or len(job.tasks))
        return handle

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Start more worker processes for the job (up to ``max_concurrent`` in all)."""
        state = self._jobs.get(job)
        if state is None:
            return False
        self._add_lanes(state, max_concurrent)
        return True

    def _add_lanes(self, state: _LocalJob, wanted: int) -> None:
        assert self._task_group is not None, "transport not open"
        while state.lanes < min(wanted, len(state.states)):
            state.lanes += 1
            self._task_group.start_soon(self._lane, state)

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """What changed since the previous poll (kept up to date by the worker processes'
        progress reports): the tasks whose state changed, the outcomes newly written."""
        return take_changes(jobs, self._jobs)

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """Read the outcome files from the job directories."""
        spent, self._spent = self._spent, []

        def read() -> dict[JobHandle, dict[int, bytes]]:
            for path in spent:
                _unlink(path)
            found: dict[JobHandle, dict[int, bytes]] = {}
            for handle, calls in wanted.items():
                found[handle] = {}
                for call in calls:
                    path = os.path.join(handle.location, worker.OUTCOME_NAME.format(call))
                    try:
                        with open(path, "rb") as f:
                            found[handle][call] = f.read()
                    except FileNotFoundError:
                        continue
                    if not self.options.keep_job_dirs:
                        os.unlink(path)  # read once: free its page now, not at release
            return found

        return await anyio.to_thread.run_sync(read)

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Drop queued tasks and kill the processes running cancelled ones."""
        state = self._jobs.get(job)
        if state is None:
            return
        queued: set[int] = set()
        if tasks is None:
            # The whole job: the queue goes in one step (a job may hold 100k queued tasks).
            for index in state.queue:
                state.cancelled.add(index)
                state.set_state(index, TaskStatus(TaskState.CANCELLED))
            state.queue.clear()
            targets = set(state.running)
        else:
            targets = set(tasks)
            queued = targets & set(state.queue)
            if queued:
                state.queue = collections.deque(i for i in state.queue if i not in queued)
        for index in targets:
            if state.states[index].state.terminal:
                continue
            state.cancelled.add(index)
            if index in queued:
                state.set_state(index, TaskStatus(TaskState.CANCELLED))
            elif index in state.started:
                _kill(state.running[index])
            elif index in state.running:
                # Sent ahead to a worker busy with another task: it must skip this one, and
                # the task it is running must not be killed with it.
                marker = os.path.join(job.location, worker.CANCEL_NAME.format(index))
                await anyio.to_thread.run_sync(_touch, marker)
        self._signal()

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """What the process that ran the task wrote to stderr last."""
        state = self._jobs.get(job)
        text = state.tails.get(task, "") if state else ""
        return "\n".join(text.splitlines()[-lines:])

    async def release(self, job: JobHandle) -> None:
        """Forget the job and delete its directory (unless ``keep_job_dirs``)."""
        state = self._jobs.pop(job, None)
        if state is not None:
            state.queue.clear()  # lanes still waiting for a slot must not start on it
        if not self.options.keep_job_dirs:
            # Shielded: a directory half removed when a shutdown cancels us stays behind.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, job.location, True)
            self._dirs.discard(job.location)

    async def wait_for_change(self, timeout: float) -> None:
        """Return as soon as a worker reports progress, or after ``timeout``."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = anyio.Event()

    # --- worker processes -------------------------------------------------------------------

    def _signal(self) -> None:
        self._changed.set()

    async def _lane(self, job: _LocalJob) -> None:
        """Run the job's queued tasks in worker processes, one at a time, until none are left."""
        try:
            while job.queue:
                await self._run_process(job)
        finally:
            job.lanes -= 1

    async def _run_process(self, job: _LocalJob) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = await anyio.open_process(
                [self.options.python, "-u", worker.__file__, job.handle.location,
                 "--stdin-tasks", "--notify-fd", str(write_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            for index in list(job.queue):
                job.set_state(index, TaskStatus(TaskState.FAILED, f"could not start: {exc}"))
                job.tails[index] = f"cannot start {self.options.python}: {exc}"
            job.queue.clear()
            self._signal()
            return
        os.close(write_fd)
        tail = bytearray()
        current: int | None = None
        try:
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                shown = self.output.enabled  # output="off": drained, kept for tails only
                tg.start_soon(_forward, process.stdout, sys.stdout, None, shown)
                tg.start_soon(_forward, process.stderr, sys.stderr, tail, shown)
                reader, pipe = await _open_pipe_reader(read_fd)
                try:
                    current = await self._feed(job, process, reader)
                    if process.stdin is not None:
                        await process.stdin.aclose()
                    await process.wait()
                finally:
                    pipe.close()
        finally:
            if process.returncode is None:
                _kill(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()
        if current is not None:
            job.running.pop(current, None)
            code = process.returncode or 0
            if current in job.cancelled:
                status = TaskStatus(TaskState.CANCELLED)
            elif code < 0:
                status = TaskStatus(TaskState.FAILED, signal=-code)
            else:
                status = TaskStatus(TaskState.FAILED, exit_code=code)
            job.set_state(current, status)
            job.tails[current] = tail.decode(errors="replace")
            self._signal()

    async def _write_input(self, job: _LocalJob, index: int) -> None:
        """Write the task's input file, if it was not written yet."""
        data = job.payloads.pop(index, None)
        if data is None:
            return
        path = os.path.join(job.handle.location, worker.INPUT_NAME.format(index))
        if len(data) > _INLINE_WRITE:
            await anyio.to_thread.run_sync(_write, path, data)
        else:
            _write(path, data)  # a page of memory: cheaper than a trip to a thread

    async def _feed(
        self, job: _LocalJob, process: anyio.abc.Process, reader: asyncio.StreamReader
    ) -> int | None:
        """Keep the process fed with up to ``_PIPELINE`` tasks (so it never waits for us between
        tasks); return the task it was running if it died. Tasks sent but not started go back
        to the queue for the next process."""
        assert process.stdin is not None
        sent: collections.deque[int] = collections.deque()
        current: int | None = None
        started_any = False
        try:
            while job.queue or sent:
                # Deeper while much is queued (one write feeds several tasks, and the worker
                # never waits), shallow near the end (a task sent ahead waits behind a long one).
                depth = max(_PIPELINE, min(_MAX_PIPELINE, len(job.queue) // (4 * job.lanes)))
                batch = []
                # Ahead only what other lanes cannot start now: a task sent ahead waits here.
                while job.queue and len(sent) < depth and (
                    not sent or len(job.queue) >= job.lanes
                ):
                    index = job.queue.popleft()
                    sent.append(index)
                    job.running[index] = process
                    await self._write_input(job, index)
                    batch.append(f"{index}\n")
                if batch:
                    try:
                        await process.stdin.send("".join(batch).encode())
                    except (anyio.BrokenResourceError, OSError):
                        current = current if started_any else sent[0]
                        return current
                line = await reader.readline()
                if not line:
                    # The process died. One that never started a task (a broken interpreter,
                    # a missing module) fails the first task it was sent, with its exit status
                    # and stderr: requeueing it would start such processes for ever.
                    if not started_any and sent:
                        current = sent[0]
                    return current
                kind, _, rest = line.decode().strip().partition(" ")
                if kind == "S":
                    started_any = True
                    current = int(rest)
                    job.started.add(current)
                    job.set_state(current, TaskStatus(TaskState.RUNNING))
                elif kind == "C":
                    job.ready.append(int(rest))
                elif kind == "T":
                    index_text, _, code_text = rest.partition(" ")
                    index, code = int(index_text), int(code_text or 0)
                    job.running.pop(index, None)
                    if not self.options.keep_job_dirs:
                        # Removed in the next fetch's thread, not here on the loop.
                        self._spent.append(
                            os.path.join(job.handle.location, worker.INPUT_NAME.format(index))
                        )
                    if index in sent:
                        sent.remove(index)
                    current = None
                    if index in job.cancelled:
                        job.set_state(index, TaskStatus(TaskState.CANCELLED))
                    else:
                        job.set_state(index, TaskStatus(
                            TaskState.COMPLETED if code == 0 else TaskState.FAILED,
                            exit_code=code,
                        ))
                    if code:
                        self._signal()
                        return None  # the worker exits after a task it could not run
                self._signal()
            return None
        finally:
            # Sent but never started: back to the front of the queue, in order.
            for index in reversed(sent):
                if index != current and not job.states[index].state.terminal:
                    job.running.pop(index, None)
                    if index not in job.cancelled:
                        job.queue.appendleft(index)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _touch(path: str) -> None:
    with open(path, "wb"):
        pass


def _kill(process: anyio.abc.Process) -> None:
    try:
        process.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _open_pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio stream over the read end of a worker's progress pipe (anyio has no API for
    an arbitrary file descriptor; the core runs on the asyncio backend)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe
    )
    return reader, transport


async def _forward(
    stream: anyio.abc.ByteReceiveStream, sink: IO[str], tail: bytearray | None,
    shown: bool = True,
) -> None:
    """Copy a worker's output to the caller's stream (unless not ``shown``), as
    ProcessPoolExecutor's children do, keeping the last bytes of stderr for error messages."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in stream:
        if tail is not None:
            tail += chunk
            del tail[:-_STDERR_TAIL_BYTES]
        if not shown:
            continue
        try:
            sink.write(decoder.decode(chunk))
            sink.flush()
        except (OSError, ValueError):
            pass  # the caller closed its stream; keep draining the pipe regardless

