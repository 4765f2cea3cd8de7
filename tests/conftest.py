"""Shared test machinery: ``tests/`` on ``sys.path``, and the executor contract-suite fixtures.

The contract suite (``tests/contract``) is written once and runs against every entry of
:data:`CONTRACT_FACTORIES`. **Adding a transport is one entry** there: a name (the pytest id,
and the ``RemoteExecutor`` target unless the factory returns a ``"target"`` key) mapped to a
factory ``factory(request) -> dict`` of ``RemoteExecutor`` keyword arguments. A factory may
call :func:`testbed_facts.require_testbed` (which skips the test, or fails it under
``CI=true``, when the testbed is not running), may use other fixtures through
``request.getfixturevalue(...)``, and may carry pytest marks; mark factories that need the
testbed with ``@pytest.mark.testbed`` so that ``-m "not testbed"`` deselects them::

    @pytest.mark.testbed
    def _slurm(request: pytest.FixtureRequest) -> dict[str, Any]:
        facts = require_testbed("slurm")
        return {"host": facts.host, "port": facts.port, "user": facts.slurm_user, ...}

    CONTRACT_FACTORIES = {"local": _local, "slurm": _slurm}

The contract tests use files in ``tmp_path`` (markers, gates) that the calls create or wait
for, so a transport in the registry must run its calls where this machine's ``tmp_path`` is
visible and writable (the testbed runs on this machine).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # for `import testbed_facts` from any test directory
    sys.path.insert(0, str(TESTS_DIR))

from testbed_facts import executor_options, require_testbed  # noqa: E402

from remote_futures import RemoteExecutor  # noqa: E402


@pytest.fixture
def seen() -> Iterator[Any]:
    """What the executor writes to sys.stdout and sys.stderr during the test, read while calls
    print without losing a byte, unlike ``capfd.readouterr`` (an ``OutputRecorder``: see
    ``contract/_outcapture.py``, on the path of the tests that use it). The test starts it
    itself: pytest points sys.stdout at its own capture again between a test's set-up and
    its body."""
    from _outcapture import OutputRecorder

    recorder = OutputRecorder()
    try:
        yield recorder
    finally:
        recorder.stop()


@pytest.fixture(autouse=True, scope="session")
def _session_ledger_in_a_temporary_directory() -> Iterator[None]:
    """Executors made by tests record their sessions in a ledger of the test run, not in the
    user's own state directory (tests of the ledger point it elsewhere themselves)."""
    import os

    if os.environ.get("REMOTE_FUTURES_STATE_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="rf-ledger-") as directory:
        os.environ["REMOTE_FUTURES_STATE_DIR"] = directory
        try:
            yield
        finally:
            os.environ.pop("REMOTE_FUTURES_STATE_DIR", None)


#: ``factory(request) -> RemoteExecutor keyword arguments`` (may include ``"target"``).
ContractFactory = Callable[[pytest.FixtureRequest], dict[str, Any]]


def _local(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {}


def _shared_tmp_path(request: pytest.FixtureRequest) -> None:
    """The testbed's users run the calls on this machine: let them use this test's tmp_path
    (the contract tests' markers and gates live there)."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path(tempfile.gettempdir()) or parent == parent.parent:
            break
        parent.chmod(parent.stat().st_mode | 0o011)


def _remote(target: str, component: str) -> ContractFactory:
    @pytest.mark.testbed
    def factory(request: pytest.FixtureRequest) -> dict[str, Any]:
        facts = require_testbed(component)
        _shared_tmp_path(request)
        # The defaults: env="sync" from the user's bare system python3 (no cloudpickle), so
        # every remote contract test also runs on a synced environment.
        return {"target": target, **executor_options(facts, target)}

    return factory


def _pilot_pool(target: str) -> ContractFactory:
    """``target`` with ``pool=True``: warm workers in pilot jobs, through a relay that
    listens on loopback (the testbed's only network)."""
    remote = _remote(target, target)

    @pytest.mark.testbed
    def factory(request: pytest.FixtureRequest) -> dict[str, Any]:
        return {**remote(request), "pool": True, "relay_bind": "127.0.0.1"}

    return factory


def _ec2(request: pytest.FixtureRequest) -> dict[str, Any]:
    """EC2 on moto's API, every instance a local "VM" booted from its own user data and reached
    only on 127.0.0.1 (tests/ec2/fakecloud.py): no AWS account, no testbed."""
    ec2_tests = str(TESTS_DIR / "ec2")
    if ec2_tests not in sys.path:
        sys.path.insert(0, ec2_tests)
    from fakecloud import start_cloud

    cloud = start_cloud(request)
    return {"target": "ec2", **cloud.options()}


#: Every transport the contract suite runs against: name -> factory (see the module docstring).
CONTRACT_FACTORIES: dict[str, ContractFactory] = {
    "local": _local,
    # The previous embedded transport: the remote hosts' job-directory protocol, locally.
    "local-jobs": lambda request: {"target": "local-jobs"},
    "ssh": _remote("ssh", "ssh"),
    "slurm": _remote("slurm", "slurm"),
    "pbs": _remote("pbs", "pbs"),
    "sge": _remote("sge", "sge"),
    "slurm-pool": _pilot_pool("slurm"),
    "sge-pool": _pilot_pool("sge"),
    "pbs-pool": _pilot_pool("pbs"),
    "kubernetes": _remote("kubernetes", "kubernetes"),
    "ec2": _ec2,
}

#: The names the contract suite is parametrized over, in order (derived: edit the dict above).
CONTRACT_TARGETS: list[str] = list(CONTRACT_FACTORIES)


def _target_params() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=getattr(CONTRACT_FACTORIES[name], "pytestmark", ()))
        for name in CONTRACT_TARGETS
    ]


@pytest.fixture(params=_target_params())
def contract_target(request: pytest.FixtureRequest) -> str:
    """The name of the transport entry the current contract test runs against."""
    name: str = request.param
    return name


@pytest.fixture
def make_executor(
    request: pytest.FixtureRequest,
    contract_target: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RemoteExecutor]]:
    """``make_executor(**overrides) -> RemoteExecutor`` for the current contract target.

    ``overrides`` (``max_workers``, ``initializer``...) win over the factory's arguments.
    Every executor made is shut down at teardown with ``cancel_futures=True``. The user's own
    config file is hidden, so that a profile named like a transport cannot change the target.
    """
    monkeypatch.delenv("REMOTE_FUTURES_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("no-user-config")))
    base = dict(CONTRACT_FACTORIES[contract_target](request))
    target = base.pop("target", contract_target)
    created: list[RemoteExecutor] = []

    def make(**overrides: Any) -> RemoteExecutor:
        executor = RemoteExecutor(target, **{**base, **overrides})
        created.append(executor)
        return executor

    make.target = contract_target  # type: ignore[attr-defined]
    yield make
    errors: list[BaseException] = []
    for executor in reversed(created):
        try:
            executor.shutdown(wait=True, cancel_futures=True)
        except Exception as exc:  # shut the others down regardless, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def gate(make_executor: Callable[..., RemoteExecutor], tmp_path: Path) -> Iterator[Path]:
    """A file that blocking calls (``_usercode.block_until``) wait for; the test creates it to
    release them. Opened at teardown *before* the executors shut down (this fixture depends
    on ``make_executor``), so a test that fails with a call still blocked cannot hang."""
    path = tmp_path / "gate"
    yield path
    path.touch()
