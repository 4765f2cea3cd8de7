"""A ``map`` with ``progress=True`` returns its last result only once the bar drew its end: a
future's waiters wake before its done-callbacks (which close the bar) run, so without waiting
the caller's next line (or, in Jupyter, the cell's end) could come before the bar's last state.
The bar's closing is slowed here to make that window wide."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
import tqdm.auto

from remote_futures import RemoteExecutor

pytestmark = pytest.mark.timeout(120)


def test_map_returns_after_its_bar_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    closed: set[int] = set()
    original = tqdm.auto.tqdm.close

    def slow_close(self: Any) -> None:
        # This map's bar, once (tqdm closes again on deletion; other tests' bars may be
        # collected meanwhile).
        ours = str(self.desc).startswith("abs (") and id(self) not in closed
        if ours:
            closed.add(id(self))
            time.sleep(0.5)  # widens the window; the assertion is about order, not time
        original(self)
        if ours:
            events.append("bar closed")

    monkeypatch.setattr(tqdm.auto.tqdm, "close", slow_close)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with RemoteExecutor("local", max_workers=2, progress=True) as ex:
        assert list(ex.map(abs, [-1, -2, -3], chunksize=1)) == [1, 2, 3]
        events.append("map returned")
    assert events == ["bar closed", "map returned"]
