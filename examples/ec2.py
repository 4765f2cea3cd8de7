"""Two EC2 instances for one map, terminated at the end (and by their own guards if this
process is killed). Needs `pip install 'remote_futures[aws,ssh]'` and AWS credentials.

    python examples/ec2.py us-east-1

If anything is left over after a crash: `remote-futures sweep ec2 --region us-east-1`.
"""

import sys

from remote_futures import RemoteExecutor


def simulate(x: int) -> int:
    """A stand-in for real work."""
    return x * x


def main() -> None:
    region = sys.argv[1] if len(sys.argv) > 1 else "us-east-1"
    with RemoteExecutor(
        "ec2",
        region=region,
        instance_type="t3.small",
        instances=2,
        spot=True,               # one-time spot; interrupted calls fail with state PREEMPTED
        max_lifetime="1h",       # in-VM hard limit: the instance terminates itself
        idle_timeout="10m",      # ... and after 10 minutes without work
        # ssh_cidr="203.0.113.7/32",  # narrow SSH to your own address
    ) as ex:
        print(sum(ex.map(simulate, range(1000))))


if __name__ == "__main__":
    main()
