"""Distributions that cannot be installed by name: build them here, or pickle them by value.

An editable install or a local directory is built into a wheel with ``uv build --wheel`` (or
``pip wheel --no-deps``) and uploaded; the remote uv installs that file. When no wheel can be
built but the distribution is pure Python modules, cloudpickle pickles those modules by value
instead, so calls into them still work (only what a call references travels; data files do not).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import anyio

from .snapshot import LocalDist

__all__ = [
    "BuildError", "build_wheel", "fingerprint", "install_fingerprint", "local_uv",
    "local_uv_digests", "pure_modules", "register_by_value",
]

log = logging.getLogger("remote_futures.envsync")

#: Directories that never hold a project's sources and can be huge.
_SKIP_DIRS = frozenset({
    "__pycache__", "node_modules", "build", "dist", "target", "venv", "env", "htmlcov",
})
#: Stop fingerprinting a tree after this many files (a data directory inside a checkout).
_MAX_FILES = 20_000
_EXTENSIONS = (".so", ".pyd", ".dylib", ".dll")


class BuildError(Exception):
    """No wheel could be built; the message holds each builder's own error."""


def fingerprint(path: str) -> str:
    """A cheap digest of a source tree or file (names, sizes, mtimes): changes when it does.

    Reading metadata instead of contents keeps an unchanged start at milliseconds; hidden
    directories (``.git``, ``.venv``...), caches and build outputs are left out.
    """
    digest = hashlib.sha256()
    root = Path(path)
    if root.is_file():
        stat = root.stat()
        digest.update(f"{root.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]
    count = 0
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(directory, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, root)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
            if count >= _MAX_FILES:
                return digest.hexdigest()[:16]
    return digest.hexdigest()[:16]


#: Files of an installed distribution's metadata that say what it installs: its name, version
#: and dependencies (METADATA / PKG-INFO), commands, and importable names.
_METADATA_FILES = ("METADATA", "PKG-INFO", "entry_points.txt", "top_level.txt")


def install_fingerprint(dist: LocalDist | None, path: str) -> str:
    """A digest of what a local project installs, to name the venv it is shipped into.

    A project installed from a directory (editable or not) is described by its installed
    metadata: name, version, dependencies, entry points. That changes when the project is
    reinstalled, not when one of its files is saved: the caller's own modules travel with each
    job anyway (as a code bundle), so an edit must not build a new venv. A wheel or archive
    file, and a project without metadata, fall back to :func:`fingerprint` of the path.
    """
    if dist is None or dist.metadata_path is None or Path(path).is_file():
        return fingerprint(path)
    digest = hashlib.sha256(f"{dist.name}\0{dist.version}\0".encode())
    root = Path(dist.metadata_path)
    for name in _METADATA_FILES:
        try:
            digest.update(f"{name}\0".encode() + (root / name).read_bytes() + b"\0")
        except OSError:
            continue
    return digest.hexdigest()[:16]


def local_uv_executable() -> str | None:
    """This machine's uv as a real executable file that can be uploaded, or None.

    A ``uv`` found on PATH may be a wrapper script (pyenv and asdf install shims): it runs
    here but would be useless, and wrong, on another machine."""
    found = local_uv()
    if found is None:
        return None
    path = os.path.realpath(found)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return None
    # ELF (Linux), Mach-O (macOS, both byte orders and fat binaries).
    binaries = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xca\xfe\xba\xbe")
    return path if magic in binaries else None


_digest_cache: dict[tuple[str, int, int], str] = {}


def local_uv_digests() -> list[str]:
    """The sha256 of the uv binary this machine would upload (empty when it has none).

    The remote side runs the work directory's own uv only when it has one of these digests:
    its name is predictable, so its bytes, not its presence, are what is trusted."""
    path = local_uv_executable()
    if path is None:
        return []
    try:
        stat = os.stat(path)
    except OSError:
        return []
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _digest_cache[key] = digest.hexdigest()
    return [_digest_cache[key]]


def local_uv() -> str | None:
    """This machine's uv binary: the one the ``uv`` package ships, else the one on PATH."""
    try:
        import uv  # the PyPI package ships the binary

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _backend_available(source: Path) -> bool:
    """Whether the project's build backend is importable here (then build without isolation)."""
    backend = "setuptools.build_meta"
    pyproject = source / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return False
        backend = str(data.get("build-system", {}).get("build-backend", backend))
    elif not (source / "setup.py").is_file():
        return False
    module = backend.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _builders(source: Path, out: str, *, offline: bool) -> list[list[str]]:
    # Without isolation when the backend is here: fast, and needs no index. Otherwise isolated,
    # which fetches the backend from the configured index.
    isolated = not (source.is_dir() and _backend_available(source))
    builders: list[list[str]] = []
    uv = local_uv()
    if uv:
        argv = [uv, "build", "--wheel", "--out-dir", out, "--python", sys.executable]
        if not isolated:
            argv.append("--no-build-isolation")
        if offline:
            argv.append("--offline")
        builders.append([*argv, str(source)])
    if importlib.util.find_spec("pip") is not None:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out]
        if not isolated:
            argv.append("--no-build-isolation")
        builders.append([*argv, str(source)])
    return builders


async def build_wheel(source: str, *, offline: bool = False) -> Path:
    """Build ``source`` (a project directory or an sdist) into a wheel; return its path.

    A wheel file is returned as it is. The wheel lands in a new temporary directory that the
    caller removes. Raises :class:`BuildError` with every builder's message on failure.
    """
    path = Path(source)
    if path.suffix == ".whl":
        return path
    if path.is_dir() and not any(
        (path / name).is_file() for name in ("pyproject.toml", "setup.py", "setup.cfg")
    ):
        raise BuildError(f"{path} is not a Python project (no pyproject.toml or setup.py)")
    out = tempfile.mkdtemp(prefix="rf-wheel-")
    errors: list[str] = []
    for argv in _builders(path, out, offline=offline):
        done = await anyio.run_process(argv, check=False)
        wheels = sorted(Path(out).glob("*.whl"))
        if done.returncode == 0 and wheels:
            log.debug("built %s with %s", wheels[-1].name, argv[0])
            return wheels[-1]
        message = (done.stderr or done.stdout).decode(errors="replace").strip()
        errors.append(f"$ {' '.join(argv)}\n{message[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    if not errors:
        errors.append("neither uv nor pip is available here to build it")
    raise BuildError("\n".join(errors))


def pure_modules(dist: LocalDist) -> list[str] | None:
    """The importable top-level modules of ``dist`` if all are pure Python, else None."""
    names: list[str] = []
    for name in dist.top_level():
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            return None
        if not spec.origin.endswith(".py"):
            return None  # an extension module
        for location in spec.submodule_search_locations or ():
            for _, _, filenames in os.walk(location):
                if any(f.endswith(_EXTENSIONS) for f in filenames):
                    return None
        names.append(name)
    return names or None


def register_by_value(modules: list[str]) -> list[str]:
    """Import each module and make cloudpickle pickle it by value; return those registered."""
    import cloudpickle

    done: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
            cloudpickle.register_pickle_by_value(module)
        except Exception as exc:  # a user module can raise anything on import
            log.warning(
                "cannot pickle %s by value: %r; calls into it will fail remotely", name, exc
            )
            continue
        done.append(name)
    return done
