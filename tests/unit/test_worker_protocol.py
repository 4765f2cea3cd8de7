"""The job-directory protocol, from the worker's side: ``worker.py`` run as a file.

Each test builds a job directory the way the client does (``encode_task``) and runs the worker
file in a subprocess, as every transport does on the remote side.
"""

from __future__ import annotations

import ast
import operator
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from remote_futures import worker
from remote_futures.errors import RemoteEnvironmentError
from remote_futures.serialization import (
    InitializerFailed,
    decode_outcome,
    dumps_call,
    dumps_initializer,
    encode_task,
)

pytestmark = pytest.mark.timeout(60)

WORKER = worker.__file__


def write_task(job_dir: Path, task: int, calls: Sequence[tuple[int, bytes]], **kw: Any) -> None:
    job_dir.mkdir(mode=0o700, exist_ok=True)
    (job_dir / worker.INPUT_NAME.format(task)).write_bytes(encode_task(calls, **kw))


def run_worker(
    job_dir: Path, *args: str, stdin: bytes | None = None, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, WORKER, str(job_dir), *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=60,
        check=False,
        **kw,
    )


def outcome(job_dir: Path, call: int) -> tuple[bool, Any]:
    return decode_outcome((job_dir / worker.OUTCOME_NAME.format(call)).read_bytes())


def leftovers(job_dir: Path) -> list[str]:
    return sorted(p.name for p in job_dir.iterdir() if ".tmp-" in p.name)


def test_one_outcome_file_per_call_and_exit_zero_even_when_a_call_raises(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job"
    write_task(
        job,
        0,
        [
            (0, dumps_call(abs, (-3,), {})),
            (1, dumps_call(operator.truediv, (1, 0), {})),
            (2, dumps_call(lambda: "lambda ran", (), {})),
        ],
    )
    done = run_worker(job, "--task", "0")
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(p.name for p in job.glob("call-*.out")) == [
        "call-0.out",
        "call-1.out",
        "call-2.out",
    ]
    assert outcome(job, 0) == (True, 3)
    ok, error = outcome(job, 1)
    assert ok is False and isinstance(error, ZeroDivisionError)
    assert "ZeroDivisionError" in error.__cause__.tb
    assert outcome(job, 2) == (True, "lambda ran")
    assert leftovers(job) == []


def test_several_tasks_in_one_process_and_call_numbering(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_task(job, 0, [(0, dumps_call(abs, (-1,), {})), (1, dumps_call(abs, (-2,), {}))])
    write_task(job, 1, [(2, dumps_call(abs, (-3,), {}))])
    done = run_worker(job, "--task", "0", "--task", "1")
    assert done.returncode == 0, done.stderr.decode()
    assert [outcome(job, c) for c in range(3)] == [(True, 1), (True, 2), (True, 3)]
    assert leftovers(job) == []


def test_outcomes_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each outcome is complete under a temporary name before it is renamed into place."""
    job = tmp_path / "job"
    write_task(job, 0, [(0, dumps_call(abs, (-1,), {})), (1, dumps_call(abs, (-2,), {}))])
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def checking_replace(src: str, dst: str) -> None:
        assert not os.path.exists(dst), "an outcome file must appear only once, complete"
        decode_outcome(Path(src).read_bytes())  # complete and decodable before the rename
        renames.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(worker.os, "replace", checking_replace)
    assert worker.run_task(str(job), 0, worker._State()) == 0
    assert [dst for _, dst in renames] == ["call-0.out", "call-1.out"]
    assert all(".tmp-" in src for src, _ in renames)
    assert leftovers(job) == []


def test_python_version_mismatch_is_an_environment_outcome(tmp_path: Path) -> None:
    job = tmp_path / "job"
    envelope = pickle.loads(encode_task([(0, dumps_call(abs, (-1,), {}))]))
    envelope["python"] = [2, 7]
    job.mkdir()
    (job / worker.INPUT_NAME.format(0)).write_bytes(
        pickle.dumps(envelope, protocol=worker.ENVELOPE_PROTOCOL)
    )
    done = run_worker(job, "--task", "0")
    assert done.returncode == 0, done.stderr.decode()
    raw = pickle.loads((job / worker.OUTCOME_NAME.format(0)).read_bytes())
    assert raw["kind"] == worker.ERROR and raw["cause"] == worker.ENVIRONMENT
    ok, error = outcome(job, 0)
    assert ok is False and isinstance(error, RemoteEnvironmentError)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert "2.7" in str(error) and here in str(error)


def test_missing_input_exits_65(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    done = run_worker(job, "--task", "0")
    assert done.returncode == worker.EXIT_BAD_INPUT == 65
    assert b"cannot read task 0" in done.stderr
    assert list(job.iterdir()) == []


def test_corrupt_input_exits_65(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / worker.INPUT_NAME.format(0)).write_bytes(b"not a pickle")
    assert run_worker(job, "--task", "0").returncode == 65


def test_no_task_is_a_usage_error(tmp_path: Path) -> None:
    done = run_worker(tmp_path)
    assert done.returncode == 2 and b"--task" in done.stderr


def test_initializer_runs_once_per_process(tmp_path: Path) -> None:
    job = tmp_path / "job"
    log = tmp_path / "init.log"

    def init(path: str) -> None:
        with open(path, "a") as f:
            f.write("init\n")

    initializer = dumps_initializer(init, (str(log),))
    write_task(job, 0, [(0, dumps_call(abs, (-1,), {}))], initializer=initializer)
    write_task(job, 1, [(1, dumps_call(abs, (-2,), {}))], initializer=initializer)
    done = run_worker(job, "--task", "0", "--task", "1")
    assert done.returncode == 0, done.stderr.decode()
    assert log.read_text() == "init\n"
    assert [outcome(job, c) for c in (0, 1)] == [(True, 1), (True, 2)]


def test_failing_initializer_fails_every_call_with_exit_zero(tmp_path: Path) -> None:
    job = tmp_path / "job"

    def init() -> None:
        raise RuntimeError("initializer says no")

    initializer = dumps_initializer(init, ())
    write_task(
        job,
        0,
        [(0, dumps_call(abs, (-1,), {})), (1, dumps_call(abs, (-2,), {}))],
        initializer=initializer,
    )
    write_task(job, 1, [(2, dumps_call(abs, (-3,), {}))], initializer=initializer)
    done = run_worker(job, "--task", "0", "--task", "1")
    assert done.returncode == 0, done.stderr.decode()
    for call in range(3):
        ok, error = outcome(job, call)
        assert ok is False and isinstance(error, InitializerFailed)
        assert "initializer says no" in str(error)


def test_unpicklable_result_is_an_outcome_not_a_crash(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_task(job, 0, [(0, dumps_call(threading.Lock, (), {})), (1, dumps_call(abs, (-1,), {}))])
    done = run_worker(job, "--task", "0")
    assert done.returncode == 0, done.stderr.decode()
    raw = pickle.loads((job / worker.OUTCOME_NAME.format(0)).read_bytes())
    assert raw["kind"] == worker.ERROR and raw["cause"] == worker.PICKLE_RESULT
    assert outcome(job, 1) == (True, 1)


def test_worker_gets_the_callers_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A function from the caller's own module is pickled by reference and imported remotely
    through the ``sys_path`` of the envelope."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "rf_protocol_usermod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(src))
    import rf_protocol_usermod  # type: ignore[import-not-found]

    blob = dumps_call(rf_protocol_usermod.triple, (5,), {})
    assert b"rf_protocol_usermod" in blob  # by reference, not by value

    with_path, without_path = tmp_path / "with", tmp_path / "without"
    write_task(with_path, 0, [(0, blob)], sys_path=[str(src)])
    write_task(without_path, 0, [(0, blob)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert run_worker(with_path, "--task", "0", env=env).returncode == 0
    assert run_worker(without_path, "--task", "0", env=env).returncode == 0
    assert outcome(with_path, 0) == (True, 15)
    ok, error = outcome(without_path, 0)
    assert ok is False and isinstance(error, RemoteEnvironmentError)
    assert "rf_protocol_usermod" in str(error)


def test_stdin_feed_and_progress_notifications(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_task(job, 0, [(0, dumps_call(abs, (-1,), {}))])
    write_task(job, 1, [(1, dumps_call(abs, (-2,), {})), (2, dumps_call(abs, (-3,), {}))])
    read_fd, write_fd = os.pipe()
    try:
        done = run_worker(
            job,
            "--stdin-tasks",
            "--notify-fd",
            str(write_fd),
            stdin=b"0\n1\n",
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as pipe:
            read_fd = -1
            lines = pipe.read().decode().split("\n")
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert done.returncode == 0, done.stderr.decode()
    assert lines == ["S 0", "C 0", "T 0 0", "S 1", "C 1", "C 2", "T 1 0", ""]
    assert [outcome(job, c) for c in range(3)] == [(True, 1), (True, 2), (True, 3)]


def test_user_code_gets_devnull_as_stdin_in_stdin_feed_mode(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_task(job, 0, [(0, dumps_call(lambda: __import__("sys").stdin.read(), (), {}))])
    write_task(job, 1, [(1, dumps_call(abs, (-7,), {}))])
    done = run_worker(job, "--stdin-tasks", stdin=b"0\n1\n")
    assert done.returncode == 0, done.stderr.decode()
    assert outcome(job, 0) == (True, "")  # could not swallow the feed...
    assert outcome(job, 1) == (True, 7)  # ...so task 1 still ran


def test_unpack_bundle(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    payloads = {i: encode_task([(i, dumps_call(abs, (-i,), {}))]) for i in range(3)}
    (job / worker.BUNDLE_NAME).write_bytes(pickle.dumps(payloads))
    done = run_worker(job, "--unpack")
    assert done.returncode == 0, done.stderr.decode()
    assert not (job / worker.BUNDLE_NAME).exists()
    for i, payload in payloads.items():
        assert (job / worker.INPUT_NAME.format(i)).read_bytes() == payload
    assert leftovers(job) == []


# --- what the worker may import -------------------------------------------------------------


def _imported_top_level_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the worker runs as a file: no relative imports"
            assert node.module is not None
            names.add(node.module.partition(".")[0])
    return names


def test_worker_imports_only_stdlib_and_cloudpickle() -> None:
    names = _imported_top_level_names(Path(WORKER).read_text())
    assert "cloudpickle" in names
    foreign = {n for n in names if n not in sys.stdlib_module_names and n != "cloudpickle"}
    assert foreign == set()


def test_worker_file_loads_without_third_party_modules() -> None:
    """Executed as a file in a fresh interpreter, the worker's module body pulls in nothing
    but the standard library (cloudpickle is imported lazily, when a call runs)."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"source = open({WORKER!r}).read()\n"
        f"exec(compile(source, {WORKER!r}, 'exec'), {{'__name__': 'rf_worker_probe'}})\n"
        "new = {m.partition('.')[0] for m in set(sys.modules) - before}\n"
        "print(' '.join(sorted(m for m in new if m not in sys.stdlib_module_names)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, timeout=60, check=True
    )
    assert done.stdout.decode().split() == []
