"""Live output on the Kubernetes transport, on the tier A fake API server: what a pod's calls
print reaches the caller while the pod runs (its log followed), tagged with the call that
printed it, each line once, the result blocks and marks never shown.

A call blocks on a gate file that only the test creates: the first lines are seen while the
call cannot have ended (ordering by events, not timing).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_apiserver import FakeServer

from remote_futures import RemoteExecutor
from remote_futures.transports import kubernetes as k8s_transport

CONTRACT = str(Path(__file__).resolve().parents[1] / "contract")
if CONTRACT not in sys.path:
    sys.path.insert(0, CONTRACT)

from _outcapture import OutputRecorder  # noqa: E402
from _printing import print_wait_print, print_wait_print_wait, speak  # noqa: E402

pytestmark = pytest.mark.timeout(180)

MakeExecutor = Callable[..., RemoteExecutor]


def _followed(fake: FakeServer) -> list[str]:
    return [pod for pod, followed in fake.cluster.log_reads if followed]


def _cut_followed_logs_in_the_second_line(fake: FakeServer) -> int:
    """Make the server end followed streams five bytes into the line after ``first out x``
    (as print_wait_print prints it); return the length of the call's mark before it."""
    call_mark = len("==RF:") + 32 + len(":CALL 0==\n")
    fake.cluster.follow_cut = call_mark + len("first out x\n") + 5
    return call_mark


def _assert_each_line_once(seen: OutputRecorder) -> None:
    """print_wait_print's four lines for tag ``x``, each shown once, and no mark."""
    for stream, text in (("out", seen.out), ("err", seen.err)):
        for which in ("first", "second"):
            assert sum(line.endswith(f"] {which} {stream} x")
                       for line in text.splitlines()) == 1, text
    assert "==RF:" not in seen.out + seen.err


def test_lines_arrive_while_the_pod_runs_tagged_and_once(
    k8s_executor: MakeExecutor, fake: FakeServer, tmp_path: Path, seen: OutputRecorder
) -> None:
    seen.start()
    ex = k8s_executor(max_workers=2)
    gate = tmp_path / "gate"
    try:
        future = ex.submit(print_wait_print, "x", str(gate))
        seen.wait_for("first out x", "out")
        seen.wait_for("first err x", "err")
        assert not future.done()  # it waits for the gate, which only this test opens
        assert "second" not in seen.out + seen.err
    finally:
        gate.touch()
    assert future.result(timeout=120) == "x"
    seen.wait_for("second err x", "err")
    seen.wait_for("second out x", "out")
    for stream, text in (("out", seen.out), ("err", seen.err)):
        mine = [line for line in text.splitlines() if f"{stream} x" in line]
        assert len(mine) == 2, text
        assert all(re.fullmatch(rf"\[[^\]]+\.0\] (first|second) {stream} x", line)
                   for line in mine), mine
    assert "==RF:" not in seen.out + seen.err
    assert _followed(fake), fake.cluster.log_reads


def test_a_task_of_several_calls_tags_each_line_with_its_call(
    k8s_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    """One pod runs three calls: each line carries the call that printed it (the pod marks
    where each call starts), not the task's range."""
    seen.start()
    ex = k8s_executor(max_workers=2)
    assert list(ex.map(speak, ["a", "b", "c"], chunksize=3)) == ["a", "b", "c"]
    seen.wait_for("stderr says c", "err")
    seen.wait_for("stdout says c", "out")
    for stream, text in (("out", seen.out), ("err", seen.err)):
        tags = {}
        for line in text.splitlines():
            match = re.fullmatch(rf"\[[^\]]+\.(\d+)\] std{stream} says (\w)", line)
            if match:
                assert match[2] not in tags, f"{line!r} shown twice"
                tags[match[2]] = match[1]
        assert tags == {"a": "0", "b": "1", "c": "2"}, text
    assert "==RF:" not in seen.out + seen.err


def test_pods_over_the_stream_cap_show_their_output_at_their_end(
    k8s_executor: MakeExecutor, fake: FakeServer, tmp_path: Path, seen: OutputRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for one followed log, the second running pod is not followed: its lines
    come, once each, when it ends."""
    monkeypatch.setattr(k8s_transport, "MAX_LOG_STREAMS", 1)
    seen.start()
    ex = k8s_executor(max_workers=2)
    gate = tmp_path / "gate"
    try:
        futures = [ex.submit(print_wait_print, tag, str(gate)) for tag in "pq"]
        # One of the two is followed: its first line arrives while both wait for the gate.
        seen.wait_for("first out", "out")
        assert not any(f.done() for f in futures)
        # Both pods run, one followed: the other's lines wait for its end.
        seen.wait_for("first err", "err")
        assert len([line for line in seen.out.splitlines() if "first out" in line]) == 1
    finally:
        gate.touch()
    assert [f.result(timeout=120) for f in futures] == ["p", "q"]
    for tag in "pq":
        seen.wait_for(f"second out {tag}", "out")
        seen.wait_for(f"second err {tag}", "err")
    for tag in "pq":
        for which in ("first", "second"):
            assert sum(line.endswith(f"{which} out {tag}")
                       for line in seen.out.splitlines()) == 1, seen.out
            assert sum(line.endswith(f"{which} err {tag}")
                       for line in seen.err.splitlines()) == 1, seen.err
    assert len(set(_followed(fake))) == 1, fake.cluster.log_reads


def test_a_stream_that_ends_while_the_pod_runs_loses_and_repeats_nothing(
    k8s_executor: MakeExecutor, fake: FakeServer, tmp_path: Path, seen: OutputRecorder
) -> None:
    """The server ends the followed log in the middle of a line while the pod still runs:
    the lines it sent were shown live; the rest, the cut line included, comes once each
    from the full read at the pod's end."""
    _cut_followed_logs_in_the_second_line(fake)
    seen.start()
    ex = k8s_executor(max_workers=2)
    gate = tmp_path / "gate"
    try:
        future = ex.submit(print_wait_print, "x", str(gate))
        seen.wait_for("first out x", "out")
        assert not future.done()
    finally:
        gate.touch()
    assert future.result(timeout=120) == "x"
    seen.wait_for("second out x", "out")
    seen.wait_for("second err x", "err")
    _assert_each_line_once(seen)


def test_a_stream_that_ends_while_the_pod_runs_is_followed_again(
    k8s_executor: MakeExecutor, fake: FakeServer, tmp_path: Path, seen: OutputRecorder
) -> None:
    """The server ends the first followed stream in the middle of a line while the pod still
    runs (a dropped connection, an idle timeout): the client follows the log again, so what
    the call prints later still arrives while it runs, and nothing is shown twice."""
    _cut_followed_logs_in_the_second_line(fake)
    fake.cluster.follow_cuts = 1
    seen.start()
    ex = k8s_executor(max_workers=2)
    gate, last_gate = tmp_path / "gate", tmp_path / "last-gate"
    try:
        future = ex.submit(print_wait_print_wait, "x", str(gate), str(last_gate))
        seen.wait_for("first out x", "out")
        gate.touch()
        seen.wait_for("second out x", "out", timeout=60)  # the call still waits for last_gate
        seen.wait_for("second err x", "err")
        assert not future.done()
    finally:
        gate.touch()
        last_gate.touch()
    assert future.result(timeout=120) == "x"
    _assert_each_line_once(seen)
    assert len(_followed(fake)) >= 2, fake.cluster.log_reads


def test_a_log_that_changed_under_its_stream_is_not_followed_again(
    k8s_executor: MakeExecutor, fake: FakeServer, tmp_path: Path, seen: OutputRecorder
) -> None:
    """The log read again does not start with what the first stream sent (it was rotated: the
    new file lacks the call's mark): the client stops following rather than skip the wrong
    bytes, and the pod's end read shows the rest, each line once."""
    call_mark = _cut_followed_logs_in_the_second_line(fake)
    fake.cluster.follow_cuts = 1
    fake.cluster.follow_rotated = call_mark  # the new file starts at "first out x"
    seen.start()
    ex = k8s_executor(max_workers=2)
    gate = tmp_path / "gate"
    try:
        future = ex.submit(print_wait_print, "x", str(gate))
        seen.wait_for("first out x", "out")
        deadline = time.monotonic() + 30
        while len(_followed(fake)) < 2:  # the second stream was read, and judged
            assert time.monotonic() < deadline, fake.cluster.log_reads
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(_followed(fake)) == 2, fake.cluster.log_reads  # not a third
    finally:
        gate.touch()
    assert future.result(timeout=120) == "x"
    seen.wait_for("second err x", "err")
    _assert_each_line_once(seen)


def test_output_end_reads_no_log_while_pods_run_and_tags_at_the_end(
    k8s_executor: MakeExecutor, fake: FakeServer, seen: OutputRecorder
) -> None:
    seen.start()
    ex = k8s_executor(max_workers=2, output="end")
    assert list(ex.map(speak, ["u", "v"], chunksize=1)) == ["u", "v"]
    seen.wait_for("stderr says v", "err")
    seen.wait_for("stdout says v", "out")
    assert re.search(r"^\[[^\]]+\.1\] stdout says v$", seen.out, re.M), seen.out
    assert not _followed(fake), fake.cluster.log_reads
