"""``find`` and ``grep`` as a login node on NFS sees them: files under ``$FAKE_NFS_ROOT``
modified less than ``$FAKE_NFS_LAG`` seconds ago are not there yet (directory-listing and
attribute caches lag what compute nodes wrote). Installed as small scripts
(``python fake_nfs.py find "$@"``) first on PATH; the real tools are ``$FAKE_REAL_FIND`` and
``$FAKE_REAL_GREP``.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.environ["FAKE_NFS_ROOT"]
LAG = float(os.environ["FAKE_NFS_LAG"])


def _young(path: str) -> bool:
    if not os.path.abspath(path).startswith(ROOT):
        return False
    try:
        return time.time() - os.stat(path).st_mtime < LAG
    except OSError:
        return False


def find(args: list[str]) -> None:
    # Starting points come first; insert "not younger than LAG under ROOT" before the rest.
    split = next((i for i, arg in enumerate(args) if arg.startswith(("-", "(", "!"))), len(args))
    cutoff = f"@{time.time() - LAG:.3f}"
    hide = ["(", "-newermt", cutoff, "-path", f"{ROOT}*", ")"]
    real = [os.environ["FAKE_REAL_FIND"], *args[:split], "!", *hide]
    rest = args[split:]
    if rest:
        real += ["(", *rest, ")"]
    os.execv(real[0], real)


def grep(args: list[str]) -> None:
    options = [arg for arg in args if arg.startswith("-")]
    operands = [arg for arg in args if not arg.startswith("-")]
    pattern, files = operands[0], operands[1:]
    shown = [path for path in files if not _young(path)]
    if files and not shown:
        sys.exit(1)  # every file named was hidden
    real = os.environ["FAKE_REAL_GREP"]
    os.execv(real, [real, *options, pattern, *shown])


if __name__ == "__main__":
    {"find": find, "grep": grep}[sys.argv[1]](sys.argv[2:])
