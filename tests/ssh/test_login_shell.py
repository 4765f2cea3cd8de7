"""Commands run under /bin/sh whatever the account's login shell is (tcsh and csh accounts).

sshd runs a command as ``<login shell> -c <command>``; the in-process server of conftest.py
does the same with a real tcsh or csh from this machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("asyncssh")

# The environment sync test reuses the envsync tests' tiny wheels.
_ENVSYNC_TESTS = str(Path(__file__).resolve().parent.parent / "envsync")
if _ENVSYNC_TESTS not in sys.path:
    sys.path.insert(0, _ENVSYNC_TESTS)
from envsync_support import CLOUDPICKLE  # noqa: E402
from envsync_wheelhouse import build_wheelhouse  # noqa: E402

from remote_futures.envsync import EnvSpec, sync_environment  # noqa: E402
from remote_futures.shell import posix_command  # noqa: E402

if TYPE_CHECKING:
    from conftest import InProcessSSHServer

pytestmark = [pytest.mark.timeout(120)]

#: POSIX sh that csh cannot parse: quoted newlines, $(...), 2>, [ ], a here-document, `!`.
SCRIPT = """x=$(printf 'a\\nb' 2>/dev/null)
if [ "$x" = "$(printf 'a\\nb')" ]; then echo "two lines: ok"; fi
cat <<'END'
100% of $HOME and `this` stay \\literal\\ here!
END
for i in 1 2 3; do printf '%s,' "$i"; done; echo
exit 7"""
EXPECTED = "two lines: ok\n100% of $HOME and `this` stay \\literal\\ here!\n1,2,3,\n"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


def _csh_shells() -> list[str]:
    return [path for path in (shutil.which("tcsh"), shutil.which("csh")) if path]


def _need(shell: str) -> str:
    """The path of ``shell``; skip without it on a dev box, but fail in CI, whose testbed
    install (tests/testbed/install.sh) provides tcsh."""
    found = shutil.which(shell)
    if found is None:
        message = f"{shell} is not installed here (apt-get install tcsh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(params=["tcsh", "csh"])
def login_shell(request: pytest.FixtureRequest) -> str:
    return _need(str(request.param))


def test_the_script_really_breaks_a_csh_login_shell() -> None:
    """The staging is real: without the wrapper, csh fails on this script."""
    shells = [_need("tcsh"), *_csh_shells()]
    for shell in shells:
        done = subprocess.run([shell, "-c", SCRIPT], capture_output=True, text=True)
        assert done.stdout != EXPECTED


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash", "tcsh", "csh"])
def test_posix_command_gives_the_same_result_under_each_login_shell(shell: str) -> None:
    path = _need(shell)
    wrapped = subprocess.run([path, "-c", posix_command(SCRIPT)], capture_output=True,
                             text=True, input="")
    direct = subprocess.run(["/bin/sh", "-c", SCRIPT], capture_output=True, text=True)
    assert (wrapped.returncode, wrapped.stdout) == (direct.returncode, direct.stdout)
    assert (wrapped.returncode, wrapped.stdout) == (7, EXPECTED)


def test_posix_command_passes_any_bytes() -> None:
    every = "".join(chr(c) for c in range(1, 128)) + "é€"
    for shell in ["/bin/sh", *_csh_shells()]:
        command = posix_command(f"printf '%s' {shlex.quote(every)}")
        done = subprocess.run([shell, "-c", command], capture_output=True)
        assert (done.returncode, done.stdout) == (0, every.encode()), shell
    # The wrapper's own argument holds only characters every login shell keeps literal.
    argument = posix_command(every).split("'", 1)[1].rsplit("'", 1)[0]
    assert not set(argument) & set("'!\n\r\t") and all(32 <= ord(c) < 127 for c in argument)


@pytest.mark.asyncio
async def test_run_under_a_csh_login_shell(
    ssh_server: InProcessSSHServer, login_shell: str
) -> None:
    ssh_server.login_shell = login_shell
    async with ssh_server.shell() as sh:
        done = await sh.run(SCRIPT)
        assert (done.returncode, done.stdout) == (7, EXPECTED), done.stderr
        assert done.command == SCRIPT  # errors name the command as the caller wrote it
        fed = await sh.run("read line; echo \"got $line\"", input=b"hello\n")
        assert fed.stdout == "got hello\n"
        assert await sh.home()  # SFTP, then `printf %s "$HOME"` would be the fallback
    assert ssh_server.received and all(
        line.startswith("exec /bin/sh -c ") for line in ssh_server.received
    )


@pytest.mark.asyncio
async def test_environment_sync_over_a_csh_login_shell(
    ssh_server: InProcessSSHServer, login_shell: str, tmp_path: Path, wheelhouse: Path
) -> None:
    """The sync's long multi-line commands (a probe and an installer sent with python -c)."""
    ssh_server.login_shell = login_shell
    spec = EnvSpec(find_links=(str(wheelhouse),), no_index=True)
    local = {"rf-tiny-a": "1.0", "cloudpickle": CLOUDPICKLE}
    async with ssh_server.shell() as sh:
        first = await sync_environment(sh, python=sys.executable, work_dir=str(tmp_path / "w"),
                                       spec=spec, local=local)
        done = await sh.run(f"{first.python} -c 'import rf_tiny_a; print(rf_tiny_a.__version__)'")
        assert done.stdout.strip() == "1.0", done.stderr
        again = await sync_environment(sh, python=sys.executable, work_dir=str(tmp_path / "w"),
                                       spec=spec, local=local)
        assert again.cached and again.round_trips == 1
