"""Pickling calls going out and decoding outcomes coming back (client side).

Calls are pickled with cloudpickle in the caller's thread, so an unpicklable function or argument
fails at ``submit``. For transports whose remote side cannot import the caller's own modules, those
modules (the script, a module beside it, a test module) are pickled *by value*; installed
distributions and the standard library travel by reference.
"""

from __future__ import annotations

import os
import pickle
import sys
import sysconfig
import threading
import types
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

__all__ = [
    "InitializerFailed",
    "decode_outcome",
    "dumps_call",
    "dumps_initializer",
    "encode_task",
    "register_user_modules_by_value",
]


class InitializerFailed(RemoteFuturesError):
    """Raised by :func:`decode_outcome` when the remote initializer failed (breaks the executor)."""


def dumps_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """Pickle one call; raise :class:`SerializationError` naming what could not be pickled."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    try:
        return bytes(cloudpickle.dumps((fn, tuple(args), dict(kwargs))))
    except Exception as exc:
        what = getattr(fn, "__qualname__", repr(fn))
        raise SerializationError(f"cannot pickle the call to {what}: {exc}") from exc


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
) -> bytes:
    """The ``task-<i>.in`` envelope: the calls, the initializer, the client's Python version."""
    envelope = {
        "format": worker.FORMAT,
        "python": list(sys.version_info[:2]),
        "calls": list(calls),
        "initializer": initializer,
        "sys_path": list(sys_path),
    }
    return pickle.dumps(envelope, protocol=worker.ENVELOPE_PROTOCOL)


def decode_outcome(data: bytes) -> tuple[bool, Any]:
    """Decode a ``call-<c>.out`` envelope into ``(True, value)`` or ``(False, exception)``.

    A user exception is returned as itself with the remote traceback as ``__cause__``;
    infrastructure problems become remote_futures errors.
    """
    try:
        envelope = pickle.loads(data)
        kind = envelope["kind"]
    except Exception as exc:
        return False, SerializationError(f"corrupt outcome file: {exc!r}")
    if kind == worker.VALUE:
        try:
            return True, cloudpickle.loads(envelope["value"])
        except Exception as exc:
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
        except Exception:
            pass  # fall through: the class may not exist here
    return RemoteFuturesError(
        f"the remote call raised {envelope.get('type')}: {envelope.get('repr')} "
        "(the exception itself could not be transferred)"
    )


# --- pickling the caller's own modules by value -----------------------------------------------

_registered: set[str] = set()
_registered_lock = threading.Lock()
_seen_module_count = -1


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


def register_user_modules_by_value() -> None:
    """Make cloudpickle pickle every imported module of the caller's own by value.

    A module counts as the caller's own when its file lives outside the standard library and
    every site-packages directory: the script's neighbours, a test module, a source checkout.
    ``__main__`` is always pickled by value by cloudpickle itself. Cheap to call per submit: the
    scan only runs again when new modules were imported.
    """
    global _seen_module_count
    modules = dict(sys.modules)
    if len(modules) == _seen_module_count:
        return
    prefixes = _installed_prefixes()
    with _registered_lock:
        for name, module in modules.items():
            if name in _registered or name.partition(".")[0] in _registered:
                continue  # registering a package covers its submodules
            if _is_user_module(name, module, prefixes):
                cloudpickle.register_pickle_by_value(module)
                _registered.add(name)
        _seen_module_count = len(modules)
