"""The pod side (k8s_entry, stdlib only) and the client side (kubernetes_channels) of the
result channel, with the real worker in a real subprocess: what a pod does, minus the pod."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest

from remote_futures import k8s_entry, worker
from remote_futures.jobs import TaskState
from remote_futures.serialization import decode_outcome, encode_task
from remote_futures.transports.kubernetes_channels import (
    FrameError,
    LogFollower,
    Printed,
    parse_log,
    parse_receipt,
)
from remote_futures.transports.kubernetes_status import job_failure, pod_status


def _run_pod(tmp_path: Path, calls: list[tuple[int, object]], nonce: str = "n0nce",
             python: str = sys.executable) -> tuple[str, str, int]:
    """Run k8s_entry as a pod would: payload dir with worker.py, entry.py and task-0.in."""
    payload = tmp_path / "payload"
    payload.mkdir()
    shutil.copy(worker.__file__, payload / "worker.py")
    shutil.copy(k8s_entry.__file__, payload / "entry.py")
    blobs = [(i, cloudpickle.dumps(c)) for i, c in calls]
    (payload / "task-0.in").write_bytes(encode_task(blobs))
    term = tmp_path / "termination-log"
    env = {"RF_TASK": "0", "RF_NONCE": nonce, "RF_PAYLOAD_DIR": str(payload),
           "RF_TERMINATION_LOG": str(term), "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run([python, str(payload / "entry.py")], env=env, capture_output=True,
                          text=True, timeout=60)
    return proc.stdout + proc.stderr, term.read_text() if term.exists() else "", proc.returncode


def test_entry_round_trip_values_exceptions_and_output(tmp_path: Path) -> None:
    log, receipt_text, code = _run_pod(tmp_path, [
        (0, (print, ("hello from the pod",), {})),
        (1, (divmod, (7, 2), {})),
        (2, (int, ("not a number",), {})),
        (3, (lambda: __import__("os").environ.get("RF_NONCE", "gone"), (), {})),
    ])
    assert code == 0
    receipt = parse_receipt(receipt_text)
    assert receipt is not None and receipt["calls"] == 4
    outcomes, printed, errors = parse_log(log, "n0nce", receipt)
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert decode_outcome(outcomes[1]) == (True, (3, 1))
    ok, exc = decode_outcome(outcomes[2])
    assert not ok and isinstance(exc, ValueError)
    # user code cannot read the nonce that frames the result block
    assert decode_outcome(outcomes[3]) == (True, "gone")
    assert printed == "hello from the pod\n"
    assert errors == ""


def test_stderr_is_kept_apart_and_blocks_come_per_call(tmp_path: Path) -> None:
    def speak() -> int:
        import sys as s

        print("to stdout")
        print("to stderr", file=s.stderr)
        return 1

    log, receipt_text, code = _run_pod(tmp_path, [(0, (speak, (), {})), (1, (abs, (-2,), {}))])
    assert code == 0
    assert log.count("==RF:n0nce:BEGIN") == 2  # one block per call, as each call ends
    outcomes, printed, errors = parse_log(log, "n0nce", parse_receipt(receipt_text))
    assert decode_outcome(outcomes[0]) == (True, 1) and decode_outcome(outcomes[1]) == (True, 2)
    assert printed == "to stdout\n" and errors == "to stderr\n"
    # a log cut after the first block (the pod still running) yields that call alone
    first_end = log.index("==RF:n0nce:END==") + len("==RF:n0nce:END==\n")
    assert sorted(parse_log(log[:first_end], "n0nce")[0]) == [0]


def test_forged_block_in_user_output_is_not_taken(tmp_path: Path) -> None:
    fake = k8s_entry.frame("n0nce", pickle.dumps({0: b"forged"}))
    log, receipt_text, _ = _run_pod(tmp_path, [(0, (print, (fake,), {}))], nonce="real")
    outcomes, printed, _ = parse_log(log, "real", parse_receipt(receipt_text))
    assert outcomes[0] != b"forged" and decode_outcome(outcomes[0]) == (True, None)
    assert "forged" not in printed and "==RF:n0nce:BEGIN" in printed
    with pytest.raises(FrameError):  # the forged block does not match the real receipt
        parse_log(log, "n0nce", parse_receipt(receipt_text))


def test_corrupt_and_truncated_blocks_are_errors() -> None:
    block = k8s_entry.frame("abc", pickle.dumps({0: b"x" * 1000}))
    lines = block.splitlines()
    flipped = lines[1][:-1] + ("A" if lines[1][-1] != "A" else "B")
    with pytest.raises(FrameError, match="corrupt"):
        parse_log("\n".join([lines[0], flipped, *lines[2:]]), "abc")
    with pytest.raises(FrameError, match="truncated"):
        parse_log("\n".join(lines[:-1]), "abc")
    assert parse_log("just output\n", "abc") == ({}, "just output\n", "")
    other = {"sha256": hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(FrameError, match="receipt"):
        parse_log(block, "abc", other)
    assert parse_receipt("Traceback (most recent call last): ...") is None
    assert parse_receipt(json.dumps({"ok": True})) is None


def _chatter() -> Callable[[str, int], str]:
    """A function that prints (by value: the pod cannot import this test module)."""

    def chatter(tag: str, lines: int) -> str:
        import sys as s

        for i in range(lines):
            print(f"{tag} out {i}")
            print(f"{tag} err {i}", file=s.stderr)
        print()  # an empty line of the user's, kept
        print(f"{tag} unfinished", end="")
        return tag

    return chatter


def _pieces(printed: list[Printed]) -> list[tuple[int, int | None, str]]:
    return [(p.stream, p.call, p.text) for p in printed]


def test_entry_marks_each_call_and_the_follower_tags_every_line(tmp_path: Path) -> None:
    """Each line of the log is its call's, however fast the calls print (the worker waits
    until the entry has logged what came before a call's mark); the marks and blocks are
    not output; an unfinished last line is ended when its call ends."""
    log, receipt_text, code = _run_pod(tmp_path, [
        (4, (_chatter(), ("a", 3000), {})), (5, (_chatter(), ("b", 5), {})),
        (6, (_chatter(), ("c", 0), {}))])
    assert code == 0
    outcomes = parse_log(log, "n0nce", parse_receipt(receipt_text))[0]
    assert sorted(outcomes) == [4, 5, 6]
    printed = LogFollower("n0nce").feed(log.encode(), ended=True)[0]
    assert not any("==RF:" in p.text for p in printed)
    for call, tag, count in ((4, "a", 3000), (5, "b", 5), (6, "c", 0)):
        mine = [(p.stream, p.text) for p in printed if p.call == call]
        assert [t for s, t in mine if s == 1] == [
            *(f"{tag} out {i}\n" for i in range(count)), "\n", f"{tag} unfinished\n"]
        assert [t for s, t in mine if s == 2] == [f"{tag} err {i}\n" for i in range(count)]
    assert all(p.call is not None for p in printed)


def test_follower_read_in_pieces_then_again_whole_shows_each_line_once(
    tmp_path: Path,
) -> None:
    """A log followed up to any byte, then read whole from where the follower settled,
    shows exactly what one whole read shows: nothing twice, nothing lost."""
    log, _, code = _run_pod(tmp_path, [(0, (_chatter(), ("x", 40), {})),
                                       (1, (_chatter(), ("y", 3), {}))])
    assert code == 0
    data = log.encode()
    whole = _pieces(LogFollower("n0nce").feed(data, ended=True)[0])
    for cut in range(0, len(data) + 1, 37):
        follower = LogFollower("n0nce")
        streamed: list[Printed] = []
        blocks: list[str] = []
        for i in range(0, cut, 5):  # arbitrary pieces, as a stream delivers them
            more, ended_blocks = follower.feed(data[i:min(i + 5, cut)])
            streamed += more
            blocks += ended_blocks
        rest = [p for p in LogFollower("n0nce").feed(data, ended=True)[0]
                if p.start >= follower.settled]
        assert _pieces(streamed) + _pieces(rest) == whole, cut
        # Each block the stream completed holds its call's checked outcome.
        for block in blocks:
            assert len(parse_log(block, "n0nce")[0]) == 1


NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def _pod(phase: str, *, state: dict | None = None, reason: str | None = None,
         conditions: list | None = None, age: float = 0.0) -> dict:
    created = (NOW - datetime.timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict = {"phase": phase, "conditions": conditions or []}
    if reason:
        status["reason"] = reason
        status["message"] = f"{reason} happened"
    if state is not None:
        status["containerStatuses"] = [{"name": "task", "state": state}]
    return {"metadata": {"creationTimestamp": created}, "status": status}


@pytest.mark.parametrize(("pod", "state", "said"), [
    (_pod("Succeeded"), TaskState.COMPLETED, "Succeeded"),
    (_pod("Running"), TaskState.RUNNING, "Running"),
    (_pod("Failed", state={"terminated": {"reason": "OOMKilled", "exitCode": 137}}),
     TaskState.OUT_OF_MEMORY, "OOMKilled"),
    (_pod("Failed", reason="DeadlineExceeded"), TaskState.TIMEOUT, "DeadlineExceeded"),
    (_pod("Failed", reason="Evicted"), TaskState.PREEMPTED, "Evicted"),
    (_pod("Failed", state={"terminated": {"reason": "Error", "exitCode": 3}}),
     TaskState.FAILED, "Error"),
    (_pod("Pending", state={"waiting": {"reason": "ImagePullBackOff", "message": "no"}}, age=5),
     TaskState.PENDING, "ImagePullBackOff"),
    (_pod("Pending", state={"waiting": {"reason": "ErrImagePull", "message": "denied"}},
          age=100), TaskState.BOOT_FAIL, "ErrImagePull: denied"),
    (_pod("Pending", state={"waiting": {"reason": "CreateContainerConfigError",
                                        "message": 'secret "x" not found'}}, age=100),
     TaskState.BOOT_FAIL, "CreateContainerConfigError"),
    (_pod("Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                  "reason": "Unschedulable",
                                  "message": "0/1 nodes: Insufficient memory"}], age=100),
     TaskState.BOOT_FAIL, "Unschedulable: 0/1 nodes: Insufficient memory"),
    (_pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}, age=1000),
     TaskState.PENDING, "ContainerCreating"),
])
def test_pod_status_mapping(pod: dict, state: TaskState, said: str) -> None:
    status = pod_status(pod, now=NOW, grace=60)
    assert status.state is state
    assert status.raw_state.startswith(said)


def test_oom_exit_code_and_signal() -> None:
    status = pod_status(_pod("Failed", state={"terminated": {"reason": "OOMKilled",
                                                             "exitCode": 137}}),
                        now=NOW, grace=60)
    assert (status.exit_code, status.signal) == (137, 9)


def test_job_failure_reads_only_true_failed_conditions() -> None:
    def job(*conditions: dict) -> dict:
        return {"status": {"conditions": list(conditions)}}

    assert job_failure(job({"type": "FailureTarget", "status": "True"})) is None
    assert job_failure(job({"type": "Failed", "status": "False"})) is None
    failed = job_failure(job({"type": "Failed", "status": "True",
                              "reason": "DeadlineExceeded", "message": "too long"}))
    assert failed is not None and failed.state is TaskState.TIMEOUT
    backoff = job_failure(job({"type": "Failed", "status": "True",
                               "reason": "BackoffLimitExceeded"}))
    assert backoff is not None and backoff.state is TaskState.FAILED
    assert backoff.raw_state == "BackoffLimitExceeded"


def test_a_call_that_kills_the_worker_keeps_earlier_results_and_last_words(
    tmp_path: Path,
) -> None:
    def die() -> None:
        import os as o
        import sys as s

        print("last words", file=s.stderr, flush=True)
        o._exit(3)

    log, receipt_text, code = _run_pod(tmp_path, [(0, (abs, (-5,), {})), (1, (die, (), {}))])
    assert code == 3
    receipt = parse_receipt(receipt_text)
    assert receipt is not None and receipt["calls"] == 1
    outcomes, _, errors = parse_log(log, "n0nce", receipt)
    assert decode_outcome(outcomes[0]) == (True, 5) and 1 not in outcomes
    assert errors == "last words\n"


def test_a_result_too_big_for_the_log_is_a_clear_error(tmp_path: Path) -> None:
    from remote_futures.errors import SerializationError

    log, receipt_text, code = _run_pod(tmp_path, [(0, (bytes, (5 * 1024 * 1024,), {})),
                                                  (1, (abs, (-1,), {}))])
    assert code == 0
    assert len(log) < 100_000  # the 5 MiB never reached the log
    outcomes, _, _ = parse_log(log, "n0nce", parse_receipt(receipt_text))
    ok, error = decode_outcome(outcomes[0])
    assert not ok and "MiB a pod log can carry" in str(error)
    assert isinstance(error, SerializationError)
    assert decode_outcome(outcomes[1]) == (True, 1)
