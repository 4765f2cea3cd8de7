"""``RemoteExecutor``: a ``concurrent.futures.Executor`` whose calls run wherever a transport says.

A thin synchronous facade over the async core (:mod:`remote_futures.core`), which runs on an
event loop in a background thread (an anyio blocking portal). The facade pickles each call in
the caller's thread, so an unpicklable function fails at ``submit``; it never blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from .config import resolve_target
from .core import Call, Engine, Request
from .errors import BrokenRemoteExecutor, ConfigurationError
from .resources import Resources
from .serialization import dumps_call, dumps_initializer, user_code
from .transports import transport_class
from .transports.base import Transport, build_options

__all__ = ["RemoteExecutor", "RemoteFuture"]

T = TypeVar("T")

_live_executors: weakref.WeakSet[RemoteExecutor] = weakref.WeakSet()
_interpreter_exiting = False


class RemoteFuture(concurrent.futures.Future[T]):
    """A ``concurrent.futures.Future`` that can also be awaited in a running asyncio loop.

    Cancelling the awaiting asyncio task cancels this future too (if it is still pending).
    """

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()


class RemoteExecutor(concurrent.futures.Executor):
    """Run calls on a cluster, a remote host, or local subprocesses, as ProcessPoolExecutor does.

    ``target`` is a transport name (``local``, ``ssh``, ``slurm``, ``pbs``, ``sge``) or the name
    of a profile in the config file (see :mod:`remote_futures.config`); ``options`` are the
    transport's options and override the profile's. Unknown names raise
    :class:`~remote_futures.errors.ConfigurationError` listing the valid ones.

    ``max_workers`` caps how many jobs (array tasks) run at once; default: the transport's
    (the CPU count for ``local``). ``initializer(*initargs)`` runs in each worker process before
    its first call; if it raises, the executor breaks (:class:`BrokenRemoteExecutor`).
    """

    def __init__(
        self,
        target: str = "local",
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        **options: Any,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._transport = _make_transport(target, options, max_workers)
        self._resources: Resources = getattr(self._transport.options, "resources", None) or (
            Resources()
        )
        self._ships_code = self._transport.ships_user_code
        self._engine = Engine(
            self._transport,
            initializer=dumps_initializer(initializer, initargs),
            sys_path=[] if self._ships_code else list(sys.path),
        )
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._shutdown = False
        self._closed = False
        self._portal_cm = anyio.from_thread.start_blocking_portal(
            "asyncio", name=f"remote_futures-{self._transport.name}"
        )
        self._portal = self._portal_cm.__enter__()
        self._loop: asyncio.AbstractEventLoop = self._portal.call(asyncio.get_running_loop)
        self._portal.start_task_soon(self._engine.run)
        _live_executors.add(self)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<RemoteExecutor {self._transport.describe} max_workers={self.max_workers} {state}>"

    @property
    def max_workers(self) -> int:
        """How many jobs (array tasks) may run at once."""
        return self._transport.max_workers

    @property
    def transport(self) -> Transport:
        """The transport this executor drives (for inspection: its options, its description)."""
        return self._transport

    # --- the Executor API ---------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> RemoteFuture[T]:
        """Schedule ``fn(*args, **kwargs)``; return a future (also awaitable in asyncio)."""
        return self._enqueue(fn, [[(args, kwargs)]], self._resources, coalesce=True)[0]

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in order, ``TimeoutError`` after ``timeout``.

        All calls go out as one array job; ``chunksize`` calls share one array task. With no
        ``chunksize`` the transport chooses (``local``: 1; batch schedulers: about as many tasks
        as can run at once, since each job costs the scheduler time to launch).
        """
        end_time = None if timeout is None else timeout + time.monotonic()
        futures = self._map_futures(fn, iterables, chunksize, self._resources)
        return _result_iterator(futures, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel pending calls; wait for the rest if ``wait``."""
        with self._lock:
            self._shutdown = True
        if cancel_futures and not self._closed:
            self._portal.call(self._engine.cancel_pending)
        if wait:
            self._close()
        elif not self._closed:
            threading.Thread(target=self._close, name="remote_futures-shutdown").start()

    # --- asyncio ------------------------------------------------------------------------------

    async def __aenter__(self) -> RemoteExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await anyio.to_thread.run_sync(self.shutdown)

    async def amap(
        self, fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> AsyncIterator[T]:
        """``map`` for asyncio: ``async for result in ex.amap(f, xs)``, results in order."""
        futures = self._map_futures(fn, iterables, chunksize, self._resources)
        try:
            for future in futures:
                yield await future
        finally:
            for future in futures:
                future.cancel()

    # --- other resources for some calls -------------------------------------------------------

    def with_resources(self, resources: Resources | None = None, **fields: Any) -> ResourceView:
        """A view of this executor whose calls ask for other resources, e.g.
        ``ex.with_resources(cpus=8, memory="32G").map(fit, data)``; fields not given keep the
        executor's values."""
        override = resources or Resources()
        if fields:
            override = override.merged(Resources.from_mapping(fields, where="with_resources()"))
        return ResourceView(self, self._resources.merged(override))

    # --- internals ----------------------------------------------------------------------------

    def _map_futures(
        self,
        fn: Callable[..., T],
        iterables: Sequence[Iterable[Any]],
        chunksize: int | None,
        resources: Resources,
    ) -> list[RemoteFuture[T]]:
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (args, {}) for args in zip(*iterables, strict=False)
        ]
        if not calls:
            return []
        size = chunksize or self._transport.default_chunksize(len(calls))
        tasks = [calls[i : i + size] for i in range(0, len(calls), size)]
        return self._enqueue(fn, tasks, resources, coalesce=False)

    def _enqueue(
        self,
        fn: Callable[..., T],
        tasks: list[list[tuple[tuple[Any, ...], dict[str, Any]]]],
        resources: Resources,
        *,
        coalesce: bool,
    ) -> list[RemoteFuture[T]]:
        with self._lock:
            broken = self._engine.broken
            if broken is not None:
                raise BrokenRemoteExecutor(str(broken)) from broken.__cause__
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            code = user_code() if self._ships_code else None
            futures: list[RemoteFuture[T]] = []
            request_tasks: list[list[Call]] = []
            for task in tasks:
                calls: list[Call] = []
                for args, kwargs in task:
                    future: RemoteFuture[T] = RemoteFuture()
                    calls.append(Call(dumps_call(fn, args, kwargs), future))
                    futures.append(future)
                request_tasks.append(calls)
            self._loop.call_soon_threadsafe(
                self._engine.enqueue, Request(request_tasks, resources, coalesce, code)
            )
        return futures

    def _close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            try:
                self._portal.call(self._engine.wait_idle)
                self._portal.call(self._engine.stop)
            finally:
                self._closed = True
                self._portal_cm.__exit__(None, None, None)


@dataclasses.dataclass(frozen=True)
class ResourceView:
    """An executor's ``submit``/``map``/``amap`` with other resources (``with_resources``)."""

    executor: RemoteExecutor
    resources: Resources

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> RemoteFuture[T]:
        """``RemoteExecutor.submit`` with these resources."""
        return self.executor._enqueue(fn, [[(args, kwargs)]], self.resources, coalesce=True)[0]

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """``RemoteExecutor.map`` with these resources."""
        end_time = None if timeout is None else timeout + time.monotonic()
        futures = self.executor._map_futures(fn, iterables, chunksize, self.resources)
        return _result_iterator(futures, end_time)

    def amap(
        self, fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> AsyncIterator[T]:
        """``RemoteExecutor.amap`` with these resources."""
        futures = self.executor._map_futures(fn, iterables, chunksize, self.resources)
        return _async_results(futures)


async def _async_results(futures: list[RemoteFuture[T]]) -> AsyncIterator[T]:
    try:
        for future in futures:
            yield await future
    finally:
        for future in futures:
            future.cancel()


def _make_transport(target: str, options: dict[str, Any], max_workers: int | None) -> Transport:
    resolved = resolve_target(target, options)
    cls = transport_class(resolved.transport)
    valid = {field.name for field in dataclasses.fields(cls.Options)}
    for key in sorted(resolved.profile_keys - valid):
        raise ConfigurationError(
            f"{resolved.profile_source}: unknown key {key!r} for transport "
            f"{resolved.transport!r}; valid keys: transport, {', '.join(sorted(valid))}"
        )
    parsed = build_options(cls.Options, resolved.options, where=resolved.source)
    return cls(parsed, max_workers=max_workers or cls.default_max_workers(parsed))


def _result_iterator(futures: list[RemoteFuture[T]], end_time: float | None) -> Iterator[T]:
    """Yield results in order, cancelling what is left if the consumer stops early (stdlib)."""
    try:
        futures.reverse()
        while futures:
            if end_time is None:
                yield _result_or_cancel(futures.pop())
            else:
                yield _result_or_cancel(futures.pop(), end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # break a reference cycle with the exception in exc_info


def _python_exit() -> None:
    """At interpreter exit, finish the work of executors that were not shut down, as
    ProcessPoolExecutor does, and stop their event-loop threads so the exit is not blocked."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for executor in list(_live_executors):
        try:
            executor.shutdown(wait=True)
        except Exception:
            pass  # nothing useful to do about it at exit


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # as concurrent.futures
