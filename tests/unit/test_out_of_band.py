"""Large buffers beside the pickle (protocol 5, out of band): a call's or a result's large
``bytes``, ``bytearray``, memoryviews and protocol-5 buffers (a numpy array's) are not copied
into the pickle, travel beside it as frames of their own over a warm worker's channel, and are
written into the envelope once for the file transports.

The channel tests run the real worker loop (``worker_loop.py --serve``, as the ``ssh``
transport starts it on a host) on a pair of pipes and speak its framing directly, so that what
crosses the channel can be measured: the task message stays small however large the argument,
and the argument's bytes arrive as a frame of their own.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remote_futures import worker, worker_loop
from remote_futures.jobs import Pickled, buffers_of
from remote_futures.serialization import decode_outcome, dumps_call, encode_task

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
KEY = 8


class Blocky:
    """A numpy-like object: its data pickles as a protocol-5 buffer (``PickleBuffer``)."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blocky, (pickle.PickleBuffer(self.data),)


def _value(blob: bytes, frames: list[Any]) -> Any:
    """Load a pickled call the way a worker does, from the buffers as they arrive."""
    return worker.BufferUnpickler(bytes(blob), frames).load()


def _as_frames(buffers: tuple[Any, ...]) -> list[bytearray]:
    """The buffers as a channel delivers them: each in a buffer of its own (a bytearray)."""
    return [bytearray(memoryview(buffer).cast("B")) for buffer in buffers]


def test_a_large_bytes_argument_is_not_copied_into_the_calls_pickle() -> None:
    data = os.urandom(4 * MIB)
    blob = dumps_call(len, (data,), {})
    assert isinstance(blob, Pickled)
    assert len(blob) < 4096, f"the pickle holds the argument: {len(blob)} bytes"
    (buffer,) = buffers_of(blob)
    # A view of the caller's bytes, not a copy of them.
    assert memoryview(buffer).obj is data
    _, args, _ = _value(blob, _as_frames(buffers_of(blob)))
    assert type(args[0]) is bytes and args[0] == data


def _frame(buffer: Any) -> Any:
    """A buffer as a channel delivers it: read into :func:`worker.frame_buffer`."""
    data = memoryview(buffer).cast("B")
    body, view = worker.frame_buffer(len(data), worker.frame_flag(buffer))
    view[:] = data
    view.release()
    return body


def test_a_bytes_argument_is_the_very_frame_it_arrived_in() -> None:
    """A read-only buffer's frame is read into a new ``bytes`` (CPython), which the call then
    gets as its argument: nothing is copied after the read."""
    data = os.urandom(2 * MIB)
    blob = dumps_call(len, (data, bytearray(data)), {})
    frames = [_frame(buffer) for buffer in buffers_of(blob)]
    assert [type(frame) for frame in frames] == [bytes, bytearray]
    assert frames[0] == data and hash(frames[0]) == hash(data)
    _, args, _ = _value(blob, frames)
    assert args[0] is frames[0] and args[1] is frames[1]


def test_small_arguments_stay_in_the_pickle() -> None:
    blob = dumps_call(len, (b"x" * 100, bytearray(100), [1, 2, 3]), {})
    assert type(blob) is bytes
    assert buffers_of(blob) == ()


def test_every_kind_of_buffer_comes_back_as_itself() -> None:
    big = os.urandom(MIB)
    writable = bytearray(os.urandom(MIB))
    doubles = memoryview(bytearray(os.urandom(MIB))).cast("d", [MIB // 64, 8])
    args = (
        big,
        writable,
        memoryview(big)[1:],  # a memoryview arrives as bytes (as cloudpickle sends it)
        doubles,  # writable, two-dimensional, of doubles
        doubles[::2],  # not contiguous
        [big, {"inner": (writable,)}],  # nested in containers, the same objects again
        frozenset({big}),
        Blocky(bytearray(big)),
    )
    blob = dumps_call(print, args, {"named": bytearray(big)})
    assert len(blob) < 8192
    assert len(buffers_of(blob)) == 7
    _, got, kwargs = _value(blob, _as_frames(buffers_of(blob)))
    assert type(got[0]) is bytes and got[0] == big
    assert type(got[1]) is bytearray and got[1] == writable
    assert type(got[2]) is bytes and got[2] == big[1:]
    assert type(got[3]) is bytes and got[3] == doubles.tobytes()
    assert type(got[4]) is bytes and got[4] == doubles[::2].tobytes()
    # The same object twice in a call travels once and is one object on the other side.
    assert got[5][0] is got[0] and got[5][1]["inner"][0] is got[1]
    assert got[6] == frozenset({big})
    assert isinstance(got[7], Blocky) and bytes(got[7].data) == big
    assert type(kwargs["named"]) is bytearray and kwargs["named"] == bytearray(big)


def test_a_writable_buffer_changed_after_submit_does_not_change_the_call() -> None:
    """What ``submit`` pickled is what runs, as before: a writable buffer is copied once
    (a read-only one, such as ``bytes``, is only referenced)."""
    data = bytearray(MIB)
    blocky = Blocky(bytearray(MIB))
    behind = bytearray(MIB)
    blob = dumps_call(len, (data, blocky, memoryview(behind).toreadonly()), {})
    data[:4] = b"late"
    blocky.data[:4] = b"late"
    behind[:4] = b"late"  # read-only to the call, not to its owner
    _, args, _ = _value(blob, _as_frames(buffers_of(blob)))
    assert bytes(args[0][:4]) == bytes(4)
    assert bytes(args[1].data[:4]) == bytes(4)
    assert args[2][:4] == bytes(4)


def test_a_file_envelope_holds_the_buffers_and_runs_in_the_batch_worker(tmp_path: Path) -> None:
    """The job-directory protocol (``task-<i>.in``): the buffers are written into the
    envelope, and ``worker.py`` run as a file returns the result through an outcome file."""
    data = os.urandom(2 * MIB)
    payload = encode_task([(0, dumps_call(bytes.upper, (data,), {})),
                           (1, dumps_call(len, ([data, bytearray(data)],), {}))])
    assert type(payload) is bytes  # self-contained: nothing travels beside it
    (tmp_path / worker.INPUT_NAME.format(0)).write_bytes(payload)
    done = subprocess.run([sys.executable, worker.__file__, str(tmp_path), "--task", "0"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    first = decode_outcome((tmp_path / worker.OUTCOME_NAME.format(0)).read_bytes())
    assert first == (True, data.upper())
    second = decode_outcome((tmp_path / worker.OUTCOME_NAME.format(1)).read_bytes())
    assert second == (True, 2)


def test_a_results_buffers_go_beside_its_outcome() -> None:
    """The warm worker's call runner, given a list for them, returns a large result's buffers
    apart from the outcome; the client loads the result from the outcome and the frames."""
    proto = worker_loop._load_protocol(worker.__file__)
    data = os.urandom(2 * MIB)
    blob = dumps_call(bytearray, (data,), {})
    out: list[Any] = []
    outcome = worker_loop.run_call(bytes(blob), proto, _as_frames(buffers_of(blob)), out)
    envelope = pickle.dumps(outcome)
    assert len(envelope) < 4096 and len(out) == 1
    ok, value = decode_outcome(Pickled.of(envelope, _as_frames(tuple(out))))
    assert ok and type(value) is bytearray and value == data


# --- the real worker loop, over pipes ----------------------------------------------------------


class Loop:
    """``worker_loop.py --serve`` in a subprocess, framed as the ``ssh`` transport frames."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, worker_loop.__file__, "--serve", "--protocol", worker.__file__],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        kind, _ = self.receive()
        assert kind == b"H"

    def send(self, *parts: Any) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        assert self.process.stdin is not None
        self.process.stdin.write(sum(len(v) for v in views).to_bytes(4, "big"))
        for view in views:
            self.process.stdin.write(view)
        self.process.stdin.flush()

    def receive(self) -> tuple[bytes, bytes]:
        """(kind, the rest) of the next message."""
        assert self.process.stdout is not None
        size = int.from_bytes(self.process.stdout.read(4), "big")
        message = self.process.stdout.read(size)
        assert len(message) == size, self.process.stderr.read() if self.process.stderr else ""
        return message[:1], message[1:]

    def run(self, key: int, payload: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """Send a task the way the pool does (its buffers first, as B frames); the frames and
        the messages that come back until the task ends."""
        for buffer in buffers_of(payload):
            self.send(b"B" + worker.frame_flag(buffer), buffer)
        self.send(b"X" + key.to_bytes(KEY, "big"), payload)
        frames: list[bytes] = []
        messages: list[tuple[bytes, bytes]] = []
        while True:
            kind, rest = self.receive()
            if kind == b"B":
                frames.append(rest[1:])
                continue
            messages.append((kind, rest))
            if kind in (b"D", b"T"):
                return frames, messages

    def close(self) -> None:
        self.send(b"Q")
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def loop() -> Any:
    started = Loop()
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def _outcome(frames: list[bytes], body: bytes) -> tuple[bool, Any]:
    """A D message's outcome (after its key and index), with the frames before it."""
    return decode_outcome(Pickled.of(body[2 * KEY :], [bytearray(f) for f in frames]))


def test_the_worker_loop_takes_arguments_and_sends_results_as_frames(loop: Loop) -> None:
    data = os.urandom(8 * MIB)
    payload = encode_task([(0, dumps_call(bytes.swapcase, (data,), {}))], out_of_band=True)
    assert len(payload) < 4096 and len(buffers_of(payload)) == 1
    frames, messages = loop.run(1, payload)
    # The result came back beside its outcome, not inside it.
    assert [len(frame) for frame in frames] == [len(data)]
    ((kind, body),) = messages
    assert kind == b"D" and len(body) < 4096
    assert _outcome(frames, body) == (True, data.swapcase())
    loop.close()


def test_the_worker_loop_runs_calls_with_and_without_buffers_in_one_task(loop: Loop) -> None:
    data = os.urandom(MIB)
    calls = [
        (0, dumps_call(len, (data,), {})),
        (1, dumps_call(len, ([1, 2, 3],), {})),
        (2, dumps_call(lambda a, b: (type(a).__name__, type(b).__name__, a == b),
                       (bytearray(data), memoryview(data)), {})),  # a memoryview: bytes
    ]
    frames, messages = loop.run(7, encode_task(calls, out_of_band=True))
    assert frames == []
    assert [kind for kind, _ in messages] == [b"C", b"C", b"D"]
    assert decode_outcome(messages[0][1][KEY:]) == (True, MIB)
    assert decode_outcome(messages[1][1][KEY:]) == (True, 3)
    assert decode_outcome(messages[2][1][2 * KEY :]) == (True, ("bytearray", "bytes", True))
    # The next task finds no frame of the previous one.
    frames, messages = loop.run(8, encode_task([(3, dumps_call(len, (data,), {}))],
                                               out_of_band=True))
    assert decode_outcome(messages[0][1][2 * KEY :]) == (True, MIB)
    loop.close()
