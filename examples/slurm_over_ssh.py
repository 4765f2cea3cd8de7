"""SLURM over SSH from a laptop: host-key checked against your known_hosts, one array job.

    python examples/slurm_over_ssh.py login.hpc.example.org me
"""

import argparse

from remote_futures import RemoteExecutor, Resources


def simulate(x: int) -> int:
    """A stand-in for real work."""
    return x * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="the login host (or an alias from ~/.ssh/config)")
    parser.add_argument("user", help="your user name on that host")
    args = parser.parse_args()
    host, user = args.host, args.user
    with RemoteExecutor(
        "slurm", host=host, user=user,
        resources=Resources(cpus=1, memory="1G", walltime="00:10:00", partition="short",
                            job_script_prologue=["module load python/3.11"]),
        max_workers=100,  # array throttle (%100); map groups calls into ~100 tasks
    ) as ex:
        print(sum(ex.map(simulate, range(10_000))))


if __name__ == "__main__":
    main()
