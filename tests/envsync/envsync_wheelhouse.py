"""A hermetic wheelhouse for envsync tests and the benchmark: no network, no build backend.

Tiny pure-Python wheels are written by hand (a wheel is a zip with a ``.dist-info``), and the
cloudpickle wheel is re-packed from the cloudpickle installed here, so uv can install everything
with ``--no-index --find-links``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: rf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _write_wheel(target: Path, dist_info: str, files: dict[str, bytes]) -> Path:
    record = [_record_line(path, data) for path, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return target


def make_wheel(
    directory: Path, name: str, version: str, *, requires: Iterable[str] = (), body: str = ""
) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` with one module named like the distribution."""
    module = re.sub(r"[-.]+", "_", name).lower()
    dist_info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n{body}".encode(),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": WHEEL_FILE.encode(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    return _write_wheel(directory / f"{module}-{version}-py3-none-any.whl", dist_info, files)


def rewheel_installed(name: str, directory: Path) -> Path:
    """Re-pack the installed pure-Python distribution ``name`` into a wheel in ``directory``."""
    dist = importlib.metadata.distribution(name)
    files: dict[str, bytes] = {}
    dist_info = ""
    for entry in dist.files or ():
        path = str(entry)
        if path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
            continue
        base = path.rsplit("/", 1)[-1]
        if ".dist-info/" in path:
            dist_info = path.split("/", 1)[0]
            if base in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
        files[path] = Path(str(entry.locate())).read_bytes()
    if not dist_info:
        raise RuntimeError(f"{name} has no .dist-info to re-pack")
    files.setdefault(f"{dist_info}/WHEEL", WHEEL_FILE.encode())
    module = re.sub(r"[-.]+", "_", dist.metadata["Name"]).lower()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{module}-{dist.version}-py3-none-any.whl"
    return _write_wheel(target, dist_info, files)


def build_wheelhouse(directory: Path, *, bench: int = 0) -> Path:
    """The test wheelhouse: rf-tiny-a 1.0/1.1, rf-tiny-b (needs rf-tiny-a), rf-tiny-c, cloudpickle.

    ``bench`` adds rf-bench-1 ... rf-bench-N for the benchmark.
    """
    make_wheel(directory, "rf-tiny-a", "1.0")
    make_wheel(directory, "rf-tiny-a", "1.1")
    make_wheel(directory, "rf-tiny-b", "1.0", requires=["rf-tiny-a>=1.0"])
    make_wheel(directory, "rf-tiny-c", "1.0")
    for i in range(1, bench + 1):
        make_wheel(directory, f"rf-bench-{i}", "1.0", body=f"VALUE = {i}\n")
    rewheel_installed("cloudpickle", directory)
    return directory
