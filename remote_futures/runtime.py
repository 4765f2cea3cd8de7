"""The event-loop thread that runs one engine, and what executors share in this process.

A :class:`Runtime` is an anyio blocking portal (an asyncio loop in a thread of its own) running
one :class:`~remote_futures.core.Engine`; the synchronous facades (``RemoteExecutor``, an
attached session) hand it requests and close it. Runtimes with work left are held by a module
registry, not by their executor, so that a dropped executor finishes its work; at interpreter
exit that work is awaited (as ``concurrent.futures`` does), and a forked child forgets the
parent's loops. :func:`make_transport` builds a transport from a resolved target.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import warnings
from typing import Any

import anyio
import anyio.from_thread

from .config import EXECUTOR_KEYS, ResolvedTarget
from .core import Engine
from .errors import BrokenRemoteExecutor, ConfigurationError
from .planning import Request
from .session import SessionRecorder
from .transports import transport_class
from .transports.base import Transport, build_options

__all__ = ["Runtime", "interpreter_exiting", "make_transport"]

#: Event loops with work that is not finished: held here, not by their executor, so that an
#: executor dropped with work pending still finishes it (as ProcessPoolExecutor's does).
_runtimes: set[Runtime] = set()
_runtimes_lock = threading.Lock()
_interpreter_exiting = False


class Runtime:
    """The event-loop thread running one engine, and its orderly end."""

    def __init__(
        self, engine: Engine, name: str, recorder: SessionRecorder | None = None
    ) -> None:
        self.engine = engine
        #: The session ledger's writer, closed once the loop has stopped.
        self.recorder = recorder
        #: How the session ended, for the ledger (``closed``; ``attached`` for an attach).
        self.end_state = "closed"
        self._cm = anyio.from_thread.start_blocking_portal("asyncio", name=name)
        self.portal = self._cm.__enter__()
        self.loop: asyncio.AbstractEventLoop = self.portal.call(asyncio.get_running_loop)
        self.portal.start_task_soon(engine.run)
        self.closed = False
        self._close_lock = threading.Lock()
        # Requests wait here and the loop is woken once per batch, not once per submit: a
        # wake-up costs a write to the loop's socket and a switch of threads (the GIL), which
        # dominated the cost of a loop of submits.
        self._inbox: list[Request] = []
        self._inbox_lock = threading.Lock()
        self._wakeup_pending = False
        with _runtimes_lock:
            _runtimes.add(self)

    def check_alive(self) -> None:
        """Raise :class:`BrokenRemoteExecutor` if the loop can no longer take work."""
        broken = self.engine.broken
        if broken is not None:
            raise BrokenRemoteExecutor(str(broken)) from broken.__cause__
        if self.closed or not self.engine.running or self.loop.is_closed():
            raise BrokenRemoteExecutor("the executor's event loop is no longer running")

    def hand_over(self, request: Request) -> None:
        """Queue ``request`` for the loop (any thread), in order."""
        with self._inbox_lock:
            self._inbox.append(request)
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            raise BrokenRemoteExecutor("the executor's event loop is no longer running") from None

    def _drain(self) -> None:
        with self._inbox_lock:
            requests, self._inbox = self._inbox, []
            self._wakeup_pending = False
        for request in requests:
            self.engine.enqueue(request)

    def cancel_pending(self) -> None:
        """Cancel every call not running yet."""
        if not self.closed:
            try:
                self.portal.call(self.engine.cancel_pending)
            except RuntimeError:
                pass  # the loop already ended: every future was resolved then

    def close(self, *, wait_for_work: bool = True) -> None:
        """Wait for the work handed over (unless not ``wait_for_work``), then stop the loop:
        the core cancels the jobs of calls still open and fails them. Interrupted (Ctrl-C), it
        stops the loop at once."""
        with self._close_lock:
            if self.closed:
                return
            try:
                if wait_for_work:
                    self.portal.call(self.engine.wait_idle)
                self.portal.call(self.engine.stop)
            except RuntimeError:
                pass  # the portal already stopped (the loop ended on its own)
            except BaseException:
                self._end(*sys.exc_info())
                raise
            self._end(None, None, None)

    def _end(self, *exc_info: Any) -> None:
        self.closed = True
        if self.recorder is not None:
            self.recorder.close(self.end_state)
        with _runtimes_lock:
            _runtimes.discard(self)
        try:
            self._cm.__exit__(*exc_info)
        except RuntimeError:
            pass  # "this portal is not running": nothing left to stop

    def close_in_background(self) -> None:
        """``close`` in a thread of its own (``shutdown(wait=False)``, a dropped executor)."""
        if not self.closed:
            threading.Thread(
                target=self.close, name="remote_futures-shutdown", daemon=True
            ).start()


#: ProcessPoolExecutor's own constructor options: honoured by the local pool, accepted and
#: ignored (with a warning) by transports that have no use for them.
_POOL_ONLY_OPTIONS = ("mp_context", "max_tasks_per_child")


def make_transport(resolved: ResolvedTarget, max_workers: int | None) -> Transport:
    """The transport a resolved target names, its options checked (a profile's unknown key is
    a :class:`ConfigurationError`; the stdlib pool's own options are dropped, with a warning,
    where they mean nothing); ``max_workers`` None lets it fit the cluster's free slots."""
    cls = transport_class(resolved.transport)
    valid = {field.name for field in dataclasses.fields(cls.Options)}
    for key in _POOL_ONLY_OPTIONS:
        if key in resolved.options and key not in valid:
            if resolved.options[key] is not None:
                warnings.warn(
                    f"{key} is ignored by the {resolved.transport!r} transport (it only "
                    "applies to local worker processes)", stacklevel=3,
                )
            resolved.options.pop(key)
    for key in sorted(resolved.profile_keys - valid):
        raise ConfigurationError(
            f"{resolved.profile_source}: unknown key {key!r} for transport "
            f"{resolved.transport!r}; valid keys: transport, "
            f"{', '.join(sorted(valid | set(EXECUTOR_KEYS)))}"
        )
    parsed = build_options(cls.Options, resolved.options, where=resolved.source)
    if getattr(parsed, "pool", False):
        # Warm workers in pilot jobs instead of array jobs (batch schedulers).
        from .transports.pilot import pilot_class

        cls = pilot_class(cls)
    transport = cls(parsed, max_workers=max_workers or cls.default_max_workers(parsed))
    transport.fit_max_workers = max_workers is None
    return transport


def interpreter_exiting() -> bool:
    """Whether the interpreter is exiting (new work is then refused, as by the stdlib)."""
    return _interpreter_exiting


def _python_exit() -> None:
    """At interpreter exit, finish the work of executors that were not shut down (and of those
    dropped with work pending), as ProcessPoolExecutor does, and stop their event-loop threads
    so the exit is not blocked. After a Ctrl-C, what did not start yet is cancelled instead."""
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    with _runtimes_lock:
        runtimes = list(_runtimes)
    for runtime in runtimes:
        try:
            if interrupted:
                runtime.cancel_pending()
            runtime.close(wait_for_work=not interrupted)
        except Exception:
            pass  # nothing useful to do about it at exit


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # as concurrent.futures


def _forget_runtimes_in_child() -> None:
    """In a process forked from one with executors (a ``fork`` ProcessPoolExecutor's workers),
    the executors' event-loop threads do not exist: at the child's exit, ``_python_exit`` must
    not wait for them (it would hang forever), and a lock held by another thread at the moment
    of the fork must not be inherited locked."""
    global _runtimes_lock
    _runtimes_lock = threading.Lock()
    _runtimes.clear()


os.register_at_fork(after_in_child=_forget_runtimes_in_child)
