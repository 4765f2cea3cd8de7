"""Son of Grid Engine over SSH, options given inline; different resources for one map.

    python examples/sge_cluster.py login.hpc.example.org me
"""

import argparse

from remote_futures import RemoteExecutor, Resources


def fit(seed: int) -> int:
    """A stand-in for real work."""
    return (seed * 7919) % 104729


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="the login host (or an alias from ~/.ssh/config)")
    parser.add_argument("user", help="your user name on that host")
    args = parser.parse_args()
    host, user = args.host, args.user
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
