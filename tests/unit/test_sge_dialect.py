"""SGEDialect: headers, command lines, and parsers over recorded real outputs (tests/data)."""

from __future__ import annotations

import pytest
from dialect_support import assert_golden, data, request

from remote_futures.errors import SubmissionError
from remote_futures.jobs import TaskState, TaskStatus
from remote_futures.resources import Resources
from remote_futures.transports.dialect import render_script
from remote_futures.transports.sge import SGEDialect, sge_state

D = SGEDialect()








FULL = Resources(
    cpus=4,
    memory="8G",
    walltime="1-12:00:00",
    gpus=1,
    partition="short.q",
    account="proj01",
    job_extra_directives=("-l tmpfree=10G",),
    job_script_prologue=("module load python/3.11",),
)


# -- golden job scripts ---------------------------------------------------------------------


def test_golden_array() -> None:
    assert_golden("sge-array.sh", render_script(D, request(10, FULL, max_concurrent=3)))


def test_golden_plain() -> None:
    assert_golden("sge-plain.sh", render_script(D, request()))


# -- header ---------------------------------------------------------------------------------


def test_header_minimal() -> None:
    assert D.header(request()) == [
        "#$ -N rf-job",
        "#$ -S /bin/bash",
        "#$ -j y",
        "#$ -o /scratch/rf/jobs/0a1b/scheduler.log",
    ]


def test_header_array_is_one_based_with_throttle() -> None:
    lines = D.header(request(5, max_concurrent=2))
    assert "#$ -t 1-5" in lines
    assert "#$ -tc 2" in lines
    assert "#$ -o /scratch/rf/jobs/0a1b/scheduler-$TASK_ID.log" in lines
    assert "#$ -tc 2" not in D.header(request(5))


@pytest.mark.parametrize(
    ("resources", "line"),
    [
        ({"walltime": "01:30:00"}, "#$ -l h_rt=01:30:00"),
        ({"walltime": "2-00:00:00"}, "#$ -l h_rt=48:00:00"),
        ({"memory": "4G"}, "#$ -l h_vmem=4096M"),
        ({"cpus": 4}, "#$ -pe smp 4"),
        ({"gpus": 2}, "#$ -l gpu=2"),
        ({"partition": "all.q"}, "#$ -q all.q"),
        ({"account": "proj01"}, "#$ -P proj01"),
    ],
)
def test_header_resource(resources: dict[str, object], line: str) -> None:
    assert line in D.header(request(resources=Resources(**resources)))  # type: ignore[arg-type]


def test_header_single_cpu_needs_no_parallel_environment() -> None:
    assert not any("-pe" in line for line in D.header(request(resources=Resources(cpus=1))))


def test_header_memory_is_per_slot() -> None:
    lines = D.header(request(resources=Resources(cpus=3, memory="1000M")))
    assert "#$ -l h_vmem=334M" in lines  # ceil(1000 / 3)


def test_header_site_specific_names() -> None:
    dialect = SGEDialect(
        memory_resource="m_mem_free", parallel_environment="threads", gpu_resource="cuda"
    )
    lines = dialect.header(request(resources=Resources(cpus=2, memory="2G", gpus=1)))
    assert {"#$ -pe threads 2", "#$ -l m_mem_free=1024M", "#$ -l cuda=1"} <= set(lines)


def test_header_quotes_paths_with_spaces() -> None:
    # qsub groups a double-quoted #$ value (checked on SGE 8.1.9: stdout_path_list kept the
    # space).
    lines = D.header(request(job_dir="/home/u/rf jobs/1"))
    assert '#$ -o "/home/u/rf jobs/1/scheduler.log"' in lines


def test_header_job_name_cannot_start_with_digit() -> None:
    # Grid Engine refuses it: see tests/data/sge/qsub-jobname-digit.stderr.
    assert data("sge/qsub-jobname-digit.stderr").startswith("Unable to run job: denied")
    assert D.header(request(job_name="123 run"))[0] == "#$ -N rf_123_run"


def test_header_extra_directives_verbatim_and_last() -> None:
    lines = D.header(request(resources=Resources(job_extra_directives=["-l tmpfree=5G", "-R y"])))
    assert lines[-2:] == ["#$ -l tmpfree=5G", "#$ -R y"]


def test_task_index_expr_handles_undefined() -> None:
    # SGE sets SGE_TASK_ID=undefined in a plain job (seen on the test bed).
    assert "undefined" in D.task_index_expr
    assert "SGE_TASK_ID - 1" in D.task_index_expr


def test_scheduler_log_matches_header() -> None:
    assert D.scheduler_log("/d", "7") == "/d/scheduler.log"
    assert D.scheduler_log("/d", "7", 0) == "/d/scheduler-1.log"


# -- submit ---------------------------------------------------------------------------------


def test_submit_argv() -> None:
    assert D.submit_argv(request(), "/d/job.sh") == ["qsub", "-terse", "/d/job.sh"]


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [("123\n", "123"), ("7.1-4:1\n", "7"), ("2.1-10:1", "2")],
)
def test_parse_submit_terse(stdout: str, job_id: str) -> None:
    assert D.parse_submit(stdout) == job_id


def test_parse_submit_recorded_verbose_message() -> None:
    assert D.parse_submit(data("sge/qsub-123-verbose.txt")) == "123"


@pytest.mark.parametrize("stdout", ["", "Unable to run job: denied\nExiting.\n", "job submitted"])
def test_parse_submit_garbage_raises(stdout: str) -> None:
    with pytest.raises(SubmissionError, match="qsub printed no job id"):
        D.parse_submit(stdout)


def test_parse_submit_recorded_refusal() -> None:
    with pytest.raises(SubmissionError, match="cannot start with a digit"):
        D.parse_submit(data("sge/qsub-jobname-digit.stderr"))


# -- status (qstat -xml) --------------------------------------------------------------------


def test_status_argv() -> None:
    assert D.status_argv(["1", "2"]) == ["qstat", "-xml"]


def test_parse_status_plain_running_and_pending() -> None:
    parsed = D.parse_status(data("sge/qstat-xml-running-pending.xml"), ["1", "2"])
    assert parsed == {
        "1": {None: TaskStatus(TaskState.RUNNING, "r")},
        "2": {None: TaskStatus(TaskState.PENDING, "qw")},
    }


def test_parse_status_array_tasks_zero_based() -> None:
    parsed = D.parse_status(data("sge/qstat-xml-array.xml"), ["2", "3", "4"])
    assert parsed["2"][0] == TaskStatus(TaskState.RUNNING, "r")
    assert sorted(parsed["2"]) == list(range(10))
    assert all(parsed["2"][i].state is TaskState.PENDING for i in range(1, 10))
    assert sorted(parsed["3"]) == [0, 1, 2, 3, 4]
    assert sorted(parsed["4"]) == [7, 8]  # <tasks>8,9</tasks>
    assert "1" not in parsed


def test_parse_status_filters_other_jobs() -> None:
    assert D.parse_status(data("sge/qstat-xml-array.xml"), ["99"]) == {}
    assert D.parse_status("", ["1"]) == {}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("qw", TaskState.PENDING),
        ("hqw", TaskState.PENDING),
        ("hRwq", TaskState.PENDING),
        ("w", TaskState.PENDING),
        ("r", TaskState.RUNNING),
        ("t", TaskState.RUNNING),
        ("Rr", TaskState.RUNNING),
        ("Tr", TaskState.RUNNING),
        ("hr", TaskState.RUNNING),
        ("s", TaskState.RUNNING),
        ("S", TaskState.RUNNING),
        ("dr", TaskState.CANCELLED),
        ("dt", TaskState.CANCELLED),
        ("Eqw", TaskState.PENDING),
        ("Ehqw", TaskState.PENDING),
        ("z", TaskState.COMPLETED),
    ],
)
def test_sge_state(state: str, expected: TaskState) -> None:
    assert sge_state(state) is expected


def test_error_state_keeps_raw_word() -> None:
    xml = (
        "<?xml version='1.0'?><job_info><queue_info/><job_info><job_list state=\"pending\">"
        "<JB_job_number>5</JB_job_number><state>Eqw</state></job_list></job_info></job_info>"
    )
    parsed = D.parse_status(xml, ["5"])
    assert parsed == {"5": {None: TaskStatus(TaskState.PENDING, "Eqw")}}
    # Pending, but it never starts by itself: the transport deletes it after a grace period.
    reason = D.never_runs(parsed["5"][None])
    assert reason is not None and reason.startswith("Eqw")
    assert D.never_runs(TaskStatus(TaskState.PENDING, "qw")) is None
    assert D.never_runs(TaskStatus(TaskState.PENDING, "hqw")) is None


def test_status_answered_only_when_qstat_worked() -> None:
    assert D.status_answered(0, "")
    assert not D.status_answered(1, "error: commlib error: got select error (Connection refused)")
    assert not D.status_answered(1, "")


# -- final state (qacct) --------------------------------------------------------------------


def test_final_status_argv_one_job() -> None:
    assert D.final_status_argv(["12"]) == ["qacct", "-j", "12"]


def test_final_status_argv_several_jobs_one_qacct_each() -> None:
    # `qacct -j 1 -j 2` reports only job 2 and `qacct -j 1,2` only job 1 (SGE 8.1.9).
    assert D.final_status_argv(["12", "13"]) == [
        "sh", "-c", 'for id in 12 13; do qacct -j "$id"; done; exit 0',
    ]  # fmt: skip


def test_parse_final_array_all_tasks_ok() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-3757289-array.txt"), ["3757289"])
    ok = TaskStatus(TaskState.COMPLETED, "failed 0", 0, None)
    assert parsed == {"3757289": {0: ok, 1: ok, 2: ok}}


def test_parse_final_qdel_is_cancelled() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-3757249-qdel.txt"), ["3757249"])
    assert parsed == {
        "3757249": {
            None: TaskStatus(TaskState.CANCELLED, "failed 100 : assumedly after job", 137, 9)
        }
    }


def test_parse_final_nonzero_exit_is_failed() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-3755560-exit1.txt"), ["3755560"])
    assert parsed == {"3755560": {None: TaskStatus(TaskState.FAILED, "failed 0", 1, None)}}


def test_parse_final_sge_failure_before_start() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-3760712-failed26.txt"), ["3760712"])
    expected = TaskStatus(TaskState.FAILED, "failed 26 : opening input/output file", 0, None)
    assert parsed == {"3760712": {0: expected}}


def test_parse_final_single_task_of_large_array() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-3744253-task40-ok.txt"), ["3744253"])
    assert parsed == {"3744253": {39: TaskStatus(TaskState.COMPLETED, "failed 0", 0, None)}}


def test_parse_final_old_ge_format_without_units() -> None:
    parsed = D.parse_final_status(data("sge/qacct-j-123-done.txt"), ["123"])
    assert parsed == {"123": {None: TaskStatus(TaskState.COMPLETED, "failed 0", 0, None)}}


def test_parse_final_several_jobs_concatenated() -> None:
    text = data("sge/qacct-j-3757249-qdel.txt") + data("sge/qacct-j-3755560-exit1.txt")
    parsed = D.parse_final_status(text, ["3757249", "3755560"])
    assert parsed["3757249"][None].state is TaskState.CANCELLED
    assert parsed["3755560"][None].state is TaskState.FAILED


def test_parse_final_summary_without_job_records() -> None:
    assert D.parse_final_status(data("sge/qacct-total-system-usage.txt"), ["1"]) == {}
    assert D.parse_final_status("error: job id 999999 not found\n", ["999999"]) == {}


def test_parse_final_h_rt_enforced_by_qmaster_is_timeout() -> None:
    record = (
        "==============================================================\n"
        "jobnumber    555\ntaskid       2\n"
        "failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit\n"
        "exit_status  137\n"
    )
    parsed = D.parse_final_status(record, ["555"])
    assert parsed["555"][1].state is TaskState.TIMEOUT
    assert parsed["555"][1].signal == 9


def test_parse_final_last_record_of_a_task_wins() -> None:
    first = data("sge/qacct-j-3755560-exit1.txt")
    second = first.replace("exit_status  1\n", "exit_status  0\n")
    parsed = D.parse_final_status(first + second, ["3755560"])
    assert parsed["3755560"][None].state is TaskState.COMPLETED


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_argv_one_based_tasks() -> None:
    assert D.cancel_argv("123") == ["qdel", "123"]
    assert D.cancel_argv("123", [4]) == ["qdel", "123", "-t", "5"]
    # Several `ID -t N` pairs in one qdel work on SGE 8.1.9 (checked on the test bed).
    assert D.cancel_argv("123", [1, 3]) == ["qdel", "123", "-t", "2", "123", "-t", "4"]


# -- recordings from our test bed: Son of Grid Engine 8.1.9 ---------------------------------


def test_testbed_qsub_outputs() -> None:
    assert D.parse_submit(data("sge-8.1.9/qsub-terse.txt")) == "18"
    assert D.parse_submit(data("sge-8.1.9/qsub-terse-array.txt")) == "20"
    assert D.parse_submit(data("sge-8.1.9/qsub-message.txt")) == "19"
    assert D.parse_submit(data("sge-8.1.9/qsub-message-array.txt")) == "21"


def test_testbed_qstat_xml_running_pending_array_held() -> None:
    text = data("sge-8.1.9/qstat-xml-running-pending-array.xml")
    parsed = D.parse_status(text, ["18", "20", "21", "22"])
    assert parsed["18"] == {None: TaskStatus(TaskState.RUNNING, "r")}
    assert parsed["20"] == {i: TaskStatus(TaskState.PENDING, "qw") for i in range(5)}
    assert parsed["21"] == {i: TaskStatus(TaskState.PENDING, "qw") for i in range(3)}
    assert parsed["22"] == {None: TaskStatus(TaskState.PENDING, "hqw")}


def test_testbed_qstat_xml_task_transferring_and_rest_pending() -> None:
    parsed = D.parse_status(data("sge-8.1.9/qstat-xml-after-qdel.xml"), ["18", "20"])
    assert "18" not in parsed  # qdel'd: gone from qstat at once
    assert parsed["20"][0] == TaskStatus(TaskState.RUNNING, "t")
    assert [parsed["20"][i].state for i in range(1, 5)] == [TaskState.PENDING] * 4


def test_testbed_qstat_xml_empty() -> None:
    assert D.parse_status(data("sge-8.1.9/qstat-xml-empty.xml"), ["18"]) == {}


@pytest.mark.parametrize(
    ("path", "job_id", "expected"),
    [
        ("qacct-ok.txt", "24", TaskStatus(TaskState.COMPLETED, "failed 0", 0, None)),
        ("qacct-failed-exit3.txt", "23", TaskStatus(TaskState.FAILED, "failed 0", 3, None)),
        (
            "qacct-h_rt-exceeded.txt",
            "27",
            TaskStatus(
                TaskState.TIMEOUT,
                "failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem limit",
                137,
                9,
            ),
        ),
        (
            "qacct-qdel-running.txt",
            "18",
            TaskStatus(TaskState.CANCELLED, "failed 100 : assumedly after job", 137, 9),
        ),
        # A job whose shell was SIGKILLed from inside leaves the same record as qdel: qacct
        # cannot tell them apart (the transport knows whether it cancelled the job itself).
        (
            "qacct-killed-signal9.txt",
            "26",
            TaskStatus(TaskState.CANCELLED, "failed 100 : assumedly after job", 137, 9),
        ),
    ],
)
def test_testbed_qacct(path: str, job_id: str, expected: TaskStatus) -> None:
    assert D.parse_final_status(data(f"sge-8.1.9/{path}"), [job_id]) == {job_id: {None: expected}}


def test_testbed_qacct_array_tasks_zero_based() -> None:
    parsed = D.parse_final_status(data("sge-8.1.9/qacct-array-mixed.txt"), ["20"])
    assert parsed["20"][1] == TaskStatus(TaskState.FAILED, "failed 0", 3, None)
    assert parsed["20"][0].state is TaskState.COMPLETED
    assert None not in parsed["20"]
    single = D.parse_final_status(data("sge-8.1.9/qacct-array-task2.txt"), ["20"])
    assert single == {"20": {1: TaskStatus(TaskState.FAILED, "failed 0", 3, None)}}


def test_testbed_qacct_not_found() -> None:
    assert D.parse_final_status(data("sge-8.1.9/qacct-unknown.stderr"), ["999999"]) == {}


def test_parse_status_survives_invalid_xml() -> None:
    text = data("sge-8.1.9/qstat-xml-running-pending-array.xml").replace("rf-run1", "rf&run1")
    parsed = D.parse_status(text, ["18", "20"])
    assert parsed["18"] == {None: TaskStatus(TaskState.RUNNING, "r")}
    assert sorted(parsed["20"]) == [0, 1, 2, 3, 4]


def test_throttle_argv_sets_the_task_concurrency() -> None:
    assert D.throttle_argv("123", 4) == ["qalter", "-tc", "4", "123"]
