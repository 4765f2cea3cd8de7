"""Calls run by the attach tests' client (imported on the remote side from the shipped code)."""

from __future__ import annotations

import time


def nap(i: int, seconds: float, fail: int = -1) -> int:
    """Sleep, print a line, then return ``i * i`` (raise ``ValueError`` when ``i == fail``)."""
    time.sleep(seconds)
    print(f"nap {i} done", flush=True)
    if i == fail:
        raise ValueError(f"call {i} fails on purpose")
    return i * i
