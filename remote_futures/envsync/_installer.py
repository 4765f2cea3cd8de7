"""Runs on the remote side (``python -c <this file>``, JSON config on stdin): build one venv.

Under a lock on the shared filesystem it creates the venv with ``uv venv``, installs the
requirements with ONE ``uv pip install``, checks the venv's Python, and writes the marker file
last (atomically), so a venv with a marker is complete. It prints one line,
``@@rf-install <json>``: ``installed``, ``present`` (another client finished it while we
waited) or ``error`` with the stage and uv's own message.

The lock is a directory (``mkdir`` is atomic, also over NFS, unlike ``flock`` on many
clusters) holding an ``owner`` file: host, pid and time. The holder touches the file while it
works; a lock whose holder is a dead process on this host, or whose file was not touched for
``stale_after`` seconds, is broken. Standard library and Python 3.6 syntax only.
"""
# Python 3.6 runs this file: typing.Dict, %-formatting, universal_newlines, no capture_output.
# ruff: noqa: UP006, UP021, UP022, UP031, UP035, UP045, RUF005

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

MARK = "@@rf-install "


class Failure(Exception):
    """A stage failed; the message is for the user."""

    def __init__(self, stage: str, message: str, detail: str = "") -> None:
        Exception.__init__(self, message)
        self.stage = stage
        self.message = message
        self.detail = detail


def _env(config: Dict[str, Any]) -> Dict[str, str]:
    env = dict(os.environ, NO_COLOR="1", UV_NO_PROGRESS="1")
    # Trust the host's certificate store (where cluster admins install their proxy's CA), not
    # only the roots built into uv; a user's own UV_NATIVE_TLS setting wins.
    env.setdefault("UV_SYSTEM_CERTS", "1")  # uv >= 0.9's name
    env.setdefault("UV_NATIVE_TLS", "1")  # and the older one
    env["UV_PYTHON_DOWNLOADS"] = "automatic" if config["downloads"] else "never"
    return env


def _run(argv: List[str], config: Dict[str, Any]) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            env=_env(config),
        )
    except OSError as exc:
        raise Failure("uv", "cannot run %s: %s" % (argv[0], exc)) from None


class Lock:
    """A directory lock with an owner stamp, a heartbeat and stale-lock breaking."""

    def __init__(self, path: str, timeout: float, stale_after: float, heartbeat: float) -> None:
        self.path = path
        self.owner = os.path.join(path, "owner")
        self.timeout = timeout
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.host = socket.gethostname()
        self.broken: List[str] = []
        self.waited = 0.0
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; break it when it is stale."""
        start = time.time()
        pause = 0.05
        while True:
            try:
                os.mkdir(self.path)
            except FileExistsError:
                holder = self._stale_holder()
                if holder is not None:
                    self._break(holder)
                    continue
                if time.time() - start > self.timeout:
                    message = (
                        "timed out after %.0f s waiting for %s, held by %s; if no sync is "
                        "running, remove that directory"
                    )
                    raise Failure(
                        "lock", message % (self.timeout, self.path, self._describe())
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            self.waited = time.time() - start
            self._stamp()
            thread = threading.Thread(target=self._beat, daemon=True)
            thread.start()
            return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock directory."""
        self._stop.set()
        shutil.rmtree(self.path, ignore_errors=True)

    def _stamp(self) -> None:
        stamp = {"host": self.host, "pid": os.getpid(), "time": time.time()}
        with open(self.owner, "w") as f:
            json.dump(stamp, f)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.owner, None)
            except OSError:
                return  # the lock was broken by someone who thought we were gone

    def _read_owner(self) -> Dict[str, Any]:
        try:
            with open(self.owner) as f:
                value = json.load(f)
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def _describe(self) -> str:
        owner = self._read_owner()
        if not owner:
            return "an unknown process"
        age = time.time() - float(owner.get("time", time.time()))
        return "pid %s on %s since %.0f s" % (owner.get("pid"), owner.get("host"), age)

    def _stale_holder(self) -> Optional[str]:
        owner = self._read_owner()
        try:
            # The owner file is touched by the heartbeat; before it exists, the directory's age.
            touched = os.stat(self.owner if owner else self.path).st_mtime
        except OSError:
            return None  # released meanwhile: try again
        if owner.get("host") == self.host and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return "pid %s on this host is gone" % owner["pid"]
            except PermissionError:
                pass  # alive, another user's
        if time.time() - touched > self.stale_after:
            return "not touched for %.0f s (%s)" % (time.time() - touched, self._describe())
        return None

    def _break(self, why: str) -> None:
        # Breakers take turns on a second lock and look again under it. Without that, two
        # clients could both find the same stale lock; the first breaks it and takes a fresh
        # one, and the second, acting on its old verdict, would break that fresh lock too:
        # two installers at once.
        breaker = self.path + ".break"
        try:
            os.mkdir(breaker)
        except FileExistsError:
            try:  # a breaker that died leaves this behind: clear it once it is old
                if time.time() - os.stat(breaker).st_mtime > max(self.stale_after, 30.0):
                    os.rmdir(breaker)
            except OSError:
                pass
            return
        except OSError:
            return
        try:
            if self._stale_holder() is None:
                return  # released or broken meanwhile, perhaps taken afresh: not ours to break
            # Rename first, so a reader never sees a half-removed lock.
            grave = "%s.stale-%s-%d" % (self.path, self.host, os.getpid())
            try:
                os.rename(self.path, grave)
            except OSError:
                return
            shutil.rmtree(grave, ignore_errors=True)
            self.broken.append(why)
        finally:
            try:
                os.rmdir(breaker)
            except OSError:
                pass


def _marker_key(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return str(json.load(f).get("key"))
    except (OSError, ValueError, AttributeError):
        return None


def _python_works(python: str, config: Dict[str, Any]) -> bool:
    if not os.access(python, os.X_OK):
        return False
    try:
        done = _run([python, "-c", ""], config)
    except Failure:
        return False
    return done.returncode == 0


def _build(config: Dict[str, Any]) -> Dict[str, Any]:
    venv = config["venv"]
    python = os.path.join(venv, "bin", "python")
    uv = config["uv"]
    result: Dict[str, Any] = {}
    if not _python_works(python, config):
        # A half-made venv from an interrupted sync: start over (we hold the lock, and without
        # a marker nobody uses it).
        shutil.rmtree(venv, ignore_errors=True)
        argv = uv + ["venv", "--python", config["python"], venv]
        if config["system_site_packages"]:
            argv.append("--system-site-packages")
        done = _run(argv, config)
        if done.returncode != 0:
            raise Failure(
                "venv", "uv venv --python %s failed" % config["python"], done.stderr.strip()
            )
        result["venv_log"] = done.stderr.strip()
    requirements = config["requirements"]
    if requirements.strip():
        with open(config["requirements_path"], "w") as f:
            f.write(requirements)
        argv = uv + ["pip", "install", "--python", python, "-r", config["requirements_path"]]
        argv += config["uv_options"]
        if config["offline"]:
            argv.append("--offline")
        done = _run(argv, config)
        result["install_log"] = done.stderr.strip()
        if done.returncode != 0:
            raise Failure("install", "uv pip install failed", done.stderr.strip())
    check = "import sys, cloudpickle; sys.stdout.write('%d.%d' % sys.version_info[:2])"
    done = _run([python, "-c", check], config)
    if done.returncode != 0 or done.stdout.strip() != config["want"]:
        raise Failure(
            "verify",
            "the new venv's python does not work as expected (want Python %s with "
            "cloudpickle, got %r)" % (config["want"], done.stdout.strip()),
            done.stderr.strip(),
        )
    marker = config["marker"]
    tmp = "%s.tmp-%d" % (marker, os.getpid())
    with open(tmp, "w") as f:
        json.dump(config["marker_data"], f)
    os.replace(tmp, marker)  # last: a venv with a marker is complete
    try:
        # Best effort: only used to tell the user what changed at the next new venv.
        tmp = "%s.tmp-%d" % (config["previous_path"], os.getpid())
        with open(tmp, "w") as f:
            json.dump(dict(config["marker_data"], venv=venv), f)
        os.replace(tmp, config["previous_path"])
    except OSError:
        pass
    return result


def main() -> None:
    """Build the venv described by the JSON config on stdin; print the outcome as JSON."""
    config = json.loads(sys.stdin.read())
    out: Dict[str, Any] = {"status": "error"}
    lock = Lock(config["lock"], config["lock_timeout"], config["stale_after"], config["heartbeat"])
    try:
        parent = os.path.dirname(config["venv"])
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        lock.acquire()
        try:
            python = os.path.join(config["venv"], "bin", "python")
            if _marker_key(config["marker"]) == config["key"] and _python_works(python, config):
                out = {"status": "present"}
            else:
                out = dict(_build(config), status="installed")
        finally:
            lock.release()
    except Failure as exc:
        out = {"status": "error", "stage": exc.stage, "message": exc.message, "detail": exc.detail}
    except Exception as exc:  # report anything else as one line too, never a bare traceback
        out = {"status": "error", "stage": "internal", "message": repr(exc), "detail": ""}
    out["waited"] = lock.waited
    out["broken_locks"] = lock.broken
    sys.stdout.write(MARK + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
