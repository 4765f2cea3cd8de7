"""sync_environment over real SSH as the testbed's ``slurmuser`` (python3 without cloudpickle)."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from envsync_support import CLOUDPICKLE

from remote_futures.envsync import EnvSpec, sync_environment

pytest.importorskip("asyncssh")  # before importing SSHShell, which needs it
from testbed_facts import require_testbed  # tests/ is put on sys.path by conftest

from remote_futures.shell import CommandResult, Shell
from remote_futures.ssh import SSHShell

pytestmark = [pytest.mark.testbed, pytest.mark.asyncio, pytest.mark.timeout(300)]


@pytest_asyncio.fixture
async def remote() -> AsyncIterator[tuple[SSHShell, str]]:
    """An open shell as slurmuser, and a scratch directory in its home (removed afterwards)."""
    facts = require_testbed("ssh")
    shell = SSHShell(facts.host, port=facts.port, user=facts.slurm_user,
                     identity_file=str(facts.key), known_hosts=str(facts.known_hosts))
    async with shell:
        scratch = f"{await shell.home()}/rf-envsync-test-{uuid.uuid4().hex[:8]}"
        try:
            yield shell, scratch
        finally:
            await shell.run(f"rm -rf {shlex.quote(scratch)}")


async def test_sync_over_ssh_gives_a_python_with_cloudpickle(
    remote: tuple[SSHShell, str], wheelhouse: Path
) -> None:
    shell, scratch = remote
    base = await shell.run("python3 -c 'import cloudpickle'")
    # The remote side cannot see this machine's temporary wheelhouse: copy it over.
    await shell.makedirs(f"{scratch}/wheels")
    for wheel in wheelhouse.glob("*.whl"):
        await shell.write_file(f"{scratch}/wheels/{wheel.name}", wheel.read_bytes())
    spec = EnvSpec(find_links=(f"{scratch}/wheels",), no_index=True)
    local = {"rf-tiny-a": "1.0", "cloudpickle": CLOUDPICKLE}

    first = await sync_environment(shell, python="python3", work_dir=f"{scratch}/work",
                                   spec=spec, local=local)
    assert first.venv_dir is not None and first.venv_dir.startswith(scratch)
    assert sorted(first.installed) == sorted([f"cloudpickle=={CLOUDPICKLE}", "rf-tiny-a==1.0"])
    done = await shell.run(
        f"{shlex.quote(first.python)} -c 'import cloudpickle, rf_tiny_a; "
        "print(cloudpickle.__version__, rf_tiny_a.__version__)'"
    )
    assert done.ok, done.stderr
    assert done.stdout.split() == [CLOUDPICKLE, "1.0"]
    if not base.ok:  # the testbed's system python3 has no cloudpickle: the venv made the change
        assert "cloudpickle" in base.stderr

    again = await sync_environment(shell, python="python3", work_dir=f"{scratch}/work",
                                   spec=spec, local=local)
    assert again.cached and again.round_trips == 1 and again.python == first.python


class _PrefixedShell(Shell):
    """An SSH shell whose commands all start with ``prefix`` (environment for the remote)."""

    def __init__(self, inner: SSHShell, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.label = inner.label

    async def run(
        self, command: str, *, input: bytes | None = None, timeout: float | None = None,
        retry: bool = True,
    ) -> CommandResult:
        return await self.inner.run(self.prefix + command, input=input, timeout=timeout,
                                    retry=retry)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await self.inner.write_file(path, data, mode=mode)

    async def read_file(self, path: str) -> bytes:
        return await self.inner.read_file(path)


async def test_an_air_gapped_login_node_over_ssh_syncs_from_uploaded_wheels(
    remote: tuple[SSHShell, str], wheelhouse: Path
) -> None:
    """slurmuser's commands get every proxy variable pointing at a closed loopback port, so
    its uv cannot reach the index (an HTTP server on loopback that this process can reach)."""
    import functools
    import http.server
    import socket
    import threading

    shell, scratch = remote
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheelhouse))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    proxy = f"http://127.0.0.1:{closed}"
    prefix = "".join(f"{name}={proxy}; export {name}; " for name in (
        "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"))
    offline = _PrefixedShell(shell, prefix + "NO_PROXY=; no_proxy=; export NO_PROXY no_proxy; ")
    index = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        reach = await offline.run(f"python3 -c 'import urllib.request as u; u.urlopen({index!r})'")
        assert not reach.ok  # the staging holds: no way to the index from there
        spec = EnvSpec(find_links=(index,), no_index=True)
        local = {"rf-tiny-a": "1.1", "cloudpickle": CLOUDPICKLE}
        result = await sync_environment(offline, python="python3", work_dir=f"{scratch}/work",
                                        spec=spec, local=local)
        assert sorted(result.uploaded_wheels) == sorted(
            [f"cloudpickle-{CLOUDPICKLE}-py3-none-any.whl", "rf_tiny_a-1.1-py3-none-any.whl"]
        )
        done = await shell.run(f"{shlex.quote(result.python)} -c 'import cloudpickle, "
                               "rf_tiny_a; print(rf_tiny_a.__version__)'")
        assert done.stdout.strip() == "1.1", done.stderr
    finally:
        server.shutdown()
        server.server_close()
