"""sync_environment against this machine (LocalShell), with a real uv and a local wheelhouse."""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import cloudpickle
import pytest
from envsync_support import CLOUDPICKLE, CountingShell, env_prefix

from remote_futures.envsync import EnvSpec, LocalDist, SyncResult, sync_environment
from remote_futures.envsync.remote import MARKER_NAME
from remote_futures.errors import RemoteEnvironmentError

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

PYTHON = sys.executable
WANT = f"{sys.version_info[0]}.{sys.version_info[1]}"


def venv_run(result: SyncResult, code: str) -> str:
    done = subprocess.run([result.python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def versions(result: SyncResult) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    found: dict[str, str] = json.loads(venv_run(result, code))
    return found


async def test_first_sync_installs_then_a_second_is_one_round_trip(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    first = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert sorted(first.installed) == sorted(
        ["rf-tiny-a==1.0", "rf-tiny-b==1.0", f"cloudpickle=={CLOUDPICKLE}"]
    )
    assert first.round_trips == 2 == shell.round_trips  # check+probe, then the installer
    assert not first.cached and first.skipped == [] and first.shipped == []
    assert first.venv_dir is not None and first.venv_dir.startswith(str(tmp_path))
    assert first.python == f"{first.venv_dir}/bin/python"
    assert versions(first) == {"rf-tiny-a": "1.0", "rf-tiny-b": "1.0", "cloudpickle": CLOUDPICKLE}
    assert venv_run(first, "import sys; print('%d.%d' % sys.version_info[:2])") == WANT

    shell.commands.clear()
    again = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert again.round_trips == 1 and len(shell.commands) == 1 and shell.transfers == 0
    assert again.cached and again.installed == []
    assert again.python == first.python


async def test_a_version_change_is_one_install_into_a_new_venv(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    old = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                 local=local)
    shell.commands.clear()
    new = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                 local={**local, "rf-tiny-a": "1.1"})
    assert new.changed == [("rf-tiny-a", "1.0", "1.1")]
    # The check, then the installer, which runs ONE `uv pip install` for the whole set.
    assert new.round_trips == 2 == len(shell.commands)
    assert "def _build(" in shell.commands[1]  # the installer program
    assert "rf-tiny-a==1.1" in new.installed
    assert versions(new)["rf-tiny-a"] == "1.1"
    # The old venv is complete and untouched: jobs still running in it are safe.
    assert old.venv_dir != new.venv_dir
    assert versions(old)["rf-tiny-a"] == "1.0"
    assert Path(old.venv_dir or "", MARKER_NAME).is_file()


async def test_a_failing_requirement_raises_with_uvs_message(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    bad = dataclasses.replace(spec, extra=("rf-does-not-exist==9.9",))
    with pytest.raises(RemoteEnvironmentError) as caught:
        await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=bad, local=local)
    message = str(caught.value)
    assert "failing: rf-does-not-exist==9.9" in message
    assert "--- uv says ---" in message and "rf-does-not-exist" in message.split("uv says")[1]
    # Nothing is marked complete: the next attempt tries again.
    assert not glob.glob(str(tmp_path / "envs" / "*" / MARKER_NAME))


async def test_explicit_requirements(
    tmp_path: Path, shell: CountingShell, wheelhouse: Path
) -> None:
    spec = EnvSpec(mode="explicit", requirements=("rf-tiny-b",), find_links=(str(wheelhouse),),
                   no_index=True)
    result = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                    local={"something-else": "1.0"})
    # rf-tiny-b pulls its dependency rf-tiny-a (the newest): uv resolves.
    assert versions(result) == {"rf-tiny-b": "1.0", "rf-tiny-a": "1.1", "cloudpickle": CLOUDPICKLE}


def _project(root: Path, value: int) -> Path:
    (root / "rf_edit").mkdir(parents=True, exist_ok=True)
    (root / "rf_edit" / "__init__.py").write_text(f"VALUE = {value}\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "rf-edit"\nversion = "0.1"\n'
    )
    return root


async def test_an_editable_project_is_built_shipped_and_rebuilt_when_edited(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, caplog: pytest.LogCaptureFixture
) -> None:
    project = _project(tmp_path / "src" / "rf-edit", 42)
    editable = LocalDist(
        "rf-edit", "0.1", {"url": project.as_uri(), "dir_info": {"editable": True}}
    )
    local = [editable, LocalDist("cloudpickle", CLOUDPICKLE)]
    work = str(tmp_path / "work")
    caplog.set_level(logging.INFO, "remote_futures.envsync")
    first = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec, local=local)
    assert first.shipped == ["rf-edit (wheel)"]
    assert venv_run(first, "import rf_edit; print(rf_edit.VALUE)") == "42"
    assert "editable project" in caplog.text and "built into rf_edit-0.1" in caplog.text

    same = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec, local=local)
    assert same.cached and same.shipped == ["rf-edit (wheel)"]

    (project / "rf_edit" / "__init__.py").write_text("VALUE = 43\n")
    os.utime(project / "rf_edit" / "__init__.py", ns=(1, 1))  # a change mtime alone would miss
    edited = await sync_environment(shell, python=PYTHON, work_dir=work, spec=spec, local=local)
    assert not edited.cached and edited.venv_dir != first.venv_dir
    assert venv_run(edited, "import rf_edit; print(rf_edit.VALUE)") == "43"
    assert [name for name, _, _ in edited.changed] == ["rf-edit"]


async def test_a_pure_module_that_cannot_be_built_is_pickled_by_value(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "loose"
    source.mkdir()
    (source / "rf_loose_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(source))
    editable = {"url": source.as_uri(), "dir_info": {"editable": True}}
    loose = LocalDist("rf-loose-mod", "0.1", editable)
    local = [loose, LocalDist("cloudpickle", CLOUDPICKLE)]
    try:
        result = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path / "w"),
                                        spec=spec, local=local)
        assert result.shipped == ["rf-loose-mod (by value)"]
        assert result.by_value == ["rf_loose_mod"]
        import rf_loose_mod  # type: ignore[import-not-found]

        payload = cloudpickle.dumps(rf_loose_mod.triple)
        script = "import sys, cloudpickle; print(cloudpickle.loads(sys.stdin.buffer.read())(5))"
        done = subprocess.run([result.python, "-c", script], input=payload, capture_output=True,
                              check=True)
        assert done.stdout.strip() == b"15"  # the remote venv has no rf_loose_mod installed
        cached = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path / "w"),
                                        spec=spec, local=local)
        assert cached.cached and cached.by_value == ["rf_loose_mod"]  # registered again
    finally:
        if "rf_loose_mod" in sys.modules:
            cloudpickle.unregister_pickle_by_value(sys.modules.pop("rf_loose_mod"))


async def test_two_concurrent_syncs_of_the_same_environment(
    tmp_path: Path, spec: EnvSpec, local: dict[str, str]
) -> None:
    results: list[SyncResult] = []

    async def one() -> None:
        results.append(await sync_environment(CountingShell(), python=PYTHON,
                                              work_dir=str(tmp_path), spec=spec, local=local))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    assert len({r.venv_dir for r in results}) == 1
    assert sorted(bool(r.installed) for r in results) == [False, False, True]
    assert versions(results[0]) == {
        "rf-tiny-a": "1.0", "rf-tiny-b": "1.0", "cloudpickle": CLOUDPICKLE,
    }
    assert not Path(f"{results[0].venv_dir}.lock").exists()


async def test_a_stale_lock_of_a_dead_process_is_broken(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert first.venv_dir is not None
    shutil.rmtree(first.venv_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = Path(f"{first.venv_dir}.lock")
    lock.mkdir()
    (lock / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                            "time": 0}))
    caplog.set_level(logging.WARNING, "remote_futures.envsync")
    again = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert again.installed and "broke a stale lock" in caplog.text
    assert not lock.exists()


async def test_a_live_lock_holder_makes_a_waiter_time_out(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    first = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                                   local=local)
    assert first.venv_dir is not None
    shutil.rmtree(first.venv_dir)
    lock = Path(f"{first.venv_dir}.lock")
    lock.mkdir()
    (lock / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                            "time": 0}))
    with pytest.raises(RemoteEnvironmentError, match=r"timed out .* held by pid \d+"):
        await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path), spec=spec,
                               local=local, lock_timeout=1.0)


def _other_python() -> str | None:
    for pattern in ("/root/.pyenv/versions/3.*/bin/python3", "/usr/bin/python3.*",
                    "/usr/local/bin/python3.*"):
        for path in sorted(glob.glob(pattern)):
            try:
                out = _minor(path)
            except OSError:
                continue
            if out.startswith("3.") and out != WANT and int(out.split(".")[1]) >= 6:
                return path
    return None


async def test_another_remote_python_version_is_replaced_by_a_matching_one_from_uv(
    tmp_path: Path, shell: CountingShell, spec: EnvSpec, local: dict[str, str]
) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version here")
    result = await sync_environment(shell, python=other, work_dir=str(tmp_path), spec=spec,
                                    local=local)
    assert venv_run(result, "import sys; print('%d.%d' % sys.version_info[:2])") == WANT


async def test_another_python_version_fails_early_when_uv_finds_none(
    tmp_path: Path, spec: EnvSpec, local: dict[str, str]
) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version here")
    # Only uv-managed interpreters, from an empty directory: uv finds no match.
    shell = CountingShell(env_prefix(UV_PYTHON_PREFERENCE="only-managed",
                                     UV_PYTHON_INSTALL_DIR=str(tmp_path / "none")))
    offline = dataclasses.replace(spec, offline=True)
    with pytest.raises(RemoteEnvironmentError) as caught:
        await sync_environment(shell, python=other, work_dir=str(tmp_path), spec=offline,
                               local=local)
    message = str(caught.value)
    assert WANT in message and "this one is " + ".".join(map(str, sys.version_info[:3])) in message
    assert shell.round_trips == 1  # failed before installing anything


async def test_another_python_version_fails_when_uv_cannot_download_one_either(
    tmp_path: Path, spec: EnvSpec, local: dict[str, str]
) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version here")
    shell = CountingShell(env_prefix(UV_PYTHON_PREFERENCE="only-managed",
                                     UV_PYTHON_INSTALL_DIR=str(tmp_path / "none"),
                                     UV_PYTHON_INSTALL_MIRROR="file:///nonexistent/mirror"))
    with pytest.raises(RemoteEnvironmentError) as caught:
        await sync_environment(shell, python=other, work_dir=str(tmp_path), spec=spec,
                               local=local)
    message = str(caught.value)
    assert f"this one is {'.'.join(map(str, sys.version_info[:3]))}" in message
    assert f"uv could not provide Python {WANT}" in message and "uv says" in message


async def test_uv_is_bootstrapped_when_the_remote_has_none(
    tmp_path: Path, spec: EnvSpec, local: dict[str, str]
) -> None:
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None or _minor(system_python) != WANT:
        pytest.skip(f"needs a system python{WANT} without uv beside it")
    home = tmp_path / "home"
    home.mkdir()
    shell = CountingShell(env_prefix(PATH="/usr/bin:/bin", HOME=str(home)))
    result = await sync_environment(shell, python=system_python, work_dir="work", spec=spec,
                                    local=local)
    uploaded = home / "work" / "bin" / "uv"
    assert uploaded.is_file() and os.access(uploaded, os.X_OK)
    assert result.round_trips == 4  # check+probe, mkdir, upload, installer
    assert result.python.startswith(str(home / "work" / "envs"))
    assert versions(result)["rf-tiny-a"] == "1.0"
    again = await sync_environment(shell, python=system_python, work_dir="work", spec=spec,
                                   local=local)
    assert again.cached and again.round_trips == 1


def _minor(python: str) -> str:
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


async def test_off_mode_checks_version_and_cloudpickle(tmp_path: Path) -> None:
    shell = CountingShell()
    result = await sync_environment(shell, python=PYTHON, work_dir=str(tmp_path),
                                    spec=EnvSpec(mode="off"))
    assert (result.python, result.venv_dir, result.round_trips) == (PYTHON, None, 1)
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python and _minor(system_python) == WANT:
        has = subprocess.run([system_python, "-c", "import cloudpickle"], capture_output=True)
        if has.returncode != 0:
            with pytest.raises(RemoteEnvironmentError, match="no cloudpickle"):
                await sync_environment(shell, python=system_python, work_dir=str(tmp_path),
                                       spec=EnvSpec(mode="off"))


async def test_a_missing_remote_python_is_reported(tmp_path: Path, spec: EnvSpec) -> None:
    with pytest.raises(RemoteEnvironmentError, match="cannot run the remote python 'no-such-py'"):
        await sync_environment(CountingShell(), python="no-such-py", work_dir=str(tmp_path),
                               spec=spec, local={"cloudpickle": CLOUDPICKLE})


async def test_the_real_local_snapshot_makes_a_plan(tmp_path: Path) -> None:
    """With no override the wanted set is this interpreter's; only the hash is checked here."""
    from remote_futures.envsync.plan import wanted_set
    from remote_futures.envsync.snapshot import local_distributions

    wanted = wanted_set(EnvSpec(), local_distributions(),
                        cloudpickle_version=importlib.metadata.version("cloudpickle"))
    names = {item.name for item in wanted.items}
    assert "cloudpickle" in names and "pip" not in names and "uv" not in names
