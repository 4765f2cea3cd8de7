"""The warm pools (``local``, ``ssh``) carry what calls print as frames on the channel their
outcomes use: a call's threads printing at once, or a process it forks, must never corrupt it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from _outcapture import OutputRecorder
from _printing import print_from_threads, print_in_forked_child, speak
from test_output_contract import lines

from remote_futures import RemoteExecutor

pytestmark = pytest.mark.timeout(300)

MakeExecutor = Callable[..., RemoteExecutor]


@pytest.fixture(params=["local", "ssh"])
def contract_target(request: pytest.FixtureRequest) -> str:
    """The pools (overrides the contract suite's list)."""
    name: str = request.param
    return name


def test_threads_of_a_call_print_without_corrupting_the_channel(
    make_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    seen.start()
    ex = make_executor(max_workers=2, output_prefix="")
    assert list(ex.map(print_from_threads, [300, 300])) == [300, 300]
    assert ex.submit(speak, "after").result(timeout=120) == "after"
    seen.wait_for("stdout says after")
    assert sorted(line for line in lines(seen.out) if line.startswith("thread line")) == sorted(
        f"thread line {i}" for i in range(300) for _ in range(2))
    assert len([line for line in lines(seen.err) if line.startswith("main line")]) == 600


def test_a_process_forked_by_a_call_prints_without_corrupting_the_channel(
    make_executor: MakeExecutor, seen: OutputRecorder
) -> None:
    seen.start()
    ex = make_executor(max_workers=1)
    assert ex.submit(print_in_forked_child).result(timeout=120) == 0
    assert ex.submit(speak, "after fork").result(timeout=120) == "after fork"
    seen.wait_for("stdout says after fork")
    assert lines(seen.out).count("printed by a forked child") == 1
    assert lines(seen.out).count("printed by the parent") == 1
