"""The pilot relay on this machine: token check, multiplexing, kill, and the pilot job script."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from remote_futures import RemoteExecutor, relay
from remote_futures.errors import ConfigurationError
from remote_futures.resources import Resources
from remote_futures.transports.pilot import pilot_resources

pytestmark = pytest.mark.timeout(60)

_HEAD = struct.Struct(">IIc")
RELAY = relay.__file__


class _RelayProcess:
    def __init__(self, token_file: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, RELAY, "serve", "--bind", "127.0.0.1", "--token-file",
             str(token_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        conn, kind, data = self.read()
        assert (conn, kind) == (0, b"P")
        host, port = data.decode().split()
        self.address = (host, int(port))

    def read(self) -> tuple[int, bytes, bytes]:
        assert self.process.stdout is not None
        head = self.process.stdout.read(_HEAD.size)
        assert len(head) == _HEAD.size, "the relay ended"
        size, conn, kind = _HEAD.unpack(head)
        return conn, kind, self.process.stdout.read(size - 5)

    def send(self, conn: int, kind: bytes, data: bytes = b"") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(_HEAD.pack(5 + len(data), conn, kind) + data)
        self.process.stdin.flush()

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=20)


def _answer(sock: socket.socket) -> bytes:
    """What the relay answered before closing (a reset, for unread bytes, is a close)."""
    try:
        return sock.recv(16)
    except ConnectionResetError:
        return b""


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_bytes(b"0123456789abcdef" * 4)
    path.chmod(0o600)
    return path


def test_a_connection_without_the_token_is_dropped_unannounced(token_file: Path) -> None:
    r = _RelayProcess(token_file)
    try:
        with socket.create_connection(r.address, timeout=10) as sock:
            sock.sendall(b"RFPILOT1 data wrong-token p1 0\n")
            assert _answer(sock) == b""  # closed, no "OK"
        with socket.create_connection(r.address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert _answer(sock) == b""
        # Then a pilot with the token is announced: the strangers never were.
        with socket.create_connection(r.address, timeout=10) as sock:
            sock.sendall(b"RFPILOT1 data " + token_file.read_bytes() + b" p1 0\n")
            assert sock.recv(3) == b"OK\n"
            conn, kind, data = r.read()
            assert (kind, data) == (b"N", b"p1 0")
            assert conn >= 1
    finally:
        r.close()


def test_a_pilot_runs_its_command_on_the_relayed_stream_and_is_killed_on_request(
    token_file: Path,
) -> None:
    """``pilot -- cat``: bytes sent to the connection come back through cat; a K frame makes
    the pilot kill it; the pilot reports how it ended (X) before the connection closes (E)."""
    r = _RelayProcess(token_file)
    pilot = subprocess.Popen([
        sys.executable, RELAY, "pilot", "--connect", f"{r.address[0]}:{r.address[1]}",
        "--token-file", str(token_file), "--pilot", "p7", "--slot", "1", "--", "cat",
    ])
    try:
        conn, kind, data = r.read()
        assert (kind, data) == (b"N", b"p7 1")
        r.send(conn, b"D", b"hello through the relay")
        echoed = b""
        while len(echoed) < len(b"hello through the relay"):
            got_conn, kind, data = r.read()
            assert (got_conn, kind) == (conn, b"D")
            echoed += data
        assert echoed == b"hello through the relay"
        r.send(conn, b"K")
        frames = [r.read(), r.read()]
        assert frames[0] == (conn, b"X", b"-1 9")  # SIGKILL
        assert frames[1][:2] == (conn, b"E")
        assert pilot.wait(timeout=20) == 128 + 9
    finally:
        pilot.kill()
        r.close()


def test_workers_leave_when_the_relay_goes_away(token_file: Path) -> None:
    """The client gone (the relay's stdin closed): the pilot kills its worker and exits."""
    r = _RelayProcess(token_file)
    pilot = subprocess.Popen([
        sys.executable, RELAY, "pilot", "--connect", f"{r.address[0]}:{r.address[1]}",
        "--token-file", str(token_file), "--pilot", "p1", "--slot", "0", "--",
        "sh", "-c", "head -c 4; exec sleep 600",
    ])
    try:
        conn, kind, _ = r.read()
        assert kind == b"N"
        # The worker answers: it runs, and only its pilot can end it now.
        r.send(conn, b"D", b"ping")
        assert r.read() == (conn, b"D", b"ping")
        assert r.close() == 0
        assert pilot.wait(timeout=20) == 128 + 9
    finally:
        pilot.kill()


def test_pilot_resources_add_up_per_worker() -> None:
    one = Resources(cpus=2, memory="1G", walltime="10", partition="batch")
    assert pilot_resources(one, 1) is one
    four = pilot_resources(one, 4)
    assert (four.cpus, four.memory_megabytes(), four.walltime, four.partition) == (
        8, 4096, "10", "batch"
    )
    assert pilot_resources(Resources(), 3).cpus == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers_per_job": 0}, "workers_per_job"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"pilot_margin": -1.0}, "pilot_margin"),
    ],
)
def test_bad_pool_options_fail_at_construction(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RemoteExecutor("slurm", host="cluster.invalid", pool=True, **options)  # type: ignore[arg-type]


def test_pool_is_refused_on_transports_without_pilots() -> None:
    with pytest.raises(ConfigurationError, match="pool"):
        RemoteExecutor("ssh", host="cluster.invalid", pool=True)  # type: ignore[arg-type]


def test_the_relay_imports_only_the_standard_library() -> None:
    code = (
        "import sys, runpy; before = set(sys.modules); "
        f"runpy.run_path({RELAY!r}, run_name='not_main'); "
        "extra = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "bad = sorted(m for m in extra if m not in sys.stdlib_module_names); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_dying_worker_s_last_words_and_exit_status_come_before_its_end(
    token_file: Path,
) -> None:
    """What the worker wrote to stderr and did not send itself reaches the client (S), then
    how it ended (X), then the end of its connection (E): in that order, so that the error
    of the call it ran carries them."""
    r = _RelayProcess(token_file)
    pilot = subprocess.Popen([
        sys.executable, RELAY, "pilot", "--connect", f"{r.address[0]}:{r.address[1]}",
        "--token-file", str(token_file), "--pilot", "p2", "--slot", "0", "--",
        "sh", "-c", "head -c 2 >/dev/null; echo last words >&2; exit 3",
    ], stderr=subprocess.DEVNULL)
    try:
        conn, kind, _ = r.read()
        assert kind == b"N"
        r.send(conn, b"D", b"go")
        assert [r.read() for _ in range(3)] == [
            (conn, b"S", b"last words\n"), (conn, b"X", b"3 0"), (conn, b"E", b""),
        ]
        assert pilot.wait(timeout=20) == 3
    finally:
        pilot.kill()
        r.close()


def test_a_pilot_whose_relay_is_gone_exits_without_running_its_worker(
    token_file: Path, tmp_path: Path
) -> None:
    """A pilot that starts after its client (and relay) went away finds nothing listening:
    it gives up instead of holding its allocation, and never starts the worker."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens once it is closed
    marker = tmp_path / "worker-ran"
    pilot = subprocess.run([
        sys.executable, RELAY, "pilot", "--connect", f"127.0.0.1:{port}",
        "--token-file", str(token_file), "--pilot", "p1", "--slot", "0", "--",
        "touch", str(marker),
    ], capture_output=True, timeout=30, check=False)
    assert pilot.returncode != 0
    assert b"ConnectionRefusedError" in pilot.stderr
    assert not marker.exists()


def test_pool_and_its_options_come_from_a_profile_and_keywords_override_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from remote_futures.config import resolve_target
    from remote_futures.runtime import make_transport
    from remote_futures.transports.batch import SlurmTransport
    from remote_futures.transports.pilot import SlurmPilotTransport

    config = tmp_path / "profiles.toml"
    config.write_text(
        '[profiles.hpc]\ntransport = "slurm"\nhost = "login.example.org"\n'
        'pool = true\nworkers_per_job = 2\nidle_timeout = 30.0\n'
    )
    monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(config))
    transport = make_transport(resolve_target("hpc", {}), None)
    assert type(transport) is SlurmPilotTransport
    assert transport.workers_per_job == 2
    assert transport.options.idle_timeout == 30.0
    transport = make_transport(resolve_target("hpc", {"pool": False}), None)
    assert type(transport) is SlurmTransport


def test_a_client_gone_without_closing_has_its_pilots_cancelled_by_the_relay(
    token_file: Path, tmp_path: Path
) -> None:
    """The client's input ends without a Q (it was killed): the relay runs the last cancel
    command it was given, once, before it exits."""
    done = tmp_path / "cancelled"
    r = _RelayProcess(token_file)
    r.send(0, b"C", f"echo first >> {done}".encode())
    r.send(0, b"C", f"echo 'scancel 11 12' >> {done}".encode())  # the latest replaces it
    assert r.close() == 0
    assert done.read_text() == "scancel 11 12\n"


def test_a_client_that_closes_by_itself_is_not_cancelled_for(
    token_file: Path, tmp_path: Path
) -> None:
    """Q, then the end of input (an orderly shutdown, which cancels the pilots itself): the
    relay runs nothing."""
    done = tmp_path / "cancelled"
    r = _RelayProcess(token_file)
    r.send(0, b"C", f"echo ran >> {done}".encode())
    r.send(0, b"Q")
    assert r.close() == 0
    assert not done.exists()
