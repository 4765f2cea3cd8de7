"""The ``local`` pool as a drop-in ``ProcessPoolExecutor``: CPython's expectations that apply.

Each test stages the condition for real with spawned worker processes: multiprocessing
queues and locks in ``initargs``, Manager proxies as arguments, workers killed by a signal or
``os._exit`` mid-call, functions pickled by value, a fork after an executor exists.
"""

from __future__ import annotations

import concurrent.futures as cf
import linecache
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import pytest

from remote_futures import (
    JobFailedError,
    RemoteExecutor,
    RemoteTraceback,
    WorkerDiedError,
)
from remote_futures.transports import _pool

pytestmark = pytest.mark.timeout(120)

_state: dict[str, Any] = {}


def init_with_queue(queue: Any) -> None:
    queue.put(os.getpid())


def init_with_lock(lock: Any) -> None:
    _state["lock"] = lock


def use_lock() -> bool:
    with _state["lock"]:
        return True


def getpid(_: object = None) -> int:
    return os.getpid()


def fill(proxy: Any, key: str, value: int) -> str:
    proxy[key] = value
    return "ok"


def put_and_set(queue: Any, event: Any) -> None:
    queue.put("from the worker")
    event.set()


def die_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_message(code: int) -> None:
    sys.stderr.write("worker says goodbye\n")
    sys.stderr.flush()
    os._exit(code)


def exit_in_initializer() -> None:
    os._exit(7)


def test_int_first_argument_is_max_workers() -> None:
    with RemoteExecutor(3) as ex:
        assert ex.max_workers == 3
        assert ex.transport.name == "local"
        assert ex.submit(pow, 2, 5).result() == 32


def test_initializer_once_per_worker_with_a_queue_in_initargs() -> None:
    """11 sequential calls -> 1 initializer run, 1 pid (a multiprocessing Queue in initargs
    travels through the start method, as with ProcessPoolExecutor)."""
    queue = multiprocessing.get_context("spawn").Queue()
    with RemoteExecutor(max_workers=1, initializer=init_with_queue, initargs=(queue,)) as ex:
        pids = [ex.submit(getpid).result() for _ in range(11)]
    assert len(set(pids)) == 1
    assert queue.get(timeout=10) == pids[0]
    assert queue.empty()


def test_lock_in_initargs() -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    with RemoteExecutor(max_workers=2, initializer=init_with_lock, initargs=(lock,)) as ex:
        assert list(ex.map(lambda _: use_lock(), range(4))) == [True] * 4


def test_manager_proxies_as_arguments() -> None:
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.dict()
        queue, event = manager.Queue(), manager.Event()
        with RemoteExecutor(max_workers=2) as ex:
            assert ex.submit(fill, shared, "a", 1).result() == "ok"
            ex.submit(put_and_set, queue, event).result()
        assert dict(shared) == {"a": 1}
        assert queue.get(timeout=10) == "from the worker"
        assert event.is_set()


def test_killed_worker_breaks_only_its_call() -> None:
    with RemoteExecutor(max_workers=1) as ex:
        first = ex.submit(getpid).result()
        future = ex.submit(die_by_signal)
        error = future.exception(timeout=60)
        assert isinstance(error, cf.process.BrokenProcessPool)
        assert isinstance(error, cf.BrokenExecutor)
        assert isinstance(error, JobFailedError)
        assert error.signal == signal.SIGKILL
        # The pool replaced the worker and goes on.
        after = [ex.submit(getpid).result() for _ in range(3)]
        assert first not in after and len(set(after)) == 1


def test_os_exit_reports_exit_code_and_stderr_tail() -> None:
    with RemoteExecutor(max_workers=2) as ex:
        with pytest.raises(WorkerDiedError) as caught:
            ex.submit(die_with_message, 3).result(timeout=60)
        assert caught.value.exit_code == 3
        assert "worker says goodbye" in caught.value.stderr_tail
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_worker_dying_in_its_initializer_fails_a_call_not_forever() -> None:
    with RemoteExecutor(max_workers=1, initializer=exit_in_initializer) as ex:
        future = ex.submit(getpid)
        assert isinstance(future.exception(timeout=60), cf.process.BrokenProcessPool)


def test_a_worker_that_cannot_start_fails_the_call_with_the_reason() -> None:
    """initargs the start method cannot pickle (a lambda): the call fails, saying why,
    instead of waiting forever for a worker."""
    with RemoteExecutor(max_workers=1, initializer=print, initargs=(lambda: 1,)) as ex:
        error = ex.submit(getpid).exception(timeout=60)
    assert isinstance(error, JobFailedError)
    assert "could not start a worker" in str(error)


def wait_for_gate(gate: str) -> None:
    while not os.path.exists(gate):
        time.sleep(0.02)


def length(data: bytes) -> int:
    return len(data)


def test_a_big_argument_for_a_busy_worker_does_not_stall_the_executor(tmp_path: Path) -> None:
    """The worker is still in its initializer (it waits for a gate) when a 4 MB argument is
    sent to it: the executor's loop goes on meanwhile (the call is seen running), instead of
    waiting, blocked on the pipe, for the worker to read."""
    gate = tmp_path / "gate"
    ex = RemoteExecutor(max_workers=1, initializer=wait_for_gate, initargs=(str(gate),))
    try:
        future = ex.submit(length, b"x" * (4 << 20))
        deadline = time.monotonic() + 60
        while not future.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.running(), "the executor stalled while the worker was not reading"
    finally:
        gate.touch()
    assert future.result(timeout=60) == 4 << 20
    ex.shutdown()


def gated_step(step: str, gate: str, markers: str) -> str:
    """Step "blocked" leaves a marker when it starts and waits for the gate; others leave one."""
    Path(markers, step).touch()
    if step == "blocked":
        wait_for_gate(gate)
    return step


def test_a_call_sent_ahead_to_a_busy_worker_is_running_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker runs a call held by a gate; the map's next call is sent to it ahead of time,
    and the worker will start it without asking again. That call is running (as in
    ProcessPoolExecutor's call queue), so closing the map cannot cancel it: it runs. Cancelling
    it instead (as before) sent a skip message that could cross the call's start, and a call
    whose future said "cancelled" ran anyway. The call after it was not sent ahead: it is
    cancelled and never runs. (Calls go ahead only to a worker whose last call was short: the
    threshold is raised so that a loaded machine cannot make the warm-up call look long.)"""
    monkeypatch.setattr(_pool, "AHEAD_AFTER_SECONDS", 30.0)
    gate, markers = tmp_path / "gate", tmp_path / "markers"
    markers.mkdir()
    with RemoteExecutor(max_workers=1) as ex:
        steps = ["first", "blocked", "ahead", "queued"]
        results = ex.map(gated_step, steps, [str(gate)] * 4, [str(markers)] * 4, chunksize=1)
        try:
            assert next(results) == "first"  # short: the worker is then sent calls ahead
            deadline = time.monotonic() + 30
            while not (markers / "blocked").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # the next call went with it; let the loop settle all the same
            results.close()
        finally:
            gate.touch()
    assert sorted(p.name for p in markers.iterdir()) == ["ahead", "blocked", "first"]


def test_max_tasks_per_child_replaces_workers() -> None:
    with RemoteExecutor(max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(getpid).result() for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]


def test_max_tasks_per_child_is_checked_as_the_stdlib_does() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        RemoteExecutor(max_workers=1, max_tasks_per_child=0)
    if "fork" in multiprocessing.get_all_start_methods():
        with pytest.raises(ValueError, match="fork"):
            RemoteExecutor(max_workers=1, max_tasks_per_child=3, mp_context="fork")


def test_pool_only_options_are_ignored_elsewhere_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="max_tasks_per_child is ignored"):
        ex = RemoteExecutor("mock", max_workers=1, max_tasks_per_child=3)
    ex.shutdown()


def _by_value(source: str, filename: str) -> types.FunctionType:
    """A function compiled from source, known to this process's linecache only (as a
    notebook cell or exec'd code is): cloudpickle ships it by value."""
    namespace: dict[str, Any] = {"__name__": "rf_not_importable"}
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    exec(compile(source, filename, "exec"), namespace)
    function: types.FunctionType = namespace["target"]
    return function


def test_traceback_of_a_function_pickled_by_value_shows_its_source() -> None:
    source = textwrap.dedent(
        """\
        def target(x):
            y = x + 1
            raise KeyError(f"missing {y}")
        """
    )
    function = _by_value(source, "<rf-cell-1>")
    with RemoteExecutor(max_workers=1) as ex:
        error = ex.submit(function, 1).exception(timeout=60)
    assert isinstance(error, KeyError)
    assert isinstance(error.__cause__, RemoteTraceback)
    text = error.__cause__.tb
    assert 'File "<rf-cell-1>", line 3, in target' in text
    assert 'raise KeyError(f"missing {y}")' in text


def test_function_is_unpickled_once_per_worker() -> None:
    """A function pickled by value keeps its globals between calls in a worker (it is cached
    there by content, as a module function lives in a ProcessPoolExecutor worker)."""
    source = textwrap.dedent(
        """\
        CALLS = 0
        def target():
            global CALLS
            CALLS += 1
            return CALLS
        """
    )
    function = _by_value(source, "<rf-cell-2>")
    with RemoteExecutor(max_workers=1) as ex:
        assert [ex.submit(function).result() for _ in range(4)] == [1, 2, 3, 4]


def test_stdout_of_workers_is_forwarded(capfd: pytest.CaptureFixture[str]) -> None:
    with RemoteExecutor(max_workers=1) as ex:
        ex.submit(print, "hello from a worker").result()
    assert "hello from a worker" in capfd.readouterr().out


FORK_AFTER_EXECUTOR = """
import concurrent.futures, multiprocessing
from remote_futures import RemoteExecutor

if __name__ == "__main__":
    ex = RemoteExecutor(max_workers=1)
    assert ex.submit(abs, -3).result() == 3
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=fork) as ppe:
        assert list(ppe.map(abs, [-1, -2])) == [1, 2]
    print("done")
"""


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_fork_after_an_executor_does_not_hang_at_exit(tmp_path: Path) -> None:
    """A fork ProcessPoolExecutor's workers inherit the module state of remote_futures but not
    its event-loop thread: their exit must not wait for it."""
    script = tmp_path / "fork_after.py"
    script.write_text(FORK_AFTER_EXECUTOR)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit after forking")
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout


def test_shutdown_leaves_no_worker_behind() -> None:
    ex = RemoteExecutor(max_workers=2)
    pids = set(ex.map(getpid, range(8)))
    ex.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
