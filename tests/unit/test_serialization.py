"""Calls going out (``dumps_call``, ``encode_task``) and outcomes coming back (``decode_outcome``).

Outcome envelopes are produced by the worker's own functions, in this process, so that the two
sides of the protocol are tested against each other without a subprocess.
"""

from __future__ import annotations

import pickle
import sys
import threading
from typing import Any

import cloudpickle
import pytest

from remote_futures import worker
from remote_futures.errors import (
    RemoteEnvironmentError,
    RemoteFuturesError,
    RemoteTraceback,
    SerializationError,
)
from remote_futures.serialization import (
    InitializerFailed,
    decode_outcome,
    dumps_call,
    dumps_initializer,
    encode_task,
)

pytestmark = pytest.mark.timeout(60)


class CodedError(Exception):
    """A user exception with extra state."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class TwoArgsError(Exception):
    """Pickles, but cannot be unpickled: ``args`` does not match ``__init__``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class HoldsALock(Exception):
    """Cannot even be pickled on the remote side."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raiser(error: BaseException) -> None:
    raise error


def raise_two_args() -> None:
    raise TwoArgsError("left", "right")


def raise_holds_a_lock() -> None:
    raise HoldsALock()


def run_remotely(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """What the worker writes for this call (the outcome file's bytes)."""
    outcome = worker._run_call(dumps_call(fn, args, kwargs))
    return pickle.dumps(outcome, protocol=worker.ENVELOPE_PROTOCOL)


# --- going out ------------------------------------------------------------------------------


def test_dumps_call_round_trip() -> None:
    fn, args, kwargs = cloudpickle.loads(dumps_call(divmod, [7, 2], {}))
    assert fn is divmod and args == (7, 2) and kwargs == {}
    fn, args, kwargs = cloudpickle.loads(dumps_call(lambda x, y=0: x + y, (1,), {"y": 2}))
    assert fn(*args, **kwargs) == 3


def test_dumps_call_unpicklable_argument() -> None:
    with pytest.raises(SerializationError) as info:
        dumps_call(raiser, (threading.Lock(),), {})
    assert isinstance(info.value, pickle.PicklingError)
    assert isinstance(info.value, RemoteFuturesError)
    assert "raiser" in str(info.value)
    assert info.value.__cause__ is not None


def test_dumps_call_rejects_non_callables() -> None:
    with pytest.raises(TypeError):
        dumps_call(42, (), {})  # type: ignore[arg-type]


def test_dumps_initializer() -> None:
    assert dumps_initializer(None, ()) is None
    blob = dumps_initializer(print, ("x",))
    assert blob is not None and cloudpickle.loads(blob) == (print, ("x",))
    with pytest.raises(TypeError):
        dumps_initializer("not callable", ())  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        dumps_initializer(print, (threading.Lock(),))


def test_encode_task_envelope() -> None:
    calls = [(0, dumps_call(abs, (-1,), {})), (5, dumps_call(abs, (-2,), {}))]
    data = encode_task(iter(calls), initializer=b"init", sys_path=["/a", "/b"], code="c.zip")
    assert data[:2] == b"\x80\x04"  # protocol 4: readable by any Python >= 3.8
    envelope = pickle.loads(data)
    assert envelope == {
        "format": worker.FORMAT,
        "python": list(sys.version_info[:2]),
        "calls": calls,
        "initializer": b"init",
        "sys_path": ["/a", "/b"],
        "code": "c.zip",
    }


# --- coming back: values and user exceptions ------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, "text", [1, {"a": (2, 3)}], b"\x00" * 10])
def test_value_round_trip(value: Any) -> None:
    assert decode_outcome(run_remotely(lambda v: v, value)) == (True, value)


def test_user_exception_round_trip_keeps_class_state_and_traceback() -> None:
    ok, error = decode_outcome(run_remotely(raiser, CodedError("bad thing", 42)))
    assert ok is False
    assert type(error) is CodedError
    assert error.code == 42 and error.args == ("bad thing", 42)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raiser" in error.__cause__.tb
    assert "CodedError: ('bad thing', 42)" in error.__cause__.tb
    assert error.__cause__.tb in str(error.__cause__)


def test_exception_that_cannot_be_unpickled_locally() -> None:
    ok, error = decode_outcome(run_remotely(raise_two_args))
    assert ok is False
    assert type(error) is RemoteFuturesError
    assert "TwoArgsError" in str(error)
    assert "left/right" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise_two_args" in error.__cause__.tb


def test_exception_that_cannot_be_pickled_remotely() -> None:
    ok, error = decode_outcome(run_remotely(raise_holds_a_lock))
    assert ok is False
    assert isinstance(error, RemoteFuturesError)
    assert "HoldsALock" in str(error) and "holds a lock" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)


def test_exception_whose_class_is_missing_here() -> None:
    """The remote raised a class from a module this side does not have."""
    envelope = {
        "format": worker.FORMAT,
        "kind": worker.EXCEPTION,
        "exception": b"cnonexistent_module_for_rf_tests\nGhostError\n)\x81.",
        "type": "nonexistent_module_for_rf_tests.GhostError",
        "repr": "GhostError('boo')",
        "traceback": "Traceback (most recent call last):\nGhostError: boo\n",
    }
    ok, error = decode_outcome(pickle.dumps(envelope))
    assert ok is False
    assert isinstance(error, RemoteFuturesError)
    assert "nonexistent_module_for_rf_tests.GhostError" in str(error)
    assert "GhostError('boo')" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "GhostError: boo" in error.__cause__.tb


def test_result_that_cannot_be_unpickled_locally() -> None:
    envelope = {"format": worker.FORMAT, "kind": worker.VALUE, "value": b"not a pickle"}
    ok, error = decode_outcome(pickle.dumps(envelope))
    assert ok is False and isinstance(error, SerializationError)


@pytest.mark.parametrize("data", [b"", b"garbage", pickle.dumps({"no": "kind"})])
def test_corrupt_outcome(data: bytes) -> None:
    ok, error = decode_outcome(data)
    assert ok is False and isinstance(error, SerializationError)
    assert "corrupt" in str(error)


# --- coming back: worker error envelopes ----------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (worker.ENVIRONMENT, RemoteEnvironmentError),
        (worker.INITIALIZER, InitializerFailed),
        (worker.PICKLE_RESULT, SerializationError),
        (worker.UNPICKLE, SerializationError),
    ],
)
def test_error_envelopes_map_to_remote_futures_errors(cause: str, expected: type) -> None:
    data = pickle.dumps(worker._error(cause, f"the {cause} message", "remote tb text"))
    ok, error = decode_outcome(data)
    assert ok is False
    assert type(error) is expected
    assert isinstance(error, RemoteFuturesError)
    assert str(error) == f"the {cause} message"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.tb == "remote tb text"


def test_error_envelope_without_traceback_has_no_cause() -> None:
    ok, error = decode_outcome(pickle.dumps(worker._error(worker.ENVIRONMENT, "no tb")))
    assert ok is False and isinstance(error, RemoteEnvironmentError)
    assert error.__cause__ is None


def test_unpicklable_result_from_the_worker() -> None:
    ok, error = decode_outcome(run_remotely(threading.Lock))
    assert ok is False
    assert isinstance(error, SerializationError) and isinstance(error, pickle.PicklingError)
    assert "lock" in str(error).lower()


def test_call_that_cannot_be_unpickled_remotely() -> None:
    outcome = worker._run_call(b"garbage")
    ok, error = decode_outcome(pickle.dumps(outcome))
    assert ok is False and isinstance(error, SerializationError)


def test_call_needing_a_missing_module_is_an_environment_error() -> None:
    outcome = worker._run_call(b"cnonexistent_module_for_rf_tests\nfn\n.")
    ok, error = decode_outcome(pickle.dumps(outcome))
    assert ok is False and isinstance(error, RemoteEnvironmentError)
    assert "nonexistent_module_for_rf_tests" in str(error)


def test_initializer_failure_envelope_from_the_worker() -> None:
    state = worker._State()
    envelope = pickle.loads(
        encode_task([], initializer=dumps_initializer(raiser, (ValueError("init"),)))
    )
    worker._run_initializer(envelope, state)
    assert state.initializer_failure is not None
    ok, error = decode_outcome(pickle.dumps(state.initializer_failure))
    assert ok is False and isinstance(error, InitializerFailed)
    assert "ValueError('init')" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)


def test_remote_traceback_str() -> None:
    tb = RemoteTraceback("Traceback (most recent call last):\n  ...\nValueError: x\n")
    assert str(tb) == '\n"""\nTraceback (most recent call last):\n  ...\nValueError: x\n"""'
