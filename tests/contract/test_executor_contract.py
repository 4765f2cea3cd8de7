"""The executor contract: what users rely on from ``ProcessPoolExecutor``, for every transport.

Modelled on CPython's ``Lib/test/test_concurrent_futures/``. Parametrized over the transports
of ``tests/conftest.py`` (``CONTRACT_FACTORIES``) through the ``make_executor`` fixture.

Calls that must stay running or pending while a test looks at them wait on a *gate* file
(``_usercode.block_until``); the ``gate`` fixture opens it at teardown at the latest, so no
test waits on a sleep it cannot shorten, and timing assertions are only coarse bounds.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _usercode
import pytest
from _usercode import (
    UserModuleError,
    add,
    block_until,
    crash_on,
    echo_kwargs,
    get_global,
    power,
    raise_user_module_error,
    record_interval,
    set_global,
    sleep_and_return,
    speak,
    square,
    touch,
)

from remote_futures import (
    BrokenRemoteExecutor,
    JobFailedError,
    RemoteExecutor,
    RemoteTraceback,
    SerializationError,
)

pytestmark = pytest.mark.timeout(60)

MakeExecutor = Callable[..., RemoteExecutor]


# --- things defined in the test module itself (pickled by reference or by value) ------------


class ContractError(Exception):
    """A user exception class defined in the test module."""


def raise_contract_error(message: str) -> None:
    raise ContractError(message)


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float

    def scaled(self, k: float) -> Point:
        return Point(self.x * k, self.y * k)


def scale_point(point: Point, k: float) -> Point:
    return point.scaled(k)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def settle_time() -> None:
    """Longer than the core's coalescing window: a submit after this goes out as its own job."""
    time.sleep(0.5)


# --- submit ---------------------------------------------------------------------------------


def test_submit_returns_result(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    future = ex.submit(square, 7)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 49


def test_submit_passes_positional_and_keyword_arguments(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(power, 2, exp=5).result(timeout=30) == 32
    assert ex.submit(power, base=3).result(timeout=30) == 9


def test_submit_fn_is_positional_only(make_executor: MakeExecutor) -> None:
    """Keyword arguments named ``fn`` (or ``self``) reach the function, as in the stdlib."""
    ex = make_executor()
    future = ex.submit(echo_kwargs, 1, fn="f", self="s", args="a", kwargs="k")
    assert future.result(timeout=30) == ((1,), {"fn": "f", "self": "s", "args": "a", "kwargs": "k"})


def test_submit_non_callable_is_a_type_error(make_executor: MakeExecutor) -> None:
    """At ``submit`` or from the future, as the stdlib's executors differ on when."""
    ex = make_executor()
    with pytest.raises(TypeError):
        ex.submit(42).result(timeout=30)  # type: ignore[arg-type]


def test_max_workers_property(make_executor: MakeExecutor) -> None:
    assert make_executor(max_workers=3).max_workers == 3


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_must_be_positive(make_executor: MakeExecutor, bad: int) -> None:
    with pytest.raises(ValueError):
        make_executor(max_workers=bad)


# --- map ------------------------------------------------------------------------------------


def test_map_yields_results_in_order(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert list(ex.map(square, range(10))) == [x * x for x in range(10)]


def test_map_several_iterables_stops_at_the_shortest(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert list(ex.map(add, range(5), [10, 20, 30])) == [10, 21, 32]
    assert list(ex.map(add, iter([1, 2]), (x for x in range(100)))) == [1, 3]


@pytest.mark.parametrize("chunksize", [1, 3, 20])
def test_map_chunksize(make_executor: MakeExecutor, chunksize: int) -> None:
    ex = make_executor()
    assert list(ex.map(square, range(10), chunksize=chunksize)) == [x * x for x in range(10)]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_bad_chunksize_raises_value_error(make_executor: MakeExecutor, chunksize: int) -> None:
    ex = make_executor()
    with pytest.raises(ValueError):
        ex.map(square, range(3), chunksize=chunksize)


def test_map_empty_iterable(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert list(ex.map(square, [])) == []
    assert list(ex.map(add, [], [1, 2])) == []


def test_map_timeout_raises_timeout_error(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        list(ex.map(block_until, [gate], timeout=0.5))
    assert time.monotonic() - start < 20


def test_map_is_lazy_and_ordered(make_executor: MakeExecutor, gate: Path) -> None:
    """The first result is yielded while a later call still runs; a later call that finishes
    first does not come out first."""
    ex = make_executor(max_workers=3)
    results = ex.map(sleep_and_return, [1.0, 0.0, 0.0], ["slow", "fast", "faster"])
    assert list(results) == ["slow", "fast", "faster"]

    lazy = ex.map(block_until, [gate.parent / "open", gate])
    (gate.parent / "open").touch()
    assert next(lazy) == "released"  # while the second call is still blocked
    gate.touch()
    assert next(lazy) == "released"
    with pytest.raises(StopIteration):
        next(lazy)


def test_map_early_break_cancels_the_rest(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    """Closing the result generator cancels the calls that have not started: they never run
    (as ``Executor.map``'s generator does on close). One call per task (``chunksize=1``): calls
    grouped into a task that has started count as running, as a ProcessPoolExecutor chunk.
    A pool may also have committed the next call to the busy worker (as ProcessPoolExecutor's
    call queue holds one call more than its workers): that call is running, not cancelled, and
    runs; the others never do."""
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)  # remote transports run the calls as the testbed's users
    ex = make_executor(max_workers=1)
    results = ex.map(
        _usercode.map_step, range(6), [str(gate)] * 6, [str(markers)] * 6, chunksize=1
    )
    assert next(results) == 0
    results.close()  # call 1 is blocked (or about to be); calls 2..5 must never start
    gate.touch()
    ex.shutdown(wait=True)
    # ran-0 shows that the calls could write here, so the absence of the others means something.
    ran = sorted(p.name for p in markers.iterdir())
    assert ran in (["ran-0"], ["ran-0", "ran-2"])


# --- exceptions -----------------------------------------------------------------------------


def test_user_exception_from_test_module_is_reraised_as_itself(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    future = ex.submit(raise_contract_error, "boom from the test module")
    with pytest.raises(ContractError, match="boom from the test module") as info:
        future.result(timeout=30)
    assert type(info.value) is ContractError
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_contract_error" in str(cause)
    assert "test_executor_contract.py" in str(cause)
    assert future.exception(timeout=0) is info.value


def test_user_exception_from_user_module_is_reraised_as_itself(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    future = ex.submit(raise_user_module_error, "boom from _usercode")
    error = future.exception(timeout=30)
    assert type(error) is UserModuleError
    assert str(error) == "boom from _usercode"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise_user_module_error" in error.__cause__.tb
    assert "_usercode.py" in error.__cause__.tb
    with pytest.raises(UserModuleError):
        future.result()


def test_builtin_exception_is_reraised(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with pytest.raises(ZeroDivisionError) as info:
        ex.submit(divmod, 1, 0).result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_exception_in_map_is_reraised_when_reached(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    results = ex.map(divmod, [4, 5, 6], [2, 0, 3])
    assert next(results) == (2, 0)
    with pytest.raises(ZeroDivisionError):
        next(results)


# --- what can be called -------------------------------------------------------------------


def test_lambda(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(lambda x: x + 1, 41).result(timeout=30) == 42
    assert list(ex.map(lambda x: -x, [1, 2])) == [-1, -2]


def test_closure(make_executor: MakeExecutor) -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    ex = make_executor()
    assert ex.submit(shifted, 1).result(timeout=30) == 101


def test_local_function_calling_a_local_function(make_executor: MakeExecutor) -> None:
    def helper(x: int) -> int:
        return x * 3

    def local(x: int) -> int:
        return helper(x) + 1

    ex = make_executor()
    assert ex.submit(local, 2).result(timeout=30) == 7


def test_functools_partial(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    cube = functools.partial(power, exp=3)
    assert ex.submit(cube, 2).result(timeout=30) == 8
    assert list(ex.map(cube, [1, 2, 3])) == [1, 8, 27]


def test_class_from_test_module_as_argument_and_result(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    result = ex.submit(scale_point, Point(1.0, 2.0), 3).result(timeout=30)
    assert type(result) is Point
    assert result == Point(3.0, 6.0)
    assert ex.submit(Point(1.0, 1.0).scaled, 2).result(timeout=30) == Point(2.0, 2.0)


def test_function_from_user_module_beside_the_test(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(_usercode.identity, {"a": [1, 2]}).result(timeout=30) == {"a": [1, 2]}


# --- serialization failures -----------------------------------------------------------------


def _generator() -> Any:
    yield 1


@pytest.mark.parametrize(
    "make_unpicklable", [threading.Lock, _generator], ids=["lock", "generator"]
)
def test_unpicklable_argument_fails_at_submit_and_nothing_runs(
    make_executor: MakeExecutor, tmp_path: Path, make_unpicklable: Callable[[], Any]
) -> None:
    ex = make_executor(max_workers=1)
    marker = tmp_path / "ran"
    with pytest.raises(SerializationError) as info:
        ex.submit(touch, marker, make_unpicklable())
    assert isinstance(info.value, pickle.PicklingError)
    assert "touch" in str(info.value)
    with pytest.raises(SerializationError):
        ex.map(touch, [marker, marker], [1, make_unpicklable()])
    # The executor still works, and what failed to pickle never ran (one worker: in order).
    assert ex.submit(square, 3).result(timeout=30) == 9
    ex.shutdown(wait=True)
    assert not marker.exists()


def test_unpicklable_function_fails_at_submit(make_executor: MakeExecutor) -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    ex = make_executor()
    with pytest.raises(SerializationError):
        ex.submit(uses_lock)


def test_unpicklable_result_is_a_serialization_error(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    future = ex.submit(_usercode.return_lock)
    error = future.exception(timeout=30)
    assert isinstance(error, SerializationError)
    with pytest.raises(SerializationError):
        future.result()
    assert ex.submit(square, 2).result(timeout=30) == 4


# --- shutdown -------------------------------------------------------------------------------


def test_shutdown_twice(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(square, 2).result(timeout=30) == 4
    ex.shutdown(wait=True)
    ex.shutdown(wait=True)
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_after_shutdown_raises_runtime_error(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError):
        ex.map(square, [1, 2])


def test_context_manager_waits_and_shuts_down(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        futures = [ex.submit(sleep_and_return, 0.2, i) for i in range(3)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2]
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_shutdown_cancel_futures_cancels_pending(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    first = ex.submit(block_until, gate)
    wait_until(first.running, what="the first call to start")
    settle_time()
    pending = [ex.submit(touch, tmp_path / f"ran-{i}", i) for i in range(5)]
    settle_time()
    threading.Timer(1.0, gate.touch).start()
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=0) == "released"  # a running call completes
    assert all(f.cancelled() for f in pending)
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == []


def test_shutdown_cancel_futures_stdlib_style(make_executor: MakeExecutor) -> None:
    """CPython's ``test_cancel_futures``: many quick calls, few workers; some are cancelled,
    all the others finish normally."""
    ex = make_executor(max_workers=2)
    futures = [ex.submit(sleep_and_return, 0.1, i) for i in range(30)]
    # Started: running, or already done (a 0.1 s call can start and end between two looks).
    wait_until(lambda: futures[0].running() or futures[0].done(),
               what="the first call to start")
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 10
    for future in futures:
        assert future.done()
        if not future.cancelled():
            assert future.exception(timeout=0) is None


def test_shutdown_without_wait_returns_and_running_call_completes(
    make_executor: MakeExecutor, gate: Path
) -> None:
    ex = make_executor()
    future = ex.submit(block_until, gate)
    wait_until(future.running, what="the call to start")
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 5  # the call is still blocked: no waiting happened
    assert not future.done()
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    gate.touch()
    assert future.result(timeout=30) == "released"


# --- cancel, running, done, callbacks -------------------------------------------------------


def test_cancel_pending_future_never_runs(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A call queued behind a running one (its own job, waiting for the only worker) is
    cancelled: ``cancel()`` is True and the call never starts."""
    ex = make_executor(max_workers=1)
    first = ex.submit(block_until, gate)
    wait_until(first.running, what="the first call to start")
    marker = tmp_path / "ran"
    second = ex.submit(touch, marker)
    settle_time()  # `second` has reached the transport and waits for a worker
    assert not second.running()
    assert second.cancel() is True
    assert second.cancelled() and second.done()
    gate.touch()
    assert first.result(timeout=30) == "released"
    # With one worker, a later call starts only after `second` would have run.
    assert ex.submit(square, 5).result(timeout=30) == 25
    assert not marker.exists()
    with pytest.raises(cf.CancelledError):
        second.result()
    err = capfd.readouterr().err
    assert "remote_futures worker" not in err, f"a worker started for the cancelled call:\n{err}"


def test_cancel_pending_future_submitted_with_the_running_one(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    """Two calls submitted together (one job), one worker: cancelling the queued one neither
    runs it nor harms the running one."""
    ex = make_executor(max_workers=1)
    first = ex.submit(block_until, gate)
    marker = tmp_path / "ran"
    second = ex.submit(touch, marker)
    wait_until(first.running, what="the first call to start")
    assert second.cancel() is True
    time.sleep(0.5)  # let the cancellation reach the transport
    gate.touch()
    assert first.result(timeout=30) == "released"
    assert ex.submit(square, 5).result(timeout=30) == 25
    assert not marker.exists()


def test_cancel_running_future_fails(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    future = ex.submit(block_until, gate)
    wait_until(future.running, what="the call to start")
    assert future.cancel() is False
    assert not future.cancelled()
    gate.touch()
    assert future.result(timeout=30) == "released"
    assert future.cancel() is False  # done


def test_running_and_done_transitions(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    future = ex.submit(block_until, gate)
    assert not future.done()
    wait_until(future.running, what="the call to start")
    assert future.running() and not future.done()
    gate.touch()
    assert future.result(timeout=30) == "released"
    assert future.done() and not future.running() and not future.cancelled()


def test_done_callback_called_once(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    calls: list[cf.Future[Any]] = []
    called = threading.Event()

    def callback(future: cf.Future[Any]) -> None:
        calls.append(future)
        called.set()

    future = ex.submit(block_until, gate)
    future.add_done_callback(callback)
    gate.touch()
    assert future.result(timeout=30) == "released"
    assert called.wait(30)
    time.sleep(0.2)
    assert calls == [future]

    late: list[cf.Future[Any]] = []
    future.add_done_callback(late.append)  # already done: called at once, in this thread
    assert late == [future]
    assert calls == [future]


def test_done_callback_on_exception_and_cancel(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor(max_workers=1)
    blocker = ex.submit(block_until, gate)
    failing = ex.submit(raise_contract_error, "x")
    seen: list[str] = []
    done = threading.Event()

    def on_failing(future: cf.Future[Any]) -> None:
        seen.append(type(future.exception()).__name__)
        done.set()

    failing.add_done_callback(on_failing)
    pending = ex.submit(square, 1)
    cancelled: list[bool] = []
    pending.add_done_callback(lambda f: cancelled.append(f.cancelled()))
    if pending.cancel():
        assert cancelled == [True]
    gate.touch()
    assert blocker.result(timeout=30) == "released"
    assert done.wait(30)
    assert seen == ["ContractError"]


# --- wait, as_completed, result(timeout) ----------------------------------------------------


def test_wait_all_completed(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    futures = [ex.submit(square, i) for i in range(4)]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    assert sorted(f.result() for f in done) == [0, 1, 4, 9]


def test_wait_first_completed(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor(max_workers=2)
    slow = ex.submit(block_until, gate)
    fast = ex.submit(square, 3)
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}


def test_wait_first_exception(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor(max_workers=2)
    slow = ex.submit(block_until, gate)
    bad = ex.submit(raise_contract_error, "first exception")
    done, not_done = cf.wait([slow, bad], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    assert isinstance(bad.exception(), ContractError)


def test_wait_timeout(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    slow = ex.submit(block_until, gate)
    done, not_done = cf.wait([slow], timeout=0.3)
    assert not done and not_done == {slow}


def test_as_completed_with_futures_of_two_executors(
    make_executor: MakeExecutor, gate: Path
) -> None:
    first, second = make_executor(max_workers=2), make_executor(max_workers=2)
    slow = first.submit(block_until, gate)
    fast = [first.submit(square, 10), *(second.submit(square, i) for i in range(3))]
    seen = []
    for future in cf.as_completed([slow, *fast], timeout=30):
        seen.append(future)
        if len(seen) == len(fast):
            assert set(seen) == set(fast)  # the blocked one comes last
            gate.touch()
    assert seen[-1] is slow
    assert sorted(f.result() for f in fast) == [0, 1, 4, 100]


def test_as_completed_timeout(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    slow = ex.submit(block_until, gate)
    with pytest.raises(TimeoutError):
        for _ in cf.as_completed([slow], timeout=0.3):
            pass


def test_result_timeout_then_success(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    future = ex.submit(block_until, gate)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        future.exception(timeout=0.1)
    gate.touch()
    assert future.result(timeout=30) == "released"
    assert future.exception(timeout=30) is None


# --- concurrency ----------------------------------------------------------------------------


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    level = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("how", ["submit", "map"])
def test_max_workers_is_respected(make_executor: MakeExecutor, tmp_path: Path, how: str) -> None:
    ex = make_executor(max_workers=2)
    if how == "submit":
        futures = [ex.submit(record_interval, tmp_path, i, 0.3) for i in range(6)]
        results = [f.result(timeout=30) for f in futures]
    else:
        results = list(ex.map(record_interval, [tmp_path] * 6, range(6), [0.3] * 6, timeout=30))
    assert results == list(range(6))
    intervals = []
    for i in range(6):
        start, end = map(float, (tmp_path / str(i)).read_text().split())
        intervals.append((start, end))
    assert _max_overlap(intervals) <= 2, intervals


def test_calls_run_in_parallel(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=4)
    start = time.monotonic()
    assert list(ex.map(time.sleep, [0.5] * 8, timeout=30)) == [None] * 8
    elapsed = time.monotonic() - start
    assert elapsed < 3.5, f"8 x sleep(0.5) on 4 workers took {elapsed:.2f} s"


# --- initializer ----------------------------------------------------------------------------


def test_initializer_runs_before_calls(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2, initializer=set_global, initargs=("initialized",))
    assert ex.submit(get_global).result(timeout=30) == "initialized"
    assert list(ex.map(lambda _: get_global(), range(4))) == ["initialized"] * 4


def test_failing_initializer_breaks_the_executor(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2, initializer=_usercode.failing_initializer)
    futures = [ex.submit(square, i) for i in range(3)]
    for future in futures:
        error = future.exception(timeout=30)
        assert isinstance(error, BrokenRemoteExecutor)
        assert isinstance(error, cf.BrokenExecutor)
    with pytest.raises(BrokenRemoteExecutor):
        futures[0].result()
    assert "the initializer refuses" in str(futures[0].exception())
    with pytest.raises(BrokenRemoteExecutor):
        ex.submit(square, 1)
    with pytest.raises(BrokenRemoteExecutor):
        ex.map(square, [1])


def test_executor_is_broken_before_its_futures_fail(make_executor: MakeExecutor) -> None:
    """As in the stdlib (``terminate_broken``, ``_initializer_failed``), the executor is marked
    broken *before* its futures fail: whoever is woken by the failure (a done callback, a thread
    in ``result()``) and submits again gets ``BrokenRemoteExecutor`` at ``submit``."""
    ex = make_executor(max_workers=1, initializer=_usercode.failing_initializer)
    outcome: list[str] = []
    seen = threading.Event()

    def resubmit(future: cf.Future[Any]) -> None:
        try:
            ex.submit(square, 2)
            outcome.append("submit accepted")
        except BrokenRemoteExecutor:
            outcome.append("BrokenRemoteExecutor")
        except BaseException as exc:
            outcome.append(repr(exc))
        seen.set()

    future = ex.submit(square, 1)
    future.add_done_callback(resubmit)
    assert isinstance(future.exception(timeout=30), BrokenRemoteExecutor)
    assert seen.wait(30)
    assert outcome == ["BrokenRemoteExecutor"]


# --- output ---------------------------------------------------------------------------------


def test_prints_reach_the_callers_stdout_and_stderr(
    make_executor: MakeExecutor, capfd: pytest.CaptureFixture[str]
) -> None:
    ex = make_executor()
    assert ex.submit(speak, "hello").result(timeout=30) == "hello"
    assert list(ex.map(speak, ["a", "b"])) == ["a", "b"]
    out, err = capfd.readouterr()
    for tag in ("hello", "a", "b"):
        assert f"stdout says {tag}" in out
        assert f"stderr says {tag}" in err


# --- a worker that dies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("die", "exit_code", "signal"),
    [
        (_usercode.die_exit, 3, None),
        (_usercode.die_sigkill, None, 9),
        (_usercode.die_segfault, None, 11),
    ],
    ids=["os._exit(3)", "SIGKILL", "segfault"],
)
def test_worker_death_resolves_the_future(
    make_executor: MakeExecutor,
    die: Callable[[str], None],
    exit_code: int | None,
    signal: int | None,
) -> None:
    ex = make_executor()
    last_words = f"last words before {die.__name__}"
    future = ex.submit(die, last_words)
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError), repr(error)
    if exit_code is not None:
        assert error.exit_code == exit_code
        assert f"exit code {exit_code}" in str(error)
    if signal is not None:
        assert error.signal == signal
        assert f"signal {signal}" in str(error)
    assert error.job_id and error.job_id in str(error)
    assert last_words in error.stderr_tail
    assert last_words in str(error)
    with pytest.raises(JobFailedError):
        future.result()
    # The executor keeps serving.
    assert ex.submit(square, 6).result(timeout=30) == 36
    assert list(ex.map(square, [1, 2])) == [1, 4]


def test_crash_in_one_call_of_a_job_keeps_the_others(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=1)
    futures = [ex.submit(crash_on, i, 2) for i in range(6)]  # submitted together: one job
    for i, future in enumerate(futures):
        if i == 2:
            assert isinstance(future.exception(timeout=30), JobFailedError)
        else:
            assert future.result(timeout=30) == i * 10


def test_crash_in_a_map_keeps_the_earlier_results(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2)
    # The crash is in the middle of the second chunk: call 3 (same task) still delivers.
    results = ex.map(crash_on, range(6), [4] * 6, chunksize=3)
    assert [next(results) for _ in range(4)] == [0, 10, 20, 30]
    with pytest.raises(JobFailedError):
        next(results)
    # The crash is the last call: every result before it arrives.
    results = ex.map(functools.partial(crash_on, bad=5), range(6))
    assert [next(results) for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(JobFailedError):
        next(results)
    assert ex.submit(square, 4).result(timeout=30) == 16
