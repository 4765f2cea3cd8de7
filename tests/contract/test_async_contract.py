"""The executor contract for asyncio users: awaitable futures, ``async with``, ``amap``.

The same ``make_executor`` fixture as the sync contract, so it runs for every transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _usercode import block_until, sleep_and_return, square, touch

from remote_futures import RemoteExecutor, RemoteTraceback

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

MakeExecutor = Callable[..., RemoteExecutor]


class AsyncContractError(Exception):
    """A user exception class defined in this test module."""


def raise_async_error(message: str) -> None:
    raise AsyncContractError(message)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        await asyncio.sleep(0.01)


async def test_await_submit(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    future = ex.submit(square, 12)
    assert isinstance(future, cf.Future)
    assert await future == 144
    assert future.result() == 144  # still a concurrent.futures.Future


async def test_async_with(make_executor: MakeExecutor) -> None:
    async with make_executor() as ex:
        assert isinstance(ex, RemoteExecutor)
        future = ex.submit(sleep_and_return, 0.2, "done")
    assert future.done()  # __aexit__ waited, as shutdown(wait=True) does
    assert await future == "done"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


async def test_amap_in_order(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=3)
    results = [r async for r in ex.amap(sleep_and_return, [0.6, 0.0, 0.2], ["a", "b", "c"])]
    assert results == ["a", "b", "c"]
    assert [r async for r in ex.amap(square, range(5), chunksize=2)] == [0, 1, 4, 9, 16]
    assert [r async for r in ex.amap(square, [])] == []


async def test_gather(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    results = await asyncio.gather(*(ex.submit(square, i) for i in range(6)))
    assert results == [0, 1, 4, 9, 16, 25]


async def test_await_raises_the_user_exception(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with pytest.raises(AsyncContractError, match="async boom") as info:
        await ex.submit(raise_async_error, "async boom")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_async_error" in str(info.value.__cause__)


async def test_cancelling_the_awaiting_task_cancels_the_pending_call(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    first = ex.submit(block_until, gate)
    marker = tmp_path / "ran"
    second = ex.submit(touch, marker)

    async def consume(future: Any) -> Any:
        return await future

    task = asyncio.create_task(consume(second))
    await wait_until(first.running)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert second.cancelled()
    await asyncio.sleep(0.5)  # let the cancellation reach the transport
    gate.touch()
    assert await first == "released"
    assert await ex.submit(square, 2) == 4  # one worker: runs after `second` would have
    assert not marker.exists()


async def test_wait_for_timeout(make_executor: MakeExecutor, gate: Path) -> None:
    ex = make_executor()
    future = ex.submit(block_until, gate)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 0.1)
    assert time.monotonic() - start < 10
    # The executor is still usable afterwards.
    gate.touch()
    assert await ex.submit(square, 3) == 9
