"""Large arguments and results through the warm pools: once a call is finished, the client
keeps no copy of what it sent or received, without waiting for the cyclic garbage collector.

The memory checks read this process's resident set (``/proc/self/status``) with the collector
disabled: data kept alive by a reference cycle, or by a buffer of the transport, would then
show as a retained copy. Before each reading, glibc is asked to return the free memory it
keeps (``malloc_trim``, which frees nothing alive): otherwise up to its trim threshold (64 MiB
once large blocks were freed) of free heap stays resident and hides the difference. The
tolerance is well below one copy of the payload, so that a single retained copy fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from testbed_facts import executor_options, require_testbed

from remote_futures import RemoteExecutor, WorkerDiedError

pytestmark = [pytest.mark.timeout(300)]

MIB = 1 << 20
SIZE = 64 * MIB
ROUND_TRIPS = 3
#: Growth over the baseline allowed after a call (one retained copy is SIZE). The local pool
#: levels off about 20 MiB up after its first big calls (not growing with more), the ssh pool
#: at 0.
TOLERANCE = 40 * MIB


def _trim() -> None:
    """Have glibc give free heap memory back to the system (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Payload:
    """An argument that can be watched with a weak reference."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def echo(data: bytes) -> bytes:
    return data


def size_of(payload: Payload) -> int:
    return len(payload.data)


def sleep_then_size(data: bytes, seconds: float) -> int:
    time.sleep(seconds)
    return len(data)


def rss() -> int:
    """This process's resident set size, in bytes (free heap returned first)."""
    _trim()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _targets() -> list[Any]:
    return [pytest.param("local", id="local"), pytest.param("ssh", id="ssh",
                                                           marks=pytest.mark.testbed)]


def _executor(target: str) -> RemoteExecutor:
    if target == "ssh":
        options = executor_options(require_testbed("ssh"), "ssh")
        return RemoteExecutor("ssh", max_workers=1, **options)
    return RemoteExecutor("local", max_workers=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("target", _targets())
def test_memory_returns_after_each_big_round_trip(target: str, kind: type, no_gc: None) -> None:
    """A bytes argument travels from where it is; a bytearray is copied once at submit (it
    may change afterwards): neither copy, nor the result's, may outlive the call."""
    data = kind(SIZE)  # sent and received back three times
    with _executor(target) as ex:
        assert ex.submit(echo, b"warm").result(timeout=120) == b"warm"
        baseline = rss()
        for trip in range(ROUND_TRIPS):
            back = ex.submit(echo, data).result(timeout=240)
            assert len(back) == SIZE
            del back
            grown = rss() - baseline
            assert grown < TOLERANCE, (
                f"after round trip {trip + 1} of {SIZE // MIB} MiB the client kept "
                f"{grown / MIB:.0f} MiB more than before the first"
            )


@pytest.mark.parametrize("target", _targets())
def test_a_finished_calls_argument_is_freed_without_a_collection(
    target: str, no_gc: None
) -> None:
    with _executor(target) as ex:
        assert ex.submit(echo, b"warm").result(timeout=120) == b"warm"
        argument = Payload(bytes(MIB))
        watched = weakref.ref(argument)
        future = ex.submit(size_of, argument)
        assert future.result(timeout=120) == MIB
        del argument, future
        assert watched() is None, gc.get_referrers(watched())


@pytest.mark.parametrize("target", _targets())
def test_large_buffers_of_every_kind_make_the_round_trip(target: str) -> None:
    """Large buffers travel beside the pickle (frames on ``ssh``, written into the task file
    elsewhere): each comes back as what it was, nested ones too, and the same object twice
    stays one object; calls with and without them share a task."""
    big = os.urandom(8 * MIB)
    with _executor(target) as ex:
        got = ex.submit(echo, (big, bytearray(big), memoryview(big)[1:], [big, {"k": big}]))
        data, writable, view, nested = got.result(timeout=120)
        assert type(data) is bytes and data == big
        assert type(writable) is bytearray and writable == big
        assert type(view) is bytes and view == big[1:]  # a memoryview arrives as bytes
        assert nested[0] is data and nested[1]["k"] is data
        mixed = list(ex.map(echo, [big, b"small", bytearray(big), 7], chunksize=4))
        assert mixed == [big, b"small", bytearray(big), 7]
        assert [type(x) for x in mixed] == [bytes, bytes, bytearray, int]


@pytest.mark.testbed
def test_a_worker_killed_while_a_big_payload_streams_to_it_fails_that_call() -> None:
    """The worker is killed once it has read 8 MiB of a 128 MiB payload (watched through its
    /proc/<pid>/io on the host): the payload is still being streamed, and the call must fail
    with WorkerDiedError rather than wait, and the executor must go on with a new worker.
    (Should the payload get through first, the call is asleep when it is killed: it must fail
    the same way.)"""
    facts = require_testbed("ssh")
    options = executor_options(facts, "ssh")
    with RemoteExecutor("ssh", max_workers=1, **options) as ex:
        pid = int(ex.submit(os.getpid).result(timeout=120))
        rchar = f"awk '/^rchar/{{print $2}}' /proc/{pid}/io"
        script = (f"start=$({rchar}); echo ready; "
                  f"while [ $({rchar}) -lt $((start + 8388608)) ]; do sleep 0.01; done; "
                  f"kill -KILL {pid}")
        watcher = subprocess.Popen([*facts.ssh_argv(facts.slurm_user), script],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().strip() == "ready"
            future = ex.submit(sleep_then_size, bytes(128 * MIB), 60.0)
            with pytest.raises(WorkerDiedError):
                future.result(timeout=120)
            assert watcher.wait(timeout=60) == 0
        finally:
            if watcher.poll() is None:
                watcher.kill()
        assert ex.submit(len, b"abc").result(timeout=120) == 3
