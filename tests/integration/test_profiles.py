"""The user's own example, `with RemoteExecutor("pbs") as ex: ex.map(...)`, from a profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from testbed_facts import require_testbed

from remote_futures import RemoteExecutor

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


def simulate(x: int) -> int:
    return x * x + 1


@pytest.mark.parametrize(("name", "user_field"), [("pbs", "pbs_user"), ("sge", "sge_user"),
                                                   ("slurm", "slurm_user")])
def test_profile_named_like_the_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, user_field: str
) -> None:
    facts = require_testbed(name)
    python = facts.raw.get("RF_REMOTE_PYTHON", "/opt/rf-remote-python/bin/python")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.{name}]\n'
        f'transport = "{name}"\n'
        f'host = "{facts.host}"\nport = {facts.port}\nuser = "{getattr(facts, user_field)}"\n'
        f'identity_file = "{facts.key}"\nknown_hosts = "{facts.known_hosts}"\n'
        f'python = "{python}"\nenv = "off"\n'
        f'resources = {{ walltime = "00:10:00" }}\n'
    )
    monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(config))
    with RemoteExecutor(name) as ex:
        assert ex.transport.name == name
        assert list(ex.map(simulate, range(30))) == [x * x + 1 for x in range(30)]
