"""sync_environment over real SSH as the testbed's ``slurmuser`` (python3 without cloudpickle)."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from envsync_support import CLOUDPICKLE

from remote_futures.envsync import EnvSpec, sync_environment

pytest.importorskip("asyncssh")  # before importing SSHShell, which needs it
from testbed_facts import require_testbed  # tests/ is put on sys.path by conftest

from remote_futures.ssh import SSHShell

pytestmark = [pytest.mark.testbed, pytest.mark.asyncio, pytest.mark.timeout(300)]


@pytest_asyncio.fixture
async def remote() -> AsyncIterator[tuple[SSHShell, str]]:
    """An open shell as slurmuser, and a scratch directory in its home (removed afterwards)."""
    facts = require_testbed("ssh")
    shell = SSHShell(facts.host, port=facts.port, user=facts.slurm_user,
                     identity_file=str(facts.key), known_hosts=str(facts.known_hosts))
    async with shell:
        scratch = f"{await shell.home()}/rf-envsync-test-{uuid.uuid4().hex[:8]}"
        try:
            yield shell, scratch
        finally:
            await shell.run(f"rm -rf {shlex.quote(scratch)}")


async def test_sync_over_ssh_gives_a_python_with_cloudpickle(
    remote: tuple[SSHShell, str], wheelhouse: Path
) -> None:
    shell, scratch = remote
    base = await shell.run("python3 -c 'import cloudpickle'")
    # The remote side cannot see this machine's temporary wheelhouse: copy it over.
    await shell.makedirs(f"{scratch}/wheels")
    for wheel in wheelhouse.glob("*.whl"):
        await shell.write_file(f"{scratch}/wheels/{wheel.name}", wheel.read_bytes())
    spec = EnvSpec(find_links=(f"{scratch}/wheels",), no_index=True)
    local = {"rf-tiny-a": "1.0", "cloudpickle": CLOUDPICKLE}

    first = await sync_environment(shell, python="python3", work_dir=f"{scratch}/work",
                                   spec=spec, local=local)
    assert first.venv_dir is not None and first.venv_dir.startswith(scratch)
    assert sorted(first.installed) == sorted([f"cloudpickle=={CLOUDPICKLE}", "rf-tiny-a==1.0"])
    done = await shell.run(
        f"{shlex.quote(first.python)} -c 'import cloudpickle, rf_tiny_a; "
        "print(cloudpickle.__version__, rf_tiny_a.__version__)'"
    )
    assert done.ok, done.stderr
    assert done.stdout.split() == [CLOUDPICKLE, "1.0"]
    if not base.ok:  # the testbed's system python3 has no cloudpickle: the venv made the change
        assert "cloudpickle" in base.stderr

    again = await sync_environment(shell, python="python3", work_dir=f"{scratch}/work",
                                   spec=spec, local=local)
    assert again.cached and again.round_trips == 1 and again.python == first.python
