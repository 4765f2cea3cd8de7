"""Pickling calls going out and decoding outcomes coming back (client side).

Calls are pickled with cloudpickle in the caller's thread, so an unpicklable function or argument
fails at ``submit``. For transports whose remote side cannot import the caller's own modules, those
modules (the script, a module beside it, a test module) are pickled *by value*; installed
distributions and the standard library travel by reference.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import sys
import sysconfig
import threading
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cloudpickle

from . import worker
from .errors import (
    RemoteEnvironmentError,
    RemoteFuturesError,
    RemoteTraceback,
    SerializationError,
)
from .jobs import CodeBundle

__all__ = [
    "CallPickler",
    "InitializerFailed",
    "decode_outcome",
    "dumps_call",
    "dumps_initializer",
    "encode_task",
    "user_code",
]


class InitializerFailed(RemoteFuturesError):
    """Raised by :func:`decode_outcome` when the remote initializer failed (breaks the executor)."""


def dumps_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """Pickle one call; raise :class:`SerializationError` naming what could not be pickled."""
    return CallPickler(fn).dumps(args, kwargs)


class _PickledFunction:
    """A function pickled once, embedded as bytes in each of its calls: unpickling a call
    unpickles the function from those bytes (``pickle.loads``), so the worker's protocol is
    unchanged while ``map`` pickles the function once instead of once per call."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.blob,)


class CallPickler:
    """Pickles the calls of one function: the function once, then each call's arguments."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        self._what = getattr(fn, "__qualname__", repr(fn))
        try:
            self._fn = _PickledFunction(bytes(cloudpickle.dumps(fn)))
        except Exception as exc:
            raise SerializationError(f"cannot pickle the call to {self._what}: {exc}") from exc
        self._buffer = io.BytesIO()
        self._pickler = cloudpickle.Pickler(self._buffer, protocol=cloudpickle.DEFAULT_PROTOCOL)

    def dumps(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
        """One call of the function, as the worker unpickles it: ``(fn, args, kwargs)``."""
        # One pickler for all the calls (its memo cleared each time): building a cloudpickle
        # Pickler costs more than pickling a small call. Not thread-safe, as a CallPickler
        # serves one submit or one map.
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._pickler.clear_memo()
        try:
            self._pickler.dump((self._fn, tuple(args), dict(kwargs)))
        except Exception as exc:
            raise SerializationError(f"cannot pickle the call to {self._what}: {exc}") from exc
        return buffer.getvalue()


def dumps_initializer(
    initializer: Callable[..., Any] | None, initargs: Sequence[Any]
) -> bytes | None:
    """Pickle an executor initializer and its arguments, or return None for no initializer."""
    if initializer is None:
        return None
    if not callable(initializer):
        raise TypeError("initializer must be a callable")
    try:
        return bytes(cloudpickle.dumps((initializer, tuple(initargs))))
    except Exception as exc:
        raise SerializationError(f"cannot pickle the initializer: {exc}") from exc


def encode_task(
    calls: Iterable[tuple[int, bytes]],
    *,
    initializer: bytes | None = None,
    sys_path: Sequence[str] = (),
    code: str | None = None,
) -> bytes:
    """The ``task-<i>.in`` envelope: the calls, the initializer, the client's Python version,
    and where the caller's code is (``sys_path`` entries, or a code bundle's name)."""
    envelope = {
        "format": worker.FORMAT,
        "python": list(sys.version_info[:2]),
        "calls": list(calls),
        "initializer": initializer,
        "sys_path": list(sys_path),
        "code": code,
    }
    return pickle.dumps(envelope, protocol=worker.ENVELOPE_PROTOCOL)


def decode_outcome(data: bytes) -> tuple[bool, Any]:
    """Decode a ``call-<c>.out`` envelope into ``(True, value)`` or ``(False, exception)``.

    A user exception is returned as itself with the remote traceback as ``__cause__``;
    infrastructure problems become remote_futures errors.
    """
    # BaseException: unpickling runs arbitrary code (a class's __setstate__ may raise
    # SystemExit); on the event-loop thread it must fail this call only, not stop the loop.
    try:
        envelope = pickle.loads(data)
        kind = envelope["kind"]
    except BaseException as exc:
        return False, SerializationError(f"corrupt outcome file: {exc!r}")
    if kind == worker.VALUE:
        try:
            return True, cloudpickle.loads(envelope["value"])
        except BaseException as exc:
            return False, SerializationError(f"cannot unpickle the call's result locally: {exc!r}")
    if kind == worker.EXCEPTION:
        error = _load_exception(envelope)
        error.__cause__ = RemoteTraceback(envelope.get("traceback", ""))
        return False, error
    cause, message = envelope.get("cause"), envelope.get("message", "")
    tb = envelope.get("traceback", "")
    failure: RemoteFuturesError
    if cause == worker.ENVIRONMENT:
        failure = RemoteEnvironmentError(message)
    elif cause == worker.INITIALIZER:
        failure = InitializerFailed(message)
    else:
        failure = SerializationError(message)
    if tb:
        failure.__cause__ = RemoteTraceback(tb)
    return False, failure


def _load_exception(envelope: Mapping[str, Any]) -> BaseException:
    blob = envelope.get("exception")
    if blob is not None:
        try:
            error = cloudpickle.loads(blob)
            if isinstance(error, BaseException):
                return error
        except BaseException:
            pass  # fall through: the class may not exist here
    return RemoteFuturesError(
        f"the remote call raised {envelope.get('type')}: {envelope.get('repr')} "
        "(the exception itself could not be transferred)"
    )


# --- the caller's own modules travel as source ---------------------------------------------

_bundle_lock = threading.Lock()
_bundle_cache: tuple[int, CodeBundle | None] = (-1, None)
_registered: set[str] = set()
#: A user's code bundle above this size is still shipped, with a warning in the log.
_LARGE_BUNDLE = 50 * 1024 * 1024


def _installed_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    prefixes = {paths[key] for key in keys if key in paths}
    prefixes |= {p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")}
    prefixes.add(os.path.dirname(os.__file__))
    return tuple(os.path.realpath(p) + os.sep for p in prefixes if p)


def _is_user_module(name: str, module: types.ModuleType | None, prefixes: tuple[str, ...]) -> bool:
    if module is None or name in ("__main__", "__mp_main__") or name == "remote_futures" or (
        name.startswith("remote_futures.")
    ):
        return False
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return False
    return not os.path.realpath(path).startswith(prefixes)


def _package_files(init_file: str) -> list[tuple[str, str]]:
    """(path on disk, path in the zip) of every .py file of the package at ``init_file``."""
    root = os.path.dirname(init_file)
    base = os.path.dirname(root)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
        found += [
            (os.path.join(directory, f), os.path.relpath(os.path.join(directory, f), base))
            for f in sorted(files) if f.endswith(".py")
        ]
    return found


def user_code() -> CodeBundle | None:
    """The caller's own imported modules (outside the standard library and site-packages: the
    script's neighbours, test modules, a source checkout) as a zip for the remote ``sys.path``.

    They then travel by reference, as with ProcessPoolExecutor: module state is shared between
    an initializer and the calls, classes keep their identity and remote tracebacks name the
    real files. A user module that cannot be put in the zip (one inside a namespace package)
    is pickled by value instead. ``__main__`` is always pickled by value (cloudpickle). Cheap
    per submit: the zip is only rebuilt when new modules were imported.
    """
    global _bundle_cache
    modules = dict(sys.modules)
    if _bundle_cache[0] == len(modules):
        return _bundle_cache[1]
    with _bundle_lock:
        prefixes = _installed_prefixes()
        files: dict[str, str] = {}  # zip path -> disk path
        for name, module in sorted(modules.items()):
            if not _is_user_module(name, module, prefixes):
                continue
            top = name.partition(".")[0]
            top_module = modules.get(top)
            top_file = getattr(top_module, "__file__", None) or ""
            if top_file.endswith("__init__.py"):
                for disk, inside in _package_files(top_file):
                    files.setdefault(inside, disk)
            elif "." not in name:
                files.setdefault(os.path.basename(str(module.__file__)), str(module.__file__))
            elif name not in _registered:
                cloudpickle.register_pickle_by_value(module)
                _registered.add(name)
        bundle = _zip(files) if files else None
        if bundle is not None and len(bundle.data) > _LARGE_BUNDLE:
            logging.getLogger("remote_futures").warning(
                "your own modules make a %d MB code bundle: consider installing them as a "
                "package", len(bundle.data) >> 20)
        _bundle_cache = (len(modules), bundle)
        return bundle


def _zip(files: Mapping[str, str]) -> CodeBundle:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for inside in sorted(files):
            try:
                with open(files[inside], "rb") as f:
                    source = f.read()
            except OSError:
                continue
            # A fixed timestamp keeps the bytes, and so the name, stable for the same sources.
            info = zipfile.ZipInfo(inside, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source)
    data = buffer.getvalue()
    return CodeBundle(f"{hashlib.sha256(data).hexdigest()[:16]}.zip", data)
