"""Large arguments on one warm ``ssh`` executor, beside ``scp`` of the same size to the same
host and user, interleaved in one run.

Per round trip (``ROUNDS`` of them, ``BENCH_BIGARGS_MIB`` MiB each, default 256):

* ``len``: a ``bytes`` argument sent, its length returned (upload only);
* ``echo``: the same argument sent and returned (upload and download);
* ``scp``: the same bytes as a file copied to the host (upload only), the reference.

The client's resident memory (``VmRSS``) is read before and after each call, with the garbage
collector left alone (no ``gc.collect()``): after a call it should return to its level before.
Throughput is bytes moved per second of wall time (``echo`` counts both directions).

Needs the testbed (``RF_TESTBED_DIR``, default ``/tmp/rf-testbed``); skipped without it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from remote_futures import RemoteExecutor

MIB = 1 << 20
SIZE = int(os.environ.get("BENCH_BIGARGS_MIB", "256")) * MIB
ROUNDS = int(os.environ.get("BENCH_BIGARGS_ROUNDS", "5"))


def length(data: bytes) -> int:
    return len(data)


def echo(data: bytes) -> bytes:
    return data


def rss_mib() -> float:
    """This process's resident set, in MiB (from /proc: no dependency)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def facts() -> dict[str, Any] | None:
    path = os.path.join(os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed"), "testbed.json")
    try:
        with open(path) as f:
            found: dict[str, Any] = json.load(f)
            return found
    except OSError:
        return None


def main() -> None:
    raw = facts()
    if raw is None:
        print("no testbed facts: skipped", file=sys.stderr)
        return
    host = raw.get("RF_SSH_HOST", "127.0.0.1")
    port = int(raw.get("RF_SSH_PORT", 2222))
    user = raw.get("RF_SLURM_USER", "slurmuser")
    opts = {"host": host, "port": port, "user": user, "identity_file": raw["RF_SSH_KEY"],
            "known_hosts": raw["RF_SSH_KNOWN_HOSTS"], "max_workers": 1}
    scp = ["scp", "-q", "-P", str(port), "-i", raw["RF_SSH_KEY"],
           "-o", f"UserKnownHostsFile={raw['RF_SSH_KNOWN_HOSTS']}", "-o", "BatchMode=yes"]
    payload = os.urandom(SIZE)
    with tempfile.NamedTemporaryFile(prefix="bench-bigargs-") as local:
        local.write(payload)
        local.flush()
        remote = f"{user}@{host}:/tmp/bench-bigargs-{os.getpid()}"
        rows: list[tuple[str, int, float, float, float]] = []
        with RemoteExecutor("ssh", **opts) as ex:
            ex.submit(length, b"warm").result()
            baseline = rss_mib()
            print(f"payload {SIZE // MIB} MiB; RSS with payload, executor warm: "
                  f"{baseline:.0f} MiB", flush=True)
            for i in range(ROUNDS):
                for kind in ("len", "echo", "scp"):
                    before = rss_mib()
                    t = time.perf_counter()
                    if kind == "scp":
                        subprocess.run([*scp, local.name, remote], check=True)
                        moved = SIZE
                    elif kind == "len":
                        assert ex.submit(length, payload).result() == SIZE
                        moved = SIZE
                    else:
                        back = ex.submit(echo, payload).result()
                        assert len(back) == SIZE
                        del back
                        moved = 2 * SIZE
                    took = time.perf_counter() - t
                    after = rss_mib()
                    rate = moved / MIB / took
                    rows.append((kind, i, before, after, rate))
                    print(f"  {kind:5} #{i}: RSS {before:7.0f} -> {after:7.0f} MiB "
                          f"({after - baseline:+6.0f} vs baseline), {rate:6.1f} MiB/s",
                          flush=True)
        subprocess.run(["ssh", "-p", str(port), "-i", raw["RF_SSH_KEY"], "-o",
                        f"UserKnownHostsFile={raw['RF_SSH_KNOWN_HOSTS']}", "-o", "BatchMode=yes",
                        f"{user}@{host}", "rm", "-f", f"/tmp/bench-bigargs-{os.getpid()}"],
                       check=False)
    print("\nsummary (median MiB/s [range]; each round's rate / that round's scp; RSS):")
    speed = {k: statistics.median(r[4] for r in rows if r[0] == k) for k in ("len", "echo", "scp")}
    scp_of = {r[1]: r[4] for r in rows if r[0] == "scp"}
    for kind, value in speed.items():
        rates = [r[4] for r in rows if r[0] == kind]
        ratios = [r[4] / scp_of[r[1]] for r in rows if r[0] == kind]
        print(f"  {kind:5} {value:7.1f} MiB/s [{min(rates):.0f}-{max(rates):.0f}]  "
              f"({value / speed['scp']:.0%} of scp; per round: median "
              f"{statistics.median(ratios):.0%} [{min(ratios):.0%}-{max(ratios):.0%}])")
    print(f"  RSS: baseline {baseline:.0f} MiB, end {rss_mib():.0f} MiB, "
          f"peak after a call {max(r[3] for r in rows):.0f} MiB")


if __name__ == "__main__":
    main()
