"""The default ``max_workers`` on a scheduler: the free slots it shows now, over recorded outputs.

Every output parsed here is a file under tests/data (recorded on the test bed, or copied from a
public source named in tests/data/SOURCES.md). The last tests check how the transport turns the
count into ``max_workers`` (capped, at least 1) with a stand-in shell answering with those files,
and that the core sizes a ``map`` with the ``max_workers`` learnt at open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from dialect_support import data

from remote_futures import RemoteExecutor, Resources
from remote_futures.core import RemoteFuture
from remote_futures.ledger import Call
from remote_futures.planning import Request, plan_jobs
from remote_futures.shell import CommandResult
from remote_futures.transports import capacity
from remote_futures.transports.batch import (
    BatchOptions,
    BatchTransport,
    PBSOptions,
    PBSTransport,
    SGEOptions,
    SGETransport,
    SlurmTransport,
)
from remote_futures.transports.mock import MockTransport

pytestmark = pytest.mark.timeout(60)


# --- Slurm: sinfo -h -o "%P %C" (Slurm 22.05.8, test bed) -----------------------------------


@pytest.mark.parametrize(("path", "idle"), [
    ("slurm-22.05/sinfo-h-o-P-C-idle.txt", 4),
    ("slurm-22.05/sinfo-h-o-P-C-mixed.txt", 2),
    ("slurm-22.05/sinfo-h-o-P-C-allocated.txt", 0),
])
def test_sinfo_idle_cpus_of_the_default_and_of_a_named_partition(path: str, idle: int) -> None:
    assert capacity.parse_sinfo_cpus(data(path), None) == idle
    assert capacity.parse_sinfo_cpus(data(path), "batch") == idle
    assert capacity.parse_sinfo_cpus(data(path), "other") is None


def test_sinfo_says_nothing_of_an_unknown_partition() -> None:
    nosuch = data("slurm-22.05/sinfo-h-p-nosuch-o-P-C.txt")
    assert capacity.parse_sinfo_cpus(nosuch, "nosuch") is None


def test_sinfo_argv_names_the_partition() -> None:
    assert capacity.sinfo_argv(None) == ["sinfo", "-h", "-o", "%P %C"]
    assert capacity.sinfo_argv("gpu") == ["sinfo", "-h", "-o", "%P %C", "-p", "gpu"]


# --- Grid Engine: qstat -g c (SGE 8.1.9, test bed) -------------------------------------------


@pytest.mark.parametrize(("path", "avail"), [
    ("sge-8.1.9/qstat-g-c-idle.txt", 4),
    ("sge-8.1.9/qstat-g-c-two-used.txt", 2),
])
def test_qstat_gc_available_slots(path: str, avail: int) -> None:
    stdout = data(path)
    assert capacity.parse_qstat_gc(stdout, None) == avail
    assert capacity.parse_qstat_gc(stdout, "all.q") == avail
    assert capacity.parse_qstat_gc(stdout, "all.q@localhost") == avail
    assert capacity.parse_qstat_gc(stdout, "nosuch.q") is None


def test_qstat_gc_without_its_table_says_nothing() -> None:
    assert capacity.parse_qstat_gc("", None) is None
    assert capacity.parse_qstat_gc(data("sge-8.1.9/qstat-empty.txt"), None) is None


# --- PBS: pbsnodes -a / -x -----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "cpus", "tasks"), [
    # PBS Pro (Scale-Out Computing on AWS): 16 CPUs, 1 assigned; the other node is down.
    ("pbspro/pbsnodes-a-soca-free-and-down.txt", 1, 15),
    ("pbspro/pbsnodes-a-soca-free-and-down.txt", 4, 3),
    # OpenPBS 23.06.06: two idle 2-CPU nodes; a 2-CPU task fits once on each.
    ("openpbs/pbsnodes-a-23.06.06.txt", 1, 4),
    ("openpbs/pbsnodes-a-23.06.06.txt", 2, 2),
    ("openpbs/pbsnodes-a-23.06.06.txt", 3, 0),
    # Torque 6.1.3: 36 CPUs, 27 taken by three jobs given as CPU ranges.
    ("torque/pbsnodes-a-6.1.3-gpu.txt", 1, 9),
    ("torque/pbsnodes-a-6.1.3-gpu.txt", 4, 2),
    # Torque 6.1.3: both nodes down (one offline too).
    ("torque/pbsnodes-a-6.1.3-down.txt", 1, 0),
    # Torque, pbsnodes -x: one free 12-CPU node, two full (job-exclusive) ones.
    ("torque/pbsnodes-x-qhost.xml", 1, 12),
    # The Torque wrappers over Slurm (test bed): free, mixed (some used, not said how many),
    # allocated.
    ("torque-wrappers/pbsnodes-a-free.txt", 1, 4),
    ("torque-wrappers/pbsnodes-a-mixed.txt", 1, 1),
    ("torque-wrappers/pbsnodes-a-job-exclusive.txt", 1, 0),
])
def test_pbsnodes_free_cpus_per_node(path: str, cpus: int, tasks: int) -> None:
    assert capacity.parse_pbsnodes(data(path), cpus) == tasks


def test_pbsnodes_without_nodes_says_nothing() -> None:
    assert capacity.parse_pbsnodes("") is None
    assert capacity.parse_pbsnodes("<Data>") is None


# --- from the count to max_workers --------------------------------------------------------------


class _Shell:
    """Answers every command with one recorded output (and remembers the commands)."""

    label = "testhost"

    def __init__(self, stdout: str, returncode: int = 0) -> None:
        self.stdout = stdout
        self.returncode = returncode
        self.commands: list[str] = []

    async def run(self, command: str, **_: Any) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, self.returncode, self.stdout, "")


def _fit(transport: BatchTransport, stdout: str, returncode: int = 0) -> list[str]:
    shell = _Shell(stdout, returncode)
    transport.shell = shell  # type: ignore[assignment]
    anyio.run(transport.fit_max_workers_to_capacity)
    return shell.commands


Make = Callable[[Resources], BatchTransport]


@pytest.mark.parametrize(("make", "path", "expected", "command"), [
    (lambda r: SlurmTransport(BatchOptions(resources=r), max_workers=64),
     "slurm-22.05/sinfo-h-o-P-C-mixed.txt", 2, "sinfo -h -o '%P %C'"),
    (lambda r: SlurmTransport(BatchOptions(resources=r), max_workers=64),
     "slurm-22.05/sinfo-h-o-P-C-allocated.txt", 1, "sinfo -h -o '%P %C'"),
    (lambda r: SGETransport(SGEOptions(resources=r), max_workers=64),
     "sge-8.1.9/qstat-g-c-idle.txt", 4, "qstat -g c"),
    (lambda r: PBSTransport(PBSOptions(resources=r), max_workers=64),
     "torque/pbsnodes-x-qhost.xml", 12, "pbsnodes -a"),
])
def test_max_workers_is_the_free_slots_at_least_one(
    make: Make, path: str, expected: int, command: str
) -> None:
    transport = make(Resources())
    assert _fit(transport, data(path)) == [command]
    assert transport.max_workers == expected


def test_max_workers_is_capped_and_counts_the_cpus_of_a_task() -> None:
    many = "".join(f"n{i}\n     state = free\n     np = 8\n\n" for i in range(40))  # 320 CPUs
    transport = PBSTransport(PBSOptions(resources=Resources()), max_workers=64)
    _fit(transport, many)
    assert transport.max_workers == 64
    wide = SlurmTransport(BatchOptions(resources=Resources(cpus=2, partition="batch")),
                          max_workers=64)
    assert _fit(wide, data("slurm-22.05/sinfo-h-o-P-C-idle.txt")) == [
        "sinfo -h -o '%P %C' -p batch"]
    assert wide.max_workers == 2


def test_an_unreadable_answer_keeps_the_fixed_default() -> None:
    transport = SlurmTransport(BatchOptions(resources=Resources(partition="nosuch")),
                               max_workers=64)
    _fit(transport, data("slurm-22.05/sinfo-h-p-nosuch-o-P-C.txt"))
    assert transport.max_workers == 64
    failing = SGETransport(SGEOptions(), max_workers=64)
    _fit(failing, "", returncode=1)
    assert failing.max_workers == 64


# --- the core uses the max_workers learnt at open ----------------------------------------------


def test_a_map_without_chunksize_is_chunked_when_planned() -> None:
    calls = [[Call(RemoteFuture(), f"c{i}".encode())] for i in range(10)]
    (job,) = plan_jobs([Request(calls, Resources(), auto_chunk=True)], 100,
                       map_chunksize=lambda n: math.ceil(n / 4))
    assert [len(task.calls) for task in job.tasks] == [3, 3, 3, 1]
    given = [[Call(RemoteFuture(), b"a")], [Call(RemoteFuture(), b"b")]]
    (kept,) = plan_jobs([Request(given, Resources())], 100, map_chunksize=lambda n: n)
    assert [len(task.calls) for task in kept.tasks] == [1, 1]


def test_an_executor_sizes_its_maps_by_the_max_workers_learnt_at_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def open_and_fit(self: MockTransport) -> None:
        await anyio.sleep(0.3)  # a connection and a scheduler query take a moment
        await original_open(self)
        if self.fit_max_workers:
            self.max_workers = 2  # what a scheduler would say is free

    original_open = MockTransport.open
    monkeypatch.setattr(MockTransport, "open", open_and_fit)
    monkeypatch.setattr(MockTransport, "default_chunksize",
                        lambda self, n: math.ceil(n / self.max_workers))
    with RemoteExecutor("mock") as ex:
        transport = ex.transport
        assert isinstance(transport, MockTransport)
        assert transport.fit_max_workers
        # Called at once, before the transport has opened.
        assert list(ex.map(abs, range(-9, 1))) == list(range(9, -1, -1))
        assert [len(spec.tasks) for spec in transport.submitted] == [2]
        assert transport.peak <= 2
        assert ex.max_workers == 2
    with RemoteExecutor("mock", max_workers=5) as given:
        assert isinstance(given.transport, MockTransport)
        assert not given.transport.fit_max_workers
        list(given.map(abs, range(10)))
        assert given.max_workers == 5
