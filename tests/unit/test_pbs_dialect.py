"""PBSProDialect and TorqueDialect: headers, command lines, flavor detection, and parsers over
recorded real outputs (tests/data)."""

from __future__ import annotations

import json

import pytest
from dialect_support import assert_golden, data, request

from remote_futures.errors import SubmissionError
from remote_futures.jobs import TaskState, TaskStatus
from remote_futures.resources import Resources
from remote_futures.transports.dialect import render_script
from remote_futures.transports.pbs import (
    PBS_TASK_INDEX_EXPR,
    PBSProDialect,
    TorqueDialect,
    detect_pbs_flavor,
    is_slurm_torque_wrapper,
    pbs_numeric_id,
)
from remote_futures.transports.reconcile import JobMemory, Observation, Rules, reconcile

PRO = PBSProDialect()
TORQUE = TorqueDialect()








FULL = Resources(
    cpus=4,
    memory="8G",
    walltime="1-12:00:00",
    gpus=1,
    partition="short",
    account="proj01",
    job_extra_directives=("-l place=scatter",),
    job_script_prologue=("module load python/3.11",),
)


# -- golden job scripts ---------------------------------------------------------------------


def test_golden_pbspro_array() -> None:
    assert_golden("pbspro-array.sh", render_script(PRO, request(10, FULL, max_concurrent=3)))


def test_golden_pbspro_plain() -> None:
    assert_golden("pbspro-plain.sh", render_script(PRO, request()))


def test_golden_torque_array() -> None:
    assert_golden("torque-array.sh", render_script(TORQUE, request(10, FULL, max_concurrent=3)))


def test_golden_torque_plain() -> None:
    assert_golden("torque-plain.sh", render_script(TORQUE, request()))


# -- flavor detection -----------------------------------------------------------------------


def test_detect_pbspro_from_recorded_version_line() -> None:
    assert detect_pbs_flavor(data("pbspro/qstat-version-PBSPro_11.1.txt")) == "pbspro"
    assert detect_pbs_flavor("pbs_version = 19.1.3\n") == "pbspro"


def test_detect_torque_from_recorded_version_line() -> None:
    assert detect_pbs_flavor(data("torque/qstat-version-2.4.16.txt")) == "torque"
    assert detect_pbs_flavor("Version: 6.1.3\n") == "torque"


def test_detect_wrappers_as_torque() -> None:
    # What SchedMD's Slurm Torque wrappers print for `qstat --version` (test bed, 22.05.8):
    # nothing on stdout, a usage text on stderr, exit status 2.
    usage = "Unknown option: version\nUsage:\n    qstat [-f] [-a|-i|-r] [-n [-1]] [-G|-M]\n"
    assert detect_pbs_flavor("", usage) == "torque"
    assert detect_pbs_flavor("") == "torque"
    assert is_slurm_torque_wrapper(usage)
    assert not is_slurm_torque_wrapper(data("torque/qstat-version-2.4.16.txt"))
    assert not is_slurm_torque_wrapper(data("pbspro/qstat-version-PBSPro_11.1.txt"))


def test_detect_uses_qsub_output_too() -> None:
    assert detect_pbs_flavor("", "pbs_version = 2022.1.1\n") == "pbspro"


# -- headers --------------------------------------------------------------------------------


def test_task_index_expr_covers_pro_torque_and_wrappers() -> None:
    assert PRO.task_index_expr == TORQUE.task_index_expr == PBS_TASK_INDEX_EXPR
    for variable in ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_ARRAY_TASK_ID"):
        assert variable in PBS_TASK_INDEX_EXPR


def test_header_minimal() -> None:
    assert PRO.header(request()) == ["#PBS -N rf-job", "#PBS -S /bin/bash"]
    assert TORQUE.header(request()) == ["#PBS -N rf-job", "#PBS -S /bin/bash"]


@pytest.mark.parametrize(
    ("resources", "pro", "torque"),
    [
        ({"cpus": 8}, "-l select=1:ncpus=8", "-l nodes=1:ppn=8"),
        ({"memory": "8G"}, "-l select=1:mem=8192mb", "-l mem=8192mb"),
        ({"gpus": 2}, "-l select=1:ngpus=2", "-l nodes=1:ppn=1:gpus=2"),
        ({"walltime": "1-12:00:00"}, "-l walltime=36:00:00", "-l walltime=36:00:00"),
        ({"walltime": "45"}, "-l walltime=00:45:00", "-l walltime=00:45:00"),
        ({"partition": "long"}, "-q long", "-q long"),
        ({"account": "proj01"}, "-A proj01", "-A proj01"),
    ],
)
def test_header_resource(resources: dict[str, object], pro: str, torque: str) -> None:
    res = Resources(**resources)  # type: ignore[arg-type]
    assert f"#PBS {pro}" in PRO.header(request(resources=res))
    assert f"#PBS {torque}" in TORQUE.header(request(resources=res))


def test_header_pbspro_select_combines_one_chunk() -> None:
    res = Resources(cpus=2, memory="1G", gpus=1)
    assert "#PBS -l select=1:ncpus=2:mem=1024mb:ngpus=1" in PRO.header(request(resources=res))


def test_header_extra_directives_verbatim_and_last() -> None:
    res = Resources(cpus=1, job_extra_directives=("-l place=excl", "-W group_list=g1"))
    assert PRO.header(request(resources=res))[-2:] == [
        "#PBS -l place=excl",
        "#PBS -W group_list=g1",
    ]


def test_header_has_no_array_or_output_directives() -> None:
    # The Slurm wrappers ignore or override them in the script; they go on the command line.
    lines = PRO.header(request(5)) + TORQUE.header(request(5))
    assert not any(" -J " in line or " -t " in line or " -o " in line for line in lines)


# -- submit ---------------------------------------------------------------------------------


def test_submit_argv_pbspro() -> None:
    assert PRO.submit_argv(request(), "/d/job.sh") == [
        "qsub", "-j", "oe", "-o", "/scratch/rf/jobs/0a1b/scheduler.log", "/d/job.sh",
    ]  # fmt: skip
    assert PRO.submit_argv(request(10, max_concurrent=4), "/d/job.sh") == [
        "qsub", "-j", "oe", "-o", "/scratch/rf/jobs/0a1b/scheduler-^array_index^.log",
        "-J", "0-9%4", "/d/job.sh",
    ]  # fmt: skip


def test_submit_argv_pbspro_two_tasks_is_smallest_array() -> None:
    assert PRO.submit_argv(request(2), "s")[-3:] == ["-J", "0-1", "s"]


def test_submit_argv_torque() -> None:
    assert TORQUE.submit_argv(request(), "/d/job.sh") == [
        "qsub", "-j", "oe", "-o", "/scratch/rf/jobs/0a1b/scheduler.log", "/d/job.sh",
    ]  # fmt: skip
    assert TORQUE.submit_argv(request(3, max_concurrent=2), "s")[-3:] == ["-t", "0-2%2", "s"]
    assert TORQUE.submit_argv(request(3), "s")[-3:] == ["-t", "0-2", "s"]


def test_scheduler_log_matches_submit_paths() -> None:
    assert PRO.scheduler_log("/d", "1.s") == "/d/scheduler.log"
    assert PRO.scheduler_log("/d", "1[].s", 3) == "/d/scheduler-3.log"
    assert TORQUE.scheduler_log("/d", "1[].s", 3) == "/d/scheduler.log-3"


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [
        ("123.server\n", "123.server"),
        ("123[].server\n", "123[].server"),
        ("141.torque01.bcgsc.ca\n", "141.torque01.bcgsc.ca"),
        ("144\n", "144"),
        ("145[]\n", "145[]"),
        ("12860476.meta-pbs.metacentrum.cz", "12860476.meta-pbs.metacentrum.cz"),
    ],
)
def test_parse_submit_keeps_what_qsub_printed(stdout: str, job_id: str) -> None:
    assert PRO.parse_submit(stdout) == job_id
    assert TORQUE.parse_submit(stdout) == job_id


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "qsub: Job exceeds queue resource limits MSG=cannot locate feasible nodes\n",
        "Submitted batch job 12\n",
    ],
)
def test_parse_submit_garbage_raises(stdout: str) -> None:
    with pytest.raises(SubmissionError, match="qsub printed no job id"):
        TORQUE.parse_submit(stdout)
    with pytest.raises(SubmissionError):
        PRO.parse_submit(stdout)


def test_parse_submit_recorded_torque_error() -> None:
    with pytest.raises(SubmissionError, match="exceeds queue resource limits"):
        TORQUE.parse_submit(data("torque/qsub-exceeds-limits.stderr"))


def test_pbs_numeric_id() -> None:
    assert pbs_numeric_id("123[].server.example.org") == "123"
    assert pbs_numeric_id("123[4].server") == "123"
    assert pbs_numeric_id("144") == "144"
    with pytest.raises(ValueError):
        pbs_numeric_id("nonsense")


# -- PBS Pro status (qstat -f -F json) ------------------------------------------------------


def test_pbspro_status_argv_lists_history_and_subjobs() -> None:
    assert PRO.status_argv(["1.s", "2[].s"]) == [
        "qstat", "-f", "-F", "json", "-x", "-t", "1.s", "2[].s",
    ]  # fmt: skip
    assert PRO.final_status_argv(["1.s"]) == PRO.status_argv(["1.s"])


def test_pbspro_parse_running_job_by_bare_id() -> None:
    parsed = PRO.parse_status(data("pbspro/qstat-f-F-json-1008.json"), ["1008"])
    assert parsed == {"1008": {None: TaskStatus(TaskState.RUNNING, "R")}}


def test_pbspro_parse_keys_results_by_the_callers_id() -> None:
    parsed = PRO.parse_status(data("pbspro/qstat-f-F-json-all.json"), ["1006.qot-calc0", "1007"])
    assert set(parsed) == {"1006.qot-calc0", "1007"}
    assert parsed["1007"][None].state is TaskState.RUNNING


def test_pbspro_parse_several_jobs_keeps_only_asked() -> None:
    parsed = PRO.parse_status(data("pbspro/qstat-f-F-json-2007-2009-2010.json"), ["2007", "2010"])
    assert parsed == {
        "2007": {None: TaskStatus(TaskState.RUNNING, "R")},
        "2010": {None: TaskStatus(TaskState.RUNNING, "R")},
    }


def test_pbspro_parse_metacentrum_history_query() -> None:
    job = "12860476.meta-pbs.metacentrum.cz"
    parsed = PRO.parse_status(data("pbspro/qstat-xf-F-json-12860476.json"), [job])
    assert parsed == {job: {None: TaskStatus(TaskState.RUNNING, "R")}}


def test_pbspro_parse_finished_job_with_exit_status() -> None:
    parsed = PRO.parse_final_status(data("openpbs/qstat-f-F-json-0-finished.json"), ["0"])
    assert parsed == {"0": {None: TaskStatus(TaskState.COMPLETED, "F", 0, None)}}


def test_pbspro_parse_invalid_json_falls_back_to_lines() -> None:
    # Trimmed upstream, with a trailing comma that json.loads rejects.
    text = data("pbspro/qstat-xf-F-json-2154-trimmed.json")
    parsed = PRO.parse_status(text, ["2154.edtb-01.mcp.alcf.anl.gov"])
    assert parsed == {
        "2154.edtb-01.mcp.alcf.anl.gov": {None: TaskStatus(TaskState.COMPLETED, "F", 0, None)}
    }


@pytest.mark.parametrize(
    "path",
    [
        "pbspro/qstat-f-F-json-no-route-2025.2.0.json",
        "openpbs/qstat-f-F-json-connection-refused.json",
    ],
)
def test_pbspro_parse_document_without_jobs(path: str) -> None:
    assert PRO.parse_status(data(path), ["9999"]) == {}


def test_pbspro_parse_empty_and_error_text() -> None:
    assert PRO.parse_status("", ["1"]) == {}
    assert PRO.parse_status("qstat: Unknown Job Id 1.server\n", ["1.server"]) == {}


# Not a recorded output: no public capture of `qstat -f -F json -x -t` for an array was found.
# Built from the attribute names of the recorded single-job documents and the subjob id form
# `123[4].server` of PBS Pro's qstat(1B), to pin the array logic.
ARRAY_JSON = """{
    "pbs_version":"2022.1.1",
    "Jobs":{
        "77[].srv":{"job_state":"B","array":"True","array_indices_remaining":"3-4"},
        "77[0].srv":{"job_state":"X","Exit_status":0},
        "77[1].srv":{"job_state":"X","Exit_status":271},
        "77[2].srv":{"job_state":"R"},
        "78.srv":{"job_state":"F","Exit_status":-29},
        "79.srv":{"job_state":"F","Exit_status":-27},
        "80.srv":{"job_state":"F"},
        "81.srv":{"job_state":"F","Exit_status":3}
    }
}"""


def test_pbspro_parse_array_subjobs_and_exit_codes() -> None:
    parsed = PRO.parse_status(ARRAY_JSON, ["77[].srv", "78.srv", "79", "80.srv", "81.srv"])
    assert parsed["77[].srv"] == {
        0: TaskStatus(TaskState.COMPLETED, "X", 0, None),
        1: TaskStatus(TaskState.FAILED, "X", None, 15),
        2: TaskStatus(TaskState.RUNNING, "R"),
        3: TaskStatus(TaskState.PENDING, "Q"),
        4: TaskStatus(TaskState.PENDING, "Q"),
    }
    assert parsed["78.srv"][None] == TaskStatus(TaskState.TIMEOUT, "F", -29, None)
    assert parsed["79"][None].state is TaskState.OUT_OF_MEMORY
    assert parsed["80.srv"][None] == TaskStatus(TaskState.COMPLETED, "F", None, None)
    assert parsed["81.srv"][None] == TaskStatus(TaskState.FAILED, "F", 3, None)


@pytest.mark.parametrize(
    ("letter", "state"),
    [
        ("Q", TaskState.PENDING),
        ("H", TaskState.PENDING),
        ("W", TaskState.PENDING),
        ("T", TaskState.PENDING),
        ("M", TaskState.PENDING),
        ("R", TaskState.RUNNING),
        ("E", TaskState.RUNNING),
        ("S", TaskState.RUNNING),
        ("U", TaskState.RUNNING),
        ("B", TaskState.RUNNING),
        ("F", TaskState.COMPLETED),
        ("X", TaskState.COMPLETED),
        ("C", TaskState.COMPLETED),
    ],
)
def test_pbs_state_letters(letter: str, state: TaskState) -> None:
    doc = f'{{"Jobs":{{"5.s":{{"job_state":"{letter}"}}}}}}'
    assert PRO.parse_status(doc, ["5.s"])["5.s"][None] == TaskStatus(state, letter)
    text = f"Job Id: 5.s\n    job_state = {letter}\n"
    assert TORQUE.parse_status(text, ["5.s"])["5.s"][None].state is state


def test_pbspro_cancel_argv() -> None:
    assert PRO.cancel_argv("123[].server") == ["qdel", "123[].server"]
    assert PRO.cancel_argv("123[].server", [4, 7]) == ["qdel", "123[4].server", "123[7].server"]
    assert PRO.cancel_argv("123[]", [0]) == ["qdel", "123[0]"]


# -- Torque status (qstat -f text) ----------------------------------------------------------


def test_torque_status_argv() -> None:
    assert TORQUE.status_argv(["1.s", "2[].s"]) == ["qstat", "-f", "-t", "1.s", "2[].s"]
    assert TorqueDialect(list_subjobs=False).status_argv(["144"]) == ["qstat", "-f", "144"]
    assert TORQUE.final_status_argv(["1.s"]) is None


def test_torque_parse_completed_job_with_exit_status() -> None:
    parsed = TORQUE.parse_status(data("torque/qstat-f-9-completed.txt"), ["9.torque01.bcgsc.ca"])
    assert parsed == {"9.torque01.bcgsc.ca": {None: TaskStatus(TaskState.COMPLETED, "C", 0, None)}}


def test_torque_parse_array_task_killed_by_signal() -> None:
    # exit_status 271 = 256 + SIGTERM: deleted because its dependency failed.
    job = "48[].torque01.bcgsc.ca"
    parsed = TORQUE.parse_status(data("torque/qstat-f-48-1-array-task.txt"), [job])
    assert parsed == {job: {1: TaskStatus(TaskState.FAILED, "C", None, 15)}}


def test_torque_parse_several_blocks() -> None:
    text = (
        data("torque/qstat-f-9-completed.txt") + "\n" + data("torque/qstat-f-48-1-array-task.txt")
    )
    parsed = TORQUE.parse_status(text, ["9", "48[]"])
    assert set(parsed) == {"9", "48[]"}
    assert parsed["48[]"][1].signal == 15


def test_torque_parse_unknown_job_text() -> None:
    assert TORQUE.parse_status(data("torque/qstat-unknown-job.stderr"), ["123"]) == {}


def test_torque_cancel_argv() -> None:
    assert TORQUE.cancel_argv("123[].server") == ["qdel", "123[].server"]
    assert TORQUE.cancel_argv("123[].server", [4, 7]) == ["qdel", "-t", "4,7", "123[].server"]


# -- recordings from our test bed: SchedMD's Torque wrappers over Slurm 22.05 -------------------

WRAPPERS = TorqueDialect(list_subjobs=False)


@pytest.mark.parametrize(
    ("path", "job_id", "expected"),
    [
        ("qstat-f-running.txt", "112", TaskStatus(TaskState.RUNNING, "R")),
        ("qstat-f-queued.txt", "115", TaskStatus(TaskState.PENDING, "Q")),
        ("qstat-f-array-queued.txt", "114", TaskStatus(TaskState.PENDING, "Q")),
        # The wrappers print no exit status at all: C is all there is, for success, failure
        # and qdel alike.
        ("qstat-f-completed.txt", "115", TaskStatus(TaskState.COMPLETED, "C")),
        ("qstat-f-failed-exit3.txt", "117", TaskStatus(TaskState.COMPLETED, "C")),
        ("qstat-f-after-qdel.txt", "112", TaskStatus(TaskState.COMPLETED, "C")),
    ],
)
def test_wrappers_qstat_f(path: str, job_id: str, expected: TaskStatus) -> None:
    parsed = WRAPPERS.parse_status(data(f"torque-wrappers/{path}"), [job_id])
    assert parsed == {job_id: {None: expected}}


def test_wrappers_qsub_prints_bare_ids() -> None:
    assert WRAPPERS.parse_submit(data("torque-wrappers/qsub-script.txt")) == "112"
    assert WRAPPERS.parse_submit(data("torque-wrappers/qsub-array.txt")) == "114"


def test_wrappers_reject_x_and_are_detected_as_torque_wrappers() -> None:
    stderr = data("torque-wrappers/qstat-x-unsupported.stderr")
    assert stderr.startswith("Unknown option: x")
    assert detect_pbs_flavor("", stderr) == "torque"
    assert is_slurm_torque_wrapper(stderr)


def test_wrappers_short_listing_is_not_parsed_as_full_status() -> None:
    # Only `qstat -f` is parsed; the short table has no `Job Id:` blocks.
    assert WRAPPERS.parse_status(data("torque-wrappers/qstat-id-completed.txt"), ["115"]) == {}


def test_wrappers_purged_or_unknown_job_prints_nothing() -> None:
    # qstat exits 153 with empty output: the job is simply absent from the result.
    assert WRAPPERS.parse_status(data("torque-wrappers/qstat-f-purged.txt"), ["112"]) == {}
    assert WRAPPERS.parse_status(data("torque-wrappers/qstat-unknown-id.txt"), ["999999"]) == {}


def test_pbspro_throttle_argv_sets_max_run_subjobs() -> None:
    assert PRO.throttle_argv("123[].server", 5) == [
        "qalter", "-W", "max_run_subjobs=5", "123[].server"
    ]


def test_torque_cannot_raise_a_throttle() -> None:
    assert TORQUE.throttle_argv("123[].server", 5) is None
    assert TorqueDialect(list_subjobs=False).throttle_argv("123", 5) is None


# -- a queued job's scheduler comment -------------------------------------------------------
#
# PBS Pro's scheduler says why a queued job waits in its ``comment``. The two texts below are
# the ones OpenPBS's own functional tests expect from it (openpbs/openpbs,
# test/tests/functional/pbs_allpart.py: test_too_many_ncpus and test_rassn), set on the
# recorded ``qstat -f -F json`` output of job 1008 turned back into a queued job.

NEVER = "Can Never Run: Insufficient amount of resource: ncpus (R: 3 A: 2 T: 2)"
WAITS = "Not Running: Insufficient amount of resource: ncpus (R: 2 A: 1 T: 2)"


def _queued_1008(comment: str) -> str:
    document = json.loads(data("pbspro/qstat-f-F-json-1008.json"))
    attrs = document["Jobs"]["1008.qot-calc0"]
    attrs["job_state"] = "Q"
    attrs["comment"] = comment
    return json.dumps(document, indent=4)


def test_pbspro_can_never_run_is_a_pending_reason_that_never_clears() -> None:
    parsed = PRO.parse_status(_queued_1008(NEVER), ["1008.qot-calc0"])
    status = parsed["1008.qot-calc0"][None]
    assert status == TaskStatus(TaskState.PENDING, f"Q ({NEVER})")
    assert PRO.never_runs(status) == f"Q ({NEVER})"
    # Reconciliation then ends the job after the grace, and has it deleted.
    rules = Rules(never_runs_grace=120.0)
    memory = JobMemory()
    first = reconcile(Observation([(0,)], parsed["1008.qot-calc0"]), memory, 0.0, rules,
                      PRO.never_runs)
    assert first.tasks[0].state is TaskState.PENDING and first.reasons == {f"Q ({NEVER})"}
    verdict = reconcile(Observation([(0,)], parsed["1008.qot-calc0"]), memory, 120.0, rules,
                        PRO.never_runs)
    assert verdict.tasks[0].state is TaskState.FAILED
    assert "Can Never Run" in verdict.tasks[0].raw_state
    assert verdict.cancel == {0}


def test_pbspro_not_running_is_a_plain_pending_reason() -> None:
    parsed = PRO.parse_status(_queued_1008(WAITS), ["1008.qot-calc0"])
    status = parsed["1008.qot-calc0"][None]
    assert status == TaskStatus(TaskState.PENDING, f"Q ({WAITS})")
    assert PRO.never_runs(status) is None
    verdict = reconcile(Observation([(0,)], parsed["1008.qot-calc0"]), JobMemory(), 500.0,
                        Rules(), PRO.never_runs)
    assert verdict.tasks[0].state is TaskState.PENDING
    assert verdict.reasons == {f"Q ({WAITS})"}  # logged


def test_pbspro_comment_of_a_running_job_is_not_a_reason() -> None:
    parsed = PRO.parse_status(data("pbspro/qstat-f-F-json-1008.json"), ["1008.qot-calc0"])
    assert parsed["1008.qot-calc0"][None] == TaskStatus(TaskState.RUNNING, "R")


def test_pbspro_can_never_run_from_json_qstat_cannot_parse() -> None:
    # The line-by-line reading of invalid JSON (unescaped quotes in Variable_List) sees it too.
    text = _queued_1008(NEVER).replace('"PBS_O_HOME":"/home/qoot"', '"PBS_O_HOME":"/ho"me"')
    text = text.replace('"PBS_O_HOME": "/home/qoot"', '"PBS_O_HOME": "/ho"me"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    status = PRO.parse_status(text, ["1008"])["1008"][None]
    assert PRO.never_runs(status) is not None
