"""A remote side without access to the package index (an air-gapped login node) still syncs.

The index is an HTTP server on loopback serving the test wheelhouse. The pretend remote host's
commands run with every proxy variable pointing at a closed loopback port, so its uv cannot
reach that index; this process (the client) can.
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
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


def _uv_wheel(directory: Path, wheelhouse: Path) -> Path:
    """A ``uv`` wheel for this Linux machine holding this machine's uv binary, as PyPI's do."""
    import platform
    import shutil as _shutil

    from envsync_wheelhouse import _write_wheel

    from remote_futures.envsync.ship import local_uv_executable

    binary = local_uv_executable()
    assert binary is not None
    version = "0.0.1"
    info = f"uv-{version}.dist-info"
    tag = f"py3-none-manylinux_2_17_{platform.machine()}"
    files = {
        f"uv-{version}.data/scripts/uv": Path(binary).read_bytes(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: uv\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n".encode(),
    }
    target = directory / "uv-index"
    target.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        _shutil.copy(wheel, target)
    _write_wheel(target / f"uv-{version}-{tag}.whl", info, files)
    return target


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_no_uv_no_network_and_another_platform_here_gets_uv_from_its_wheel(
    tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import shutil as _shutil
    import subprocess

    from remote_futures.envsync import bootstrap

    system_python = _shutil.which("python3", path="/usr/bin:/bin")
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    minor = subprocess.run([system_python or "false", "-c",
                            "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True).stdout.strip()
    if system_python is None or minor != want:
        pytest.skip(f"needs a system python{want} without uv beside it")
    # This machine's own uv binary is not offered: it stands for a client on another
    # platform (a laptop), which is what cannot be staged on one machine.
    monkeypatch.setattr(bootstrap, "same_machine", lambda facts: False)
    index_dir = _uv_wheel(tmp_path, wheelhouse)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(index_dir))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    home.mkdir()
    proxy = f"http://127.0.0.1:{_closed_port()}"
    shell = CountingShell(env_prefix(
        PATH="/usr/bin:/bin", HOME=str(home), PIP_RETRIES="0", PIP_TIMEOUT="5",
        NO_PROXY="", no_proxy="", UV_HTTP_RETRIES="0",
        **{name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                                    "https_proxy", "all_proxy")},
    ))
    try:
        spec = EnvSpec(find_links=(f"http://127.0.0.1:{server.server_address[1]}/",),
                       no_index=True)
        caplog.set_level(logging.INFO, "remote_futures.envsync")
        result = await sync_environment(shell, python=system_python, work_dir="work", spec=spec,
                                        local={"rf-tiny-a": "1.0", "cloudpickle": CLOUDPICKLE})
    finally:
        server.shutdown()
        server.server_close()
    assert "uploaded uv" in caplog.text and "from its wheel" in caplog.text
    uploaded = home / "work" / "bin" / "uv"
    assert os.access(uploaded, os.X_OK)
    done = subprocess.run([result.python, "-c", "import rf_tiny_a; print(rf_tiny_a.__version__)"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "1.0", done.stderr
    assert result.uploaded_wheels  # the packages came the same way
