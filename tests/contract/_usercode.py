"""A user's own module beside the tests: functions the contract suite runs remotely.

Pickled by reference (the worker imports it from the caller's ``sys.path``) or by value
(transports whose remote side cannot import it). Only the standard library is imported here,
so that a worker process importing it stays cheap.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

_global_value: Any = None


class UserModuleError(Exception):
    """An exception class defined in a user module (not the test module)."""


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def power(base: int, exp: int = 2) -> int:
    return int(base**exp)


def echo_kwargs(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def identity(x: Any) -> Any:
    return x


def block_until(path: str | os.PathLike[str], timeout: float = 30.0) -> str:
    """Wait until ``path`` exists (the test opens the gate); bounded so nothing hangs."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {path} was not opened within {timeout} s")
        time.sleep(0.02)
    return "released"


def touch(path: str | os.PathLike[str], value: Any = None) -> Any:
    """Create ``path`` (the proof that this call ran) and return ``value``."""
    Path(path).touch()
    return value


def sleep_and_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def record_interval(directory: str | os.PathLike[str], index: int, seconds: float) -> int:
    """Write ``start end`` wall-clock times of this call to ``directory/index``."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    Path(directory, str(index)).write_text(f"{start!r} {end!r}")
    return index


def map_step(i: int, gate: str, markers: str) -> int:
    """For the map early-break test: 0 leaves a marker (proof that the worker can write
    there) and returns at once, 1 waits for the gate, the rest leave a marker file (they must
    never run once the consumer stopped)."""
    if i == 1:
        block_until(gate)
    else:
        Path(markers, f"ran-{i}").touch()
    return i


def raise_user_module_error(message: str) -> None:
    raise UserModuleError(message)


def speak(tag: str) -> str:
    print(f"stdout says {tag}")
    print(f"stderr says {tag}", file=sys.stderr)
    return tag


def return_lock() -> Any:
    return threading.Lock()


def set_global(value: Any) -> None:
    global _global_value
    _global_value = value


def get_global() -> Any:
    return _global_value


def failing_initializer() -> None:
    raise ValueError("the initializer refuses")


def _last_words(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def die_exit(message: str, code: int = 3) -> None:
    _last_words(message)
    os._exit(code)


def die_sigkill(message: str) -> None:
    _last_words(message)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def die_segfault(message: str) -> None:
    import ctypes

    _last_words(message)
    ctypes.string_at(0)


def crash_on(x: int, bad: int) -> int:
    """``x * 10``, except that the process dies (exit code 3) on ``bad``."""
    if x == bad:
        die_exit(f"crash_on dies at {x}")
    return x * 10
