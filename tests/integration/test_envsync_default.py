"""Issue acceptance: a remote user with only the system python3 (no cloudpickle) runs a map over
slurm with DEFAULT options (env="sync"): the first executor builds the venv with uv from the
package index, the second starts with one round trip."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from testbed_facts import TestbedFacts, require_testbed

from remote_futures import RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(600)]


def cube(x: int) -> int:
    return x**3


@pytest.fixture
def fresh_work_dir() -> Iterator[tuple[TestbedFacts, str]]:
    facts = require_testbed("slurm")
    name = f".rf-envsync-test-{uuid.uuid4().hex[:8]}"
    yield facts, f"~/{name}"
    subprocess.run([*facts.ssh_argv(facts.slurm_user), f"rm -rf ~/{name}"], check=False,
                   timeout=60, capture_output=True)


def test_default_sync_then_one_round_trip(fresh_work_dir: tuple[TestbedFacts, str]) -> None:
    facts, work_dir = fresh_work_dir
    bare = subprocess.run([*facts.ssh_argv(facts.slurm_user), "python3 -c 'import cloudpickle'"],
                          capture_output=True, timeout=60, check=False)
    assert bare.returncode != 0, "the testbed user's system python3 must lack cloudpickle"
    options = {"host": facts.host, "port": facts.port, "user": facts.slurm_user,
               "identity_file": str(facts.key), "known_hosts": str(facts.known_hosts),
               "work_dir": work_dir, "max_workers": 2}
    with RemoteExecutor("slurm", **options) as ex:
        assert list(ex.map(cube, range(12))) == [x**3 for x in range(12)]
        first = ex.transport.sync_result  # type: ignore[attr-defined]
    assert first is not None and not first.cached
    assert any(line.startswith("cloudpickle") for line in first.installed)
    with RemoteExecutor("slurm", **options) as ex:
        assert ex.submit(cube, 4).result(timeout=300) == 64
        second = ex.transport.sync_result  # type: ignore[attr-defined]
    assert second is not None and second.cached
    assert second.round_trips == 1
    assert second.venv_dir == first.venv_dir
