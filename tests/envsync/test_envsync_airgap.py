"""A remote side without access to the package index (an air-gapped login node) still syncs.

The index is an HTTP server on loopback serving the test wheelhouse. The pretend remote host's
commands run with every proxy variable pointing at a closed loopback port, so its uv cannot
reach that index; this process (the client) can.
"""

from __future__ import annotations

import functools
import http.server
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from envsync_support import CLOUDPICKLE, CountingShell, env_prefix

from remote_futures.envsync import EnvSpec, sync_environment
from remote_futures.envsync.remote import RemoteFacts
from remote_futures.envsync.wheelhouse import network_failure, platform_tags
from remote_futures.errors import RemoteEnvironmentError

PYTHON = sys.executable


@pytest.fixture
def index_url(wheelhouse: Path) -> Iterator[str]:
    """The wheelhouse as a find-links page over HTTP on loopback."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheelhouse))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    server = Quiet(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _offline_shell() -> CountingShell:
    proxy = f"http://127.0.0.1:{_closed_port()}"
    variables = {name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                          "http_proxy", "https_proxy", "all_proxy")}
    return CountingShell(env_prefix(NO_PROXY="", no_proxy="", UV_HTTP_RETRIES="0", **variables))


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_an_air_gapped_remote_gets_wheels_resolved_and_uploaded_here(
    tmp_path: Path, index_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = EnvSpec(find_links=(index_url,), no_index=True)
    local = {"rf-tiny-b": "1.0", "rf-tiny-a": "1.0", "cloudpickle": CLOUDPICKLE}
    shell = _offline_shell()
    # The staging holds: the pretend remote's uv cannot reach the index.
    probe = await shell.run(f"{sys.executable} -m pip download --no-deps --no-index "
                            f"--find-links {index_url} -d {tmp_path / 'x'} rf-tiny-c -q")
    assert not probe.ok

    caplog.set_level(logging.INFO, "remote_futures.envsync")
    result = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path / "w"),
                                    spec=spec, local=local)
    assert "cannot reach the package index" in caplog.text
    assert sorted(result.uploaded_wheels) == sorted([
        f"cloudpickle-{CLOUDPICKLE}-py3-none-any.whl", "rf_tiny_a-1.0-py3-none-any.whl",
        "rf_tiny_b-1.0-py3-none-any.whl",
    ])
    assert sorted(result.installed) == sorted(
        ["rf-tiny-a==1.0", "rf-tiny-b==1.0", f"cloudpickle=={CLOUDPICKLE}"]
    )
    done = await shell.run(f"{result.python} -c 'import rf_tiny_a, rf_tiny_b, cloudpickle; "
                           "print(rf_tiny_a.__version__)'")
    assert done.stdout.strip() == "1.0", done.stderr
    # check+probe, installer (fails: no network), mkdir, 3 uploads, installer (ONE uv call).
    assert result.round_trips == 7
    installers = [c for c in shell.commands if "def _build(" in c]
    assert len(installers) == 2

    again = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path / "w"),
                                   spec=spec, local=local)
    assert again.cached and again.round_trips == 1


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_remote_that_reaches_the_index_uploads_nothing(
    tmp_path: Path, index_url: str
) -> None:
    spec = EnvSpec(find_links=(index_url,), no_index=True)
    result = await sync_environment(CountingShell(env_prefix()), python=PYTHON,
                                    work_dir=str(tmp_path / "w"), spec=spec,
                                    local={"rf-tiny-a": "1.1", "cloudpickle": CLOUDPICKLE})
    assert result.uploaded_wheels == [] and result.round_trips == 2


def test_network_failures_are_told_from_answers() -> None:
    refused = ("error: Failed to read `--find-links` URL: http://127.0.0.1:1/\n  cause: "
               "Request failed after 3 retries\n  cause: error sending request for url\n"
               "  cause: tcp connect error\n  cause: Connection refused (os error 111)")
    assert network_failure(refused)
    assert network_failure("cause: dns error: failed to lookup address information")
    assert not network_failure(
        "No solution found when resolving dependencies:\n  Because there is no version of "
        "rf-does-not-exist==9.9 and you require rf-does-not-exist==9.9, ..."
    )
    assert not network_failure("HTTP status client error (404 Not Found) for url")


def _facts(system: str, machine: str, libc: tuple[str, str]) -> RemoteFacts:
    return RemoteFacts(
        version=(3, 11, 2), executable="/usr/bin/python3", base_executable="/usr/bin/python3",
        in_venv=False, system=system, machine=machine, libc=libc, markers={}, packages={},
        home="/home/u", hostname="login1", uv=None, uv_version=None, matching_python=None,
        notes=(),
    )


def test_platform_tags_follow_the_remote_glibc_and_machine() -> None:
    tags = platform_tags(_facts("Linux", "x86_64", ("glibc", "2.28")))
    assert tags[0] == "manylinux_2_28_x86_64"
    assert "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert platform_tags(_facts("Linux", "aarch64", ("glibc", "2.17")))[:2] == [
        "manylinux_2_17_aarch64", "manylinux2014_aarch64",
    ]
    with pytest.raises(RemoteEnvironmentError, match="cannot pick wheels"):
        platform_tags(_facts("Darwin", "arm64", ("", "")))
