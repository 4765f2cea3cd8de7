"""`RemoteExecutor("pbs")` with everything in a profile.

~/.config/remote_futures/config.toml (or the file named by $REMOTE_FUTURES_CONFIG):

    [profiles.pbs]
    transport = "pbs"                      # PBS Pro / OpenPBS / Torque, detected
    host = "login.hpc.example.org"         # or an alias from ~/.ssh/config
    user = "me"
    python = "/home/me/venvs/sim/bin/python"   # same major.minor as here, with cloudpickle
    resources = { cpus = 2, memory = "4G", walltime = "00:30:00", queue = "short" }

    python examples/pbs_profile.py
"""

from remote_futures import RemoteExecutor


def simulate(p: float) -> float:
    """A stand-in for real work."""
    return p**0.5


def main() -> None:
    params = [float(x) for x in range(100)]
    with RemoteExecutor("pbs") as ex:  # one array job, qsub -t / -J
        results = list(ex.map(simulate, params))
    print(f"{len(results)} results, last {results[-1]:.3f}")


if __name__ == "__main__":
    main()
