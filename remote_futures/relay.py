"""The pilot relay: joins the workers of pilot jobs to the client through the login host.

Imports only the standard library: it is uploaded beside the worker and run as a script.

``relay.py serve --bind ADDR --token-file FILE`` runs on the login host (started by the client
over its SSH connection, or on this machine when the scheduler is here). It listens on a TCP
port of ``ADDR``; each pilot worker on a compute node connects to it, proves it knows the token
(a random secret in a 0600 file of the client's 0700 work directory, which the compute nodes
share), and its byte stream is then carried to the client over the relay's own stdin and
stdout. Compute nodes never need to reach the client, and the client opens no port.

``relay.py pilot --connect HOST:PORT --token-file FILE --pilot ID --slot N -- COMMAND...``
runs in a pilot job, once per worker: it connects twice (a data connection that becomes the
worker's stdin and stdout, and a control connection), starts ``COMMAND`` (the worker loop) on
the data connection, and kills it when the relay says so or goes away (a killed relay, a
client that left), so no worker outlives its client. It exits with the worker's status.

Frames between the relay and the client, both ways::

    length(4) + connection(4) + kind(1) + data          (length counts what follows it)

    relay -> client   P  "host port"        listening (connection 0), once
                      N  "pilot slot"        a worker connected and proved the token
                      D  bytes               what the worker sent
                      E  ""                  its connection closed
                      S  bytes               what the worker wrote to stderr and did not
                                             send itself before it ended (from the pilot)
                      X  "code signal"       how its process ended (from the pilot)
    client -> relay   D  bytes               send to the worker
                      K  ""                  kill the worker (through its pilot)
                      E  ""                  close the worker's connection
                      C  "shell command"     (connection 0) what cancels the client's pilot
                                             jobs, replaced at each change
                      Q  ""                  (connection 0) the client is closing by itself

When the client goes without saying ``Q`` (killed, or its connection dropped), the relay runs
the last ``C`` command before it exits: pilot jobs still queued would otherwise start later
only to find no relay, after holding their place (and maybe the user's allocation) in the
queue. Running ones end anyway: their workers lose the relay.
"""

from __future__ import annotations

import hmac
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

_HEAD = struct.Struct(">IIc")
#: How long a connecting pilot may take to send its greeting.
_GREETING_TIMEOUT = 20.0
_GREETING_MAX = 512


def _read_token(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


class _Relay:
    def __init__(self, token: bytes) -> None:
        self.token = token
        self.out_lock = threading.Lock()
        self.out = os.fdopen(1, "wb", buffering=0, closefd=False)
        self.lock = threading.Lock()
        self.next_id = 0
        #: connection id -> (socket, outgoing queue, (pilot, slot)).
        self.conns: dict[int, tuple[socket.socket, queue.Queue[bytes | None], tuple[str, str]]] = {}
        #: (pilot, slot) -> control socket of that worker's pilot process.
        self.controls: dict[tuple[str, str], socket.socket] = {}
        #: (pilot, slot) -> set when its control connection closed.
        self.control_done: dict[tuple[str, str], threading.Event] = {}
        #: The client's command that cancels its pilot jobs (``C``), and whether it said it
        #: is closing by itself (``Q``).
        self.cancel_command = ""
        self.closing = False
        self.gone_lock = threading.Lock()

    def client_gone(self) -> None:
        """The client left: cancel its pilot jobs unless it is closing by itself, and exit
        (every connection closes with the process, so every worker leaves)."""
        with self.gone_lock:  # once, whichever thread sees it first
            if not self.closing and self.cancel_command:
                try:
                    subprocess.run(["/bin/sh", "-c", self.cancel_command], timeout=60,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                except (OSError, subprocess.SubprocessError):
                    pass  # nothing more can be done from here
            os._exit(0)

    def emit(self, conn: int, kind: bytes, data: bytes = b"") -> None:
        frame = _HEAD.pack(5 + len(data), conn, kind) + data
        with self.out_lock:
            try:
                self.out.write(frame)
            except OSError:
                self.client_gone()

    def accept_loop(self, server: socket.socket) -> None:
        while True:
            sock, _ = server.accept()
            threading.Thread(target=self.greet, args=(sock,), daemon=True).start()

    def greet(self, sock: socket.socket) -> None:
        """Read ``RFPILOT1 <kind> <token> <pilot> <slot>\\n``; drop anything else."""
        try:
            sock.settimeout(_GREETING_TIMEOUT)
            line = b""
            while not line.endswith(b"\n") and len(line) < _GREETING_MAX:
                chunk = sock.recv(1)
                if not chunk:
                    break
                line += chunk
            parts = line.split()
            if (len(parts) != 5 or parts[0] != b"RFPILOT1"
                    or not hmac.compare_digest(parts[2], self.token)):
                sock.close()
                return
            sock.settimeout(None)
            kind, pilot, slot = parts[1], parts[3].decode(), parts[4].decode()
            sock.sendall(b"OK\n")
        except OSError:
            sock.close()
            return
        if kind == b"control":
            with self.lock:
                self.controls[(pilot, slot)] = sock
            threading.Thread(target=self.control_reader, args=(sock, pilot, slot),
                             daemon=True).start()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        outgoing: queue.Queue[bytes | None] = queue.Queue()
        with self.lock:
            self.next_id += 1
            conn = self.next_id
            self.conns[conn] = (sock, outgoing, (pilot, slot))
        self.emit(conn, b"N", f"{pilot} {slot}".encode())
        threading.Thread(target=self.writer, args=(conn, sock, outgoing), daemon=True).start()
        threading.Thread(target=self.reader, args=(conn, sock), daemon=True).start()

    def control_reader(self, sock: socket.socket, pilot: str, slot: str) -> None:
        """What the pilot reports of its worker: what it wrote to stderr (``S``), as it
        comes, and how it ended (``X code signal``), last. Control messages are
        ``kind(1) + length(4) + data``."""
        done = self.control_done.setdefault((pilot, slot), threading.Event())
        buffer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 5:
                    size = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 5 + size:
                        break
                    kind, data, buffer = buffer[:1], buffer[5 : 5 + size], buffer[5 + size :]
                    conn = self.conn_of(pilot, slot)
                    if conn is not None and kind in (b"S", b"X"):
                        self.emit(conn, kind, data)
        except OSError:
            pass
        with self.lock:
            if self.controls.get((pilot, slot)) is sock:
                del self.controls[(pilot, slot)]
        done.set()

    def conn_of(self, pilot: str, slot: str) -> int | None:
        with self.lock:
            for conn, (_, _, who) in self.conns.items():
                if who == (pilot, slot):
                    return conn
        return None

    def reader(self, conn: int, sock: socket.socket) -> None:
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                self.emit(conn, b"D", chunk)
        except OSError:
            pass
        # The pilot reports the worker's last words and exit status on its control
        # connection, then closes it: the connection's end is announced after them.
        with self.lock:
            who = self.conns[conn][2] if conn in self.conns else None
        if who is not None:
            self.control_done.setdefault(who, threading.Event()).wait(2.0)
            with self.lock:
                self.control_done.pop(who, None)
        with self.lock:
            found = self.conns.pop(conn, None)
        if found is not None:
            found[1].put(None)
        self.emit(conn, b"E")

    def writer(self, conn: int, sock: socket.socket, outgoing: queue.Queue[bytes | None]) -> None:
        while True:
            data = outgoing.get()
            if data is None:
                break
            try:
                sock.sendall(data)
            except OSError:
                break
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def client_loop(self) -> None:
        """Frames from the client on stdin, until it closes it (then every worker is told to
        leave: their connections close)."""
        stdin = os.fdopen(0, "rb", buffering=0, closefd=False)

        def exactly(size: int) -> bytes:
            buffer = bytearray()
            while len(buffer) < size:
                chunk = stdin.read(size - len(buffer))
                if not chunk:
                    raise EOFError
                buffer += chunk
            return bytes(buffer)

        try:
            while True:
                size, conn, kind = _HEAD.unpack(exactly(_HEAD.size))
                data = exactly(size - 5) if size > 5 else b""
                if conn == 0:
                    if kind == b"C":
                        self.cancel_command = data.decode("utf-8", errors="replace")
                    elif kind == b"Q":
                        self.closing = True
                    continue
                with self.lock:
                    found = self.conns.get(conn)
                if found is None:
                    continue
                _sock, outgoing, who = found
                if kind == b"D":
                    outgoing.put(data)
                elif kind == b"E":
                    outgoing.put(None)
                elif kind == b"K":
                    with self.lock:
                        control = self.controls.get(who)
                    told = False
                    if control is not None:
                        try:
                            control.sendall(b"K\n")
                            told = True
                        except OSError:
                            pass
                    if not told:
                        # No pilot to kill it: closing its input is all that is left. Not
                        # both: a worker that saw its input end first would exit 0 before
                        # the kill, and its end would read as a normal exit.
                        outgoing.put(None)
        except (EOFError, OSError):
            pass


def serve(bind: str, token_file: str) -> int:
    """Listen on ``bind`` (any free port) and relay until stdin closes."""
    relay = _Relay(_read_token(token_file))
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((bind, 0))
    server.listen(128)
    port = server.getsockname()[1]
    host = socket.getfqdn() if bind in ("0.0.0.0", "::", "") else bind
    relay.emit(0, b"P", f"{host} {port}".encode())
    threading.Thread(target=relay.accept_loop, args=(server,), daemon=True).start()
    relay.client_loop()
    relay.client_gone()
    return 0


def _connect(host: str, port: int, greeting: bytes, deadline: float) -> socket.socket:
    delay = 0.2
    refused_deadline = time.monotonic() + 3.0
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=_GREETING_TIMEOUT)
            sock.sendall(greeting)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(1)
                if not chunk:
                    raise OSError("the relay refused this pilot")
                answer += chunk
            sock.settimeout(None)
            return sock
        except ConnectionRefusedError:
            # Nothing listens: the relay is gone (so is its client) and is not coming back;
            # a moment's grace only for a connection refused in passing.
            if time.monotonic() > min(deadline, refused_deadline):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def pilot(address: str, token_file: str, pilot_id: str, slot: str, command: list[str]) -> int:
    """Run ``command`` on a data connection to the relay; kill it on the relay's word or when
    the relay goes away. Returns the worker's exit status (128+N for signal N)."""
    host, _, port = address.rpartition(":")
    token = _read_token(token_file)
    deadline = time.monotonic() + 60.0
    greet = b"RFPILOT1 %s " + token + f" {pilot_id} {slot}\n".encode()
    data = _connect(host, int(port), greet % b"data", deadline)
    data.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The relay answered a moment ago: if it is gone now, so is the client.
    control = _connect(host, int(port), greet % b"control", time.monotonic() + 5.0)
    # The worker's stderr is a file: it sends what it printed there after each call, in
    # order with its outcomes (``--capture-stderr``), and what it printed before dying is read
    # here, without moving the offset it shares with the worker.
    import tempfile

    stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - open for the whole life of the pilot
    child = os.fork()
    if child == 0:
        try:
            control.close()
            os.dup2(data.fileno(), 0)
            os.dup2(data.fileno(), 1)
            os.dup2(stderr_file.fileno(), 2)
            data.close()
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    data.close()

    def forward(signum: int, frame: Any) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    def report(kind: bytes, payload: bytes) -> None:
        try:
            control.sendall(kind + len(payload).to_bytes(4, "big") + payload)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # A pidfd wakes the wait as soon as the worker exits (Linux 5.3+); else look twice a second.
    watched: list[Any] = [control]
    try:
        watched.append(os.pidfd_open(child))
    except (AttributeError, OSError):
        pass
    status: int | None = None
    while status is None:
        pid, raw = os.waitpid(child, os.WNOHANG)
        if pid:
            status = raw
            break
        try:
            ready = select.select(watched, [], [], 0.5)[0]
        except InterruptedError:
            continue
        if control in ready:
            try:
                word = control.recv(16)
            except OSError:
                word = b""
            # "K": the client asked for the kill; nothing: the relay (so the client) is gone.
            if not word or word.startswith(b"K"):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
                status = os.waitpid(child, 0)[1]
    # Its last words (what it printed and had not sent), before its exit status.
    size = os.fstat(stderr_file.fileno()).st_size
    last = os.pread(stderr_file.fileno(), min(size, 65536), max(0, size - 65536))
    if last:
        try:
            os.write(2, last)
        except OSError:
            pass
        report(b"S", last)
    code = os.waitstatus_to_exitcode(status)
    report(b"X", (f"-1 {-code}" if code < 0 else f"{code} 0").encode())
    try:
        control.close()
    except OSError:
        pass
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, command = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(prog="remote_futures relay")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--token-file", required=True)
    p = sub.add_parser("pilot")
    p.add_argument("--connect", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--pilot", required=True)
    p.add_argument("--slot", required=True)
    ns = parser.parse_args(args)
    if ns.mode == "serve":
        return serve(ns.bind, ns.token_file)
    if not command:
        parser.error("pilot needs a command after --")
    return pilot(ns.connect, ns.token_file, ns.pilot, ns.slot, command)


if __name__ == "__main__":
    sys.exit(main())
