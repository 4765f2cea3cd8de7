"""``progress=True``: a bar per map on stderr, drawn in a pseudo-terminal as a user sees it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from remote_futures import ConfigurationError, RemoteExecutor

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent(
    """
    import math
    from remote_futures import RemoteExecutor

    def root(x):
        return math.sqrt(x)   # x = -1 raises ValueError: one failed call

    if __name__ == "__main__":
        with RemoteExecutor("local", max_workers=2, progress=True) as ex:
            futures = [ex.submit(abs, 1)]  # a submit draws no bar
            results = list(ex.map(root, [4, 9, 16, 25, 36], chunksize=1))
            try:
                list(ex.map(root, [1, -1, 4]))
            except ValueError:
                pass
        print("results", results)
    """
)


def _run_in_a_terminal(script: Path) -> str:
    """Run ``script`` with its stderr (and stdout) on a pseudo-terminal; return all it wrote."""
    master, slave = pty.openpty()
    # A new pseudo-terminal is 0x0; a terminal window is not.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_a_bar_per_map_in_a_terminal(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    out = _run_in_a_terminal(script)
    assert "results [2.0, 3.0, 4.0, 5.0, 6.0]" in out
    assert "root (local)" in out
    assert "\r" in out  # redrawn in place, as in a terminal
    # The final state of each bar: every call counted, failures named.
    assert "5/5" in out and "failed=0" in out
    assert "3/3" in out and "failed=1" in out
    assert out.count("root (local)") >= 2
    assert "1/1" not in out  # the submit had no bar


def test_progress_without_tqdm_is_refused_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    with pytest.raises(ConfigurationError, match=r"remote-futures\[progress\]"):
        RemoteExecutor("local", progress=True)


@pytest.fixture
def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "profiles.toml"
        path.write_text(text)
        monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(path))
        return path

    return write


def test_progress_in_a_profile(write_config: Callable[[str], Path]) -> None:
    write_config('[profiles.p]\ntransport = "local"\nprogress = true\n')
    ex = RemoteExecutor("p", max_workers=1)
    try:
        assert ex._progress is True
    finally:
        ex.shutdown()
    write_config('[profiles.p]\ntransport = "local"\nprogress = "yes"\n')
    with pytest.raises(ConfigurationError, match="'progress' must be true or false"):
        RemoteExecutor("p")


def test_output_and_its_prefix_in_a_profile(write_config: Callable[[str], Path]) -> None:
    """``output`` and ``output_prefix`` are executor keywords a profile may set; a keyword
    argument overrides them; a bad value is refused before anything runs."""
    write_config('[profiles.p]\ntransport = "local"\noutput = "off"\n'
                 'output_prefix = "<{call}> "\n')
    ex = RemoteExecutor("p", max_workers=2)
    try:
        forwarder = ex.transport.output
        assert (forwarder.mode, forwarder.prefix) == ("off", "<{call}> ")
    finally:
        ex.shutdown()
    ex = RemoteExecutor("p", max_workers=2, output="end")
    try:
        assert ex.transport.output.mode == "end"
    finally:
        ex.shutdown()
    write_config('[profiles.p]\ntransport = "local"\noutput = 1\n')
    with pytest.raises(ConfigurationError, match="'output' must be a string"):
        RemoteExecutor("p")
    write_config('[profiles.p]\ntransport = "local"\noutput = "loud"\n')
    with pytest.raises(ConfigurationError, match="output must be one of"):
        RemoteExecutor("p")
