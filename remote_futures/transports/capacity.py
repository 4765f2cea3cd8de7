"""What a batch scheduler can run now: free CPUs or slots from its own summary commands (pure).

Used once, when an executor opens without a ``max_workers``, to fit the default to the
partition (queue) instead of a fixed number: a default far above what can run only makes the
calls of a ``map`` wait in more, smaller tasks. Each parser returns None when the output does
not say (an unknown partition, an unexpected format): the caller then keeps its fixed default.

* Slurm: ``sinfo -h -o "%P %C"`` (``-p`` for a partition), ``%C`` being allocated/idle/other/
  total CPUs; without a partition, the default one (marked ``*``).
* Grid Engine: ``qstat -g c``, the AVAIL column of the cluster queue(s).
* PBS Pro / OpenPBS and Torque: ``pbsnodes -a`` (text) or Torque's ``pbsnodes -x`` (XML):
  ``resources_available.ncpus`` minus ``resources_assigned.ncpus`` (PBS Pro), or ``np`` minus
  the CPUs listed in ``jobs`` (Torque), per node whose state lets it take work.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

__all__ = [
    "parse_pbsnodes",
    "parse_qstat_gc",
    "parse_sinfo_cpus",
    "pbsnodes_argv",
    "qstat_gc_argv",
    "sinfo_argv",
    "slots_for",
]

#: Node states in which a node takes no new work (PBS Pro, OpenPBS, Torque, and the Torque
#: wrappers over Slurm). ``job-busy``/``job-exclusive``/``busy`` mean "full"; the others, gone.
_PBS_NO_WORK = frozenset({
    "down", "offline", "unknown", "state-unknown", "stale", "unresolvable", "provisioning",
    "wait-provisioning", "maintenance", "sleep", "resv-exclusive", "job-exclusive", "job-busy",
    "busy", "reserve", "initializing", "drain", "drained", "draining",
})


def sinfo_argv(partition: str | None) -> list[str]:
    """``sinfo -h -o "%P %C"``, for ``partition`` (a comma list is fine) when given."""
    argv = ["sinfo", "-h", "-o", "%P %C"]
    if partition:
        argv += ["-p", partition]
    return argv


def parse_sinfo_cpus(stdout: str, partition: str | None) -> int | None:
    """Idle CPUs of ``partition`` (of the default partition when None), from ``sinfo -h -o
    "%P %C"``. None when no line is about it (no such partition, no default marked)."""
    wanted = {name.strip() for name in partition.split(",")} if partition else None
    idle = 0
    seen = False
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        name, cpus = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        counts = cpus.split("/")
        if len(counts) != 4 or not all(c.isdigit() for c in counts):
            continue
        if (wanted is None and default) or (wanted is not None and name in wanted):
            idle += int(counts[1])
            seen = True
    return idle if seen else None


def qstat_gc_argv() -> list[str]:
    """``qstat -g c``: the cluster queue summary."""
    return ["qstat", "-g", "c"]


def parse_qstat_gc(stdout: str, queue: str | None) -> int | None:
    """Available slots of ``queue`` (``all.q``, ``all.q@host``, a comma list), or of every
    cluster queue when None, from ``qstat -g c``. None when the output names none of them."""
    lines = stdout.splitlines()
    header = next((line.split() for line in lines if line.startswith("CLUSTER QUEUE")), None)
    if header is None:
        return None
    # "CLUSTER QUEUE" is two words of the header and one column of the rows; SGE 6 has no RES.
    columns = ["QUEUE", *header[2:]]
    if "AVAIL" not in columns:
        return None
    position = columns.index("AVAIL")
    wanted = {q.strip().split("@")[0] for q in queue.split(",")} if queue else None
    avail = 0
    seen = False
    for line in lines:
        fields = line.split()
        if len(fields) != len(columns) or line.startswith(("CLUSTER QUEUE", "-")):
            continue
        if wanted is not None and fields[0] not in wanted:
            continue
        if not fields[position].isdigit():
            continue
        avail += int(fields[position])
        seen = True
    return avail if seen else None


def pbsnodes_argv() -> list[str]:
    """``pbsnodes -a``: every node with its attributes (PBS Pro, OpenPBS, Torque)."""
    return ["pbsnodes", "-a"]


def parse_pbsnodes(stdout: str, cpus_per_task: int = 1) -> int | None:
    """How many tasks of ``cpus_per_task`` CPUs the nodes can start now, from ``pbsnodes -a``
    (or Torque's ``pbsnodes -x``): per node that takes work, its free CPUs divided by the
    task's (a task runs on one node). None when no node could be read."""
    nodes = list(_xml_nodes(stdout) if stdout.lstrip().startswith("<") else _text_nodes(stdout))
    if not nodes:
        return None
    per_task = max(1, cpus_per_task)
    return sum(_node_free_cpus(attrs) // per_task for attrs in nodes)


def slots_for(free_cpus: int, cpus_per_task: int | None) -> int:
    """Tasks of ``cpus_per_task`` CPUs (one when unset) that ``free_cpus`` can run."""
    return free_cpus // max(1, cpus_per_task or 1)


def _text_nodes(stdout: str) -> Iterator[dict[str, str]]:
    """The ``key = value`` attributes of each node block of ``pbsnodes -a``."""
    attrs: dict[str, str] | None = None
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            if attrs is not None:
                yield attrs
            attrs = {"name": line.strip()}
            continue
        key, sep, value = line.strip().partition(" = ")
        if attrs is not None and sep:
            attrs[key] = value
    if attrs is not None:
        yield attrs


def _xml_nodes(stdout: str) -> Iterator[dict[str, str]]:
    """The elements of each ``<Node>`` of Torque's ``pbsnodes -x``."""
    try:
        root = ElementTree.fromstring(stdout.strip())
    except ElementTree.ParseError:
        return
    for node in root.iter("Node"):
        yield {child.tag: (child.text or "") for child in node}


def _node_free_cpus(attrs: dict[str, str]) -> int:
    states = {s.strip() for s in attrs.get("state", "").split(",") if s.strip()}
    if not states or states & _PBS_NO_WORK:
        return 0
    available = _int(attrs.get("resources_available.ncpus"))
    if available is not None:  # PBS Pro / OpenPBS keep the count of assigned CPUs
        return max(0, available - (_int(attrs.get("resources_assigned.ncpus")) or 0))
    np = _int(attrs.get("np"))
    if np is None:
        return 0
    used = _torque_job_cpus(attrs.get("jobs", ""))
    if used == 0 and states == {"mixed"}:
        # The Torque wrappers over Slurm say "mixed" (some CPUs allocated) without listing
        # the jobs: at least one CPU is free, how many more is not said.
        return 1
    return max(0, np - used)


def _torque_job_cpus(jobs: str) -> int:
    """CPUs taken by Torque's ``jobs`` list: ``0/12.host, 1/12.host`` or ``0-8/12.host``."""
    used = 0
    for entry in jobs.split(","):
        cpus, slash, _ = entry.strip().partition("/")
        if not slash:
            continue
        first, dash, last = cpus.partition("-")
        if dash and first.isdigit() and last.isdigit():
            used += int(last) - int(first) + 1
        elif cpus.isdigit():
            used += 1
    return used


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
