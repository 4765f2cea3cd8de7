"""SSHShell against an in-process asyncssh server (conftest.py), and against the real sshd."""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

asyncssh = pytest.importorskip("asyncssh")

from testbed_facts import require_testbed  # noqa: E402 - tests/ is put on sys.path by conftest

from remote_futures.errors import ConfigurationError, TransportError  # noqa: E402
from remote_futures.ssh import SSHShell  # noqa: E402

if TYPE_CHECKING:
    from conftest import InProcessSSHServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


# -- commands ------------------------------------------------------------------------------


async def test_run_exit_codes_stdout_stderr(ssh_server: InProcessSSHServer) -> None:
    async with ssh_server.shell() as sh:
        ok = await sh.run("echo out; echo err >&2")
        assert (ok.returncode, ok.stdout, ok.stderr, ok.ok) == (0, "out\n", "err\n", True)
        bad = await sh.run("echo partial; exit 3")
        assert (bad.returncode, bad.stdout, bad.ok) == (3, "partial\n", False)
        assert bad.command == "echo partial; exit 3"
        with pytest.raises(TransportError, match="exit 3"):
            bad.check("the thing")


async def test_run_input_and_stdin_eof(ssh_server: InProcessSSHServer) -> None:
    async with ssh_server.shell() as sh:
        assert (await sh.run("tr a-z A-Z", input=b"hello\n")).stdout == "HELLO\n"
        big = os.urandom(300_000).hex().encode()  # several SSH windows' worth
        assert (await sh.run("wc -c", input=big)).stdout.strip() == str(len(big))
        # No input, or empty input: the command sees EOF at once instead of hanging.
        assert (await sh.run("cat; echo done", timeout=10)).stdout == "done\n"
        assert (await sh.run("cat; echo done", input=b"", timeout=10)).stdout == "done\n"


async def test_run_binary_output_is_decoded_with_replacement(
    ssh_server: InProcessSSHServer,
) -> None:
    async with ssh_server.shell() as sh:
        result = await sh.run(r"printf '\377ok'")
        assert result.stdout == "\ufffdok"


async def test_run_timeout_raises_and_stops_the_command(
    ssh_server: InProcessSSHServer,
) -> None:
    async with ssh_server.shell() as sh:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"timed out after 0\.5 s"):
            await sh.run("sleep 30", timeout=0.5)
        assert time.monotonic() - started < 5
        with anyio.fail_after(10):  # the server side sees the channel close and stops it
            while ssh_server.processes:
                await anyio.sleep(0.05)
        # The connection is still usable afterwards.
        assert (await sh.run("echo still")).stdout == "still\n"


async def test_concurrent_runs_are_bounded_by_max_channels(
    ssh_server: InProcessSSHServer,
) -> None:
    async with ssh_server.shell(max_channels=4) as sh:
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            results[i] = (await sh.run(f"sleep 0.05; echo {i}")).stdout.strip()

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
    assert results == {i: str(i) for i in range(30)}
    assert 1 <= ssh_server.peak_processes <= 4
    assert ssh_server.accepted == 1  # one connection carried every channel


async def test_refused_channel_on_a_live_connection_is_explained(
    ssh_server: InProcessSSHServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshd past MaxSessions refuses the channel ("open failed"): explained, no reconnect."""
    real = asyncssh.SSHClientConnection.create_process

    async def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "open failed")

    async with ssh_server.shell() as sh:
        await sh.run("true")
        monkeypatch.setattr(asyncssh.SSHClientConnection, "create_process", refuse)
        with pytest.raises(TransportError, match="MaxSessions") as info:
            await sh.run("true")
        assert isinstance(info.value.__cause__, asyncssh.ChannelOpenError)
        monkeypatch.setattr(asyncssh.SSHClientConnection, "create_process", real)
        assert (await sh.run("echo fine")).stdout == "fine\n"
    assert ssh_server.accepted == 1  # a refusal is not a drop: no reconnect


async def test_label_and_lazy_connect(ssh_server: InProcessSSHServer) -> None:
    sh = ssh_server.shell()
    assert sh.label == f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"
    try:
        assert (await sh.run("echo lazy")).stdout == "lazy\n"  # connects on first use
    finally:
        await sh.close()
    with pytest.raises(TransportError, match="closed"):
        await sh.run("true")


# -- files ---------------------------------------------------------------------------------


async def test_write_read_file_modes_and_overwrite(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    target = tmp_path / "sub" / "data.bin"
    async with ssh_server.shell() as sh:
        await sh.makedirs(str(target.parent))
        payload = os.urandom(200_000)
        await sh.write_file(str(target), payload, mode=0o640)
        assert target.read_bytes() == payload
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert await sh.read_file(str(target)) == payload

        # An existing file is replaced (posix-rename) and gets the new mode.
        await sh.write_file(str(target), b"second", mode=0o600)
        assert target.read_bytes() == b"second"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        # No temporary files are left behind.
        assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]


async def test_write_file_is_atomic_for_readers(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    """A reader polling the path sees the old or the new contents, never a partial file."""
    target = tmp_path / "outcome"
    old, new = b"a" * 500_000, b"b" * 500_000
    target.write_bytes(old)
    seen: set[bytes] = set()
    stop = False

    def poll() -> None:
        while not stop:
            seen.add(target.read_bytes())

    async with ssh_server.shell() as sh, anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, poll)
        for _ in range(5):
            await sh.write_file(str(target), new)
            await sh.write_file(str(target), old)
        stop = True
    assert seen <= {old, new}


async def test_write_file_without_posix_rename(
    ssh_server: InProcessSSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers without the posix-rename extension get rename (after removing the target)."""

    async def unsupported(self: Any, oldpath: Any, newpath: Any) -> None:
        raise asyncssh.SFTPOpUnsupported("posix-rename not supported")

    monkeypatch.setattr(asyncssh.SFTPClient, "posix_rename", unsupported)
    target = tmp_path / "f"
    async with ssh_server.shell() as sh:
        await sh.write_file(str(target), b"one")
        await sh.write_file(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.tmp")] == []


async def test_missing_files(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    async with ssh_server.shell() as sh:
        with pytest.raises(FileNotFoundError) as info:
            await sh.read_file(str(tmp_path / "nope"))
        assert info.value.filename == str(tmp_path / "nope")
        with pytest.raises(FileNotFoundError):
            await sh.write_file(str(tmp_path / "no-dir" / "f"), b"x")
        # The SFTP client survives the errors.
        await sh.write_file(str(tmp_path / "f"), b"x")
        assert await sh.read_file(str(tmp_path / "f")) == b"x"


async def test_read_files_concurrently_omits_missing(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    paths = []
    for i in range(60):
        p = tmp_path / f"task-{i}.out"
        if i % 3:
            p.write_bytes(f"result {i}".encode())
        paths.append(str(p))
    async with ssh_server.shell() as sh:
        found = await sh.read_files(paths)
        assert list(found) == [p for i, p in enumerate(paths) if i % 3]
        assert all(found[p] == f"result {paths.index(p)}".encode() for p in found)
        assert await sh.read_files([]) == {}
    assert ssh_server.accepted == 1


async def test_home_and_makedirs(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    async with ssh_server.shell() as sh:
        home = await sh.home()
        # asyncssh's SFTP server starts in the server process's working directory.
        assert home == os.path.realpath(os.getcwd())
        assert await sh.home() == home  # cached
        deep = tmp_path / "a" / "b" / "c"
        await sh.makedirs(str(deep), mode=0o700)
        await sh.makedirs(str(deep), mode=0o700)  # existing is fine
        assert stat.S_IMODE(deep.stat().st_mode) == 0o700


# -- host keys -----------------------------------------------------------------------------


async def test_unknown_host_key_is_refused(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    sh = ssh_server.shell(known_hosts=str(empty), reconnect_attempts=3)
    with pytest.raises(TransportError) as info:
        await sh.open()
    message = str(info.value)
    assert f"[127.0.0.1]:{ssh_server.port}" in message
    assert f"ssh-keyscan -p {ssh_server.port} 127.0.0.1" in message
    assert "known_hosts=" in message
    assert f"is not in {empty}" in message
    assert isinstance(info.value.__cause__, asyncssh.HostKeyNotVerifiable)
    assert ssh_server.accepted == 1  # not retried: retrying cannot fix a host key
    await sh.close()


async def test_changed_host_key_is_refused(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{ssh_server.port} {other}\n")
    sh = ssh_server.shell(known_hosts=str(wrong))
    with pytest.raises(TransportError, match=f"does NOT match {wrong}") as info:
        await sh.run("true")
    assert "ssh-keygen -R" in str(info.value)
    await sh.close()


async def test_default_known_hosts_is_the_users_and_strict(
    ssh_server: InProcessSSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No known_hosts argument: ~/.ssh/known_hosts (here a fresh HOME without the server)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    sh = SSHShell(
        "127.0.0.1",
        port=ssh_server.port,
        user=ssh_server.user,
        identity_file=str(ssh_server.client_key),
        reconnect_attempts=1,
    )
    with pytest.raises(TransportError, match="host key verification failed"):
        await sh.open()  # no ~/.ssh/known_hosts at all
    (home / ".ssh" / "known_hosts").write_text(ssh_server.known_hosts.read_text())
    async with sh:
        assert (await sh.run("echo trusted")).stdout == "trusted\n"


async def test_ssh_config_cannot_switch_host_key_checking_off(
    ssh_server: InProcessSSHServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncssh reads ``UserKnownHostsFile none`` as known_hosts=None (no check): refused."""
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  UserKnownHostsFile none\n")
    sh = ssh_server.shell(known_hosts=None, ssh_config=str(config), reconnect_attempts=1)
    with caplog.at_level(logging.WARNING, "remote_futures.ssh"), pytest.raises(TransportError):
        await sh.open()
    assert "ignoring 'UserKnownHostsFile none'" in caplog.text


async def test_insecure_flag_skips_the_check_and_warns(
    ssh_server: InProcessSSHServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "remote_futures.ssh"):
        async with ssh_server.shell(insecure_no_host_key_check=True) as sh:
            assert (await sh.run("echo unchecked")).stdout == "unchecked\n"
    assert "WITHOUT host key verification" in caplog.text
    with pytest.raises(ConfigurationError):
        ssh_server.shell(insecure_no_host_key_check=True, known_hosts="/x")


async def test_wrong_client_key_is_refused_without_retries(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    sh = ssh_server.shell(identity_file=str(stranger))
    with pytest.raises(TransportError, match=r"authentication to .* failed"):
        await sh.open()
    assert ssh_server.accepted == 1


async def test_missing_identity_file_is_a_configuration_error(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    sh = ssh_server.shell(identity_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="invalid SSH settings"):
        await sh.open()


# -- ssh config ----------------------------------------------------------------------------


async def test_ssh_config_alias(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host cluster-login\n"
        "  HostName 127.0.0.1\n"
        f"  Port {ssh_server.port}\n"
        f"  User {ssh_server.user}\n"
        f"  IdentityFile {ssh_server.client_key}\n"
        f"  UserKnownHostsFile {ssh_server.known_hosts}\n"
    )
    sh = SSHShell("cluster-login", ssh_config=str(config), reconnect_backoff=0.01)
    async with sh:
        assert (await sh.run("echo via alias")).stdout == "via alias\n"
        assert sh.label == f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"

    # Explicit arguments override the config: a wrong port in the argument wins (and fails).
    sh = SSHShell(
        "cluster-login",
        ssh_config=str(config),
        port=1,
        reconnect_attempts=1,
    )
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:1 after 1 attempt"):
        await sh.open()


def _jump_config(server: InProcessSSHServer, jump_extra: str = "", common: str = "") -> str:
    return (
        "Host jump\n"
        "  HostName 127.0.0.1\n"
        f"  Port {server.port}\n"
        f"{jump_extra}"
        "Host behind\n"
        "  HostName 127.0.0.1\n"
        f"  Port {server.port}\n"
        "  ProxyJump jump\n"
        "Host *\n"
        f"  User {server.user}\n"
        f"  IdentityFile {server.client_key}\n"
        f"{common}"
    )


async def test_ssh_config_proxy_jump(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    """ProxyJump from the config: the target is reached through the jump host's connection."""
    config = tmp_path / "ssh_config"
    config.write_text(
        _jump_config(ssh_server, common=f"  UserKnownHostsFile {ssh_server.known_hosts}\n")
    )
    async with SSHShell("behind", ssh_config=str(config)) as sh:
        assert (await sh.run("echo hopped")).stdout == "hopped\n"
        assert ssh_server.accepted == 2  # the jump host, then the target through it
        assert len(ssh_server.connections) == 2
    with anyio.fail_after(5):  # closing the shell closes the jump connection too
        while ssh_server.connections:
            await anyio.sleep(0.02)


async def test_proxy_jump_hops_follow_the_shells_host_key_policy(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    """The explicit known_hosts applies to the jump host too (asyncssh alone would not)."""
    config = tmp_path / "ssh_config"
    config.write_text(_jump_config(ssh_server))  # no UserKnownHostsFile anywhere
    sh = SSHShell("behind", ssh_config=str(config), known_hosts=str(ssh_server.known_hosts))
    async with sh:
        assert (await sh.run("echo checked")).stdout == "checked\n"


async def test_proxy_jump_with_known_hosts_none_is_still_checked(
    ssh_server: InProcessSSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``UserKnownHostsFile none`` on the jump host does not switch its check off."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # an empty ~/.ssh: the jump host is unknown
    config = tmp_path / "ssh_config"
    config.write_text(
        _jump_config(
            ssh_server,
            jump_extra="  UserKnownHostsFile none\n",
            common=f"  UserKnownHostsFile {ssh_server.known_hosts}\n",
        )
    )
    sh = SSHShell("behind", ssh_config=str(config), reconnect_attempts=1)
    with pytest.raises(TransportError, match="host key verification failed"):
        await sh.open()
    assert ssh_server.accepted == 1  # refused at the jump host


async def test_proxy_jump_loop_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(ConfigurationError, match="ProxyJump chain"):
        await SSHShell("a", ssh_config=str(config), known_hosts=os.devnull).open()


# -- dropped connections -------------------------------------------------------------------


async def test_reconnects_after_the_server_drops_the_connection(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    async with ssh_server.shell() as sh:
        assert (await sh.run("echo one")).stdout == "one\n"
        await sh.write_file(str(tmp_path / "f"), b"before")  # opens the SFTP client
        ssh_server.drop_connections()
        await anyio.sleep(0.1)
        assert (await sh.run("echo two")).stdout == "two\n"
        assert ssh_server.accepted == 2
        # The SFTP client was reopened on the new connection.
        assert await sh.read_file(str(tmp_path / "f")) == b"before"
        ssh_server.drop_connections()
        await sh.write_file(str(tmp_path / "f"), b"after")  # no pause: the drop is raced
        assert (tmp_path / "f").read_bytes() == b"after"
        assert ssh_server.accepted == 3


async def test_drop_during_many_concurrent_runs_reconnects_once(
    ssh_server: InProcessSSHServer,
) -> None:
    async with ssh_server.shell(max_channels=6) as sh:
        await sh.run("true")
        outputs: list[str] = []

        async def one(i: int) -> None:
            outputs.append((await sh.run(f"sleep 0.5; echo {i}")).stdout.strip())

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
            await anyio.sleep(0.2)
            ssh_server.drop_connections()
    assert sorted(outputs, key=int) == [str(i) for i in range(12)]
    assert ssh_server.accepted == 2  # the reconnect was serialized: one new connection


async def test_drop_during_a_run_without_retry_raises_promptly(
    ssh_server: InProcessSSHServer,
) -> None:
    async with ssh_server.shell() as sh:
        marker = f"/tmp/rf-ssh-test-{uuid.uuid4().hex}"
        async with anyio.create_task_group() as tg:

            async def drop_soon() -> None:
                await anyio.sleep(0.3)
                ssh_server.drop_connections()

            tg.start_soon(drop_soon)
            started = time.monotonic()
            with pytest.raises(TransportError, match="not retried") as info:
                await sh.run(f"echo >> {marker}; sleep 30", retry=False)
            assert time.monotonic() - started < 5
        assert info.value.__cause__ is not None
        # The command ran exactly once; the next operation reconnects.
        assert (await sh.run(f"wc -l < {marker}; rm {marker}")).stdout.strip() == "1"


async def test_drop_during_a_run_with_retry_runs_it_again(
    ssh_server: InProcessSSHServer, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    async with ssh_server.shell() as sh:
        async with anyio.create_task_group() as tg:

            async def drop_soon() -> None:
                await anyio.sleep(0.3)
                ssh_server.drop_connections()

            tg.start_soon(drop_soon)
            result = await sh.run(
                f"echo >> {marker}; [ $(wc -l < {marker}) -ge 2 ] || sleep 30; echo ok"
            )
        assert result.stdout == "ok\n"
    assert len(marker.read_text().splitlines()) == 2


async def test_run_without_retry_reconnects_first_if_the_drop_is_already_known(
    ssh_server: InProcessSSHServer,
) -> None:
    """A connection known to be dead is replaced before the command is sent: no error."""
    async with ssh_server.shell() as sh:
        await sh.run("true")
        ssh_server.drop_connections()
        await anyio.sleep(0.1)
        assert (await sh.run("echo once", retry=False)).stdout == "once\n"


async def test_server_gone_raises_after_bounded_attempts(
    ssh_server: InProcessSSHServer, caplog: pytest.LogCaptureFixture
) -> None:
    sh = ssh_server.shell(reconnect_attempts=3, reconnect_backoff=0.05)
    async with sh:
        await sh.run("true")
        await ssh_server.stop()
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, "remote_futures.ssh"),
            pytest.raises(TransportError, match="after 3 attempt") as info,
        ):
            await sh.run("echo unreachable")
        elapsed = time.monotonic() - started
    assert 0.05 + 0.1 <= elapsed < 5  # the back-off slept 0.05 s, then 0.1 s
    assert isinstance(info.value.__cause__, OSError)
    assert caplog.text.count("attempt") >= 3


async def test_server_gone_concurrent_operations_share_one_round_of_attempts(
    ssh_server: InProcessSSHServer,
) -> None:
    """Twenty operations that all see the server vanish wait for one back-off round, not 20."""
    async with ssh_server.shell(reconnect_attempts=3, reconnect_backoff=0.2) as sh:
        await sh.run("true")
        await ssh_server.stop()
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await sh.run("true")
            except TransportError as exc:
                errors.append(exc)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        elapsed = time.monotonic() - started
    assert len(errors) == 20
    assert all("after 3 attempt" in str(e) for e in errors)
    assert elapsed < 0.6 + 1.5  # one round sleeps 0.2 + 0.4 s


async def test_silent_peer_is_detected_by_keepalive(ssh_server: InProcessSSHServer) -> None:
    """A peer that stops answering (no FIN, no RST) is declared dead by keepalive: no hang."""
    async with ssh_server.shell(keepalive_interval=0.2) as sh:
        await sh.run("true")

        async def freeze_server_soon() -> None:
            await anyio.sleep(0.3)
            for conn in ssh_server.connections:
                # Test-only reach into asyncssh: stop the server reading, like a host that
                # vanished from the network with the TCP connection still open.
                conn._transport.pause_reading()

        async with anyio.create_task_group() as tg:
            tg.start_soon(freeze_server_soon)
            started = time.monotonic()
            with pytest.raises(TransportError, match="not retried"):
                await sh.run("sleep 30", retry=False)
        assert time.monotonic() - started < 5  # 3 unanswered probes, 0.2 s apart
        ssh_server.drop_connections()


async def test_server_gone_for_files_too(ssh_server: InProcessSSHServer, tmp_path: Path) -> None:
    async with ssh_server.shell(reconnect_attempts=2) as sh:
        await sh.write_file(str(tmp_path / "f"), b"x")
        await ssh_server.stop()
        with pytest.raises(TransportError):
            await sh.read_file(str(tmp_path / "f"))
        with pytest.raises(TransportError):
            await sh.read_files([str(tmp_path / "f")])


async def test_initial_connection_refused(tmp_path: Path) -> None:
    sh = SSHShell(
        "127.0.0.1",
        port=1,
        known_hosts=str(tmp_path / "kh"),
        ssh_config=os.devnull,
        reconnect_attempts=2,
        reconnect_backoff=0.01,
    )
    (tmp_path / "kh").write_text("")
    with pytest.raises(TransportError, match=r"cannot connect to .*127\.0\.0\.1:1 after 2"):
        await sh.open()


# -- the real OpenSSH sshd of the testbed --------------------------------------------------


@pytest.mark.testbed
async def test_real_sshd_concurrency_and_sftp() -> None:
    facts = require_testbed("ssh")
    sh = SSHShell(
        facts.host,
        port=facts.port,
        user=facts.slurm_user,
        identity_file=str(facts.key),
        known_hosts=str(facts.known_hosts),
        ssh_config=os.devnull,
    )
    async with sh:
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            results[i] = (await sh.run(f"echo {i}; whoami")).stdout

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert results == {i: f"{i}\n{facts.slurm_user}\n" for i in range(50)}
        assert time.monotonic() - started < 30

        home = await sh.home()
        assert home.startswith("/")
        directory = f"{home}/.rf-ssh-test-{uuid.uuid4().hex[:8]}"
        await sh.makedirs(directory)
        try:
            payload = os.urandom(1_000_000)
            await sh.write_file(f"{directory}/blob", payload, mode=0o600)
            await sh.write_file(f"{directory}/blob", payload[::-1], mode=0o640)  # overwrite
            assert await sh.read_file(f"{directory}/blob") == payload[::-1]
            mode = (await sh.run(f"stat -c %a {directory}/blob")).check("stat").stdout.strip()
            assert mode == "640"
            found = await sh.read_files([f"{directory}/blob", f"{directory}/missing"])
            assert list(found) == [f"{directory}/blob"]
            with pytest.raises(FileNotFoundError):
                await sh.read_file(f"{directory}/missing")
            assert (await sh.run(f"ls -A {directory}")).stdout == "blob\n"  # no temp files
        finally:
            await sh.run(f"rm -rf {directory}")
