"""The user's own example, `with RemoteExecutor("pbs") as ex: ex.map(...)`, from a profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from _plain import triple  # a user module beside this one: stdlib imports only
from testbed_facts import executor_options, remote_python, require_testbed

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
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.{name}]\n'
        f'transport = "{name}"\n'
        f'host = "{facts.host}"\nport = {facts.port}\nuser = "{getattr(facts, user_field)}"\n'
        f'identity_file = "{facts.key}"\nknown_hosts = "{facts.known_hosts}"\n'
        f'resources = {{ walltime = "00:10:00" }}\n'
    )
    monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(config))
    with RemoteExecutor(name) as ex:
        assert ex.transport.name == name
        assert list(ex.map(simulate, range(30))) == [x * x + 1 for x in range(30)]


@pytest.mark.parametrize("target", ["ssh", "slurm", "pbs", "sge"])
def test_env_off_with_a_given_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """The issue's call: python=..., env="off": the interpreter is used as it is. The function
    comes from a module that imports only the standard library, which is all it has."""
    facts = require_testbed(target)
    with RemoteExecutor(target, **executor_options(facts, target), python=remote_python(facts),
                        env="off", max_workers=2) as ex:
        assert list(ex.map(triple, range(10))) == [3 * x for x in range(10)]
        assert ex.submit(triple, 7).result(timeout=120) == 21
