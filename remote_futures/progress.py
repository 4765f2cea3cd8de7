"""``progress=True``: a progress bar per ``map`` on stderr (tqdm: a terminal or Jupyter).

tqdm is the optional ``[progress]`` extra. The bar counts calls done (results and failures);
its postfix says how many are queued, running and failed. Done and failed are counted by the
futures' done-callbacks; running is sampled twice a second by a small thread, since a future
going from pending to running calls no callback.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

from .errors import ConfigurationError

__all__ = ["MapProgress", "require_tqdm"]

#: How often the running count is refreshed, in seconds.
_SAMPLE = 0.5


def require_tqdm() -> None:
    """Raise :class:`ConfigurationError` now if tqdm is not installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "progress=True needs tqdm: pip install 'remote-futures[progress]' (or tqdm)"
        ) from None


class MapProgress:
    """One bar following ``futures`` until every one is done; then it closes itself."""

    def __init__(
        self,
        futures: Sequence[concurrent.futures.Future[Any]],
        *,
        desc: str,
        file: IO[str] | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set(futures)
        self._failed = 0
        #: Running futures at the last sample (a done-callback does not rescan them all).
        self._running = 0
        self._closed = False
        self._wake = threading.Event()
        self._bar = tqdm(
            total=len(futures), desc=desc, unit="call", file=file or sys.stderr,
            dynamic_ncols=True, leave=True,
        )
        self._refresh()
        # Before the callbacks: a callback may find every future done and close the bar.
        self._thread = threading.Thread(target=self._sample, name="remote_futures-progress",
                                        daemon=True)
        self._thread.start()
        for future in futures:
            future.add_done_callback(self._on_done)

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the bar drew its last state. A future's waiters wake before its
        done-callbacks run: a ``map`` that returns its last result without waiting would let
        the caller's next print come before the bar's end (and, in Jupyter, the cell end
        before the widget's last update)."""
        self._wake.wait(timeout)

    def _on_done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if future not in self._pending:
                return
            self._pending.discard(future)
            if future.cancelled() or future.exception() is not None:
                self._failed += 1
            self._running = min(self._running, len(self._pending))
            self._show()
            self._bar.update(1)
            if not self._pending:
                self._close()

    def _sample(self) -> None:
        while not self._wake.wait(_SAMPLE):
            with self._lock:
                if self._closed:
                    return
                self._refresh()

    def _refresh(self) -> None:
        self._running = sum(1 for future in list(self._pending) if future.running())
        self._show(refresh=True)

    def _show(self, *, refresh: bool = False) -> None:
        queued = len(self._pending) - self._running
        # A dict, not keywords: tqdm sorts keywords, and this order reads as a pipeline.
        self._bar.set_postfix(
            {"queued": queued, "running": self._running, "failed": self._failed},
            refresh=refresh,
        )

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._refresh()
        self._bar.close()
        self._wake.set()
