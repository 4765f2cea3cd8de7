"""The executor's life is the standard library's: dropped executors finish their work, nothing
raised on the event-loop thread leaves a future pending, shutdown and Ctrl-C end promptly.

No timed assertions: a test that would hang on a regression is bounded by pytest's timeout.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from remote_futures import BrokenRemoteExecutor, RemoteExecutor, SerializationError
from remote_futures.jobs import JobSpec

pytestmark = pytest.mark.timeout(60)


def double(x: int) -> int:
    return 2 * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class ExitsWhenLoaded:
    """Pickles fine; unpickling it calls ``sys.exit`` (on the client, when the result comes)."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return sys.exit, (3,)


def make_exits_when_loaded() -> ExitsWhenLoaded:
    return ExitsWhenLoaded()


@pytest.mark.parametrize("target", ["local", "mock"])
def test_dropped_executor_finishes_a_submit(target: str) -> None:
    future = RemoteExecutor(target, max_workers=1).submit(double, 21)
    gc.collect()
    assert future.result(timeout=30) == 42


@pytest.mark.parametrize("target", ["local", "mock"])
def test_dropped_executor_finishes_a_map(target: str) -> None:
    assert list(RemoteExecutor(target, max_workers=2).map(double, range(5))) == [0, 2, 4, 6, 8]


def test_dropped_executor_is_collected_and_stops_its_loop() -> None:
    ex = RemoteExecutor("mock", max_workers=1)
    runtime = ex._runtime
    future = ex.submit(nap, 0.2)
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None
    assert future.result(timeout=30) == 0.2
    deadline = time.monotonic() + 30
    while not runtime.closed:
        assert time.monotonic() < deadline, "the dropped executor's loop never stopped"
        time.sleep(0.05)


def test_result_whose_unpickling_raises_systemexit_fails_only_that_call() -> None:
    with RemoteExecutor("local", max_workers=1) as ex:
        bad = ex.submit(make_exits_when_loaded)
        with pytest.raises(SerializationError, match="SystemExit"):
            bad.result(timeout=30)
        assert ex.submit(double, 4).result(timeout=30) == 8


def test_done_callback_calling_sys_exit_does_not_stop_the_executor() -> None:
    with RemoteExecutor("mock", max_workers=1) as ex:
        first = ex.submit(double, 1)
        first.add_done_callback(lambda _: sys.exit(1))
        assert first.result(timeout=30) == 2
        assert ex.submit(double, 5).result(timeout=30) == 10


def _exit_on_submit(spec: JobSpec) -> None:
    raise SystemExit(4)


def test_baseexception_on_the_loop_breaks_the_executor_and_resolves_everything() -> None:
    ex = RemoteExecutor("mock", max_workers=1, on_submit=_exit_on_submit)
    try:
        futures = [ex.submit(double, i) for i in range(3)]
        for future in futures:
            with pytest.raises(BrokenRemoteExecutor):
                future.result(timeout=30)
        with pytest.raises(BrokenRemoteExecutor):
            ex.submit(double, 1)
    finally:
        ex.shutdown()


def test_shutdown_cancel_futures_interrupts_a_long_prepare() -> None:
    ex = RemoteExecutor("mock", max_workers=1, prepare_seconds=600)
    futures = [ex.submit(double, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


def test_shutdown_cancel_futures_during_a_slow_submission() -> None:
    ex = RemoteExecutor("mock", max_workers=1, submit_seconds=600)
    futures = [ex.submit(double, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)


def test_submit_after_the_loop_ended_raises_instead_of_hanging() -> None:
    ex = RemoteExecutor("mock", max_workers=1)
    ex._runtime.portal.call(ex._engine.stop)  # the loop ends under the executor
    with pytest.raises(BrokenRemoteExecutor):
        ex.submit(double, 1)
    ex.shutdown()


# --- Ctrl-C, for real: a script interrupted with SIGINT in the middle of its work -------------

_SCRIPT = """
import sys, time
from remote_futures import RemoteExecutor

def nap(seconds):
    time.sleep(seconds)
    return seconds

if __name__ == "__main__":
    how, work = sys.argv[1], sys.argv[2]
    if how == "with":
        with RemoteExecutor("local", max_workers=2, work_dir=work) as ex:
            futures = [ex.submit(nap, 30) for _ in range(6)]
            print("started", flush=True)
            for f in futures:
                f.result()
    else:
        ex = RemoteExecutor("local", max_workers=2, work_dir=work)
        print("started", flush=True)
        for r in ex.map(nap, [30] * 6):
            pass
"""


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["with", "map"])
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_ends_the_program_and_leaves_nothing(tmp_path: Path, how: str,
                                                    presses: int) -> None:
    """SIGINT to the process group (what a terminal's Ctrl-C and ``timeout -s INT`` send):
    the program ends, no worker process is left in its group, no job directory is left."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, str(script), how, str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        time.sleep(1.0)  # the workers are running their calls
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(proc.pid):
            assert time.monotonic() < deadline, "worker processes outlived the program"
            time.sleep(0.1)
        leftovers = sorted(p.name for p in work.iterdir()) if work.exists() else []
        assert leftovers == [], leftovers
    finally:
        if proc.poll() is None or _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_consumed_map_results_are_freed() -> None:
    class Big:
        pass

    refs: list[weakref.ref[Any]] = []
    with RemoteExecutor("mock", max_workers=2) as ex:
        for value in ex.map(make_big, range(6)):
            refs.append(weakref.ref(value))
            del value
        alive = [ref for ref in refs[:-1] if ref() is not None]
        assert alive == []


class Payload:
    """A result class (module level, so it pickles by reference)."""


def make_big(_: int) -> Payload:
    return Payload()


def test_done_future_does_not_pin_its_result_after_it_is_dropped() -> None:
    with RemoteExecutor("mock", max_workers=1) as ex:
        future = ex.submit(make_big, 0)
        ref = weakref.ref(future.result(timeout=30))
        del future
        assert ref() is None  # no reference cycle: freed without a collection
