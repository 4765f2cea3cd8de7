"""Top-level functions of the main script travel to ``local`` workers by name.

Spawned workers import the main script (as ``__mp_main__``), as ProcessPoolExecutor's do, so a
top-level ``__main__`` function is pickled by reference there and the module globals it reads
are not pickled with every call. Each test runs a real script in a subprocess (``__main__`` is
the script, not pytest) and measures the bytes of the pickled calls handed to the core.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from remote_futures.serialization import CallPickler, children_import_main

pytestmark = pytest.mark.timeout(180)

#: Counts the bytes of every pickled call the executor hands to its core.
_COUNT_BYTES = """
import remote_futures.core as _core

SENT = []
_enqueue = _core.Engine.enqueue

def _counting(self, request):
    SENT.extend(len(call.blob) for task in request.tasks for call in task)
    return _enqueue(self, request)

_core.Engine.enqueue = _counting
"""

_SCRIPT = _COUNT_BYTES + """
import json
from remote_futures import RemoteExecutor

BIG = {i: i for i in range(300_000)}


def read_big(x):
    return BIG[x], __name__


if __name__ == "__main__":
    def guarded(x):
        # Defined where the workers do not run: must still work (pickled by value).
        return BIG[x] + 1

    with RemoteExecutor(2) as ex:
        by_name = [ex.submit(read_big, i) for i in range(100)]
        results = [f.result() for f in by_name]
        by_name_bytes = list(SENT)
        del SENT[:]
        guarded_results = [ex.submit(guarded, i).result() for i in range(3)]
        guarded_bytes = list(SENT)
        del SENT[:]
        mapped = list(ex.map(read_big, range(50)))
        lam = ex.submit(lambda y: y * 3, 7).result()
        print(json.dumps({
            "by_reference": ex.transport.main_by_reference,
            "results": results, "by_name_bytes": by_name_bytes,
            "guarded": guarded_results, "guarded_bytes": guarded_bytes,
            "mapped": mapped, "lambda": lam,
        }))
"""


def _run(args: list[str], cwd: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_main_function_travels_by_name_and_its_global_is_not_pickled(tmp_path: Path) -> None:
    script = tmp_path / "big_global.py"
    script.write_text(_SCRIPT)
    out = _run([str(script)], tmp_path)
    assert out["by_reference"] is True
    # The workers ran their own import of the script, and read its global.
    assert out["results"] == [[i, "__mp_main__"] for i in range(100)]
    assert out["mapped"] == [[i, "__mp_main__"] for i in range(50)]
    # Each call is the function's name and its argument: far below the global's size.
    assert len(out["by_name_bytes"]) == 100
    assert max(out["by_name_bytes"]) < 1000
    # The control: a function the workers do not define goes by value, global and all
    # (300k entries pickle to over a megabyte), and still runs right.
    assert out["guarded"] == [1, 2, 3]
    assert min(out["guarded_bytes"]) > 1_000_000
    assert out["lambda"] == 21


def test_main_module_run_with_dash_m_travels_by_name(tmp_path: Path) -> None:
    (tmp_path / "big_module.py").write_text(_SCRIPT)
    out = _run(["-m", "big_module"], tmp_path)
    assert out["by_reference"] is True
    assert out["results"][:3] == [[0, "__mp_main__"], [1, "__mp_main__"], [2, "__mp_main__"]]
    assert max(out["by_name_bytes"]) < 1000


def test_interactive_main_travels_by_value(tmp_path: Path) -> None:
    # ``python -c``: no main file for the workers to import; functions go by value.
    code = _COUNT_BYTES + textwrap.dedent("""
        import json
        from remote_futures import RemoteExecutor
        BIG = {i: i for i in range(300_000)}
        def read_big(x):
            return BIG[x] * 2
        with RemoteExecutor(2) as ex:
            results = [ex.submit(read_big, i).result() for i in range(3)]
            lam = ex.submit(lambda y: y + 1, 1).result()
            print(json.dumps({"by_reference": ex.transport.main_by_reference,
                              "results": results, "lambda": lam, "bytes": SENT}))
    """)
    out = _run(["-c", code], tmp_path)
    assert out["by_reference"] is False
    assert out["results"] == [0, 2, 4]
    assert out["lambda"] == 2
    assert min(out["bytes"][:3]) > 1_000_000


def test_fork_workers_do_not_import_main() -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    assert children_import_main(multiprocessing.get_context("fork")) is False


def test_by_reference_is_only_for_top_level_main_functions() -> None:
    # Under pytest, ``__main__`` is pytest's: nothing here is a script's top-level function.
    def local(x: int) -> int:
        return x

    for fn in (local, lambda x: x, len):
        by_name = CallPickler(fn, main_by_reference=True).dumps((1,), {})
        by_value = CallPickler(fn).dumps((1,), {})
        assert by_name == by_value
