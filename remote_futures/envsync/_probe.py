"""Runs on the remote side (``python -c <this file> <json>``): describe this interpreter.

Prints one line, ``@@rf-probe <json>``: the Python version, the platform and PEP 508 marker
values, the installed distributions (``pip list`` rules), and a usable uv. Standard library
only, and Python 3.6 syntax, so that an old remote interpreter can still say which version it is.
"""
# Python 3.6 runs this file: typing.Dict, %-formatting, universal_newlines, no capture_output.
# ruff: noqa: UP006, UP021, UP022, UP031, UP035, UP045, RUF005

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

MARK = "@@rf-probe "


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _format_version(info: Any) -> str:
    version = "%d.%d.%d" % (info.major, info.minor, info.micro)
    if info.releaselevel != "final":
        version += info.releaselevel[0] + str(info.serial)
    return version


def _markers() -> Dict[str, str]:
    # The same values as packaging.markers.default_environment(), without packaging.
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": _format_version(sys.implementation.version),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def _packages() -> Dict[str, str]:
    try:
        import importlib.metadata as metadata
    except ImportError:  # Python < 3.8: the version check will fail anyway
        return {}
    found: Dict[str, str] = {}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        for dist in metadata.distributions(path=[entry]):
            name = dist.metadata["Name"]
            if name and dist.version:
                found.setdefault(_canonical(name), dist.version)
    return found


def _version_tuple(text: str) -> List[int]:
    return [int(part) for part in re.findall(r"\d+", text)[:3]]


def _run(argv: List[str], timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
    return subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=timeout, env=env,
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_uv(
    candidates: List[str], minimum: str, home: str, notes: List[str], trusted: List[str]
) -> Any:
    own = candidates[0] if candidates else None
    for candidate in candidates:
        if candidate == "-m uv":
            argv = [sys.executable, "-m", "uv"]
        elif "/" in candidate:
            path = os.path.join(home, os.path.expanduser(candidate))
            if not os.access(path, os.X_OK):
                continue
            if candidate == own:
                # Our own copy has a predictable name: run it only if it is, byte for byte, a
                # uv this client would upload itself.
                try:
                    digest = _sha256(path)
                except OSError as exc:
                    notes.append("%s: %s" % (path, exc))
                    continue
                if digest not in trusted:
                    notes.append("%s is not a uv this client uploaded (sha256 %s); ignored"
                                 % (path, digest[:16]))
                    continue
            argv = [path]
        else:
            found = shutil.which(candidate)
            if not found:
                continue
            argv = [found]
        try:
            done = _run(argv + ["--version"], timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append("%s: %s" % (" ".join(argv), exc))
            continue
        if done.returncode != 0:
            notes.append("%s --version failed: %s" % (" ".join(argv), done.stderr.strip()[-300:]))
            continue
        version = (done.stdout.split() + ["", ""])[1]
        if _version_tuple(version) < _version_tuple(minimum):
            notes.append("%s is uv %s, older than %s" % (argv[-1], version, minimum))
            continue
        return argv, version
    return None, None


def main() -> None:
    """Print the description of this interpreter as one JSON line."""
    config = json.loads(sys.argv[1])
    home = os.path.expanduser("~")
    base = getattr(sys, "_base_executable", None) or sys.executable
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    result: Dict[str, Any] = {
        "version": list(sys.version_info[:3]),
        "executable": sys.executable,
        "base_executable": base if in_venv else sys.executable,
        "in_venv": in_venv,
        "system": platform.system(),
        "machine": platform.machine(),
        "libc": list(platform.libc_ver()),
        "markers": _markers(),
        "packages": _packages(),
        "home": home,
        "hostname": platform.node(),
    }
    notes: List[str] = []
    uv, uv_version = _find_uv(
        config["uv_candidates"], config["min_uv"], home, notes, config.get("uv_sha256", [])
    )
    result["uv"] = uv
    result["uv_version"] = uv_version
    matching: Optional[str] = None
    want = config["want"]
    if uv and "%d.%d" % sys.version_info[:2] != want:
        # Only worth a look when this interpreter is the wrong version.
        done = _run(uv + ["python", "find", want])
        if done.returncode == 0 and done.stdout.strip():
            matching = done.stdout.strip().splitlines()[-1]
        else:
            notes.append("uv python find %s: %s" % (want, done.stderr.strip()[-300:]))
    result["matching_python"] = matching
    result["notes"] = notes
    sys.stdout.write(MARK + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
