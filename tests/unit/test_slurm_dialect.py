"""SlurmDialect: headers, command lines, and parsers over recorded real outputs (tests/data)."""

from __future__ import annotations

import pytest
from dialect_support import assert_golden, data, request

from remote_futures.errors import SubmissionError
from remote_futures.jobs import TaskState, TaskStatus
from remote_futures.resources import Resources
from remote_futures.transports.dialect import render_script
from remote_futures.transports.slurm import SlurmDialect, parse_max_array_size, slurm_state

D = SlurmDialect()








FULL = Resources(
    cpus=4,
    memory="8G",
    walltime="1-12:00:00",
    gpus=1,
    partition="short",
    account="proj01",
    job_extra_directives=("--exclusive",),
    job_script_prologue=("module load python/3.11",),
)


# -- golden job scripts ---------------------------------------------------------------------


def test_golden_array_with_every_resource() -> None:
    assert_golden("slurm-array.sh", render_script(D, request(10, FULL, max_concurrent=3)))


def test_golden_plain_job_without_resources() -> None:
    assert_golden("slurm-plain.sh", render_script(D, request()))


# -- header ---------------------------------------------------------------------------------


def header(n_tasks: int = 1, **resources: object) -> list[str]:
    return D.header(request(n_tasks, Resources(**resources)))  # type: ignore[arg-type]


def test_header_minimal_plain_job_logs_to_job_dir_by_job_id() -> None:
    assert header() == [
        "#SBATCH --job-name=rf-job",
        "#SBATCH --output=/scratch/rf/jobs/0a1b/scheduler-%j.log",
    ]


def test_header_array_and_throttle() -> None:
    lines = D.header(request(5, max_concurrent=2))
    assert "#SBATCH --array=0-4%2" in lines
    assert "#SBATCH --output=/scratch/rf/jobs/0a1b/scheduler-%A_%a.log" in lines
    assert "#SBATCH --array=0-4" in D.header(request(5))


@pytest.mark.parametrize(
    ("resources", "line"),
    [
        ({"cpus": 8}, "#SBATCH --cpus-per-task=8"),
        ({"memory": "8G"}, "#SBATCH --mem=8192M"),
        ({"memory": "1500M"}, "#SBATCH --mem=1500M"),
        ({"walltime": "01:30:00"}, "#SBATCH --time=01:30:00"),
        ({"walltime": "90"}, "#SBATCH --time=01:30:00"),
        ({"walltime": "2-03:04:05"}, "#SBATCH --time=2-03:04:05"),
        ({"walltime": "36:00:00"}, "#SBATCH --time=1-12:00:00"),
        ({"gpus": 2}, "#SBATCH --gres=gpu:2"),
        ({"partition": "gpu"}, "#SBATCH --partition=gpu"),
        ({"account": "proj01"}, "#SBATCH --account=proj01"),
        ({"partition": "my part"}, "#SBATCH --partition='my part'"),
    ],
)
def test_header_resource(resources: dict[str, object], line: str) -> None:
    assert line in header(**resources)


def test_header_extra_directives_verbatim_and_last() -> None:
    lines = header(job_extra_directives=["--qos=long", "--constraint=skylake"], cpus=2)
    assert lines[-2:] == ["#SBATCH --qos=long", "#SBATCH --constraint=skylake"]


def test_header_quotes_job_dir_with_spaces_and_escapes_percent() -> None:
    lines = D.header(request(job_dir="/scratch/my jobs/50%"))
    assert "#SBATCH --output='/scratch/my jobs/50%%/scheduler-%j.log'" in lines


def test_header_sanitizes_job_name() -> None:
    assert D.header(request(job_name="my job/1"))[0] == "#SBATCH --job-name=my_job_1"


def test_task_index_expr() -> None:
    assert D.task_index_expr == "${SLURM_ARRAY_TASK_ID:-0}"
    assert "RF_TASK=${SLURM_ARRAY_TASK_ID:-0}" in render_script(D, request())


def test_scheduler_log_matches_header_patterns() -> None:
    assert D.scheduler_log("/d", "93") == "/d/scheduler-93.log"
    assert D.scheduler_log("/d", "93", 4) == "/d/scheduler-93_4.log"


# -- submit ---------------------------------------------------------------------------------


def test_submit_argv() -> None:
    assert D.submit_argv(request(), "/d/job.sh") == ["sbatch", "--parsable", "/d/job.sh"]


def test_parse_submit_recorded_testbed_output() -> None:
    assert D.parse_submit(data("slurm-22.05/sbatch-parsable.txt")) == "92"
    assert D.parse_submit(data("slurm-22.05/sbatch-parsable-array.txt")) == "93"


def test_parse_submit_multi_cluster_form() -> None:
    # sbatch(1): "--parsable: job id number and the cluster name if present, separated
    # by a semicolon".
    assert D.parse_submit("1234;cluster-a\n") == "1234;cluster-a"


def test_cluster_ids_keep_their_cluster_in_every_command() -> None:
    # Without -M, squeue/sacct/scancel would address the default cluster: the wrong job, or
    # another job of the user with the same number.
    assert D.status_argv(["12;east", "13"]) == [
        "squeue", "-M", "east", "-h", "-r", "-t", "all", "-j", "12,13", "-o", "%i|%T|%r",
    ]  # fmt: skip
    assert D.status_argv(["12;east", "13;west"])[1:3] == ["-M", "east,west"]
    argv = D.final_status_argv(["12;east"])
    assert argv is not None and argv[:3] == ["sacct", "-M", "east"] and "12" in argv
    assert D.cancel_argv("12;east") == ["scancel", "-M", "east", "12"]
    assert D.cancel_argv("12;east", [1, 3]) == ["scancel", "-M", "east", "12_1", "12_3"]
    # squeue -M prints a CLUSTER header, then the job by number; the result keeps the id.
    parsed = D.parse_status("CLUSTER: east\n12_1|RUNNING|None\n", ["12;east"])
    assert parsed == {"12;east": {1: TaskStatus(TaskState.RUNNING, "RUNNING")}}
    assert D.scheduler_log("/d", "12;east", 1) == "/d/scheduler-12_1.log"


@pytest.mark.parametrize(
    "stdout",
    ["", "\n", "Submitted batch job 12\n", "sbatch: error: Batch job submission failed\n", "12a"],
)
def test_parse_submit_garbage_raises(stdout: str) -> None:
    with pytest.raises(SubmissionError, match="sbatch printed no job id"):
        D.parse_submit(stdout)


def test_parse_submit_error_carries_recorded_stderr_text() -> None:
    stderr = data("slurm-22.05/sbatch-bad-partition.stderr")
    with pytest.raises(SubmissionError) as info:
        D.parse_submit(stderr)
    assert "invalid partition" in str(info.value).lower()


# -- status (squeue) ------------------------------------------------------------------------


def test_status_argv_is_one_command() -> None:
    assert D.status_argv(["12", "13"]) == [
        "squeue", "-h", "-r", "-t", "all", "-j", "12,13", "-o", "%i|%T|%r",
    ]  # fmt: skip


def test_parse_status_running_and_expanded_pending_array() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-r-running-pending-array.txt"), ["90", "93"])
    assert parsed["90"] == {None: TaskStatus(TaskState.RUNNING, "RUNNING")}
    assert set(parsed["93"]) == {0, 1, 2, 3, 4}
    assert all(s.state is TaskState.PENDING for s in parsed["93"].values())
    assert "91" not in parsed  # not asked for


def test_parse_status_range_line_expands_with_throttle_suffix() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-array-partially-running.txt"), ["104"])
    states = {task: s.state for task, s in parsed["104"].items()}
    assert states == {
        0: TaskState.RUNNING,
        1: TaskState.RUNNING,
        2: TaskState.PENDING,
        3: TaskState.PENDING,
        4: TaskState.PENDING,
    }


def test_parse_status_finished_jobs_and_tasks() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-r-finished.txt"), ["93", "96", "97", "94"])
    assert parsed["96"][None].state is TaskState.FAILED
    assert parsed["94"][None] == TaskStatus(TaskState.CANCELLED, "CANCELLED")
    assert parsed["93"][1].state is TaskState.FAILED
    assert {parsed["93"][i].state for i in (0, 2, 3)} == {TaskState.COMPLETED}


def test_parse_status_cancelled_pending_range() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-array-cancelled-while-pending.txt"), ["107"])
    assert parsed == {"107": {i: TaskStatus(TaskState.CANCELLED, "CANCELLED") for i in range(3)}}


def test_parse_status_individual_line_wins_over_range() -> None:
    out = "5_[0-3]|PENDING|Priority\n5_1|RUNNING|None\n"
    parsed = D.parse_status(out, ["5"])
    assert parsed["5"][1].state is TaskState.RUNNING
    out = "5_1|RUNNING|None\n5_[0-3]|PENDING|Priority\n"
    assert D.parse_status(out, ["5"])["5"][1].state is TaskState.RUNNING


def test_parse_status_comma_range() -> None:
    parsed = D.parse_status("8_[5,7-9]|PENDING|Priority\n", ["8"])
    assert sorted(parsed["8"]) == [5, 7, 8, 9]


def test_parse_status_ignores_noise_steps_and_empty() -> None:
    out = (
        "slurm_load_jobs error: Invalid job id specified\n\n12.batch|RUNNING|None\n12+0|RUNNING|x\n"
    )
    assert D.parse_status(out, ["12"]) == {}
    assert D.parse_status("", ["12"]) == {}


# -- final state (sacct) --------------------------------------------------------------------


def test_final_status_argv() -> None:
    assert D.final_status_argv(["12", "13"]) == [
        "sacct", "-X", "-P", "-n", "-j", "12,13", "--format=JobID,State,ExitCode",
    ]  # fmt: skip


def test_parse_final_testbed_states_and_exit_codes() -> None:
    ids = ["90", "91", "92", "93", "94", "95", "96", "97"]
    parsed = D.parse_final_status(data("slurm-22.05/sacct-X-states.txt"), ids)
    assert parsed["90"][None] == TaskStatus(TaskState.TIMEOUT, "TIMEOUT", 0, None)
    assert parsed["91"][None] == TaskStatus(TaskState.CANCELLED, "CANCELLED by 1001", 0, None)
    assert parsed["96"][None] == TaskStatus(TaskState.FAILED, "FAILED", 3, None)
    assert parsed["97"][None] == TaskStatus(TaskState.FAILED, "FAILED", None, 9)
    assert parsed["93"][1] == TaskStatus(TaskState.FAILED, "FAILED", 3, None)
    assert parsed["93"][0].state is TaskState.COMPLETED


def test_parse_final_never_started_array_range() -> None:
    parsed = D.parse_final_status(
        "JobID|JobIDRaw|State|ExitCode\n"
        + data("slurm-22.05/sacct-X-array-cancelled-while-pending.txt"),
        ["107"],
    )
    expected = TaskStatus(TaskState.CANCELLED, "CANCELLED by 1001", 0, None)
    assert parsed == {"107": {0: expected, 1: expected, 2: expected}}


def test_parse_final_pending_range_then_tasks() -> None:
    out = "46_0|RUNNING|0:0\n46_[1-5%1]|PENDING|0:0\n"
    parsed = D.parse_final_status(out, ["46"])
    assert parsed["46"][0].state is TaskState.RUNNING
    assert [parsed["46"][i].state for i in range(1, 6)] == [TaskState.PENDING] * 5


def test_parse_final_slurm_23_11_cancelled_by_user_with_header() -> None:
    parsed = D.parse_final_status(data("slurm-newer/sacct-P-cancelled-by-user.txt"), ["2699001"])
    assert parsed == {"2699001": {None: TaskStatus(TaskState.CANCELLED, "CANCELLED by 54321")}}


def test_parse_final_slurm_23_11_terminal_states() -> None:
    ids = ["2699101", "2699102", "2699103", "2699104"]
    parsed = D.parse_final_status(data("slurm-newer/sacct-P-terminal-states.txt"), ids)
    assert [parsed[i][None].state for i in ids] == [
        TaskState.TIMEOUT,
        TaskState.OUT_OF_MEMORY,
        TaskState.NODE_FAIL,
        TaskState.FAILED,
    ]


def test_parse_final_slurm_23_11_completed_ignores_steps() -> None:
    parsed = D.parse_final_status(data("slurm-newer/sacct-P-simple-completed.txt"), ["2711367"])
    assert parsed == {"2711367": {None: TaskStatus(TaskState.COMPLETED, "COMPLETED")}}


def test_parse_final_header_with_other_columns_first() -> None:
    text = data("slurm-newer/sacct-parsable2-jobid-nodelist-state-exitcode.txt")
    parsed = D.parse_final_status(text, ["239023", "239026"])
    # The allocation completed; only the srun step (239023.0) was killed by signal 10.
    assert parsed["239023"] == {None: TaskStatus(TaskState.COMPLETED, "COMPLETED", 0, None)}
    assert set(parsed) == {"239023", "239026"}


def test_parse_final_toil_recorded_outputs() -> None:
    ids = ["609663", "754725", "765096", "767925", "785023", "789724", "789868", "789869"]
    parsed = D.parse_final_status(data("slurm-misc/sacct-n-P-JobIDRaw-State-ExitCode.txt"), ids)
    assert parsed["609663"][None] == TaskStatus(TaskState.FAILED, "FAILED", None, 2)
    assert parsed["754725"][None].state is TaskState.TIMEOUT
    assert parsed["765096"][None] == TaskStatus(TaskState.FAILED, "FAILED", None, 9)
    assert parsed["785023"][None] == TaskStatus(TaskState.FAILED, "FAILED", 127, None)
    assert parsed["789724"][None].state is TaskState.RUNNING
    assert parsed["789868"][None].state is TaskState.PENDING
    assert parsed["789869"][None] == TaskStatus(TaskState.COMPLETED, "COMPLETED", 0, None)
    assert "789456" not in parsed


# -- state words ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("PENDING", TaskState.PENDING),
        ("CONFIGURING", TaskState.PENDING),
        ("REQUEUED", TaskState.PENDING),
        ("RUNNING", TaskState.RUNNING),
        ("COMPLETING", TaskState.RUNNING),
        ("SUSPENDED", TaskState.RUNNING),
        ("STOPPED", TaskState.RUNNING),
        ("RESIZING", TaskState.RUNNING),
        ("SIGNALING", TaskState.RUNNING),
        ("STAGE_OUT", TaskState.RUNNING),
        ("COMPLETED", TaskState.COMPLETED),
        ("FAILED", TaskState.FAILED),
        ("SPECIAL_EXIT", TaskState.FAILED),
        ("CANCELLED", TaskState.CANCELLED),
        ("CANCELLED by 1001", TaskState.CANCELLED),
        ("CANCELLED+", TaskState.CANCELLED),
        ("REVOKED", TaskState.CANCELLED),
        ("TIMEOUT", TaskState.TIMEOUT),
        ("OUT_OF_MEMORY", TaskState.OUT_OF_MEMORY),
        ("NODE_FAIL", TaskState.NODE_FAIL),
        ("PREEMPTED", TaskState.PREEMPTED),
        ("BOOT_FAIL", TaskState.BOOT_FAIL),
        ("DEADLINE", TaskState.DEADLINE),
        ("SOME_FUTURE_STATE", TaskState.RUNNING),
    ],
)
def test_slurm_state(word: str, state: TaskState) -> None:
    assert slurm_state(word) is state


def test_raw_state_is_kept() -> None:
    parsed = D.parse_final_status("7|CANCELLED by 1001|0:15\n", ["7"])
    assert parsed["7"][None] == TaskStatus(TaskState.CANCELLED, "CANCELLED by 1001", None, 15)


# -- cancel, config -------------------------------------------------------------------------


def test_cancel_argv() -> None:
    assert D.cancel_argv("123") == ["scancel", "123"]
    assert D.cancel_argv("123", [4, 7]) == ["scancel", "123_4", "123_7"]


def test_parse_max_array_size() -> None:
    assert parse_max_array_size(data("slurm-22.05/scontrol-show-config-maxarraysize.txt")) == 10001
    assert parse_max_array_size("MaxJobCount = 10000\n") == 1001
    assert parse_max_array_size("") == 1001


# -- more recordings from our test bed (Slurm 22.05.8) --------------------------------------


def test_testbed_squeue_timeout_and_sacct_running() -> None:
    assert D.parse_status(data("slurm-22.05/squeue-timeout.txt"), ["90"]) == {
        "90": {None: TaskStatus(TaskState.TIMEOUT, "TIMEOUT")}
    }
    assert D.parse_final_status(data("slurm-22.05/sacct-X-running.txt"), ["111"]) == {
        "111": {None: TaskStatus(TaskState.RUNNING, "RUNNING", 0, None)}
    }


def test_testbed_squeue_after_scancel_of_pending_job() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-r-after-scancel-pending.txt"), ["94", "93"])
    assert parsed["94"] == {None: TaskStatus(TaskState.CANCELLED, "CANCELLED")}
    assert sorted(parsed["93"]) == [0, 1, 2, 3]


def test_testbed_squeue_r_partially_running_array() -> None:
    parsed = D.parse_status(data("slurm-22.05/squeue-r-array-partially-running.txt"), ["104"])
    assert [parsed["104"][i].state for i in range(5)] == [
        TaskState.RUNNING,
        TaskState.RUNNING,
        TaskState.PENDING,
        TaskState.PENDING,
        TaskState.PENDING,
    ]


def test_testbed_sacct_array_with_raw_id_column() -> None:
    # Recorded with --format=JobID,JobIDRaw,State,ExitCode: the header names the columns.
    text = "JobID|JobIDRaw|State|ExitCode\n" + data("slurm-22.05/sacct-X-array-mixed.txt")
    parsed = D.parse_final_status(text, ["93"])
    assert parsed["93"][1] == TaskStatus(TaskState.FAILED, "FAILED", 3, None)
    assert sorted(parsed["93"]) == [0, 1, 2, 3]


def test_testbed_purged_job_left_out_of_squeue_but_kept_by_sacct() -> None:
    live = D.parse_status(data("slurm-22.05/squeue-purged-and-live-job.txt"), ["95", "135"])
    assert live == {"135": {None: TaskStatus(TaskState.RUNNING, "RUNNING")}}
    final = D.parse_final_status(data("slurm-22.05/sacct-X-purged-job.txt"), ["95"])
    assert final == {"95": {None: TaskStatus(TaskState.COMPLETED, "COMPLETED", 0, None)}}


def test_testbed_sacct_rich_columns_named_by_header() -> None:
    header = "JobID|JobIDRaw|JobName|State|ExitCode|DerivedExitCode|Elapsed|Timelimit\n"
    parsed = D.parse_final_status(
        header + data("slurm-22.05/sacct-X-states-rich.txt"), ["90", "97"]
    )
    assert parsed["90"][None] == TaskStatus(TaskState.TIMEOUT, "TIMEOUT", 0, None)
    assert parsed["97"][None] == TaskStatus(TaskState.FAILED, "FAILED", None, 9)


def test_testbed_wrapper_jobs_seen_through_sacct() -> None:
    # The Torque wrappers' jobs are Slurm jobs: sacct has the exit codes qstat never shows.
    ids = ["112", "114", "117"]
    parsed = D.parse_final_status(data("torque-wrappers/sacct-states.txt"), ids)
    assert parsed["112"][None].state is TaskState.CANCELLED
    assert sorted(parsed["114"]) == [0, 1, 2, 3]
    assert parsed["117"][None] == TaskStatus(TaskState.FAILED, "FAILED", 3, None)


def test_throttle_argv_keeps_the_cluster() -> None:
    assert D.throttle_argv("123", 4) == ["scontrol", "update", "JobId=123", "ArrayTaskThrottle=4"]
    assert D.throttle_argv("123;beta", 7) == [
        "scontrol", "-M", "beta", "update", "JobId=123", "ArrayTaskThrottle=7"
    ]
