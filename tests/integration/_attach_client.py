"""A client for the attach tests: starts a ``map`` of naps, prints its session id, prints
READY once the first call finished, then waits to be killed.

Usage: ``python _attach_client.py TARGET OPTIONS_JSON N SECONDS FAIL``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attach_calls import nap

from remote_futures import RemoteExecutor


def main() -> None:
    """Start the map and wait to be killed (never shuts the executor down)."""
    target, options = sys.argv[1], json.loads(sys.argv[2])
    n, seconds, fail = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    ex = RemoteExecutor(target, max_workers=2, **options)
    print(f"SESSION {ex.session_id}", flush=True)
    results = ex.map(nap, range(n), [seconds] * n, [fail] * n, chunksize=1)
    print(f"FIRST {next(results)}", flush=True)
    print("READY", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
