"""Calls that print, for the output tests (stdlib only: imported on the remote side too)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _wait_for(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def print_wait_print(tag: str, gate: str, timeout: float = 120.0) -> str:
    """Print a line to each stream (no explicit flush, as user code does), wait until the
    test opens ``gate``, print another line, return ``tag``."""
    print(f"first out {tag}")
    print(f"first err {tag}", file=sys.stderr)
    _wait_for(gate, timeout)
    print(f"second out {tag}")
    print(f"second err {tag}", file=sys.stderr)
    return tag


def print_wait_print_wait(tag: str, gate: str, last_gate: str, timeout: float = 120.0) -> str:
    """:func:`print_wait_print`, then wait until the test opens ``last_gate`` too."""
    print_wait_print(tag, gate, timeout)
    _wait_for(last_gate, timeout)
    return tag


def speak(tag: str) -> str:
    print(f"stdout says {tag}")
    print(f"stderr says {tag}", file=sys.stderr)
    return tag


def print_then_signal(tag: str, started: str, gate: str, timeout: float = 120.0) -> str:
    """Print a line, create ``started``, wait for ``gate``, print another."""
    print(f"{tag}1")
    Path(started).touch()
    _wait_for(gate, timeout)
    print(f"{tag}2")
    return tag


def wait_then_print(tag: str, started: str, timeout: float = 120.0) -> str:
    """Wait for ``started``, then print two lines."""
    _wait_for(started, timeout)
    print(f"{tag}1")
    print(f"{tag}2")
    return tag


def print_from_threads(lines: int) -> int:
    """Print ``lines`` lines from this thread and as many from another at the same time."""
    def chatter() -> None:
        for i in range(lines):
            print(f"thread line {i}")

    thread = threading.Thread(target=chatter)
    thread.start()
    for i in range(lines):
        print(f"main line {i}", file=sys.stderr)
    thread.join()
    return lines


def print_in_forked_child() -> int:
    """Fork; the child prints and exits; return the child's exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            print("printed by a forked child")
            sys.stdout.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("printed by the parent")
    return os.waitstatus_to_exitcode(status)


def print_partial(tag: str) -> str:
    """Print a line and an unfinished one."""
    print(f"whole {tag}")
    print(f"unfinished {tag}", end="")
    return tag


def print_many_around_a_gate(count: int, gate: str, timeout: float = 120.0) -> int:
    """Print ``count`` numbered lines, wait for ``gate``, print ``count`` more."""
    for i in range(count):
        print(f"line {i:06d} of the first half")
    print("first half done")
    _wait_for(gate, timeout)
    for i in range(count, 2 * count):
        print(f"line {i:06d} of the second half")
    return 2 * count
