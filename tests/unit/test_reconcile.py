"""Status reconciliation (transports/reconcile.py) on recorded scheduler outputs, plus the
shell commands around it (the poll command's framing, the listing, pruning), run with /bin/sh
on temporary directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dialect_support import data

from remote_futures.jobs import TaskState, TaskStatus
from remote_futures.transports.pbs import PBSProDialect, TorqueDialect
from remote_futures.transports.reconcile import (
    JobMemory,
    Observation,
    Rules,
    reconcile,
    scheduler_done,
)
from remote_futures.transports.remote import (
    RemoteTransport,
    prune_command,
    remove_ended_command,
    resolve_work_dir,
    split_poll_output,
)
from remote_futures.transports.sge import SGEDialect
from remote_futures.transports.slurm import SlurmDialect

SLURM = SlurmDialect()
SGE = SGEDialect()
RULES = Rules(latency_wait=60.0, missing_grace=5.0, vanish_after=60.0, never_runs_grace=120.0)


def plain(calls: int = 1) -> list[tuple[int, ...]]:
    """Call indices of a one-task job running ``calls`` calls."""
    return [tuple(range(calls))]


def array(n: int) -> list[tuple[int, ...]]:
    """Call indices of an ``n``-task array, one call per task."""
    return [(i,) for i in range(n)]


# -- did the status command answer? -------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "returncode", "stderr_file", "answered"),
    [
        (SLURM, 1, "slurm-22.05/squeue-slurmctld-unreachable.stderr", False),
        (SLURM, 1, "slurm-22.05/squeue-invalid-job.stderr", True),
        (SLURM, 1, "slurm-22.05/squeue-purged-job.stderr", True),
        (SGE, 1, "sge-8.1.9/qstat-xml-qmaster-unreachable.stderr", False),
        (TorqueDialect(list_subjobs=False), 8,
         "torque-wrappers/qstat-f-slurmctld-unreachable.stderr", False),
        (TorqueDialect(), 153, "torque/qstat-unknown-job.stderr", True),
    ],
)
def test_status_answered_on_recorded_stderr(
    dialect: SlurmDialect | SGEDialect | TorqueDialect, returncode: int, stderr_file: str,
    answered: bool,
) -> None:
    assert dialect.status_answered(returncode, data(stderr_file)) is answered


def test_status_answered_pbs() -> None:
    # The Torque wrappers print nothing for an unknown id and exit 153 (tests/data/README).
    assert TorqueDialect(list_subjobs=False).status_answered(153, "")
    # PBS Pro with its server unreachable (stderr as recorded in tests/data/SOURCES.md).
    said = "No route to host\nqstat: cannot connect to server aqua (errno=15010)\n"
    assert not PBSProDialect().status_answered(255, said)
    assert PBSProDialect().status_answered(35, "qstat: Unknown Job Id 12.server\n")
    assert not PBSProDialect().status_answered(255, "")


# -- rule 3: a failed status command is "unknown" ------------------------------------------


def test_failed_status_command_keeps_every_state() -> None:
    memory = JobMemory()
    running = SLURM.parse_status(data("slurm-22.05/squeue-r-array-partially-running.txt"),
                                 ["104"])["104"]
    first = reconcile(Observation(array(5), running), memory, 0.0, RULES)
    assert first.tasks[0].state is TaskState.RUNNING
    # The controller goes away for ten minutes: nothing is reported, nothing ends.
    for now in range(5, 600, 5):
        verdict = reconcile(Observation(array(5), None), memory, float(now), RULES)
        assert verdict.tasks == {} and not verdict.newly_ended and not verdict.lookup
    # A task that wrote its exit file meanwhile still ends: the file is the task's own word.
    verdict = reconcile(Observation(array(5), None, exits={1: 0}, outcomes={1}), memory, 600.0,
                        RULES)
    assert verdict.tasks == {1: TaskStatus(TaskState.COMPLETED, exit_code=0)}


# -- rule 5: a terminal word without an exit file waits for the files ----------------------


def test_squeue_completed_without_files_waits_then_fails() -> None:
    live = SLURM.parse_status(data("slurm-22.05/squeue-r-finished.txt"), ["95"])["95"]
    assert live[None].state is TaskState.COMPLETED
    memory = JobMemory()
    for now in (0.0, 10.0, 59.0):
        assert reconcile(Observation(plain(), live), memory, now, RULES).tasks == {}
    verdict = reconcile(Observation(plain(), live), memory, 60.0, RULES)
    assert verdict.tasks[0].state is TaskState.FAILED
    assert "no exit record" in verdict.tasks[0].raw_state
    assert verdict.newly_ended == {0}


def test_squeue_completed_then_files_appear_completes() -> None:
    live = SLURM.parse_status(data("slurm-22.05/squeue-r-finished.txt"), ["95"])["95"]
    memory = JobMemory()
    assert reconcile(Observation(plain(), live), memory, 0.0, RULES).tasks == {}
    # NFS delivers the files 20 s later.
    verdict = reconcile(Observation(plain(), live, exits={0: 0}, outcomes={0}), memory, 20.0,
                        RULES)
    assert verdict.tasks == {0: TaskStatus(TaskState.COMPLETED, exit_code=0)}


def test_exit_file_before_its_outcomes_waits_for_them() -> None:
    memory = JobMemory()
    seen = Observation(plain(calls=3), {None: TaskStatus(TaskState.RUNNING, "RUNNING")},
                       exits={0: 0}, outcomes={0, 1})
    assert reconcile(seen, memory, 0.0, RULES).tasks == {}
    done = Observation(plain(calls=3), {}, exits={0: 0}, outcomes={0, 1, 2})
    assert reconcile(done, memory, 3.0, RULES).tasks[0].state is TaskState.COMPLETED
    # A task whose calls were cancelled skips them (exit 0, no outcome): nothing to wait for.
    memory = JobMemory(cancelled={0})
    verdict = reconcile(Observation(plain(calls=3), {}, exits={0: 0}), memory, 0.0, RULES)
    assert verdict.tasks[0].state is TaskState.COMPLETED


def test_scheduler_word_is_richer_than_the_exit_file() -> None:
    live = SLURM.parse_status(data("slurm-22.05/squeue-timeout.txt"), ["90"])["90"]
    verdict = reconcile(Observation(plain(), live, exits={0: 143}), JobMemory(), 0.0, RULES)
    assert verdict.tasks[0].state is TaskState.TIMEOUT
    assert verdict.tasks[0].exit_code == 143


def test_cancelled_by_the_user_ends_after_the_short_kill_wait() -> None:
    """scancel: no exit file will come, so the task ends after ``kill_wait`` (a few seconds
    for the results of calls it finished before), not after the 60 s latency wait."""
    live = SLURM.parse_status(data("slurm-22.05/squeue-r-after-scancel-pending.txt"), ["94"])
    memory = JobMemory()
    assert reconcile(Observation(plain(), live["94"]), memory, 0.0, RULES).tasks == {}
    assert reconcile(Observation(plain(), live["94"]), memory, 4.0, RULES).tasks == {}
    verdict = reconcile(Observation(plain(), live["94"]), memory, RULES.kill_wait, RULES)
    assert verdict.tasks[0] == TaskStatus(TaskState.CANCELLED, "CANCELLED")
    assert verdict.newly_ended == {0}


def test_killed_sge_and_pbs_jobs_end_after_the_kill_wait() -> None:
    """qdel on SGE (accounting: failed 100, exit status 137) and a Torque job ended by
    SIGTERM (exit_status 271), as recorded: both end with the scheduler's word after
    ``kill_wait``."""
    sge = SGE.parse_final_status(data("sge/qacct-j-3757249-qdel.txt"), ["3757249"])["3757249"]
    memory = JobMemory()
    # Gone from qstat: accounting is asked, and answers.
    assert reconcile(Observation(plain(), {}), memory, 0.0, RULES).tasks == {}
    assert reconcile(Observation(plain(), {}), memory, 5.0, RULES).lookup
    memory.final[0] = sge[None]
    # The window opened when qstat stopped showing it: over once accounting has answered.
    verdict = reconcile(Observation(plain(), {}), memory, 6.0, RULES)
    assert verdict.tasks[0] == sge[None] and verdict.tasks[0].state is TaskState.CANCELLED
    job = "48[].torque01.bcgsc.ca"
    torque = TorqueDialect().parse_status(data("torque/qstat-f-48-1-array-task.txt"), [job])
    live = torque[job]
    memory = JobMemory()
    calls = array(2)
    assert reconcile(Observation(calls, live), memory, 0.0, RULES).tasks == {}
    verdict = reconcile(Observation(calls, live), memory, 5.0, RULES)
    assert verdict.tasks == {1: TaskStatus(TaskState.FAILED, "C", None, 15)}


def test_a_killed_task_keeps_the_results_that_arrive_within_the_kill_wait() -> None:
    live = SLURM.parse_status(data("slurm-22.05/squeue-r-after-scancel-pending.txt"), ["94"])
    memory = JobMemory()
    assert reconcile(Observation(plain(), live["94"]), memory, 0.0, RULES).tasks == {}
    # Its exit file and outcome show up late: they are the task's own word.
    late = Observation(plain(), live["94"], exits={0: 0}, outcomes={0})
    verdict = reconcile(late, memory, 3.0, RULES)
    assert verdict.tasks[0].state is TaskState.CANCELLED and verdict.tasks[0].exit_code == 0
    # A latency wait set shorter than the kill wait is the bound.
    quick = Rules(latency_wait=1.0)
    memory = JobMemory()
    assert reconcile(Observation(plain(), live["94"]), memory, 0.0, quick).tasks == {}
    assert reconcile(Observation(plain(), live["94"]), memory, 1.0, quick).tasks[0].state is (
        TaskState.CANCELLED
    )


def test_requeue_after_node_fail_is_followed() -> None:
    memory = JobMemory()
    node_fail = {None: TaskStatus(TaskState.NODE_FAIL, "NODE_FAIL")}
    assert reconcile(Observation(plain(), node_fail), memory, 0.0, RULES).tasks == {}
    memory.final[0] = TaskStatus(TaskState.NODE_FAIL, "NODE_FAIL")  # accounting saw it too
    requeued = SLURM.parse_status("7|PENDING|BeginTime\n", ["7"])["7"]
    verdict = reconcile(Observation(plain(), requeued), memory, 30.0, RULES)
    assert verdict.tasks[0].state is TaskState.PENDING
    # Long after the first window would have closed, the rerun is still followed...
    running = {None: TaskStatus(TaskState.RUNNING, "RUNNING")}
    assert reconcile(Observation(plain(), running), memory, 200.0, RULES).tasks[0].state is (
        TaskState.RUNNING
    )
    # Purged from squeue later: the old NODE_FAIL record does not end the rerun.
    assert reconcile(Observation(plain(), {}), memory, 202.0, RULES).tasks == {}
    assert reconcile(Observation(plain(), {}), memory, 208.0, RULES).lookup
    # ...and ends by its own exit file.
    verdict = reconcile(Observation(plain(), running, exits={0: 0}, outcomes={0}), memory,
                        210.0, RULES)
    assert verdict.tasks[0].state is TaskState.COMPLETED


# -- rule 6: gone from the live command: accounting, then VANISHED -------------------------


def test_purged_job_goes_through_accounting_and_the_wait() -> None:
    live = SLURM.parse_status(data("slurm-22.05/squeue-purged-and-live-job.txt"), ["95", "135"])
    memory = JobMemory()
    verdict = reconcile(Observation(plain(), live.get("95", {})), memory, 0.0, RULES)
    assert verdict.tasks == {} and not verdict.lookup
    verdict = reconcile(Observation(plain(), live.get("95", {})), memory, 6.0, RULES)
    assert verdict.lookup
    final = SLURM.parse_final_status(data("slurm-22.05/sacct-X-purged-job.txt"), ["95"])
    memory.final[0] = final["95"][None]
    assert reconcile(Observation(plain(), {}), memory, 30.0, RULES).tasks == {}
    verdict = reconcile(Observation(plain(), {}), memory, 60.0, RULES)
    assert verdict.tasks[0].state is TaskState.FAILED  # COMPLETED, but no exit record


def test_nobody_knows_the_job_vanished() -> None:
    memory = JobMemory()
    for now in (0.0, 6.0, 64.0):
        assert reconcile(Observation(plain(), {}), memory, now, RULES).tasks == {}
    verdict = reconcile(Observation(plain(), {}), memory, 65.0, RULES)
    assert verdict.tasks[0].state is TaskState.VANISHED


def test_reported_end_is_final() -> None:
    memory = JobMemory()
    reconcile(Observation(plain(), {}, exits={0: 3}), memory, 0.0, RULES)
    again = reconcile(Observation(plain(), {None: TaskStatus(TaskState.PENDING)}), memory, 1.0,
                      RULES)
    assert again.tasks[0].exit_code == 3 and not again.newly_ended


# -- rule 4: pending reasons ---------------------------------------------------------------


def test_pending_reasons_that_never_clear() -> None:
    ids = ["42", "43", "44", "45"]
    parsed = SLURM.parse_status(data("slurm-22.05/squeue-r-held-and-never-satisfied.txt"), ids)
    assert parsed["42"][None] == TaskStatus(TaskState.PENDING, "PENDING (JobHeldAdmin)")
    assert parsed["43"][1] == TaskStatus(TaskState.PENDING, "PENDING (JobHeldUser)")
    assert SLURM.never_runs(parsed["42"][None]) == "PENDING (JobHeldAdmin)"
    assert SLURM.never_runs(parsed["45"][None]) == "PENDING (DependencyNeverSatisfied)"
    assert SLURM.never_runs(parsed["43"][0]) is None  # the user's own hold: they release it
    memory = JobMemory()
    first = reconcile(Observation(plain(), parsed["45"]), memory, 0.0, RULES, SLURM.never_runs)
    assert first.tasks[0].state is TaskState.PENDING and not first.cancel
    assert first.reasons == {"PENDING (DependencyNeverSatisfied)"}
    verdict = reconcile(Observation(plain(), parsed["45"]), memory, 120.0, RULES,
                        SLURM.never_runs)
    assert verdict.tasks[0].state is TaskState.FAILED
    assert "DependencyNeverSatisfied" in verdict.tasks[0].raw_state
    assert verdict.cancel == {0}


def test_pending_reason_logged_only_when_it_changes() -> None:
    memory = JobMemory()
    held = SLURM.parse_status(data("slurm-22.05/squeue-array-held.txt"), ["107"])["107"]
    assert held[2] == TaskStatus(TaskState.PENDING, "PENDING (JobHeldUser)")
    assert SLURM.never_runs(held[2]) is None
    resources = SLURM.parse_status("9|PENDING|Resources\n", ["9"])["9"]
    first = reconcile(Observation(plain(), resources), memory, 0.0, RULES, SLURM.never_runs)
    assert first.reasons == {"PENDING (Resources)"}
    same = reconcile(Observation(plain(), resources), memory, 1.0, RULES, SLURM.never_runs)
    assert same.reasons is None
    priority = SLURM.parse_status("9|PENDING|Priority\n", ["9"])["9"]
    changed = reconcile(Observation(plain(), priority), memory, 2.0, RULES, SLURM.never_runs)
    assert changed.reasons == {"PENDING (Priority)"}


def test_sge_error_state_is_deleted_after_the_grace() -> None:
    parsed = SGE.parse_status(data("sge-8.1.9/qstat-xml-eqw.xml"), ["2"])
    assert parsed["2"][None] == TaskStatus(TaskState.PENDING, "Eqw")
    memory = JobMemory()
    assert not reconcile(Observation(plain(), parsed["2"]), memory, 0.0, RULES,
                         SGE.never_runs).cancel
    verdict = reconcile(Observation(plain(), parsed["2"]), memory, 121.0, RULES, SGE.never_runs)
    assert verdict.cancel == {0}
    assert verdict.tasks[0].state is TaskState.FAILED
    assert "Eqw" in verdict.tasks[0].raw_state


def test_sge_error_reason_from_qstat_j() -> None:
    reason = SGE.parse_error_reason(data("sge-8.1.9/qstat-j-eqw.txt"))
    assert "can't open output file \"/nonexistent/dir/out\"" in reason
    assert SGE.error_reason_argv("2") == ["qstat", "-j", "2"]
    assert SGE.parse_error_reason(data("sge-8.1.9/qstat-j-pending-array.txt")) == ""


def test_started_marker_says_running() -> None:
    pending = SLURM.parse_status("9|PENDING|Resources\n", ["9"])["9"]
    verdict = reconcile(Observation(plain(), pending, started={0}), JobMemory(), 0.0, RULES)
    assert verdict.tasks[0] == TaskStatus(TaskState.RUNNING, "started")


def test_scheduler_done() -> None:
    memory = JobMemory()
    running = {None: TaskStatus(TaskState.RUNNING, "RUNNING")}
    reconcile(Observation(array(2), running), memory, 0.0, RULES)
    assert not scheduler_done(2, memory)
    finished = SLURM.parse_status("5_0|COMPLETED|None\n5_1|COMPLETING|None\n", ["5"])["5"]
    reconcile(Observation(array(2), finished), memory, 1.0, RULES)
    assert not scheduler_done(2, memory)  # task 1 is still COMPLETING
    finished = SLURM.parse_status("5_0|COMPLETED|None\n5_1|COMPLETED|None\n", ["5"])["5"]
    reconcile(Observation(array(2), finished), memory, 2.0, RULES)
    assert scheduler_done(2, memory)


# -- the shell commands around reconciliation ---------------------------------------------


def sh(command: str) -> str:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_poll_command_reports_the_status_exit_code_and_stderr(tmp_path: Path) -> None:
    failing = "echo 1_0'|'RUNNING'|'None; echo 'Unable to contact slurm controller' >&2; exit 1"
    out = split_poll_output(sh(RemoteTransport.status_and_listing_command(
        f"sh -c {_q(failing)}", [str(tmp_path)])))
    assert out.returncode == 1
    assert out.stderr == "Unable to contact slurm controller"
    assert out.status.strip() == "1_0|RUNNING|None"
    ok = split_poll_output(sh(RemoteTransport.status_and_listing_command("true", [])))
    assert ok.returncode == 0 and ok.stderr == ""
    # Output cut short (the connection dropped): no answer at all.
    assert split_poll_output("1_0|RUNNING|None\n").returncode is None


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_listing_reads_exit_files_before_outcomes(tmp_path: Path) -> None:
    (tmp_path / "call-0.out").write_bytes(b"x")
    (tmp_path / "task-0.exit").write_text("0\n")
    (tmp_path / "task-0.started").write_text("")
    text = sh(RemoteTransport.listing_command([str(tmp_path)]))
    lines = [line for line in text.splitlines() if line]
    assert lines[0].endswith("task-0.exit:0")
    listing = RemoteTransport.parse_listing(text)
    assert listing.exits == {str(tmp_path): {0: 0}}
    assert listing.outcomes == {str(tmp_path): {0}}


def test_listing_of_a_huge_array_is_not_limited_by_arg_max(tmp_path: Path) -> None:
    # 40,000 exit files with long names: a shell glob on grep's command line exceeds ARG_MAX.
    job = tmp_path / ("j" * 150)
    job.mkdir()
    for task in range(40_000):
        (job / f"task-{task}.exit").write_text("0\n")
    listing = RemoteTransport.parse_listing(sh(RemoteTransport.listing_command([str(job)])))
    assert len(listing.exits[str(job)]) == 40_000


def _job_dir(root: Path, name: str, tasks: int, exits: int, *, age_days: float) -> Path:
    job = root / name
    job.mkdir()
    for task in range(tasks):
        (job / f"task-{task}.in").write_bytes(b"")
    for task in range(exits):
        (job / f"task-{task}.exit").write_text("0\n")
    old = os.stat(job).st_mtime - age_days * 86400
    os.utime(job, (old, old))
    return job


def test_pruning_keeps_old_directories_of_unfinished_jobs(tmp_path: Path) -> None:
    pending = _job_dir(tmp_path, "rf-pending-for-weeks", 3, 0, age_days=30)
    running = _job_dir(tmp_path, "rf-half-done", 3, 2, age_days=30)
    finished = _job_dir(tmp_path, "rf-finished", 3, 3, age_days=30)
    cancelled = _job_dir(tmp_path, "rf-cancelled", 2, 1, age_days=30)
    (cancelled / "task-1.cancel").write_text("")
    os.utime(cancelled, (0, 0))
    recent = _job_dir(tmp_path, "rf-recent-finished", 1, 1, age_days=0)
    sh(prune_command(str(tmp_path), keep_days=7))
    assert pending.exists() and running.exists() and recent.exists()
    assert not finished.exists() and not cancelled.exists()


def test_remove_ended_only_removes_finished_directories(tmp_path: Path) -> None:
    ending = _job_dir(tmp_path, "rf-a", 2, 1, age_days=0)
    ended = _job_dir(tmp_path, "rf-b", 2, 2, age_days=0)
    sh(remove_ended_command([str(ending), str(ended)]))
    assert ending.exists() and not ended.exists()


def test_relative_work_dir_is_taken_from_home() -> None:
    assert resolve_work_dir(None, "/home/u") == "/home/u/.remote_futures"
    assert resolve_work_dir("~/rf", "/home/u") == "/home/u/rf"
    assert resolve_work_dir("scratch/rf", "/home/u") == "/home/u/scratch/rf"
    assert resolve_work_dir("./rf/", "/home/u") == "/home/u/rf"
    assert resolve_work_dir("/scratch/u/rf", "/home/u") == "/scratch/u/rf"


def test_status_outage_is_unknown_until_the_limit() -> None:
    from remote_futures.transports.batch import BatchOptions, SlurmTransport
    from remote_futures.transports.remote import PollOutput

    failed = PollOutput("", 1, data("slurm-22.05/squeue-slurmctld-unreachable.stderr"), "")
    patient = SlurmTransport(BatchOptions(), max_workers=1)
    assert patient._live_statuses(failed, ["7"]) is None
    assert patient._live_statuses(failed, ["7"]) is None
    answered = PollOutput("7|RUNNING|None\n", 0, "", "")
    assert patient._live_statuses(answered, ["7"]) == {
        "7": {None: TaskStatus(TaskState.RUNNING, "RUNNING")}
    }
    # A status command that never works again: past the limit, its silence counts as "gone".
    impatient = SlurmTransport(BatchOptions(status_outage_limit=0.0), max_workers=1)
    assert impatient._live_statuses(failed, ["7"]) is None  # the first failure
    assert impatient._live_statuses(failed, ["7"]) == {}
