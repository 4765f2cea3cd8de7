"""What calls print reaches the caller while they run, tagged with the call, on every
transport that forwards output live: the warm pools (``local``, ``ssh``, pilots), the batch
schedulers (``slurm``, ``sge``, ``pbs``) and the job directories on a host (``ec2``'s
instances, as ``ssh-jobs``), the last two tailing the tasks' output files while they poll, and
``kubernetes``, following the running pods' logs.

A call prints, then blocks on a gate file that only the test opens: the test sees the first
line arrive while the call is still running (ordering by events, not by timing), then opens
the gate. Every test records what the executor writes to ``sys.stdout``/``sys.stderr``
(``_outcapture``: unlike ``capfd.readouterr``, it never drops what arrives while it reads).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from _outcapture import OutputRecorder
from _printing import (
    print_many_around_a_gate,
    print_partial,
    print_then_signal,
    print_wait_print,
    speak,
    wait_then_print,
)

from remote_futures import ConfigurationError, RemoteExecutor

pytestmark = pytest.mark.timeout(300)

MakeExecutor = Callable[..., RemoteExecutor]

POOLS = ["local", "ssh"]
#: ``ec2`` runs the job-directory protocol of ``ssh-jobs`` on its instances.
LIVE_TARGETS = [*POOLS, "slurm-pool", "slurm", "sge", "pbs", "ec2", "kubernetes"]


@pytest.fixture(params=LIVE_TARGETS)
def contract_target(request: pytest.FixtureRequest) -> str:
    """The transports this module runs on (overrides the contract suite's list)."""
    name: str = request.param
    return name


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_line_arrives_while_the_call_runs(
    make_executor: MakeExecutor, tmp_path: Path, seen: OutputRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first lines (stdout and stderr) reach the caller while the call is blocked on
    the gate; after it ends, every line is there exactly once, on its own stream. A local
    worker's streams are not a terminal here: without PYTHONUNBUFFERED (as for most users)
    its prints would wait in a block buffer until the call's end."""
    seen.start()
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    ex = make_executor(max_workers=1)
    gate = tmp_path / "gate"
    try:
        future = ex.submit(print_wait_print, "x", str(gate))
        seen.wait_for("first out x", "out")
        seen.wait_for("first err x", "err")
        # The call cannot have ended: it waits for the gate, which only this test opens.
        assert not future.done()
        assert "second" not in seen.out + seen.err
    finally:
        gate.touch()
    assert future.result(timeout=120) == "x"
    seen.wait_for("second out x", "out")
    seen.wait_for("second err x", "err")
    assert lines(seen.out).count("first out x") == 1
    assert lines(seen.out).count("second out x") == 1
    assert lines(seen.err).count("first err x") == 1
    assert lines(seen.err).count("second err x") == 1
    assert "err x" not in seen.out and "out x" not in seen.err


def test_much_output_arrives_while_running_once_each_in_order(
    make_executor: MakeExecutor, tmp_path: Path, seen: OutputRecorder
) -> None:
    """More than one poll may read (batch: 256 KiB in all): the first half arrives while the
    call waits for the gate, over several polls; at the end every line is there once, in
    order."""
    seen.start()
    count = 12000  # about 400 KiB a half
    ex = make_executor(max_workers=1)
    gate = tmp_path / "gate"
    try:
        future = ex.submit(print_many_around_a_gate, count, str(gate))
        seen.wait_for("first half done")
        assert not future.done()
    finally:
        gate.touch()
    assert future.result(timeout=120) == 2 * count
    seen.wait_for(f"line {2 * count - 1:06d} of the second half")
    printed = [line for line in lines(seen.out) if line.startswith("line ")]
    assert printed[:count] == [f"line {i:06d} of the first half" for i in range(count)]
    assert printed[count:] == [f"line {i:06d} of the second half" for i in range(count, 2 * count)]


def test_lines_are_tagged_with_their_call_when_several_may_run(
    make_executor: MakeExecutor, seen: OutputRecorder, contract_target: str
) -> None:
    seen.start()
    ex = make_executor(max_workers=2)
    # One call per task: a batch task running several calls is tagged with their range.
    assert list(ex.map(speak, ["a", "b", "c"], chunksize=1)) == ["a", "b", "c"]
    for tag in "abc":
        seen.wait_for(f"stdout says {tag}", "out")
        seen.wait_for(f"stderr says {tag}", "err")
    tagged = re.compile(
        r"^\[(?P<job>[^\]]+)\.(?P<call>\d+)\] std(?P<which>out|err) says (?P<tag>\w)$"
    )
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for stream, text in (("out", seen.out), ("err", seen.err)):
        for line in lines(text):
            if "says" not in line:
                continue
            match = tagged.match(line)
            assert match is not None, f"untagged line on {stream}: {line!r}"
            assert match["which"] == stream
            found[(stream, match["tag"])] = (match["job"], match["call"])
    assert set(found) == {(s, t) for s in ("out", "err") for t in "abc"}
    # A call's two streams carry the same tag; each call its own.
    assert all(found[("out", t)] == found[("err", t)] for t in "abc")
    assert len({found[("out", t)] for t in "abc"}) == 3
    # EC2 splits a map over its instances, a job each; so does the core on Kubernetes without
    # Indexed Jobs (before 1.29, the testbed's case): no native throttle, so it submits only
    # jobs that fit the free slots.
    if contract_target not in ("ec2", "kubernetes"):
        # One map is one job; the call numbers follow the inputs.
        assert len({job for job, _ in found.values()}) == 1
        assert [found[("out", t)][1] for t in "abc"] == ["0", "1", "2"]


def test_one_worker_prints_untagged_and_a_custom_prefix(
    make_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    seen.start()
    with make_executor(max_workers=1) as ex:
        assert ex.submit(speak, "solo").result(timeout=120) == "solo"
        seen.wait_for("stdout says solo")
    assert "stdout says solo" in lines(seen.out)
    with make_executor(max_workers=2, output_prefix="<{call}@{job}> ") as ex:
        assert ex.submit(speak, "custom").result(timeout=120) == "custom"
        seen.wait_for("stderr says custom", "err")
    assert re.search(r"^<0@[^>]+> stderr says custom$", seen.err, re.M), seen.err


def test_unfinished_last_line_is_not_lost(
    make_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    seen.start()
    ex = make_executor(max_workers=2)
    assert ex.submit(print_partial, "p").result(timeout=120) == "p"
    seen.wait_for("unfinished p")
    assert seen.out.count("whole p") == 1 and seen.out.count("unfinished p") == 1
    # Tagged output always ends its lines, so that the next call's tag starts one.
    assert seen.out.endswith("unfinished p\n")


def test_output_end_holds_each_calls_lines_until_it_ends(
    make_executor: MakeExecutor, tmp_path: Path, seen: OutputRecorder
) -> None:
    """``output="end"``: the lines of a call still running are not shown; those of a call
    that ended are, together."""
    seen.start()
    ex = make_executor(max_workers=2, output="end", output_prefix="")
    started, gate = tmp_path / "started", tmp_path / "gate"
    try:
        a = ex.submit(print_then_signal, "A", str(started), str(gate))
        b = ex.submit(wait_then_print, "B", str(started))
        assert b.result(timeout=120) == "B"
        seen.wait_for("B2")
        # A printed "A1" before B could start printing, and is still blocked on the gate.
        assert not a.done()
        assert "A1" not in seen.out
    finally:
        gate.touch()
    assert a.result(timeout=120) == "A"
    seen.wait_for("A2")
    assert [line for line in lines(seen.out) if line in ("A1", "A2", "B1", "B2")] == [
        "B1", "B2", "A1", "A2"]


@pytest.mark.parametrize(
    "contract_target", [*LIVE_TARGETS, "local-jobs"]
)
def test_output_off_forwards_nothing(
    make_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    """``output="off"`` silences every transport, those that forward at a task's end too."""
    seen.start()
    with make_executor(max_workers=2, output="off") as ex:
        assert list(ex.map(speak, ["q", "r"])) == ["q", "r"]
    assert "says" not in seen.out and "says" not in seen.err


def test_bad_output_options_are_refused_before_anything_runs(contract_target: str) -> None:
    with pytest.raises(ConfigurationError, match="output must be one of"):
        RemoteExecutor(contract_target, output="loud")
    with pytest.raises(ConfigurationError, match="output_prefix"):
        RemoteExecutor(contract_target, output_prefix="[{task}] ")
