"""SSHShell's construction-time checks (no server needed)."""

from __future__ import annotations

import sys

import pytest

from remote_futures.errors import ConfigurationError
from remote_futures.ssh import SSHShell, _parse_jump  # imports without asyncssh (lazy)


def test_bad_options_raise_configuration_error() -> None:
    pytest.importorskip("asyncssh")
    for bad in ({"max_channels": 0}, {"reconnect_attempts": 0}, {"reconnect_backoff": -1}):
        with pytest.raises(ConfigurationError):
            SSHShell("h", **bad)
    with pytest.raises(ConfigurationError):
        SSHShell("")


def test_missing_asyncssh_gives_an_actionable_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncssh", None)  # makes `import asyncssh` fail
    with pytest.raises(ImportError, match=r"pip install 'remote_futures\[ssh\]'"):
        SSHShell("h")


@pytest.mark.parametrize(
    ("hop", "parsed"),
    [
        ("jump", (None, "jump", None)),
        ("alice@jump", ("alice", "jump", None)),
        ("alice@jump:2200", ("alice", "jump", 2200)),
        ("[::1]:2200", (None, "::1", 2200)),
        ("bob@[fe80::1]", ("bob", "fe80::1", None)),
    ],
)
def test_parse_proxy_jump_entries(hop: str, parsed: tuple[str | None, str, int | None]) -> None:
    assert _parse_jump(hop) == parsed
