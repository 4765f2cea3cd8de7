"""The environment cache stays healthy: edits do not multiply venvs, a broken venv is rebuilt,
old venvs are pruned, and the work directory's own uv is trusted for its bytes only.

Each test runs sync_environment against this machine (LocalShell) with a real uv.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from envsync_support import CLOUDPICKLE, CountingShell

from remote_futures.envsync import EnvSpec, LocalDist, SyncResult, sync_environment
from remote_futures.envsync.remote import MARKER_NAME

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

PYTHON = sys.executable


def _run(result: SyncResult, code: str) -> str:
    done = subprocess.run([result.python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _editable_install(root: Path, value: int, version: str = "0.1") -> LocalDist:
    """A project installed in editable mode, as pip or uv leave it: sources in ``root/src``,
    and a ``.dist-info`` with METADATA and a PEP 610 record pointing at them."""
    project = root / "src"
    (project / "rf_edit").mkdir(parents=True, exist_ok=True)
    (project / "rf_edit" / "__init__.py").write_text(f"VALUE = {value}\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "rf-edit"\nversion = "{version}"\n'
    )
    info = root / "site" / f"rf_edit-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rf-edit\nVersion: {version}\n")
    direct = {"url": project.as_uri(), "dir_info": {"editable": True}}
    (info / "direct_url.json").write_text(json.dumps(direct))
    return LocalDist("rf-edit", version, direct, installer="uv", metadata_path=str(info))


async def test_editing_an_editable_project_reuses_its_venv(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec
) -> None:
    work = str(tmp_path / "work")
    dist = _editable_install(tmp_path / "p", 42)
    local = [dist, LocalDist("cloudpickle", CLOUDPICKLE)]
    first = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec, local=local)
    assert first.shipped == ["rf-edit (wheel)"] and not first.cached

    # Save a source file and a note: what the project installs did not change.
    source = tmp_path / "p" / "src" / "rf_edit" / "__init__.py"
    source.write_text("VALUE = 43\n")
    os.utime(source, ns=(1, 1))
    (tmp_path / "p" / "src" / "notes.md").write_text("todo\n")
    edited = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec, local=local)
    assert edited.cached and edited.venv_dir == first.venv_dir and edited.round_trips == 1
    assert len(glob.glob(f"{work}/envs/*/{MARKER_NAME}")) == 1

    # Reinstalled at a new version: its metadata changed, so it is built again.
    bumped = _editable_install(tmp_path / "p", 44, version="0.2")
    again = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec,
                                   local=[bumped, LocalDist("cloudpickle", CLOUDPICKLE)])
    assert not again.cached and again.venv_dir != first.venv_dir
    assert _run(again, "import rf_edit; print(rf_edit.VALUE)") == "44"


async def test_a_cached_venv_that_no_longer_runs_is_rebuilt(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    # The cluster removed the base interpreter the venv points to.
    python = Path(first.python)
    python.unlink()
    python.symlink_to(tmp_path / "removed-python3")
    assert not os.path.exists(first.python)  # a dangling link: the venv cannot start

    shell.commands.clear()
    caplog.set_level(logging.WARNING, "remote_futures.envsync")
    again = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert not again.cached and again.venv_dir == first.venv_dir
    assert "no longer runs" in caplog.text
    assert again.round_trips == 2  # the check (which ran the venv's python), the installer
    assert _run(again, "import rf_tiny_a, cloudpickle; print(rf_tiny_a.__version__)") == "1.0"


async def test_old_venvs_beyond_keep_envs_are_pruned_least_recently_used_first(
    tmp_path: Path, spec: EnvSpec, caplog: pytest.LogCaptureFixture
) -> None:
    keep_two = EnvSpec(find_links=spec.find_links, no_index=True, keep_envs=2)
    sets = [
        {"rf-tiny-a": "1.0"}, {"rf-tiny-a": "1.1"}, {"rf-tiny-c": "1.0"},
    ]
    made: list[SyncResult] = []
    for wanted in sets:
        made.append(await sync_environment(
            CountingShell(), python=PYTHON, work_dir=str(tmp_path), spec=keep_two,
            local={**wanted, "cloudpickle": CLOUDPICKLE},
        ))
    venvs = [m.venv_dir for m in made]
    assert all(Path(str(v), MARKER_NAME).is_file() for v in venvs)  # 3: one over the bound
    _last_used(venvs, days_ago=[4, 3, 2])  # none used in the last day: all may go

    # Using the first again makes it the most recent: the second is the least recently used.
    caplog.set_level(logging.INFO, "remote_futures.envsync")
    reused = await sync_environment(
        CountingShell(), python=PYTHON, work_dir=str(tmp_path), spec=keep_two,
        local={**sets[0], "cloudpickle": CLOUDPICKLE},
    )
    assert reused.cached and reused.round_trips == 1  # pruning rode along with the check
    left = sorted(str(Path(m).parent) for m in glob.glob(f"{tmp_path}/envs/*/{MARKER_NAME}"))
    assert left == sorted([str(venvs[0]), str(venvs[2])])
    assert not glob.glob(f"{venvs[1]}*")  # nothing left of it, not even a renamed copy
    assert f"removed the old environment {venvs[1]}" in caplog.text
    assert _run(reused, "import rf_tiny_a; print(rf_tiny_a.__version__)") == "1.0"


def _last_used(venvs: list[str], days_ago: list[float]) -> None:
    """Pretend each venv was last used (its marker touched) so many days ago."""
    now = time.time()
    for venv, days in zip(venvs, days_ago, strict=True):
        stamp = now - days * 86400
        os.utime(Path(venv, MARKER_NAME), (stamp, stamp))


async def test_a_venv_used_in_the_last_day_is_not_pruned(tmp_path: Path, spec: EnvSpec) -> None:
    """Another session used it a few hours ago and may have jobs queued in it: more venvs
    since does not remove it."""
    keep_one = EnvSpec(find_links=spec.find_links, no_index=True, keep_envs=1)
    made = [await sync_environment(
        CountingShell(), python=PYTHON, work_dir=str(tmp_path), spec=keep_one,
        local={"rf-tiny-a": version, "cloudpickle": CLOUDPICKLE},
    ) for version in ("1.0", "1.1")]
    venvs = [str(m.venv_dir) for m in made]
    _last_used(venvs, days_ago=[5 / 24, 1 / 24])
    third = await sync_environment(CountingShell(), python=PYTHON, work_dir=str(tmp_path),
                                   spec=keep_one, local={"rf-tiny-c": "1.0",
                                                         "cloudpickle": CLOUDPICKLE})
    assert all(Path(v, MARKER_NAME).is_file() for v in venvs)
    assert _run(made[0], "import rf_tiny_a; print(rf_tiny_a.__version__)") == "1.0"
    # A day later the bound applies again: only the venv in use stays.
    _last_used(venvs, days_ago=[2, 1.5])
    await sync_environment(CountingShell(), python=PYTHON, work_dir=str(tmp_path),
                           spec=keep_one, local={"rf-tiny-c": "1.0",
                                                 "cloudpickle": CLOUDPICKLE})
    left = [str(Path(m).parent) for m in glob.glob(f"{tmp_path}/envs/*/{MARKER_NAME}")]
    assert left == [str(third.venv_dir)]


async def test_a_venv_being_built_is_not_pruned(
    tmp_path: Path, spec: EnvSpec
) -> None:
    keep_one = EnvSpec(find_links=spec.find_links, no_index=True, keep_envs=1)
    old = await sync_environment(CountingShell(), python=PYTHON, work_dir=str(tmp_path),
                                 spec=keep_one, local={"rf-tiny-a": "1.0",
                                                       "cloudpickle": CLOUDPICKLE})
    lock = Path(f"{old.venv_dir}.lock")
    lock.mkdir()  # another client is (re)building it right now
    try:
        await sync_environment(CountingShell(), python=PYTHON, work_dir=str(tmp_path),
                               spec=keep_one, local={"rf-tiny-a": "1.1",
                                                     "cloudpickle": CLOUDPICKLE})
        await sync_environment(CountingShell(), python=PYTHON, work_dir=str(tmp_path),
                               spec=keep_one, local={"rf-tiny-a": "1.1",
                                                     "cloudpickle": CLOUDPICKLE})
        assert Path(str(old.venv_dir), MARKER_NAME).is_file()
    finally:
        lock.rmdir()


async def test_keep_envs_is_validated() -> None:
    from remote_futures.errors import ConfigurationError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError, match="keep_envs"):
            EnvSpec(keep_envs=bad)  # type: ignore[arg-type]
    assert EnvSpec(keep_envs=None).keep_envs is None


async def test_a_planted_uv_in_the_work_dir_is_never_run(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    # The work directory's own uv has a predictable name. A file planted there (here: one that
    # says it is a recent uv and leaves a trace when it runs) must not be trusted for its name.
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    trace = tmp_path / "planted-uv-ran"
    fake = work / "bin" / "uv"
    fake.write_text(f"#!/bin/sh\ntouch {trace}\necho 'uv 99.0.0'\n")
    fake.chmod(0o755)
    result = await sync_environment(shell, python=PYTHON, work_dir=str(work), spec=spec,
                                    local=local)
    assert not trace.exists()
    assert _run(result, "import rf_tiny_a; print(rf_tiny_a.__version__)") == "1.0"
