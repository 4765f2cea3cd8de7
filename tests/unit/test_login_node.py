"""A scheduler transport with no host means "this machine is the login node": checked first.

Staged with PATH shims: a directory of fake scheduler commands printing what the real ones
print (captured from SGE 8.1.9, PBS Pro, Torque and Slurm's Torque wrappers), and PATH set to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from remote_futures import ConfigurationError, RemoteExecutor
from remote_futures.login_node import check_scheduler_here, identify_scheduler

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent.parent / "data"

SGE_HELP = (DATA / "sge-8.1.9" / "qstat-help-version.txt").read_text()
PBSPRO_VERSION = (DATA / "pbspro" / "qstat-version-PBSPro_11.1.txt").read_text()
TORQUE_VERSION = (DATA / "torque" / "qstat-version-2.4.16.txt").read_text()
WRAPPER_VERSION = "Unknown option: version\nUsage:\n    qstat [-f] [-a|-i|-r] [-n [-1]]\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No user config; a HOME of our own, to see that nothing was built in it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REMOTE_FUTURES_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return home


@pytest.fixture
def shims(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """PATH = one directory holding the given commands, each printing its text."""

    def make(commands: dict[str, str]) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, text in commands.items():
            (bin_dir / f"{name}.txt").write_text(text)
            script = bin_dir / name
            script.write_text(f"#!/bin/sh\nexec /bin/cat '{bin_dir / name}.txt'\n")
            script.chmod(0o755)
        monkeypatch.setenv("PATH", str(bin_dir))
        return bin_dir

    return make


def test_no_scheduler_commands_here_says_how_to_give_a_host(
    shims: Callable[[dict[str, str]], Path], isolated: Path
) -> None:
    shims({})
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("pbs")
    message = str(info.value)
    assert "qsub" in message and "not on PATH" in message
    assert "host=" in message and "[profiles." in message
    assert list(isolated.iterdir()) == []  # no venv, no work dir: checked before anything


def test_one_missing_command_is_named(shims: Callable[[dict[str, str]], Path]) -> None:
    shims({"sbatch": "slurm 23.02.1\n", "squeue": ""})
    with pytest.raises(ConfigurationError, match=r"scancel is not on PATH"):
        RemoteExecutor("slurm")


def test_pbs_refuses_grid_engines_qsub(
    shims: Callable[[dict[str, str]], Path], isolated: Path
) -> None:
    bin_dir = shims({"qsub": SGE_HELP, "qstat": SGE_HELP, "qdel": ""})
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("pbs")
    message = str(info.value)
    assert "belongs to sge" in message and "SGE 8.1.9" in message
    assert str(bin_dir / "qsub") in message
    assert "RemoteExecutor('sge')" in message
    assert list(isolated.iterdir()) == []


@pytest.mark.parametrize("version", [PBSPRO_VERSION, TORQUE_VERSION, WRAPPER_VERSION])
def test_sge_refuses_a_pbs_qsub(shims: Callable[[dict[str, str]], Path], version: str) -> None:
    shims({"qsub": "", "qstat": version, "qdel": ""})
    with pytest.raises(ConfigurationError, match="belongs to pbs"):
        RemoteExecutor("sge")


@pytest.mark.parametrize(
    ("name", "commands", "expected"),
    [
        ("pbs", {"qsub": "", "qstat": PBSPRO_VERSION, "qdel": ""}, "PBS Pro/OpenPBS 11.1.0"),
        ("pbs", {"qsub": "", "qstat": TORQUE_VERSION, "qdel": ""}, "Torque 2.4.16"),
        ("pbs", {"qsub": "", "qstat": WRAPPER_VERSION, "qdel": ""}, "Torque wrappers"),
        ("sge", {"qsub": "", "qstat": SGE_HELP, "qdel": ""}, "SGE 8.1.9"),
        ("slurm", {"sbatch": "slurm 23.02.1\n", "squeue": "", "scancel": ""}, "slurm 23.02.1"),
    ],
)
def test_the_right_scheduler_passes(
    shims: Callable[[dict[str, str]], Path], name: str, commands: dict[str, str], expected: str
) -> None:
    shims(commands)
    assert expected in check_scheduler_here(name)


def test_a_host_skips_the_local_check(shims: Callable[[dict[str, str]], Path]) -> None:
    """With a host, the commands are looked for there, not here: construction succeeds."""
    shims({})
    ex = RemoteExecutor("pbs", host="127.0.0.1", port=1, max_workers=1)
    try:
        assert ex.transport.options.host == "127.0.0.1"
    finally:
        ex.shutdown(wait=True)


def test_identify_scheduler_unknown_output() -> None:
    assert identify_scheduler("command not found\n") == (None, "command not found")
