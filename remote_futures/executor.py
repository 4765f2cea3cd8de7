"""``RemoteExecutor``: a ``concurrent.futures.Executor`` whose calls run wherever a transport says.

A thin synchronous facade over the async core (:mod:`remote_futures.core`), which runs on an
event loop in a background thread (an anyio blocking portal). The facade pickles each call in
the caller's thread (a ``map``'s function once), so an unpicklable function fails at ``submit``;
it never blocks the loop. ``submit``/``map``/``amap`` are those of a :class:`ResourceView` with
the executor's own resources.

Life cycle, as the standard library's: the loop thread is held by a module registry, not by the
executor, so an executor dropped with work pending finishes it (a weakref finalizer starts a
non-cancelling ``shutdown(wait=False)``); at interpreter exit the work of executors not shut
down is awaited. On a Ctrl-C (leaving a ``with`` block, or ending the program) what did not
start is cancelled and what runs is stopped, so the program ends at once; a second Ctrl-C while
the executor closes stops its loop at once, and the transport still cleans up.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread

from .config import resolve_target
from .core import Engine, RemoteFuture
from .ledger import Call
from .login_node import SCHEDULER_COMMANDS, check_scheduler_here
from .logs import quiet_third_party
from .output import DEFAULT_PREFIX, OutputForwarder, check_prefix
from .output import check_mode as check_output_mode
from .planning import Request
from .progress import MapProgress, require_tqdm
from .resources import Resources
from .retry import RetryPolicy
from .runtime import Runtime, interpreter_exiting, make_transport
from .serialization import CallPickler, dumps_initializer, user_code
from .session import SessionRecorder, ledger_enabled, new_session_id
from .transports.base import Transport

__all__ = ["RemoteExecutor", "RemoteFuture"]

if TYPE_CHECKING:
    from .attach import AttachedSession

T = TypeVar("T")

class RemoteExecutor(concurrent.futures.Executor):
    """Run calls on a cluster, a remote host, or local subprocesses, as ProcessPoolExecutor does.

    ``target`` is a transport name (``local``, ``ssh``, ``slurm``, ``pbs``, ``sge``) or the name
    of a profile in the config file (see :mod:`remote_futures.config`); ``options`` are the
    transport's options and, like ``max_workers``, override the profile's. Unknown names raise
    :class:`~remote_futures.errors.ConfigurationError` listing the valid ones.

    ``max_workers`` caps how many jobs (array tasks) run at once; default: the transport's
    (the CPU count for ``local``). ``initializer(*initargs)`` runs in each worker process before
    its first call; if it raises, the executor breaks (:class:`BrokenRemoteExecutor`).

    ``retries=N`` (default 0) runs a call up to N more times when it was lost rather than
    failed: its worker process died (a signal, ``os._exit``, out of memory) or the
    infrastructure lost it (``NODE_FAIL``, ``PREEMPTED``, ``BOOT_FAIL``, ``VANISHED``...). A call
    that raised is not retried unless ``retry_on=(ExcType, ...)`` names its exception. Each
    retry is logged; the final error lists every attempt (see :mod:`remote_futures.retry`).

    ``progress=True`` shows a bar per ``map`` on stderr (queued, running, done, failed); it
    needs tqdm (the ``[progress]`` extra).

    ``output`` says when what the calls print reaches this process's stdout and stderr:
    ``"live"`` (default: line by line while they run, as a ``ProcessPoolExecutor`` child's
    prints do), ``"end"`` (each call's in one piece when it ends) or ``"off"``. With
    ``max_workers > 1`` each line is tagged with its call, ``output_prefix`` being the tag's
    format (fields ``job`` and ``call``; default ``"[{job}.{call}] "``; ``""``: no tag). See
    :mod:`remote_futures.output` for what each transport forwards live.

    An executor dropped while work is pending finishes that work, then releases its jobs.

    Each executor has a ``session_id`` and records its calls and jobs in a local ledger
    (:mod:`remote_futures.session`); after the client process dies, :meth:`attach` collects
    the results of a batch scheduler session.
    """

    def __init__(
        self,
        target: str | int = "local",
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        retries: int | None = None,
        retry_on: Sequence[type[BaseException]] | None = None,
        progress: bool | None = None,
        output: str | None = None,
        output_prefix: str | None = None,
        **options: Any,
    ) -> None:
        if isinstance(target, int) and not isinstance(target, bool):
            # ProcessPoolExecutor(4): an int first argument is max_workers, not a target.
            if max_workers is not None:
                raise TypeError("max_workers given twice (positionally and by keyword)")
            max_workers, target = target, "local"
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        if output is not None:
            check_output_mode(output)
        if output_prefix is not None:
            check_prefix(output_prefix)
        quiet_third_party()
        resolved = resolve_target(target, options)  # type: ignore[arg-type]
        # The profile's executor keywords, overridden by the ones given here.
        given = {"max_workers": max_workers, "retries": retries, "progress": progress,
                 "output": output, "output_prefix": output_prefix}
        settings = {**resolved.executor_options,
                    **{key: value for key, value in given.items() if value is not None}}
        output = check_output_mode(settings.get("output", "live"))
        prefix = (DEFAULT_PREFIX if settings.get("output_prefix") is None
                  else check_prefix(settings["output_prefix"]))
        retry = RetryPolicy.from_arguments(settings.get("retries"), retry_on)
        self._progress = bool(settings.get("progress"))
        if self._progress:
            require_tqdm()
        self._transport = make_transport(resolved, settings.get("max_workers"))
        #: This executor's id in the session ledger (``RemoteExecutor.attach(session_id)``).
        self.session_id: str = new_session_id()
        self._recorder = SessionRecorder(self.session_id, enabled=ledger_enabled())
        self._next_seq = 0
        if getattr(self._transport.options, "forward_output", True) is False:
            output = "off"  # the transports' older switch says the same
        # Tags only when several calls may print at once.
        self._transport.output = OutputForwarder(
            output, prefix if self._transport.max_workers > 1 else ""
        )
        if (resolved.transport in SCHEDULER_COMMANDS
                and getattr(self._transport.options, "host", None) is None):
            # No host: this machine is the login node. Say so now if it is not, before a
            # connection is opened or an environment built.
            check_scheduler_here(resolved.transport)
        initializer_blob = None
        if getattr(self._transport, "takes_initializer", False):
            # The local pool hands initargs to its workers through multiprocessing (queues,
            # locks), so they are not pickled here.
            self._transport.set_initializer(  # type: ignore[attr-defined]
                initializer, initargs
            )
        else:
            initializer_blob = dumps_initializer(initializer, initargs)
        self._resources: Resources = getattr(self._transport.options, "resources", None) or (
            Resources()
        )
        self._view = ResourceView(self, self._resources)
        self._ships_code = self._transport.ships_user_code
        self._main_by_reference = self._transport.main_by_reference
        self._engine = Engine(
            self._transport,
            initializer=initializer_blob,
            sys_path=[] if self._ships_code else list(sys.path),
            retry=retry,
        )
        self._engine.observer = self._recorder
        self._recorder.session_started(
            target=str(target), transport=resolved.transport, options=resolved.options,
            executor={"max_workers": self._transport.max_workers,
                      "retries": settings.get("retries") or 0},
        )
        self._lock = threading.Lock()
        self._shutdown = False
        self._runtime = Runtime(self._engine, f"remote_futures-{self._transport.name}",
                                 self._recorder)
        # Dropped without shutdown: finish the pending work in the background, then stop (the
        # futures, not the executor, are what the caller still holds).
        self._finalizer = weakref.finalize(self, Runtime.close_in_background, self._runtime)
        self._finalizer.atexit = False

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
        return self._view.submit(fn, *args, **kwargs)

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
        return self._view.map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel pending calls; wait for the rest if ``wait``."""
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._runtime.cancel_pending()
        if wait:
            self._runtime.close()
        else:
            self._runtime.close_in_background()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if isinstance(exc_val, KeyboardInterrupt):
            # Ctrl-C: the user wants out now. What is queued is cancelled, calls already
            # running are stopped (their futures fail), nothing is left behind.
            with self._lock:
                self._shutdown = True
            self._runtime.cancel_pending()
            self._runtime.close(wait_for_work=False)
        else:
            self.shutdown(wait=True)

    # --- asyncio ------------------------------------------------------------------------------

    async def __aenter__(self) -> RemoteExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await anyio.to_thread.run_sync(self.shutdown)

    def amap(
        self, fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> AsyncIterator[T]:
        """``map`` for asyncio: ``async for result in ex.amap(f, xs)``, results in order."""
        return self._view.amap(fn, *iterables, chunksize=chunksize)

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
    ) -> tuple[list[RemoteFuture[T]], MapProgress | None]:
        """The map's futures, and its progress bar (``progress=True``)."""
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        self._check_open()
        pickler = CallPickler(fn, main_by_reference=self._main_by_reference)
        blobs = [pickler.dumps(args, {}) for args in zip(*iterables, strict=False)]
        if not blobs:
            return [], None
        # With no chunksize the core chunks the calls when it plans them (by the transport's
        # default_chunksize), once the transport is open and knows its max_workers.
        size = chunksize or 1
        futures: list[RemoteFuture[T]] = self._enqueue(
            [blobs[i : i + size] for i in range(0, len(blobs), size)], resources,
            coalesce=False, auto_chunk=chunksize is None,
        )
        if self._progress:
            bar = MapProgress(
                futures, desc=f"{getattr(fn, '__name__', 'map')} ({self._transport.name})"
            )
            return futures, bar
        return futures, None

    def _submit_future(
        self, fn: Callable[..., T], args: Sequence[Any], kwargs: dict[str, Any],
        resources: Resources,
    ) -> RemoteFuture[T]:
        self._check_open()
        blob = CallPickler(fn, main_by_reference=self._main_by_reference).dumps(args, kwargs)
        futures: list[RemoteFuture[T]] = self._enqueue([[blob]], resources, coalesce=True)
        return futures[0]

    def _check_open(self) -> None:
        # Checked before pickling (cheap failure) and again when handing over (the truth).
        self._runtime.check_alive()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _enqueue(
        self, tasks: list[list[bytes]], resources: Resources, *, coalesce: bool,
        auto_chunk: bool = False,
    ) -> list[RemoteFuture[Any]]:
        code = user_code() if self._ships_code else None
        futures: list[RemoteFuture[Any]] = []
        request_tasks: list[list[Call]] = []
        for task in tasks:
            calls: list[Call] = []
            for blob in task:
                future: RemoteFuture[Any] = RemoteFuture()
                calls.append(Call(future, blob))
                futures.append(future)
            request_tasks.append(calls)
        with self._lock:
            self._check_open()
            # Numbered under the lock: the ledger's order is the order of hand-over.
            first = seq = self._next_seq
            for calls in request_tasks:
                for call in calls:
                    call.seq = seq
                    seq += 1
            self._next_seq = seq
            self._recorder.calls_queued(first, seq - first)
            self._runtime.hand_over(
                Request(request_tasks, resources, coalesce, code, auto_chunk=auto_chunk)
            )
        return futures

    # --- after a crash ------------------------------------------------------------------------

    @classmethod
    def attach(cls, session_id: str, **overrides: Any) -> AttachedSession:
        """Reconnect to the jobs of a session whose client died (a ``SIGKILL``, a reboot),
        with the options it saved in the session ledger (``overrides`` replace them: a
        password the ledger never stores, a host that moved).

        Use it as a context manager; its ``futures`` hold one future per call of the
        session, in submission order: finished calls resolve at once, running ones when
        they finish, failed ones with their error. Nothing is submitted again. Leaving the
        block waits for every future, then removes the jobs' directories (per ``cleanup``);
        leaving it on an exception detaches and leaves unfinished jobs running.

        Works for the batch schedulers (``slurm``, ``pbs``, ``sge``), whose jobs outlive the
        client; other transports raise :class:`~remote_futures.errors.ConfigurationError`.
        """
        from .attach import attach_session

        return attach_session(session_id, overrides)


@dataclasses.dataclass(frozen=True)
class ResourceView:
    """An executor's ``submit``/``map``/``amap`` with other resources (``with_resources``)."""

    executor: RemoteExecutor
    resources: Resources

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> RemoteFuture[T]:
        """``RemoteExecutor.submit`` with these resources."""
        return self.executor._submit_future(fn, args, kwargs, self.resources)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """``RemoteExecutor.map`` with these resources."""
        end_time = None if timeout is None else timeout + time.monotonic()
        futures, bar = self.executor._map_futures(fn, iterables, chunksize, self.resources)
        return _result_iterator(futures, end_time, None if bar is None else bar.wait_closed)

    def amap(
        self, fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> AsyncIterator[T]:
        """``RemoteExecutor.amap`` with these resources: the calls are handed over at once
        (unpicklable arguments raise here), results come in order."""
        futures, _ = self.executor._map_futures(fn, iterables, chunksize, self.resources)
        return _async_results(futures)


async def _async_results(futures: list[RemoteFuture[T]]) -> AsyncIterator[T]:
    try:
        for future in futures:
            yield await future
    finally:
        for future in futures:
            future.cancel()


def _result_iterator(
    futures: list[RemoteFuture[T]], end_time: float | None,
    settled: Callable[[], None] | None = None,
) -> Iterator[T]:
    """Yield results in order, cancelling what is left if the consumer stops early (stdlib);
    once all were yielded, wait for ``settled`` (the map's progress bar drawing its end)."""
    try:
        futures.reverse()
        while futures:
            if end_time is None:
                yield _result_or_cancel(futures.pop())
            else:
                yield _result_or_cancel(futures.pop(), end_time - time.monotonic())
        if settled is not None:
            settled()
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
