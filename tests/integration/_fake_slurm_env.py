"""The fake Slurm of ``fake_slurm.py`` put on PATH for a test (the ``fake_slurm`` fixture of
``conftest.py``), and a handle on its state."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def install(bin_dir: Path, script: Path, commands: list[str]) -> None:
    """Small scripts in ``bin_dir`` that run ``python script COMMAND ARGS...``."""
    bin_dir.mkdir(exist_ok=True)
    for command in commands:
        path = bin_dir / command
        path.write_text(f'#!/bin/sh\nexec {sys.executable} {script} {command} "$@"\n')
        path.chmod(0o755)


class FakeSlurm:
    """Handle on the fake scheduler's state directory."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def set_down(self, down: bool) -> None:
        flag = self.state / "ctld-down"
        if down:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def set_max_array_size(self, size: int) -> None:
        (self.state / "max-array-size").write_text(str(size))

    def states(self) -> dict[str, str]:
        tasks = self.state / "tasks"
        if not tasks.exists():
            return {}
        return {p.name: p.read_text().split()[0] for p in tasks.iterdir() if p.suffix != ".pid"}

    def log(self, name: str) -> str:
        path = self.state / name
        return path.read_text() if path.exists() else ""

    def kill_all(self) -> None:
        tasks = self.state / "tasks"
        for pid_file in tasks.glob("*.pid") if tasks.exists() else []:
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
