"""With no ``max_workers``, a scheduler executor takes the free slots of the partition as it opens.

The testbed's partition and queue have 4 slots, which other test runs use at the same time:
each test reads the free slots itself (``sinfo``'s idle CPUs, ``qstat -g c``'s AVAIL) just
before and just after the executor opens, and passes when ``max_workers`` equals a count that
held still across the executor's own query (it tries again when another run moved it).
"""

from __future__ import annotations

import subprocess
import time

import pytest
from testbed_facts import TestbedFacts, executor_options, require_testbed

from remote_futures import RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

#: The fixed default, which the free slots replace (the testbed has far fewer).
_FIXED_DEFAULT = 64


def square(x: int) -> int:
    return x * x


def _free_slots(facts: TestbedFacts, target: str) -> int:
    if target == "slurm":
        user = facts.slurm_user
        command = f"sinfo -h -p {facts.slurm_partition} -o %C | cut -d/ -f2"
    else:
        user = facts.sge_user
        command = f"qstat -g c | awk '$1 == \"{facts.sge_queue}\" {{print $5}}'"
    done = subprocess.run([*facts.ssh_argv(user), command], capture_output=True, text=True,
                          timeout=60, check=True)
    return int(done.stdout.strip())


@pytest.mark.parametrize("target", ["slurm", "sge"])
def test_default_max_workers_is_the_free_slots_now(target: str) -> None:
    facts = require_testbed(target)
    options = executor_options(facts, target)
    if target == "slurm":
        options["resources"] = {"partition": facts.slurm_partition}
    seen: list[tuple[int, int, int]] = []
    for _ in range(10):
        before = _free_slots(facts, target)
        with RemoteExecutor(target, **options) as ex:
            deadline = time.monotonic() + 60
            while ex.max_workers == _FIXED_DEFAULT and time.monotonic() < deadline:
                time.sleep(0.02)  # until the transport has opened
            after = _free_slots(facts, target)
            seen.append((before, ex.max_workers, after))
            # A job of another run may start and end between two readings: compare only when
            # the count held still around the executor's own query (else look again).
            if before == after and ex.max_workers == max(1, before):
                # And the executor works with it.
                assert list(ex.map(square, range(12))) == [x * x for x in range(12)]
                return
        time.sleep(1.0)
    pytest.fail(f"max_workers never matched a steady count of free slots: "
                f"(before, max_workers, after) = {seen}")
