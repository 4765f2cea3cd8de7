"""The ``ssh`` transport: warm workers on a plain host, fed over the one SSH connection.

Up to ``max_workers`` long-lived worker processes (``worker_loop.py --serve``) run on the host
for the executor's life, each on an SSH channel of the executor's one connection: tasks go to a
worker framed on its stdin, outcomes come back framed on its stdout, and so does what the calls
print to ``sys.stdout``/``sys.stderr``, line by line and tagged with the call (see
:mod:`remote_futures.output`). What is written to the process's stderr itself (C code, child
processes) arrives on the channel's stderr; its tail is kept for error messages. No
connection, process start or file is needed per call; the caller's own modules still travel as
a code bundle (uploaded once per content) and the environment is synced once, as before.

Scheduling and worker failure are shared with the local pool
(:mod:`remote_futures.transports._pool`): a worker whose channel closes fails the call it was
running with a :class:`~remote_futures.errors.WorkerDiedError`, and the pool starts another.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import posixpath
import shlex
import sys
from pathlib import Path
from typing import Any, ClassVar, cast

import anyio
import anyio.abc

from .. import worker, worker_loop
from ..jobs import JobHandle, JobSpec
from ._pool import PoolTransport, PoolWorker, head_size
from .ssh_host import SSHHostOptions, SSHHostTransport

__all__ = ["SSHPoolTransport"]

#: How long ``close`` waits for workers to leave after being asked.
_EXIT_GRACE = 5.0
#: A message up to this size is handed to asyncssh whole; a bigger one is streamed in slices
#: of ``_SLICE_BYTES``, each written when the channel has taken the one before.
_DIRECT_SEND_BYTES = 256 * 1024
_SLICE_BYTES = 1 << 20


class _SSHWorker(PoolWorker):
    """A worker process on the host, on one SSH channel."""

    def __init__(self, process: Any, kill: Any, spawn: Any) -> None:
        super().__init__()
        self.process = process
        self._kill = kill
        self._spawn = spawn
        #: Messages waiting for the writer task (one being streamed holds the rest back).
        self._outbox: collections.deque[tuple[bytes | memoryview, ...]] = collections.deque()
        self._writing = False
        self._eof = False

    @property
    def pid(self) -> int | None:
        """The pid the worker reported on its host."""
        return self.reported_pid

    def send(self, *parts: bytes | memoryview) -> None:
        """Frame one message onto the channel, never blocking: a small one is written at once
        (asyncssh buffers it); a big one, and whatever follows it meanwhile, is streamed by a
        task in slices, each written once its predecessor left (asyncssh copies what it is
        given into its buffer: handed a whole payload, it would hold a second copy of it)."""
        if self._eof or self.process.stdin.is_closing():
            raise OSError("the worker's channel is closed")
        size = sum(len(part) for part in parts)
        if self._writing or size > _DIRECT_SEND_BYTES:
            self._outbox.append(parts)
            if not self._writing:
                self._writing = True
                self._spawn(self._stream)
            return
        try:
            self.process.stdin.write(size.to_bytes(4, "big") + b"".join(parts))
        except Exception as exc:
            raise OSError(f"the worker's channel is closed: {exc!r}") from exc

    def close_input(self) -> None:
        """No more messages: end the channel's input once what is queued was written."""
        self._eof = True
        if not self._writing:
            try:
                self.process.stdin.write_eof()
            except Exception:
                pass

    async def _stream(self) -> None:
        stdin = self.process.stdin
        try:
            while self._outbox:
                parts = self._outbox.popleft()
                stdin.write(sum(len(part) for part in parts).to_bytes(4, "big"))
                for part in parts:
                    view = memoryview(part)
                    for start in range(0, len(view), _SLICE_BYTES):
                        stdin.write(view[start : start + _SLICE_BYTES])
                        await stdin.drain()
                    del view
                del parts
            if self._eof:
                stdin.write_eof()
        except Exception:
            # The channel closed: the reader reports the worker's exit; drop what is queued.
            self._outbox.clear()
        finally:
            self._writing = False

    def kill(self) -> None:
        """Kill the process on the host, and close its channel."""
        self._kill(self)


class SSHPoolTransport(PoolTransport, SSHHostTransport):
    """Warm workers on one SSH host (see the module docstring)."""

    name = "ssh"
    Options: ClassVar[type[Any]] = SSHHostOptions
    # Large buffers of calls and results go over the channel as frames of their own.
    out_of_band = True

    def __init__(self, options: SSHHostOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self._loop_path = ""
        self._group: anyio.abc.TaskGroup | None = None
        self._start_error: BaseException | None = None

    async def open(self) -> None:
        """Connect (see the ``ssh`` options) and start the task group running the workers'
        channels."""
        await SSHHostTransport.open(self)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()

    async def prepare(self) -> None:
        """Upload the worker and sync the environment (as before), and upload the worker
        loop beside the worker (once per content)."""
        await SSHHostTransport.prepare(self)
        source = Path(worker_loop.__file__).read_bytes()
        digest = hashlib.sha256(source).hexdigest()[:16]
        self._loop_path = posixpath.join(self.work_dir, f"worker_loop-{digest}.py")
        if not (await self.shell.run(f"test -f {shlex.quote(self._loop_path)}")).ok:
            await self.shell.write_file(self._loop_path, source, mode=0o600)

    async def close(self) -> None:
        """Ask idle workers to leave, kill busy ones, close the channels and disconnect."""
        self.closing = True
        workers = [w for w in self.workers if isinstance(w, _SSHWorker)]
        self.workers = []
        with anyio.CancelScope(shield=True):
            for w in workers:
                if w.alive and w.running is None and not w.sent:
                    try:
                        w.send(b"Q")
                    except OSError:
                        pass
                    w.close_input()
                else:
                    await self._kill_now(w)
            with anyio.move_on_after(_EXIT_GRACE):
                for w in workers:
                    await w.process.wait_closed()
            for w in workers:
                w.process.close()
        # Exited outside the shield: a task group must be left in the scope it was entered.
        if self._group is not None:
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            self._group = None
        with anyio.CancelScope(shield=True):
            await SSHHostTransport.close(self)

    async def submit(self, job: JobSpec) -> JobHandle:
        """Upload the caller's code bundle if it is new, then start the job's tasks on the
        workers (see the pool)."""
        await self.upload_code(job)
        return await PoolTransport.submit(self, job)

    # --- workers ------------------------------------------------------------------------------

    def start_worker(self) -> PoolWorker | None:
        """Open a channel running a worker; it joins the pool when its channel is open."""
        if self._group is None or self.closing:
            return None
        self.starting += 1
        self._group.start_soon(self._run_worker)
        return None

    def _command(self) -> str:
        parts = [self.python, "-u", self._loop_path, "--serve", "--protocol", self.worker_path,
                 "--code-dir", posixpath.join(self.work_dir, worker.CODE_DIR),
                 "--output", "live" if self.output.live else "end"]
        return f"cd {shlex.quote(self.work_dir)} && exec " + " ".join(map(shlex.quote, parts))

    async def _run_worker(self) -> None:
        try:
            connection = await self.shell._connection()  # type: ignore[attr-defined]
            process = await connection.create_process(self._command(), encoding=None)
        except Exception as exc:
            self.starting -= 1
            self.fail_waiting(exc)
            return
        w = _SSHWorker(process, self._kill_soon, self._spawn)
        self.starting -= 1
        self.worker_started(w)
        assert self._group is not None
        self._group.start_soon(self._forward_stderr, w)
        try:
            while True:
                await self._receive(w)
        except Exception:
            pass  # the channel closed: the worker ended, or the connection dropped
        with anyio.move_on_after(2.0):
            await process.wait_closed()
        code = process.exit_status
        sig_name = process.exit_signal[0] if process.exit_signal else None
        sig = _signal_number(sig_name)
        process.close()
        self.worker_exited(w, code if code is not None and code >= 0 else None, sig)

    async def _receive(self, w: _SSHWorker) -> None:
        """Read one framed message and hand it on. An outcome's head is read apart from its
        body, so that the body is kept as read, not sliced into a copy; and nothing read is
        kept here once handed on (this frame waits for the next message meanwhile)."""
        stdout = w.process.stdout
        size = int.from_bytes(await stdout.readexactly(4), "big")
        if not size:
            return
        kind = await stdout.readexactly(1)
        head = head_size(kind)
        if head and size > head:
            message = kind + await stdout.readexactly(head - 1)
            # A buffer's frame becomes what the result will hold (worker.frame_buffer); an
            # outcome is only read (``pickle.loads``): bytes, filled in place.
            flag = message[1:2] if kind == b"B" else worker.FRAME_READONLY
            self.on_message(w, message, cast(bytes, await _read_into(stdout, size - head, flag)))
        else:
            self.on_message(w, kind + (await stdout.readexactly(size - 1) if size > 1 else b""))

    def _spawn(self, function: Any) -> None:
        if self._group is not None:
            self._group.start_soon(function)

    async def _forward_stderr(self, w: _SSHWorker) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                chunk = await w.process.stderr.read(65536)
                if not chunk:
                    return
                w.keep_tail(chunk)
                if not self.output.enabled:
                    continue
                try:
                    sys.stderr.write(decoder.decode(chunk))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
        except Exception:
            return

    def _kill_soon(self, w: _SSHWorker) -> None:
        if self._group is not None:
            self._group.start_soon(self._kill_now, w)

    async def _kill_now(self, w: _SSHWorker) -> None:
        """Kill the worker's process (by its pid, through the shell: a channel's signal may
        not reach it), then close its channel."""
        if w.reported_pid is not None:
            try:
                await self.shell.run(f"kill -KILL {w.reported_pid} 2>/dev/null; true")
            except Exception:
                pass
        w.process.close()


async def _read_into(stream: Any, size: int, flag: bytes) -> Any:
    """Read ``size`` bytes into one buffer (``worker.frame_buffer``), a slice at a time:
    ``readexactly`` would gather every packet of a large message (thousands of small blocks,
    scattered over the heap, which then stays resident) and join them into a second copy."""
    buffer, view = worker.frame_buffer(size, flag)
    done = 0
    try:
        while done < size:
            chunk = await stream.read(min(size - done, _SLICE_BYTES))
            if not chunk:
                raise EOFError("the worker's channel closed in the middle of a message")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
    finally:
        view.release()
    return buffer


def _signal_number(name: str | None) -> int | None:
    if not name:
        return None
    import signal

    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return None
