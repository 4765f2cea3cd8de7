"""Pickling calls going out and decoding outcomes coming back (client side).

Calls are pickled with cloudpickle in the caller's thread, so an unpicklable function or argument
fails at ``submit``. Large buffers in a call (``bytes``, ``bytearray``, memoryviews, numpy arrays)
are not copied into its pickle: they travel beside it (:class:`~remote_futures.jobs.Pickled`,
see ``worker.dumps_value``), sent as they are by the transports that can (warm ``ssh`` workers)
and written into the task's file once by the others.

For transports whose remote side cannot import the caller's own modules, those modules (the
script, a module beside it, a test module) are pickled *by value*; installed distributions
and the standard library travel by reference.
"""

from __future__ import annotations

import functools
import hashlib
import io
import linecache
import logging
import multiprocessing.context
import multiprocessing.spawn
import os
import pickle
import sys
import sysconfig
import threading
import time
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cloudpickle

from . import worker
from ._source import dumps_function
from .errors import (
    RemoteEnvironmentError,
    RemoteFuturesError,
    RemoteTraceback,
    SerializationError,
)
from .jobs import CodeBundle, Pickled, buffers_of

__all__ = [
    "CallPickler",
    "InitializerFailed",
    "children_import_main",
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


def children_import_main(ctx: multiprocessing.context.BaseContext) -> bool:
    """Whether a process started with ``ctx`` imports this program's main script (as
    ``__mp_main__``, aliased to ``__main__``), as ``multiprocessing``'s spawn and forkserver
    start methods do when the program was started from a file or with ``python -m module``:
    then the script's top-level functions exist in such a child and can be pickled by name.

    Not with ``fork`` (a worker forked before a function was defined does not have it), nor
    for an interactive session, ``python -c``, a notebook or ``python -m package`` (whose
    ``__main__`` multiprocessing does not import in the child).
    """
    if ctx.get_start_method() not in ("spawn", "forkserver"):
        return False
    main = sys.modules.get("__main__")
    if main is None:
        return False
    try:
        # What multiprocessing itself hands the child to prepare its main module.
        data = multiprocessing.spawn.get_preparation_data("remote_futures-worker")
    except Exception:
        return False
    name = data.get("init_main_from_name")
    if name is not None:
        # multiprocessing skips these (spawn._fixup_main_from_name).
        return bool(name != "__main__" and not str(name).endswith(".__main__"))
    path = data.get("init_main_from_path")
    if path is None:
        return False
    return bool(os.path.splitext(os.path.basename(path))[0] != "ipython")


def _main_reference(fn: Callable[..., Any]) -> bytes | None:
    """``fn`` pickled by name (``__main__.<name>``) if it is a top-level function of the main
    script that a child importing the script defines too; else None (pickle it by value).

    Top level means: bound to its name in ``__main__`` and defined at the first column of the
    script, so not inside ``if __name__ == "__main__":`` (which the child does not run), a
    function or a class. A lambda, a closure, a function of an interactive session or of an
    ``exec``'d string is not.
    """
    if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__":
        return None
    name = fn.__qualname__
    main = sys.modules.get("__main__")
    if "." in name or "<" in name or main is None or getattr(main, name, None) is not fn:
        return None
    main_file = getattr(main, "__file__", None)
    code = fn.__code__
    if not main_file or os.path.realpath(code.co_filename) != os.path.realpath(main_file):
        return None
    line = linecache.getline(code.co_filename, code.co_firstlineno)
    if not line or line[0].isspace():
        return None
    try:
        return pickle.dumps(fn, protocol=cloudpickle.DEFAULT_PROTOCOL)
    except Exception:
        return None


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
    """Pickles the calls of one function: the function once, then each call's arguments.

    ``main_by_reference``: the workers import the main script (:func:`children_import_main`),
    so a top-level function of it travels by name, as with ``ProcessPoolExecutor``: the
    module globals it reads are the worker's own (set when it imported the script), not
    pickled with every call. Other functions, and every function otherwise, travel by value.
    """

    def __init__(self, fn: Callable[..., Any], *, main_by_reference: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        self._what = getattr(fn, "__qualname__", repr(fn))
        try:
            blob = _main_reference(fn) if main_by_reference else None
            self._fn = _PickledFunction(blob if blob is not None else dumps_function(fn))
        except Exception as exc:
            raise SerializationError(f"cannot pickle the call to {self._what}: {exc}") from exc
        self._buffer = io.BytesIO()
        self._found: list[pickle.PickleBuffer] = []
        # The callback holds the list, not this object: a cycle through the pickler would
        # keep the last call's arguments (in its memo) until a garbage collection.
        self._pickler = cloudpickle.Pickler(
            self._buffer,
            protocol=cloudpickle.DEFAULT_PROTOCOL,
            buffer_callback=functools.partial(_collect, self._found),
        )

    def dumps(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
        """One call of the function, as the worker unpickles it: ``(fn, args, kwargs)``; a
        :class:`~remote_futures.jobs.Pickled` if large buffers travel beside the pickle."""
        call = (self._fn, tuple(args), dict(kwargs))
        # Arguments of none of the types that may hold a large buffer (numbers, strings...):
        # told at C speed, the common case of a map of small calls.
        if not (worker.SCANNED_TYPES.isdisjoint(map(type, call[1]))
                and worker.SCANNED_TYPES.isdisjoint(map(type, call[2].values()))
                ) and worker.holds_buffers(call[1:]):
            return self._dumps_with_buffers(call)
        # One pickler for all the calls (its memo cleared each time): building a cloudpickle
        # Pickler costs more than pickling a small call. Not thread-safe, as a CallPickler
        # serves one submit or one map.
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        try:
            self._pickler.dump(call)
        except Exception as exc:
            self._found.clear()
            raise SerializationError(f"cannot pickle the call to {self._what}: {exc}") from exc
        finally:
            # The memo refers to what was pickled: the arguments must not outlive the call.
            self._pickler.clear_memo()
        found = tuple(self._found)
        self._found.clear()
        return Pickled.of(buffer.getvalue(), found)

    def _dumps_with_buffers(self, call: tuple[Any, ...]) -> bytes:
        try:
            data, found = worker.dumps_value(call, True, snapshot=True)
        except Exception as exc:
            raise SerializationError(f"cannot pickle the call to {self._what}: {exc}") from exc
        return Pickled.of(data, found)


def _collect(found: list[pickle.PickleBuffer], buffer: pickle.PickleBuffer) -> bool:
    """A protocol-5 buffer (a numpy array's): out of band if large (copied unless it is a
    ``bytes``'s, so that a change after ``submit`` does not reach the call)."""
    try:
        view = buffer.raw()
    except BufferError:
        return True  # not contiguous: pickle decides
    if view.nbytes < worker.OUT_OF_BAND_BYTES:
        return True
    if not worker.immutable(view):
        # Copied, keeping its kind (read-only or not: what the unpickled object will be).
        buffer = pickle.PickleBuffer(bytes(view) if view.readonly else bytearray(view))
    found.append(buffer)
    return False


def dumps_initializer(
    initializer: Callable[..., Any] | None, initargs: Sequence[Any]
) -> bytes | None:
    """Pickle an executor initializer and its arguments, or return None for no initializer."""
    if initializer is None:
        return None
    if not callable(initializer):
        raise TypeError("initializer must be a callable")
    try:
        return dumps_function((initializer, tuple(initargs)))
    except Exception as exc:
        raise SerializationError(f"cannot pickle the initializer: {exc}") from exc


def encode_task(
    calls: Iterable[tuple[int, bytes]],
    *,
    initializer: bytes | None = None,
    sys_path: Sequence[str] = (),
    code: str | None = None,
    out_of_band: bool = False,
) -> bytes:
    """The ``task-<i>.in`` envelope: the calls, the initializer, the client's Python version,
    and where the caller's code is (``sys_path`` entries, or a code bundle's name).

    A call with buffers beside its pickle (:class:`~remote_futures.jobs.Pickled`) is entered
    as ``(index, pickle, number of buffers)``. With ``out_of_band`` the envelope is a
    ``Pickled`` too, carrying all of the task's buffers in order; without, they are written
    into the envelope (``buffers``), each once, straight from the caller's memory."""
    entries: list[tuple[Any, ...]] = []
    buffers: list[Any] = []
    for index, blob in calls:
        found = buffers_of(blob)
        if found:
            # The pickle as plain bytes (small: its buffers are apart): the remote side
            # knows no Pickled.
            entries.append((index, bytes(blob), len(found)))
            buffers += found
        else:
            entries.append((index, blob))
    envelope: dict[str, Any] = {
        "format": worker.FORMAT,
        "python": list(sys.version_info[:2]),
        "calls": entries,
        "initializer": initializer,
        "sys_path": list(sys_path),
        "code": code,
    }
    if out_of_band:
        return Pickled.of(pickle.dumps(envelope, protocol=worker.ENVELOPE_PROTOCOL), buffers)
    if buffers:
        envelope["buffers"] = [_in_band(buffer) for buffer in buffers]
        return pickle.dumps(envelope, protocol=5)
    return pickle.dumps(envelope, protocol=worker.ENVELOPE_PROTOCOL)


def _in_band(buffer: Any) -> pickle.PickleBuffer:
    # A PickleBuffer is written into a protocol-5 pickle from its memory, as bytes (read-only)
    # or a bytearray (writable): what the call's pickle expects back.
    return buffer if isinstance(buffer, pickle.PickleBuffer) else pickle.PickleBuffer(buffer)


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
            # The result's large buffers came beside the outcome (a warm worker's frames).
            return True, worker.BufferUnpickler(envelope["value"], buffers_of(data)).load()
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
#: (number of modules, (path, mtime_ns, size) of each file in the bundle, the bundle).
_bundle_cache: tuple[int, tuple[tuple[str, int, int], ...], CodeBundle | None] = (-1, (), None)
#: Seconds between looks at the bundled files' stamps: an edit is picked up by a human's next
#: run, while a loop of submits does not stat every file each time.
_RECHECK_AFTER = 0.5
_checked_at = 0.0
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
    is pickled by value instead. ``__main__`` is pickled by value (cloudpickle), but for the
    top-level functions of a main script that the workers import (:class:`CallPickler`). Cheap
    per submit: the zip is only rebuilt when new modules were imported or one of its files
    changed (an edit picked up by ``importlib.reload`` or IPython's autoreload).
    """
    global _bundle_cache, _checked_at
    modules = dict(sys.modules)
    count, stamps, cached = _bundle_cache
    if count == len(modules):
        # No new module; and no file of the bundle changed on disk (an edit, autoreload).
        now = time.monotonic()
        if now - _checked_at < _RECHECK_AFTER:
            return cached
        if _stamps(path for path, _, _ in stamps) == stamps:
            _checked_at = now
            return cached
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
        _bundle_cache = (len(modules), _stamps(files.values()), bundle)
        _checked_at = time.monotonic()
        return bundle


def _stamps(paths: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of each file: what tells that a bundled source changed."""
    found: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            found.append((path, -1, -1))
            continue
        found.append((path, info.st_mtime_ns, info.st_size))
    return tuple(found)


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
