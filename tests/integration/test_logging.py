"""At INFO, a remote run logs remote_futures' own events, not asyncssh's chatter (testbed)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from testbed_facts import remote_python, require_testbed

from remote_futures import RemoteExecutor
from remote_futures.logs import THIRD_PARTY_LOGGERS, quiet_third_party

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def third_party_levels_unset() -> Iterator[None]:
    """Each test starts as a fresh process would: nobody configured those loggers."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _run_one_call(remote_executor: Callable[..., RemoteExecutor]) -> None:
    facts = require_testbed("ssh")
    ex = remote_executor("ssh", env="off", python=remote_python(facts))
    assert ex.submit(pow, 2, 5).result(timeout=120) == 32
    ex.shutdown(wait=True)


@pytest.mark.testbed
def test_info_logs_the_submission_and_no_asyncssh_lines(
    remote_executor: Callable[..., RemoteExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # as logging.basicConfig(level=logging.INFO) would
    _run_one_call(remote_executor)
    asyncssh_lines = [r for r in caplog.records if r.name.startswith("asyncssh")]
    assert asyncssh_lines == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("remote_futures")]
    assert any(m.startswith("submitted ssh on slurmuser@") for m in ours), ours


@pytest.mark.testbed
def test_a_level_the_user_set_on_asyncssh_is_kept(
    remote_executor: Callable[..., RemoteExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.INFO)  # asked for
    _run_one_call(remote_executor)
    assert logging.getLogger("asyncssh").level == logging.INFO
    assert any(r.name.startswith("asyncssh") for r in caplog.records)


def test_quiet_third_party_only_touches_unset_loggers() -> None:
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    quiet_third_party()
    assert logging.getLogger("asyncssh").level == logging.WARNING
    assert logging.getLogger("botocore").level == logging.DEBUG
