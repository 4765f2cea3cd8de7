"""What forwarding the calls' output costs on the warm pools (``local`` and ``ssh``).

Figures (median of ``REPEATS`` runs, ``max_workers=2``): calls/s of a ``map`` of ``CALLS``
calls with ``chunksize=1``, for a call that prints nothing and for one that prints a line, with
each ``output`` mode. Run it with an older checkout first on ``PYTHONPATH`` (``BENCH_MODES=``,
empty: the executor's defaults, for a version without the option) to compare.

The ``ssh`` rows need the testbed (``RF_TESTBED_DIR``, default ``/tmp/rf-testbed``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from remote_futures import RemoteExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ssh_pool import options as ssh_options

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
CALLS = int(os.environ.get("BENCH_CALLS", "2000"))
MODES = [m for m in os.environ.get("BENCH_MODES", "live,end,off").split(",") if m]


def silent(x: int) -> int:
    return x * x


def chatty(x: int) -> int:
    print("call", x, "says hello")
    return x * x


def rate(target: str, opts: dict[str, Any], fn: Any, mode: str | None) -> float:
    extra = {} if mode is None else {"output": mode}
    with RemoteExecutor(target, **opts, **extra) as ex:
        list(ex.map(silent, range(4)))  # every worker up
        start = time.perf_counter()
        list(ex.map(fn, range(CALLS), chunksize=1))
        return CALLS / (time.perf_counter() - start)


def main() -> None:
    targets: dict[str, dict[str, Any]] = {"local": {"max_workers": 2}}
    ssh = ssh_options()
    if ssh is not None:
        targets["ssh"] = ssh
    modes: list[str | None] = list(MODES) or [None]
    print(f"{'calls/s, chunksize=1':28}{'silent':>12}{'prints a line':>16}")
    for target, opts in targets.items():
        for mode in modes:
            row = []
            for fn in (silent, chatty):
                # The printed lines go to a file: the terminal's speed is not measured.
                saved = os.dup(1)
                with open(os.devnull, "w") as sink:
                    os.dup2(sink.fileno(), 1)
                try:
                    row.append(statistics.median(
                        rate(target, opts, fn, mode) for _ in range(REPEATS)))
                finally:
                    sys.stdout.flush()
                    os.dup2(saved, 1)
                    os.close(saved)
            label = f"{target} output={mode or 'default'}"
            print(f"{label:28}" + "".join(f"{v:>12.0f}" if i == 0 else f"{v:>16.0f}"
                                          for i, v in enumerate(row)), flush=True)


if __name__ == "__main__":
    main()
