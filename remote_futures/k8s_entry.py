"""The pod side of the Kubernetes transport: run one task, frame its outcomes in the log.

Shipped in the job's Secret beside ``worker.py`` and started as ``python entry.py``; it imports
only the standard library (and, through the worker, cloudpickle). The Secret is mounted
read-only at ``RF_PAYLOAD_DIR``; the task's input is copied to a private job directory and the
worker runs it there. As each call finishes, its outcome envelope goes to the pod log in a block
of its own, so that the client can hand out results while later calls of the task still run::

    ==RF:<nonce>:BEGIN n=<bytes> sha256=<hex>==
    <base64 of a stdlib pickle {call index: outcome bytes}, 76 characters a line>
    ==RF:<nonce>:END==

The nonce is per Job and taken out of the environment before user code runs, so nothing the
user prints can forge a block. What the user writes to stderr is kept apart from stdout by
prefixing its lines with ``==RF:<nonce>:ERR==`` (a pod has one log for both). Before each call
starts, a line ``==RF:<nonce>:CALL <index>==`` says that the lines after it are that call's:
the worker announces the call and waits until everything printed before is in the log, so the
client (which follows the log while the pod runs) tags each line with the right call. A line a
call leaves unfinished is ended in the log when the call ends. A short JSON
receipt (the number of calls and the sha256 of all blocks' data in order) goes to the
termination message, where it survives log rotation: the client checks the blocks against it.

With a bucket, ``task-<n>.json`` beside the payload holds presigned URLs: a GET for the task's
input when it was too large for the Secret, and a PUT per call. An outcome over what the log
carries safely is PUT there (``Content-Type: application/octet-stream``; some stores keep an
empty object otherwise) and its block holds ``("url", size, sha256)`` instead; the receipt then
says channel "url" with those checksums.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

#: Lines of base64 in the framed block.
LINE = 76
#: The largest outcome sent through the pod log: kubelets rotate container logs at 10 MiB by
#: default and serve only the newest file, so a bigger block could be lost.
MAX_LOG_OUTCOME = 4 * 1024 * 1024
TERMINATION_LOG = "/dev/termination-log"
#: Marks a complete installed environment difference.
ENV_MARKER = ".rf-complete"


def frame(nonce: str, data: bytes) -> str:
    """The framed block carrying ``data``."""
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i : i + LINE] for i in range(0, len(text), LINE)]
    head = f"==RF:{nonce}:BEGIN n={len(data)} sha256={hashlib.sha256(data).hexdigest()}=="
    return "\n".join([head, *lines, f"==RF:{nonce}:END=="]) + "\n"


def _transfer(url: str, *, data: bytes | None = None) -> bytes:
    """GET ``url`` (``data`` None) or PUT ``data`` to it, retried on transient errors."""
    for attempt in range(5):
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "PUT")
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                body: bytes = response.read()
                return body
        except OSError as exc:
            code = getattr(exc, "code", None)
            if attempt == 4 or (code is not None and code < 500 and code != 429):
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _download(spec: dict[str, object], what: str) -> bytes:
    """Download ``what`` from its presigned URL and check its size and sha256."""
    data = _transfer(str(spec["url"]))
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != spec["bytes"] or digest != spec["sha256"]:
        raise SystemExit(
            f"remote_futures: {what} from the bucket is corrupt ({len(data)} bytes, "
            f"sha256 {digest[:12]}...; expected {spec['bytes']} bytes, sha256 "
            f"{str(spec['sha256'])[:12]}...)"
        )
    return data


def _fetch_input(spec: dict[str, object], target: str) -> None:
    """Download the task's input from its presigned URL and check it."""
    data = _download(spec, "the task's input")
    with open(target, "wb") as f:
        f.write(data)


def _find_uv(scratch: str, shipped: dict[str, object] | None) -> list[str]:
    """A uv to install with: the image's, the one its Python has as a module, the client's
    (uploaded to the bucket), or one pip installs into scratch space; else a clear error."""
    found = shutil.which("uv")
    if found:
        return [found]
    probe = subprocess.run([sys.executable, "-c", "import uv"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    if shipped:
        binary = os.path.join(scratch, "uv")
        with open(binary, "wb") as f:
            f.write(_download(shipped, "uv"))
        os.chmod(binary, 0o755)
        return [binary]
    tool = os.path.join(scratch, "uv-tool")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--retries", "1", "--timeout", "15", "--target", tool, "uv"],
        capture_output=True, text=True)
    if done.returncode == 0:
        binary = os.path.join(tool, "bin", "uv")
        if os.access(binary, os.X_OK):
            return [binary]
    raise SystemExit(
        "remote_futures: the image has no uv and pip could not install it "
        f"({(done.stderr or done.stdout).strip()[-500:]}); the pods must install what the "
        "image lacks: add uv to the image, let pip reach an index, give the executor a "
        "bucket (the client's uv is shipped through it), or use env='off' with an image "
        "that has everything"
    )


def _installed_version(name: str) -> str | None:
    """The version of distribution ``name`` this interpreter has (None: not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def lines_to_install(
    spec: Mapping[str, Any], installed: Callable[[str], str | None]
) -> list[str] | None:
    """The requirement lines this pod must install (None: nothing), checked against what its
    interpreter really has (``installed(name) -> version``).

    The client plans from a probe of the image that it caches, and a tag can be rebuilt since:
    a pinned distribution (``packages``: name, version, line) that the image now has at that
    version is not installed again, and one the probe saw (``expected``) that the image no
    longer has is installed. Lines without a pin (a specifier, a URL) are always installed;
    the index options (``options``) go first when anything is."""
    packages = [line for name, version, line in spec.get("packages") or ()
                if version is None or installed(name) != version]
    packages += [line for name, version, line in spec.get("expected") or ()
                 if installed(name) != version]
    if not packages:
        return None
    return [*(spec.get("options") or ()), *packages]


def _prepare_environment(payload_dir: str) -> str | None:
    """Install what the image lacks (``env.json``, written by the client) with uv into a
    directory that goes ahead of the image's packages on the path; return it (None: nothing
    to install). With a cache volume the directory lives there under its content hash: a
    complete one (it has the marker) is used as it is, so later pods skip the install."""
    spec_path = os.path.join(payload_dir, "env.json")
    if not os.path.exists(spec_path):
        return None
    with open(spec_path) as f:
        spec = json.load(f)
    lines = lines_to_install(spec, _installed_version)
    if lines is None:
        return None
    # The directory is named after what this pod installs: the client's view of the image
    # (its cached probe) can be older than the image, so two pods may differ.
    key = hashlib.sha256("\n".join([spec["key"], *lines]).encode()).hexdigest()[:16]
    root = os.path.join(os.environ.get("RF_ENV_CACHE") or tempfile.gettempdir(), "rf-envs")
    target = os.path.join(root, key)
    if os.path.exists(os.path.join(target, ENV_MARKER)):
        return target
    os.makedirs(root, exist_ok=True)
    # A private directory, renamed into place when complete: pods installing the same
    # difference at once never see each other's half-done work.
    work = tempfile.mkdtemp(prefix=f".{key}-", dir=root)
    scratch = tempfile.mkdtemp(prefix="rf-uv-")
    requirements = os.path.join(scratch, "requirements.txt")
    with open(requirements, "w") as f:
        f.write("\n".join(lines) + "\n")
    argv = [*_find_uv(scratch, spec.get("uv")), "pip", "install", "--target", work,
            "--python", sys.executable, *spec["uv_options"], "-r", requirements]
    if spec.get("offline"):
        argv.append("--offline")
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1",
               UV_CACHE_DIR=os.path.join(os.path.dirname(root), "rf-uv-cache"))
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(
            "remote_futures: installing what the image lacks failed "
            f"({' '.join(lines)[:300]}):\n{(done.stderr or done.stdout)[-1500:]}"
        )
    with open(os.path.join(work, ENV_MARKER), "w") as f:
        f.write(json.dumps({"requirements": lines, "time": time.time()}))
    try:
        os.rename(work, target)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another pod finished the same one first
    return target


def _receipt(path: str, receipt: dict[str, object]) -> None:
    try:
        with open(path, "w") as f:
            f.write(json.dumps(receipt)[:4000])
    except OSError:
        pass  # no termination log (a plain process in tests): the log blocks still carry all


class _Relay:
    """Writes the child's stdout and stderr to the log (the real stdout) in whole lines,
    stderr's marked, and the call marks and result blocks in the order things happened.
    One thread does it all: a mark written after draining both pipes follows every byte the
    call before printed."""

    def __init__(self, nonce: str, out_fd: int, err_fd: int) -> None:
        self.prefix = {out_fd: b"", err_fd: f"==RF:{nonce}:ERR==".encode()}
        self.pending = {out_fd: b"", err_fd: b""}
        self.open = {out_fd, err_fd}
        for fd in self.open:
            os.set_blocking(fd, False)

    @staticmethod
    def write(data: bytes) -> None:
        while data:
            data = data[os.write(1, data):]

    def take(self, fd: int) -> bool:
        """Read what ``fd`` holds now and log its whole lines; False once it is empty."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            self.open.discard(fd)
            self.end_lines(fd)
            return False
        *lines, self.pending[fd] = (self.pending[fd] + chunk).split(b"\n")
        if lines:
            prefix = self.prefix[fd]
            self.write(b"".join(prefix + line + b"\n" for line in lines))
        return True

    def end_lines(self, fd: int) -> None:
        if self.pending[fd]:
            self.write(self.prefix[fd] + self.pending[fd] + b"\n")
            self.pending[fd] = b""

    def drain(self) -> None:
        """Log everything the pipes hold (bounded: a background writer cannot hold us up),
        unfinished lines ended."""
        for fd in list(self.open):
            for _ in range(256):
                if not self.take(fd):
                    break
            self.end_lines(fd)


def _child() -> int:
    """The worker process: run the task, announcing each written outcome on the notify fd."""
    payload_dir = os.environ.pop("RF_PAYLOAD_DIR")
    job_dir = os.environ.pop("RF_JOB_DIR")
    task = int(os.environ.pop("RF_CHILD_TASK"))
    notify = int(os.environ.pop("RF_NOTIFY_FD"))
    sys.path.insert(0, payload_dir)
    import worker  # type: ignore[import-not-found]  # shipped beside this file

    del sys.path[0]
    for extra in os.environ.pop("RF_EXTRA_PATH", "").split(os.pathsep):
        if extra:
            sys.path.append(os.path.join(payload_dir, extra))
    ack = int(os.environ.pop("RF_ACK_FD"))
    code: int = worker.run_task(job_dir, task, worker._State(), notify, ack)
    return code


def main() -> int:
    """Run the task named by the environment in a child process; relay its output to the pod
    log, framing each outcome as the child announces it. Return the child's exit code (128+N
    when a signal killed it). A child that dies mid-task (``os._exit``, a segfault) still
    leaves everything it wrote, and every outcome written before, in the log."""
    payload_dir = os.environ.get("RF_PAYLOAD_DIR", "/rf/payload")
    # One Job per task names it; an Indexed Job gives each pod its completion index.
    task = int(os.environ.get("RF_TASK") or os.environ["JOB_COMPLETION_INDEX"])
    # Out of the environment before any user code can read it (the child inherits the rest).
    nonce = os.environ.pop("RF_NONCE")
    termination = os.environ.pop("RF_TERMINATION_LOG", TERMINATION_LOG)
    sys.path.insert(0, payload_dir)
    import worker  # shipped beside this file

    del sys.path[0]
    site = _prepare_environment(payload_dir)
    job_dir = tempfile.mkdtemp(prefix="rf-task-")
    manifest: dict[str, dict[str, object]] = {}
    manifest_path = os.path.join(payload_dir, f"task-{task}.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if "manifest" in manifest:  # too many calls for the Secret: it is in the bucket
            manifest = json.loads(_download(manifest["manifest"], "the task's manifest"))
    input_path = os.path.join(job_dir, worker.INPUT_NAME.format(task))
    if "input" in manifest:
        _fetch_input(manifest["input"], input_path)
    else:
        shutil.copyfile(os.path.join(payload_dir, f"task-{task}.in"), input_path)
    result_urls = manifest.get("results", {})
    spilled: dict[str, str] = {}
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    note_r, note_w = os.pipe()
    ack_r, ack_w = os.pipe()
    env = dict(os.environ, RF_PAYLOAD_DIR=payload_dir, RF_JOB_DIR=job_dir,
               RF_CHILD_TASK=str(task), RF_NOTIFY_FD=str(note_w), RF_ACK_FD=str(ack_r))
    if site is not None:
        # Ahead of the image's site-packages: a newer version installed there wins.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (site, os.environ.get("PYTHONPATH", "")) if p)
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child"], stdin=subprocess.DEVNULL,
        stdout=out_w, stderr=err_w, pass_fds=(note_w, ack_r), env=env,
    )
    for fd in (out_w, err_w, note_w, ack_r):
        os.close(fd)
    digest = hashlib.sha256()
    calls = 0
    relay = _Relay(nonce, out_r, err_r)

    def outcome_block(index: int) -> bytes:
        """The framed block of call ``index``'s outcome (or of the error saying why not)."""
        nonlocal calls
        with open(os.path.join(job_dir, worker.OUTCOME_NAME.format(index)), "rb") as f:
            outcome = f.read()
        entry: object = outcome
        url = result_urls.get(str(index))
        if len(outcome) > MAX_LOG_OUTCOME and url is not None:
            sha = hashlib.sha256(outcome).hexdigest()
            try:
                _transfer(str(url), data=outcome)
                entry = ("url", len(outcome), sha)
                spilled[str(index)] = sha
            except OSError as exc:
                entry = pickle.dumps(worker._error(
                    worker.PICKLE_RESULT,
                    f"the call's result ({len(outcome) / 2**20:.1f} MiB) could not be "
                    f"uploaded to the bucket: {exc}"), protocol=worker.ENVELOPE_PROTOCOL)
        elif len(outcome) > MAX_LOG_OUTCOME:
            entry = pickle.dumps(worker._error(
                worker.PICKLE_RESULT,
                f"the call's result is {len(outcome) / 2**20:.1f} MiB pickled, over "
                f"the {MAX_LOG_OUTCOME // 2**20} MiB a pod log can carry safely; "
                "return less (write large data to shared storage and return its "
                "location, or give the executor a bucket)"),
                protocol=worker.ENVELOPE_PROTOCOL)
        data = pickle.dumps({index: entry}, protocol=worker.ENVELOPE_PROTOCOL)
        digest.update(data)
        calls += 1
        return ("\n" + frame(nonce, data)).encode("ascii")

    def on_note(note: bytes) -> None:
        kind, _, value = note.decode("ascii", "replace").strip().partition(" ")
        if kind == "C":
            relay.drain()  # the call flushed its streams before announcing its outcome
            relay.write(outcome_block(int(value)))
        elif kind == "R":
            # The child waits for the acknowledgement: nothing of this call is printed yet.
            relay.drain()
            relay.write(f"==RF:{nonce}:CALL {int(value)}==\n".encode("ascii"))
            try:
                os.write(ack_w, b"R")
            except OSError:
                pass  # the child died meanwhile

    selector = selectors.DefaultSelector()
    for fd in (out_r, err_r, note_r):
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    notes = b""
    deadline: float | None = None
    while relay.open or note_r in selector.get_map():
        if deadline is None and child.poll() is not None:
            # Bounded: a background process the user started may hold a pipe open.
            deadline = time.monotonic() + 10
        if deadline is not None and time.monotonic() > deadline:
            break
        for key, _ in selector.select(0.5):
            if key.fd != note_r:
                relay.take(key.fd)
                if key.fd not in relay.open:
                    selector.unregister(key.fd)
                continue
            try:
                chunk = os.read(note_r, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                selector.unregister(note_r)
                continue
            *complete, notes = (notes + chunk).split(b"\n")
            for note in complete:
                on_note(note)
    relay.drain()
    os.close(ack_w)
    code = child.wait()
    if code < 0:
        code = 128 - code
    receipt: dict[str, object] = {
        "ok": code == 0, "channel": "url" if spilled else "log", "calls": calls,
        "sha256": digest.hexdigest(),
    }
    if spilled and len(json.dumps({**receipt, "url": spilled})) <= 4000:
        receipt["url"] = spilled  # call -> sha256 of its object (the blocks carry them too)
    _receipt(termination, receipt)
    shutil.rmtree(job_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(_child() if sys.argv[1:] == ["--child"] else main())
