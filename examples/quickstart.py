"""Quickstart: the same code as with ProcessPoolExecutor, on the embedded `local` transport.

    pip install . && python examples/quickstart.py

Change RemoteExecutor() to RemoteExecutor("slurm", host="login.hpc.example.org") (or a profile
name) and the same calls run on a cluster.
"""

import math

from remote_futures import RemoteExecutor


def simulate(seed: int) -> float:
    """A stand-in for real work."""
    return sum(math.sin(seed * k) for k in range(10_000))


def main() -> None:
    with RemoteExecutor() as ex:
        future = ex.submit(simulate, 42)
        print("one call:", round(future.result(), 6))
        results = list(ex.map(simulate, range(8)))
        print("map of 8:", [round(r, 3) for r in results])
        try:
            ex.submit(math.sqrt, -1).result()
        except ValueError as exc:
            print("remote exception comes back as itself:", repr(exc))


if __name__ == "__main__":
    main()
