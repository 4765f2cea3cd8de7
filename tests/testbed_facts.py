"""Connection facts of the local test bed (real sshd, Slurm, PBS wrappers, SGE).

``tests/testbed/start.sh`` (or ``up.sh``) writes ``$RF_TESTBED_DIR/testbed.json``
(default ``/tmp/rf-testbed/testbed.json``).  This module reads it into a
:class:`TestbedFacts`; :func:`require_testbed` is the pytest entry point::

    facts = require_testbed("slurm")
    conn = await asyncssh.connect(facts.host, port=facts.port, username=facts.slurm_user,
                                  client_keys=[str(facts.key)],
                                  known_hosts=str(facts.known_hosts))

When the test bed is missing, lacks the component, or is not running, a test is
*skipped* on a developer machine but *fails* in CI (``CI=true``): tests that
need the test bed must never silently skip there.

Components listed by the test bed: ``ssh``, ``slurm``, ``slurmdbd`` (Slurm
accounting, so ``sacct`` works), ``sge``, ``pbs`` (Torque wrappers over Slurm) and
``kubernetes`` (a real kube-apiserver + kube-controller-manager with the testbed kubelet;
``RF_K8S_KUBECONFIG`` and ``RF_K8S_NAMESPACE``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

__all__ = [
    "COMPONENT_OF",
    "DEFAULT_TESTBED_DIR",
    "TestbedFacts",
    "executor_options",
    "facts_path",
    "load_facts",
    "port_open",
    "remote_python",
    "require_testbed",
    "testbed_dir",
]

DEFAULT_TESTBED_DIR = Path("/tmp/rf-testbed")
_HINT = "needs the testbed: run `sudo nox -s testbed` (or bash tests/testbed/up.sh as root)"


@dataclass(frozen=True)
class TestbedFacts:
    """What a test needs to reach the test bed; ``raw`` holds every key of testbed.json."""

    __test__ = False  # not a pytest test class, despite the name

    host: str
    port: int
    key: Path
    known_hosts: Path
    slurm_user: str
    pbs_user: str
    sge_user: str
    slurm_partition: str
    slurm_accounting: bool
    sge_queue: str
    torque_bin: Path
    components: frozenset[str]
    raw: dict[str, str | int] = field(default_factory=dict, compare=False, repr=False)

    def ssh_argv(self, user: str) -> list[str]:
        """``ssh`` command line (strict host key checking, no prompts) to log in as *user*."""
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "ConnectTimeout=10",
            f"{user}@{self.host}",
        ]


def testbed_dir() -> Path:
    """The state directory: ``$RF_TESTBED_DIR``, else ``/tmp/rf-testbed``."""
    env = os.environ.get("RF_TESTBED_DIR")
    return Path(env) if env else DEFAULT_TESTBED_DIR


def facts_path() -> Path:
    """Path of the facts file written by ``start.sh``."""
    return testbed_dir() / "testbed.json"


def _str(raw: dict[str, str | int], key: str) -> str:
    value = raw.get(key)
    if value is None:
        raise ValueError(f"testbed facts: key {key} missing")
    return str(value)


def _int(raw: dict[str, str | int], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"testbed facts: key {key} is not an integer: {value!r}")


def load_facts(path: Path | None = None) -> TestbedFacts:
    """Read *path* (default :func:`facts_path`).

    Raises :class:`OSError` when the file cannot be read and :class:`ValueError`
    when its content is not what ``start.sh`` writes.
    """
    path = facts_path() if path is None else path
    data: object = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    raw: dict[str, str | int] = {}
    for k, v in data.items():
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise ValueError(f"{path}: value of {k} is neither a string nor an integer")
        raw[str(k)] = v
    return TestbedFacts(
        host=_str(raw, "RF_SSH_HOST"),
        port=_int(raw, "RF_SSH_PORT"),
        key=Path(_str(raw, "RF_SSH_KEY")),
        known_hosts=Path(_str(raw, "RF_SSH_KNOWN_HOSTS")),
        slurm_user=_str(raw, "RF_SLURM_USER"),
        pbs_user=_str(raw, "RF_PBS_USER"),
        sge_user=_str(raw, "RF_SGE_USER"),
        slurm_partition=_str(raw, "RF_SLURM_PARTITION"),
        slurm_accounting=_str(raw, "RF_SLURM_ACCOUNTING") == "slurmdbd",
        sge_queue=_str(raw, "RF_SGE_QUEUE"),
        torque_bin=Path(_str(raw, "RF_TORQUE_BIN")),
        components=frozenset(_str(raw, "RF_COMPONENTS").split()),
        raw=raw,
    )


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to *host*:*port* succeeds within *timeout* seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(detail: str) -> NoReturn:
    import pytest

    if _in_ci():
        pytest.fail(f"the testbed is required in CI, but {detail} ({_HINT})", pytrace=False)
    pytest.skip(f"{_HINT}: {detail}")


def require_testbed(component: str) -> TestbedFacts:
    """Facts of a running test bed that has *component*; else skip (or fail under ``CI=true``).

    Checks that the facts file exists and parses, that *component* is listed, that
    the ssh key is readable by this process and that sshd accepts a TCP connection.
    """
    path = facts_path()
    problem = ""
    try:
        facts = load_facts(path)
    except FileNotFoundError:
        problem = f"its facts file {path} does not exist"
    except (OSError, ValueError) as exc:
        problem = f"its facts file is unusable: {exc}"
    if problem:  # reported outside the except block: no chained traceback
        _unavailable(problem)
    if component not in facts.components:
        listed = " ".join(sorted(facts.components)) or "none"
        _unavailable(f"component {component!r} is not in the testbed (it has: {listed})")
    if component == "kubernetes":
        kubeconfig = facts.raw.get("RF_K8S_KUBECONFIG")
        api_port = facts.raw.get("RF_K8S_API_PORT")
        if not kubeconfig or not os.access(str(kubeconfig), os.R_OK):
            _unavailable(f"cannot read the kubeconfig {kubeconfig!r} of the k8s component")
        if not isinstance(api_port, int) or not port_open("127.0.0.1", api_port, timeout=2.0):
            _unavailable(f"the kube-apiserver does not accept connections on port {api_port}")
        return facts
    if not port_open(facts.host, facts.port, timeout=2.0):
        _unavailable(
            f"the testbed is not running: nothing accepts TCP connections on "
            f"{facts.host}:{facts.port} ({path} may be left from an earlier start)"
        )
    if not os.access(facts.key, os.R_OK):
        _unavailable(f"cannot read the ssh key {facts.key} (the testbed belongs to root)")
    return facts


#: The testbed component, and the test user, that each transport uses.
COMPONENT_OF = {"ssh": "ssh", "slurm": "slurm", "pbs": "pbs", "sge": "sge",
                "kubernetes": "kubernetes"}
_USER_OF = {"ssh": "slurm_user", "slurm": "slurm_user", "pbs": "pbs_user", "sge": "sge_user"}
_DEFAULT_REMOTE_PYTHON = "/opt/rf-remote-python/bin/python"


def executor_options(facts: TestbedFacts, target: str) -> dict[str, object]:
    """``RemoteExecutor`` keyword arguments that reach ``target`` on the testbed as its user,
    with the default environment (``env="sync"`` from the user's bare system python3): test
    modules are imported on the remote side, so their own imports must be there too.

    For ``kubernetes``: the testbed's kubeconfig and namespace. The testbed's kubelet ignores
    the image and runs pods on this machine's read-only filesystem, so the pods run this test
    process's own interpreter (as an image built with the project's test dependencies would):
    env="sync" on Kubernetes checks the version and ships cloudpickle, it does not install
    the test modules' imports (pytest)."""
    if target == "kubernetes":
        return {
            "kubeconfig": str(facts.raw["RF_K8S_KUBECONFIG"]),
            "namespace": str(facts.raw["RF_K8S_NAMESPACE"]),
            "image": "python:3.11-slim",
            "python": sys.executable,
            "start_grace": 20.0,
        }
    return {
        "host": facts.host,
        "port": facts.port,
        "user": getattr(facts, _USER_OF[target]),
        "identity_file": str(facts.key),
        "known_hosts": str(facts.known_hosts),
    }


def remote_python(facts: TestbedFacts) -> str:
    """The testbed's interpreter for ``env="off"``: the system Python 3 plus cloudpickle."""
    return str(facts.raw.get("RF_REMOTE_PYTHON", _DEFAULT_REMOTE_PYTHON))
