"""SLURM over SSH from a laptop: host-key checked against your known_hosts, one array job.

    python examples/slurm_over_ssh.py login.hpc.example.org me
"""

import sys

from remote_futures import RemoteExecutor, Resources


def simulate(x: int) -> int:
    """A stand-in for real work."""
    return x * x


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} LOGIN_HOST USER\n{__doc__}")
    host, user = sys.argv[1], sys.argv[2]
    with RemoteExecutor(
        "slurm", host=host, user=user,
        resources=Resources(cpus=1, memory="1G", walltime="00:10:00", partition="short",
                            job_script_prologue=["module load python/3.11"]),
        max_workers=100,  # array throttle (%100); map groups calls into ~100 tasks
    ) as ex:
        print(sum(ex.map(simulate, range(10_000))))


if __name__ == "__main__":
    main()
