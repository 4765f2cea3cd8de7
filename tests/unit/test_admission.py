"""The core owns admission: one limiter of ``max_workers`` task slots, staged with the in-memory
``mock`` transport (calls run in threads of this process, so tests can gate them with events).

Each test stages a condition that left futures pending for ever before the core owned the
limit: refused submissions that kept their slots, a dropped connection during a submission
held for room, a throttle frozen at the room left when a job was submitted.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from remote_futures import RemoteExecutor, SubmissionError, TransportError
from remote_futures.jobs import JobSpec
from remote_futures.transports.mock import MockTransport

pytestmark = pytest.mark.timeout(60)

#: Events the calls below wait on (calls run in this process, in threads).
GATES: dict[str, threading.Event] = {}
BARRIERS: dict[str, threading.Barrier] = {}


def double(x: int) -> int:
    return 2 * x


def wait_gate(name: str, value: Any = None) -> Any:
    assert GATES[name].wait(30), f"gate {name} never opened"
    return value


def meet(name: str, x: int) -> int:
    BARRIERS[name].wait(30)
    return x


@pytest.fixture
def gate() -> Any:
    made: list[str] = []

    def make(name: str) -> threading.Event:
        GATES[name] = threading.Event()
        made.append(name)
        return GATES[name]

    yield make
    for name in made:
        GATES.pop(name).set()


def refuse_partition(bad: str, error: type[Exception] = SubmissionError) -> Any:
    def on_submit(spec: JobSpec) -> None:
        if spec.resources.partition == bad:
            raise error(f"invalid partition specified: {bad}")

    return on_submit


def mock_of(ex: RemoteExecutor) -> MockTransport:
    transport = ex.transport
    assert isinstance(transport, MockTransport)
    return transport


@pytest.mark.parametrize("throttle", [True, False])
def test_refused_submissions_give_their_slots_back(throttle: bool) -> None:
    with RemoteExecutor(
        "mock", max_workers=2, on_submit=refuse_partition("nope"), throttle=throttle
    ) as ex:
        bad = ex.with_resources(partition="nope")
        for _ in range(2):
            refused = [bad.submit(double, i) for i in range(4)]
            for future in refused:
                with pytest.raises(SubmissionError, match="invalid partition"):
                    future.result(timeout=30)
            with pytest.raises(SubmissionError):
                list(bad.map(double, range(4)))
        # Every slot came back: the next good call runs at once, and a map uses both slots.
        assert ex.submit(double, 21).result(timeout=30) == 42
        assert list(ex.map(double, range(6))) == [0, 2, 4, 6, 8, 10]
        assert mock_of(ex).refused >= 4


def test_dropped_connection_while_a_job_waits_for_room(gate: Any) -> None:
    """Job B waits in the core for A's slot; its submission then fails: B's calls fail with
    that error, the slot returns, C runs."""
    open_a = gate("a")
    ex = RemoteExecutor("mock", max_workers=1,
                        on_submit=refuse_partition("lost", TransportError))
    try:
        a = ex.submit(wait_gate, "a", "A")
        b = ex.with_resources(partition="lost").submit(double, 1)
        assert not b.done()
        open_a.set()
        assert a.result(timeout=30) == "A"
        with pytest.raises(TransportError, match="invalid partition"):
            b.result(timeout=30)
        assert ex.submit(double, 5).result(timeout=30) == 10
    finally:
        ex.shutdown(cancel_futures=True)


def test_max_workers_holds_across_jobs(gate: Any) -> None:
    with RemoteExecutor("mock", max_workers=3) as ex:
        futures = [ex.submit(double, i) for i in range(5)]
        results = list(ex.map(double, range(10)))
        assert [f.result(timeout=30) for f in futures] == [0, 2, 4, 6, 8]
        assert results == [2 * i for i in range(10)]
        assert mock_of(ex).peak <= 3


def test_throttle_is_widened_when_slots_free(gate: Any) -> None:
    """B is submitted with the one slot A leaves free; when A ends, B's grant grows to all
    four slots: its tasks only finish if four of them run at once."""
    open_a = gate("a")
    BARRIERS["b"] = threading.Barrier(4)
    with RemoteExecutor("mock", max_workers=4) as ex:
        a = [ex.submit(wait_gate, "a", i) for i in range(3)]
        transport = mock_of(ex)
        for future in a:
            while not future.running():
                assert not future.done()
                threading.Event().wait(0.01)
        b = ex.map(meet, ["b"] * 8, range(8))
        open_a.set()
        assert [f.result(timeout=30) for f in a] == [0, 1, 2]
        assert list(b) == list(range(8))
        grants = [spec.max_concurrent for spec in transport.submitted]
        assert grants[0] == 3
        assert grants[-1] == 1  # B started with the one free slot, then was widened


def test_without_throttle_only_what_fits_is_submitted() -> None:
    with RemoteExecutor("mock", max_workers=2, throttle=False) as ex:
        assert list(ex.map(double, range(5))) == [0, 2, 4, 6, 8]
        specs = mock_of(ex).submitted
        assert all(len(spec.tasks) <= 2 for spec in specs)
        assert all(spec.max_concurrent == len(spec.tasks) for spec in specs)
        assert sum(len(spec.tasks) for spec in specs) == 5


def test_cancelled_queued_calls_never_go_out(gate: Any) -> None:
    open_a = gate("a")
    with RemoteExecutor("mock", max_workers=1) as ex:
        a = ex.submit(wait_gate, "a", "A")
        queued = [ex.submit(double, i) for i in range(5)]
        assert all(f.cancel() for f in queued)
        open_a.set()
        assert a.result(timeout=30) == "A"
        assert ex.submit(double, 4).result(timeout=30) == 8
        sent = sum(len(spec.tasks) for spec in mock_of(ex).submitted)
        assert sent == 2


def test_slots_freed_while_a_raise_is_in_flight_are_handed_on(gate: Any) -> None:
    """A's three calls end one at a time. The first frees a slot: B's throttle is raised to
    2, and that raise is held in flight while A's two other calls end. Their slots must
    reach B when the raise returns (B only finishes if four tasks meet); before, they
    waited for the next slot to come back, which never happened."""
    gates = [gate(f"a{i}") for i in range(3)]
    BARRIERS["b2"] = threading.Barrier(4)
    raising = threading.Event()
    go_on = threading.Event()
    with RemoteExecutor("mock", max_workers=4) as ex:
        a = [ex.submit(wait_gate, f"a{i}", i) for i in range(3)]
        transport = mock_of(ex)
        original = transport.raise_throttle
        raises: list[int] = []

        async def held_raise(job: Any, max_concurrent: int) -> bool:
            raises.append(max_concurrent)
            if len(raises) == 1:
                raising.set()
                while not go_on.is_set():
                    await anyio.sleep(0.01)
            return await original(job, max_concurrent)

        transport.raise_throttle = held_raise  # type: ignore[method-assign]
        for future in a:
            while not future.running():
                assert not future.done()
                threading.Event().wait(0.01)
        b = ex.map(meet, ["b2"] * 8, range(8))
        gates[0].set()
        assert a[0].result(timeout=30) == 0
        assert raising.wait(30), "B's throttle was never raised"
        gates[1].set()
        gates[2].set()
        assert [f.result(timeout=30) for f in a[1:]] == [1, 2]
        go_on.set()
        assert list(b) == list(range(8))
        assert raises[0] == 2 and max(raises) == 4, raises
