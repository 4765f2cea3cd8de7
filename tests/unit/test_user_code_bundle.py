"""The caller's code bundle follows edits of its files, not only new imports."""

from __future__ import annotations

import importlib
import io
import os
import sys
import zipfile
from pathlib import Path

import pytest

from remote_futures import serialization
from remote_futures.serialization import user_code


def _bundled(name: str) -> str:
    bundle = user_code()
    assert bundle is not None
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as archive:
        return archive.read(name).decode()


def test_an_edited_and_reloaded_module_ships_its_new_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files are looked at again at most every _RECHECK_AFTER seconds; at once here.
    monkeypatch.setattr(serialization, "_RECHECK_AFTER", 0.0)
    source = tmp_path / "rf_reloaded_mod.py"
    source.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("rf_reloaded_mod")
        assert "VALUE = 1" in _bundled("rf_reloaded_mod.py")
        # Whatever the first build imported itself is counted now: the cache holds.
        assert user_code() is user_code()

        # An edit picked up by autoreload: the same module object, so the same module count.
        count = len(sys.modules)
        source.write_text("VALUE = 22\n")
        os.utime(source, ns=(10**18, 10**18))
        importlib.reload(module)
        assert len(sys.modules) == count and module.VALUE == 22
        assert "VALUE = 22" in _bundled("rf_reloaded_mod.py")
        assert user_code() is user_code()  # unchanged: the cached bundle
    finally:
        sys.modules.pop("rf_reloaded_mod", None)
