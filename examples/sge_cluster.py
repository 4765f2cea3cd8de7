"""Son of Grid Engine over SSH, options given inline; different resources for one map.

    python examples/sge_cluster.py login.hpc.example.org me
"""

import sys

from remote_futures import RemoteExecutor, Resources


def fit(seed: int) -> int:
    """A stand-in for real work."""
    return (seed * 7919) % 104729


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} LOGIN_HOST USER\n{__doc__}")
    host, user = sys.argv[1], sys.argv[2]
    with RemoteExecutor(
        "sge", host=host, user=user, max_workers=50,
        resources=Resources(walltime="01:00:00", memory="2G", partition="all.q"),
        parallel_environment="smp",  # used when cpus > 1
    ) as ex:
        quick = ex.submit(fit, 1).result()
        heavy = list(ex.with_resources(cpus=4, memory="16G").map(fit, range(20)))
    print(quick, heavy[:5])


if __name__ == "__main__":
    main()
