"""Functions pickled by value keep their file name and source lines (client side).

cloudpickle ships the code of a function it pickles by value (defined in ``__main__``, a
notebook cell, ``exec``'d code, a lambda or closure in such a place) with the file name
``<dynamic-code>``, so a traceback from the worker shows neither where the code was nor the
line. :func:`dumps_function` pickles such code with its real file name and, when this process
knows the source (a file, or a cell registered in ``linecache``), that file's lines, which the
worker registers in its own ``linecache`` while unpickling: tracebacks and ``inspect`` then
work there as here. The pickle uses only the standard library and cloudpickle's own helpers,
so any worker (local or remote) can load it.
"""

from __future__ import annotations

import functools
import linecache
import operator
import types
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _impl

__all__ = ["SourcePickler", "dumps_function"]

#: Files longer than this are not carried (the code still is, with its file name).
_MAX_SOURCE_BYTES = 1 << 20


class _Code:
    """Stands for a code object in a pickle: reduced exactly as cloudpickle reduces it."""

    __slots__ = ("code",)

    def __init__(self, code: types.CodeType) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        return _impl._code_reduce(self.code)


class SourcePickler(cloudpickle.Pickler):  # type: ignore[misc]  # untyped base
    """A cloudpickle pickler whose by-value code objects keep their file name and source."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._files_sent: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        """Code objects: rebuilt with their file name, registering the file's lines first."""
        if isinstance(obj, types.CodeType):
            filename = obj.co_filename
            restore = functools.partial(types.CodeType.replace, co_filename=filename)
            lines = self._lines(filename)
            if lines is None:
                return restore, (_Code(obj),)
            # itemgetter(0) of (code, setitem(linecache.cache, filename, entry)): unpickling
            # builds the tuple, registering the source as a side effect.
            entry = (len(lines), None, lines, filename)
            register = _Reduced(operator.setitem, (_Reduced(getattr, (
                _Reduced(_impl.subimport, ("linecache",)), "cache")), filename, entry))
            return operator.itemgetter(0), ((_Reduced(restore, (_Code(obj),)), register),)
        return super().reducer_override(obj)

    def _lines(self, filename: str) -> list[str] | None:
        if filename in self._files_sent or filename.startswith("<frozen"):
            return None
        lines = linecache.getlines(filename)
        if not lines or sum(map(len, lines)) > _MAX_SOURCE_BYTES:
            return None
        self._files_sent.add(filename)
        return lines


class _Reduced:
    """A value that unpickles as ``function(*args)``."""

    __slots__ = ("args", "function")

    def __init__(self, function: Any, args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def dumps_function(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, with the source of by-value code carried along."""
    import io

    buffer = io.BytesIO()
    SourcePickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    return buffer.getvalue()
