"""``pool=True`` on real schedulers: pilot jobs, their deaths, walltimes, idleness, shutdown."""

from __future__ import annotations

import concurrent.futures as cf
import shlex
import subprocess
import time
from typing import Any

import pytest
from testbed_facts import executor_options, require_testbed

from remote_futures import JobFailedError, RemoteExecutor, Resources, WorkerDiedError

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]

_USERS = {"slurm": "slurm_user", "sge": "sge_user", "pbs": "pbs_user"}


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square(x: int) -> int:
    return x * x


def _pool(target: str, **options: Any) -> RemoteExecutor:
    facts = require_testbed(target)
    # The testbed's network is loopback only: the relay listens there.
    return RemoteExecutor(target, pool=True, relay_bind="127.0.0.1",
                          **{**executor_options(facts, target), **options})


def _as_user(target: str, command: str) -> str:
    facts = require_testbed(target)
    user = getattr(facts, _USERS[target])
    done = subprocess.run([*facts.ssh_argv(user), command], capture_output=True, text=True,
                          timeout=60, check=False)
    return done.stdout + done.stderr


def _pilot_ids(ex: RemoteExecutor) -> list[str]:
    return [p.job_id for p in ex.transport._pilots.values() if p.job_id]  # type: ignore[attr-defined]


def _listed(target: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` the scheduler's queue still lists."""
    if target == "sge":
        out = _as_user(target, "qstat")
        listed = {line.split()[0] for line in out.splitlines()[2:] if line.split()}
    else:
        # The PBS of the testbed is Torque's wrappers over Slurm: squeue sees its jobs.
        out = _as_user(target, "squeue -h -o %i")
        listed = {line.strip() for line in out.splitlines()}
    return [i for i in ids if i.split(".")[0] in listed]


@pytest.mark.parametrize("target", ["slurm", "sge", "pbs"])
def test_map_runs_and_shutdown_leaves_no_pilot_in_the_queue(target: str) -> None:
    """A map runs on pilots; after shutdown, the scheduler lists none of them (they were
    cancelled, not left to idle out)."""
    ex = _pool(target, max_workers=2)
    with ex:
        assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
        assert ex.submit(square, 7).result(timeout=60) == 49
        ids = _pilot_ids(ex)
        assert ids
        assert _listed(target, ids), "the pilots should be in the queue while they serve"
    deadline = time.monotonic() + 60
    while _listed(target, ids):
        assert time.monotonic() < deadline, f"pilots still queued: {_listed(target, ids)}"
        time.sleep(1)


def _wait_running(futures: list[cf.Future[Any]], count: int) -> None:
    deadline = time.monotonic() + 120
    while sum(f.running() for f in futures) < count:
        assert time.monotonic() < deadline, "the calls never started"
        assert not any(f.done() and f.exception() for f in futures)
        time.sleep(0.1)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_scancelled_pilot_fails_exactly_the_call_it_ran(retries: int) -> None:
    """scancel of one of two pilots mid-map: the one call it was running fails with
    WorkerDiedError (or is run again with retries=1), every other call finishes, the pool
    starts a replacement pilot."""
    with _pool("slurm", max_workers=2, retries=retries) as ex:
        futures = [ex.submit(nap, 2.0) for _ in range(8)]
        _wait_running(futures, 2)
        ids = _pilot_ids(ex)
        assert len(ids) == 2
        _as_user("slurm", f"scancel {ids[0]}")
        _, pending = cf.wait(futures, timeout=120)
        assert not pending
        died = [f for f in futures if isinstance(f.exception(), WorkerDiedError)]
        assert len(died) == (0 if retries else 1)
        assert all(f.result() == 2.0 for f in futures if f not in died)
        if died:
            assert ids[0] in str(died[0].exception()) or "died" in str(died[0].exception())
        assert len(_pilot_ids(ex)) >= 3, "a replacement pilot should have been submitted"


def test_pilots_near_their_walltime_are_replaced() -> None:
    """Workers stop taking calls pilot_margin seconds before their job's walltime and
    leave; replacements finish the map, and no call fails."""
    with _pool("slurm", max_workers=2, resources=Resources(walltime="1"),
               pilot_margin=48.0) as ex:
        # Each worker may take calls for 12 s; the map needs about 20 s on two workers.
        results = list(ex.map(nap, [1.0] * 40, chunksize=1))
        assert results == [1.0] * 40
        assert len(_pilot_ids(ex)) >= 4, "the first pilots should have been replaced"


def test_a_pilot_killed_at_its_walltime_fails_the_call_it_ran() -> None:
    """A call longer than the pilot's walltime: Slurm kills the pilot (TIMEOUT), the call
    fails with WorkerDiedError instead of hanging."""
    with _pool("slurm", max_workers=1, resources=Resources(walltime="1"),
               pilot_margin=0.0) as ex:
        future = ex.submit(nap, 300.0)
        _wait_running([future], 1)  # the pilot may wait in the queue first
        # Slurm enforces the limit within a minute or two (its check interval, KillWait).
        error = future.exception(timeout=240)
        assert isinstance(error, WorkerDiedError), error
        assert ex.submit(square, 3).result(timeout=120) == 9  # the pool refilled


def test_idle_pilots_leave_and_the_pool_starts_new_ones() -> None:
    with _pool("slurm", max_workers=2, idle_timeout=2.0) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
        ids = _pilot_ids(ex)
        deadline = time.monotonic() + 60
        while _listed("slurm", ids):
            assert time.monotonic() < deadline, "idle pilots did not leave"
            time.sleep(1)
        assert ex.submit(square, 5).result(timeout=120) == 25
        assert len(_pilot_ids(ex)) > len(ids)


def test_a_refused_pilot_fails_the_calls_with_the_schedulers_message() -> None:
    with _pool("slurm", max_workers=1,
               resources=Resources(partition="no-such-partition")) as ex:
        error = ex.submit(square, 2).exception(timeout=60)
    assert isinstance(error, JobFailedError), error
    assert "no-such-partition" in str(error) or "partition" in str(error).lower(), error


def test_a_pilot_that_can_never_start_fails_the_calls_with_its_job_id_and_reason() -> None:
    """A pilot pending on DependencyNeverSatisfied: after never_runs_grace it is cancelled
    and the waiting call fails naming the pilot's job id and the reason (never hangs)."""
    parent = _as_user("slurm", "sbatch --parsable -o /dev/null --wrap false").strip()
    deadline = time.monotonic() + 60
    while "FAILED" not in _as_user("slurm", f"squeue -h -j {parent} -t all -o %T"):
        assert time.monotonic() < deadline, "the parent job never failed"
        time.sleep(1)
    with _pool("slurm", max_workers=1, never_runs_grace=3.0, resources=Resources(
            job_extra_directives=(f"--dependency=afterok:{parent}",))) as ex:
        error = ex.submit(square, 2).exception(timeout=120)
        ids = _pilot_ids(ex)
    assert isinstance(error, JobFailedError), error
    assert "DependencyNeverSatisfied" in str(error)
    assert ids and ids[0] in str(error)
    assert not _listed("slurm", ids)


_ORPHAN = """
import sys, time
sys.path.insert(0, {tests!r})
from testbed_facts import executor_options, require_testbed
from remote_futures import RemoteExecutor
ex = RemoteExecutor("slurm", pool=True, max_workers=2, relay_bind="127.0.0.1",
                    **executor_options(require_testbed("slurm"), "slurm"))
assert list(ex.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
print(" ".join(p.job_id for p in ex.transport._pilots.values()), flush=True)
time.sleep(600)
"""


def _kill_client_and_wait_for_its_pilots_to_go(script: Any, what: str) -> None:
    """Run the client ``script`` (it prints its pilots' job ids, then sleeps), SIGKILL it once
    the queue lists them, and wait until the queue lists none of them."""
    import signal
    import sys

    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    ids: list[str] = []
    try:
        assert client.stdout is not None
        ids = client.stdout.readline().split()
        assert ids, "the client did not submit its pilots"
        assert _listed("slurm", ids)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _listed("slurm", ids):
            assert time.monotonic() < deadline, f"pilots left {what}: {_listed('slurm', ids)}"
            time.sleep(1)
    finally:
        if client.poll() is None:
            client.kill()
        if ids:
            _as_user("slurm", shlex.join(["scancel", *ids]))


def test_a_client_killed_outright_leaves_no_pilot_behind(tmp_path: Any) -> None:
    """SIGKILL of the client: no shutdown runs, but its SSH connection closes, so does the
    relay, and every pilot's worker is killed: the pilot jobs end by themselves."""
    import os

    script = tmp_path / "client.py"
    script.write_text(_ORPHAN.format(tests=os.path.dirname(os.path.dirname(__file__))))
    _kill_client_and_wait_for_its_pilots_to_go(script, "behind")


_PENDING_ORPHAN = """
import sys, time
sys.path.insert(0, {tests!r})
from testbed_facts import executor_options, require_testbed
from remote_futures import RemoteExecutor, Resources
ex = RemoteExecutor("slurm", pool=True, max_workers=2, relay_bind="127.0.0.1",
                    resources=Resources(job_extra_directives=("--dependency=afterok:{parent}",)),
                    **executor_options(require_testbed("slurm"), "slurm"))
ex.submit(abs, -1)
while not [p for p in ex.transport._pilots.values() if p.job_id]:
    time.sleep(0.1)
time.sleep(1.0)  # the relay is told how to cancel the pilot as soon as it is submitted
print(" ".join(p.job_id for p in ex.transport._pilots.values() if p.job_id), flush=True)
time.sleep(600)
"""


def test_a_client_killed_outright_leaves_no_pilot_queued(tmp_path: Any) -> None:
    """SIGKILL of a client whose pilot still waits in the queue (on a dependency that clears
    only in five minutes): its relay, seeing the client gone, cancels the pilot job instead of
    leaving it to start later for nobody."""
    import os

    parent = _as_user("slurm", "sbatch --parsable -o /dev/null --wrap 'sleep 300'").strip()
    script = tmp_path / "client.py"
    script.write_text(_PENDING_ORPHAN.format(
        tests=os.path.dirname(os.path.dirname(__file__)), parent=parent))
    try:
        _kill_client_and_wait_for_its_pilots_to_go(script, "queued")
    finally:
        _as_user("slurm", shlex.join(["scancel", parent]))


def test_pilots_still_pending_when_the_work_is_done_are_cancelled() -> None:
    """Six pilots for a map on a two-CPU partition: the running ones do the work, and the
    ones still pending are cancelled instead of starting later to sit idle."""
    with _pool("slurm", max_workers=6) as ex:
        assert list(ex.map(nap, [0.5] * 12, chunksize=1)) == [0.5] * 12
        pilots = list(ex.transport._pilots.values())  # type: ignore[attr-defined]
        ids = [p.job_id for p in pilots if p.job_id]
        deadline = time.monotonic() + 60
        while True:
            connected = {p.job_id for p in pilots if p.connected_once}
            extra = [i for i in _listed("slurm", ids) if i not in connected]
            if not extra:
                break
            assert time.monotonic() < deadline, f"pending pilots left queued: {extra}"
            time.sleep(1)
        assert len(connected) < len(ids), "every pilot ran: nothing was pending to cancel"
        assert ex.submit(square, 4).result(timeout=60) == 16


def test_a_relay_that_ends_is_replaced_with_new_pilots() -> None:
    """The relay's SSH channel closes (as when the connection drops): its pilots' workers
    leave and their jobs are cancelled; a new relay starts, new pilots take the calls."""
    with _pool("slurm", max_workers=2, retries=1) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
        old = _pilot_ids(ex)
        ex._runtime.portal.call(ex.transport._relay.close)  # type: ignore[attr-defined]
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
        assert set(_pilot_ids(ex)) - set(old), "no new pilot was submitted"
        deadline = time.monotonic() + 60
        while _listed("slurm", old):
            assert time.monotonic() < deadline, f"old pilots left: {_listed('slurm', old)}"
            time.sleep(1)


def test_a_worker_busy_now_and_then_is_not_taken_for_idle() -> None:
    """idle_timeout counts from the end of a worker's last call, not from its start: a worker
    that runs a call every 1.5 s for 15 s stays, under an idle_timeout of 4 s."""
    with _pool("slurm", max_workers=1, idle_timeout=4.0) as ex:
        for _ in range(10):
            assert ex.submit(nap, 0.5).result(timeout=120) == 0.5
            time.sleep(1.0)  # idle, but for less than idle_timeout
        assert len(_pilot_ids(ex)) == 1, "the worker was retired as idle while in use"


def test_pilot_directories_left_by_a_vanished_client_are_pruned() -> None:
    """A pilot directory untouched for longer than keep_days (a client that never closed)
    is removed when an executor starts; a recent one is kept."""
    base = "~/.remote_futures/pilots"
    _as_user("slurm", f"mkdir -p {base}/rf-test-old {base}/rf-test-new && "
                      f"touch -d '10 days ago' {base}/rf-test-old")
    try:
        with _pool("slurm", max_workers=1, keep_days=7.0) as ex:
            assert ex.submit(square, 2).result(timeout=120) == 4
        listed = _as_user("slurm", f"ls {base}")
        assert "rf-test-old" not in listed
        assert "rf-test-new" in listed
    finally:
        _as_user("slurm", f"rm -rf {base}/rf-test-old {base}/rf-test-new")


def test_pool_on_the_login_node_itself(tmp_path: Any) -> None:
    """No host: the scheduler is on this machine, the relay runs here as a subprocess. A
    worker that dies fails its call with WorkerDiedError and the pool goes on."""
    import shutil
    import sys

    require_testbed("slurm")
    if shutil.which("sbatch") is None:
        pytest.fail("the testbed's slurm commands are not on this machine's PATH")
    work = tmp_path / "work"
    with RemoteExecutor("slurm", pool=True, max_workers=2, relay_bind="127.0.0.1", env="off",
                        python=sys.executable, work_dir=str(work)) as ex:
        assert list(ex.map(square, range(8))) == [x * x for x in range(8)]
        error = ex.submit(_die, 5).exception(timeout=120)
        assert isinstance(error, WorkerDiedError) and "exit code 5" in str(error), error
        assert ex.submit(square, 9).result(timeout=120) == 81
        ids = _pilot_ids(ex)
    deadline = time.monotonic() + 60
    while True:
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                check=False).stdout.split()
        if not set(ids) & set(queued):
            break
        assert time.monotonic() < deadline, "pilots left in the queue"
        time.sleep(1)


def whereabouts() -> dict[str, str]:
    """The scheduler job this call runs in, the CPUs (slots) it was given, and what Slurm
    shows of the job."""
    import os

    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job is None:
        return {"job": os.environ.get("JOB_ID", ""), "cpus": os.environ.get("NSLOTS", ""),
                "shown": ""}
    shown = subprocess.run(["scontrol", "show", "job", slurm_job], capture_output=True,
                           text=True, check=False).stdout
    return {"job": slurm_job, "cpus": os.environ.get("SLURM_CPUS_PER_TASK", ""),
            "shown": shown}


def refuse(x: int) -> int:
    raise ValueError(f"no thanks: {x}")


def test_with_resources_calls_run_as_array_jobs_with_their_resources() -> None:
    """pool=True on Slurm: a plain call runs on a pilot (one CPU); a call through a view
    with cpus=2 and memory=700M runs in a job that is no pilot and that Slurm shows with 2
    CPUs and 700M; the view's map returns its results in order; a view's call that raises
    raises the caller's exception; a view's call pending in the queue is cancelled with
    scancel. Before, the view's calls ran on the pilots with the executor's resources."""
    with _pool("slurm", max_workers=2) as ex:
        plain = ex.submit(whereabouts).result(timeout=120)
        assert plain["job"] in _pilot_ids(ex), (plain["job"], _pilot_ids(ex))
        assert "NumCPUs=1 " in plain["shown"], plain["shown"]
        view = ex.with_resources(cpus=2, memory="700M")
        there = view.submit(whereabouts).result(timeout=120)
        assert there["job"] and there["job"] not in _pilot_ids(ex), (there, _pilot_ids(ex))
        assert there["cpus"] == "2"
        assert "NumCPUs=2 " in there["shown"], there["shown"]
        assert "MinMemoryNode=700M " in there["shown"], there["shown"]
        assert list(view.map(square, range(7))) == [x * x for x in range(7)]
        with pytest.raises(ValueError, match="no thanks: 3"):
            view.submit(refuse, 3).result(timeout=120)
        held = ex.with_resources(cpus=2, job_extra_directives=("--begin=now+600",))
        future = held.submit(square, 5)
        job_id = _view_job_id(ex, held.resources, future)
        assert "PENDING" in _as_user("slurm", f"squeue -h -j {job_id} -t all -o %T")
        assert future.cancel()
        deadline = time.monotonic() + 60
        while "CANCELLED" not in _as_user("slurm", f"squeue -h -j {job_id} -t all -o %T"):
            assert time.monotonic() < deadline, "the pending view job was not cancelled"
            time.sleep(1)
        assert ex.submit(whereabouts).result(timeout=120)["job"] in _pilot_ids(ex)


def _view_job_id(ex: RemoteExecutor, resources: Resources, future: cf.Future[Any]) -> str:
    """The scheduler's id of the array job of ``resources`` (``future``'s), once submitted."""
    deadline = time.monotonic() + 60
    while True:
        arrays = list(ex.transport._arrays)  # type: ignore[attr-defined]
        ids = [h.job_id for h in arrays if h.job_id and h.spec.resources == resources]
        if ids:
            return str(ids[0])
        assert not future.done(), future.exception()
        assert time.monotonic() < deadline, "the view's job was never submitted"
        time.sleep(0.2)


def test_with_resources_calls_on_sge_run_with_their_slots() -> None:
    """pool=True on SGE: a view with cpus=2 runs in a job that is no pilot, with two slots
    of the parallel environment; its map returns results in order."""
    with _pool("sge", max_workers=2) as ex:
        plain = ex.submit(whereabouts).result(timeout=120)
        assert plain["job"] in _pilot_ids(ex), (plain["job"], _pilot_ids(ex))
        view = ex.with_resources(cpus=2)
        there = view.submit(whereabouts).result(timeout=120)
        assert there["job"] and there["job"] not in _pilot_ids(ex), (there, _pilot_ids(ex))
        assert there["cpus"] == "2"
        assert list(view.map(square, range(5))) == [x * x for x in range(5)]


def _die(code: int) -> None:
    import os

    os._exit(code)
