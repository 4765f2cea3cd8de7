"""The work directory is the user's own before anything in it is trusted, and the uploaded
worker is trusted for its bytes, not its name.

Local tests open a batch transport on this machine (no host: LocalShell); the testbed tests
log in as ``slurmuser`` over real SSH and point it at directories staged by another user.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed_facts import remote_python, require_testbed

from remote_futures import worker
from remote_futures.envsync import EnvSpec
from remote_futures.errors import ConfigurationError
from remote_futures.transports.batch import BatchOptions, SlurmTransport
from remote_futures.transports.remote import RemoteTransport
from remote_futures.transports.ssh_host import SSHHostOptions, SSHHostTransport

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

WORKER = Path(worker.__file__).read_bytes()
WORKER_NAME = f"worker-{hashlib.sha256(WORKER).hexdigest()[:16]}.py"


def _local(work_dir: Path) -> SlurmTransport:
    return SlurmTransport(BatchOptions(work_dir=str(work_dir), env=EnvSpec(mode="off")),
                          max_workers=1)


async def _open(transport: RemoteTransport) -> None:
    # Only the work-directory setup shared by every shell-based transport (the batch
    # transport's own open() would also ask the scheduler for its limits).
    await RemoteTransport.open(transport)


async def test_a_new_work_dir_and_every_level_created_are_private(tmp_path: Path) -> None:
    work = tmp_path / "scratch" / "deep" / "rf"
    transport = _local(work)
    await _open(transport)
    for level in (tmp_path / "scratch", tmp_path / "scratch" / "deep", work, work / "jobs"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    await transport.close()


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
async def test_a_work_dir_others_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    work = tmp_path / "shared"
    work.mkdir()
    work.chmod(mode)
    transport = _local(work)
    with pytest.raises(ConfigurationError, match=r"refusing to use the work directory .* is "
                                                 r"writable by .*chmod go-w"):
        await _open(transport)
    assert not (work / "jobs").exists()  # refused before anything was created in it
    await transport.close()


async def test_a_trusted_directory_inside_that_others_can_write_to_is_refused(
    tmp_path: Path,
) -> None:
    work = tmp_path / "rf"
    (work / "envs").mkdir(parents=True)
    work.chmod(0o700)
    (work / "envs").chmod(0o777)  # venvs planted there would run in every job
    transport = _local(work)
    with pytest.raises(ConfigurationError, match=r"/envs is writable by its group and everyone"):
        await _open(transport)
    await transport.close()


async def test_a_work_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rf").mkdir(mode=0o700)
    (tmp_path / "rf" / "jobs").write_text("not a directory")
    transport = _local(tmp_path / "rf")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        await _open(transport)
    await transport.close()


async def test_check_work_dir_names_the_owner() -> None:
    from remote_futures.transports.remote import check_work_dir

    listing = (
        "@@rf-uid 1001\n"
        "@@rf-dir . drwx------ 2 1002 1002 4096 Nov 30 12:00 /scratch/rf/.\n"
        "@@rf-dir jobs drwx------ 2 1002 1002 4096 Nov 30 12:00 /scratch/rf/jobs\n"
    )
    with pytest.raises(ConfigurationError, match=r"belongs to user id 1002, not to this user "
                                                 r"\(id 1001\)"):
        check_work_dir(listing, "/scratch/rf", "host")
    check_work_dir(listing.replace("1002 1002", "1001 1001"), "/scratch/rf", "host")


async def test_a_planted_worker_is_replaced_before_use(tmp_path: Path) -> None:
    work = tmp_path / "rf"
    work.mkdir(mode=0o700)
    planted = work / WORKER_NAME
    planted.write_bytes(b"import os; os.system('touch /tmp/owned')\n")
    transport = _local(work)
    await _open(transport)
    await transport.prepare()
    assert transport.worker_path == str(planted)
    assert planted.read_bytes() == WORKER
    await transport.close()


async def test_a_relative_work_dir_is_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    transport = _local(Path("rf-relative"))
    await _open(transport)
    assert transport.work_dir == f"{tmp_path}/rf-relative"
    assert (tmp_path / "rf-relative" / "jobs").is_dir()
    await transport.close()


# --- on the testbed: another user's directory -----------------------------------------------


def _as_root() -> None:
    if os.geteuid() != 0:
        message = "staging another user's directory needs root"
        if os.environ.get("CI") == "true":  # CI runs as root: never hide these there
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def shared_scratch() -> Iterator[tuple[Path, str]]:
    """A world-writable, sticky scratch directory (like /scratch), removed afterwards."""
    facts = require_testbed("ssh")
    _as_root()
    root = Path(f"/tmp/rf-scratch-{uuid.uuid4().hex[:8]}")
    root.mkdir()
    root.chmod(0o1777)
    try:
        yield root, facts.pbs_user
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _ssh_transport(work_dir: str) -> SSHHostTransport:
    facts = require_testbed("ssh")
    options = SSHHostOptions(
        host=facts.host, port=facts.port, user=facts.slurm_user, identity_file=str(facts.key),
        known_hosts=str(facts.known_hosts), work_dir=work_dir, env=EnvSpec(mode="off"),
        python=remote_python(facts),
    )
    return SSHHostTransport(options, max_workers=1)


def _mkdir_as(user: str, path: Path, mode: int) -> None:
    subprocess.run(["runuser", "-u", user, "--", "mkdir", "-m", f"{mode:o}", str(path)],
                   check=True)
    path.chmod(mode)


@pytest.mark.testbed
async def test_a_work_dir_created_first_by_another_user_is_refused(
    shared_scratch: tuple[Path, str],
) -> None:
    root, other = shared_scratch
    work = root / "rf"
    _mkdir_as(other, work, 0o777)  # the other user got there first and left it open
    transport = _ssh_transport(str(work))
    try:
        with pytest.raises(ConfigurationError, match=r"belongs to user id \d+, not to this user"):
            await _open(transport)
    finally:
        await transport.close()
    assert not (work / "jobs").exists()


@pytest.mark.testbed
async def test_a_work_dir_of_another_user_not_writable_is_refused_too(
    shared_scratch: tuple[Path, str],
) -> None:
    root, other = shared_scratch
    work = root / "rf"
    _mkdir_as(other, work, 0o755)
    transport = _ssh_transport(str(work))
    try:
        with pytest.raises(ConfigurationError, match="belongs to user id"):
            await _open(transport)
    finally:
        await transport.close()


@pytest.mark.testbed
async def test_on_the_testbed_a_new_work_dir_is_private_and_a_planted_worker_replaced(
    shared_scratch: tuple[Path, str],
) -> None:
    root, _ = shared_scratch
    work = root / "mine" / "rf"
    transport = _ssh_transport(str(work))
    try:
        await _open(transport)
        listing = await transport.shell.run(f"stat -c '%a %U' {shlex.quote(str(work.parent))} "
                                            f"{shlex.quote(str(work))}")
        facts = require_testbed("ssh")
        assert listing.stdout.split() == ["700", facts.slurm_user, "700", facts.slurm_user]
        # Someone able to write there (here: the user itself, by mistake) left another worker.
        planted = f"{work}/{WORKER_NAME}"
        await transport.shell.write_file(planted, b"raise SystemExit('planted')\n")
        await transport.prepare()
        assert await transport.shell.read_file(planted) == WORKER
    finally:
        await transport.close()


async def test_makedirs_makes_every_level_it_creates_private(tmp_path: Path) -> None:
    from remote_futures.shell import LocalShell

    old = os.umask(0o002)  # a group-friendly umask, common with user private groups
    try:
        await LocalShell().makedirs(str(tmp_path / "a" / "b" / "c"), mode=0o755)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b" / "c").stat().st_mode) == 0o755
