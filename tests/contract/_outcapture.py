"""What the executor writes to ``sys.stdout`` and ``sys.stderr``, recorded without loss.

pytest's ``capfd``/``capsys.readouterr()`` reads its capture and then truncates it: a line
written by another thread between the two (the executor forwarding what a call prints) is
lost. A test that watches output arrive while calls still print needs a capture that never
drops a byte: this one replaces ``sys.stdout`` and ``sys.stderr`` (where every transport
forwards what calls print) with buffers that only grow.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import Any


class _Sink(io.TextIOBase):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self._lock = lock
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.parts.append(text)
        return len(text)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class OutputRecorder:
    """Records ``sys.stdout`` and ``sys.stderr`` from :meth:`start` to :meth:`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out = _Sink(self._lock)
        self._err = _Sink(self._lock)
        self._saved: tuple[Any, Any] = (None, None)

    def start(self) -> OutputRecorder:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._out, self._err
        return self

    def stop(self) -> None:
        if sys.stdout is self._out:
            sys.stdout = self._saved[0]
        if sys.stderr is self._err:
            sys.stderr = self._saved[1]

    @property
    def out(self) -> str:
        with self._lock:
            return "".join(self._out.parts)

    @property
    def err(self) -> str:
        with self._lock:
            return "".join(self._err.parts)

    def wait_for(self, text: str, stream: str = "out", timeout: float = 120.0) -> None:
        """Wait until ``text`` was written to ``stream`` (bounded, so nothing hangs)."""
        deadline = time.monotonic() + timeout
        while text not in getattr(self, stream):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} did not reach {stream} within {timeout} s; "
                    f"out={self.out[-2000:]!r} err={self.err[-2000:]!r}"
                )
            time.sleep(0.05)
