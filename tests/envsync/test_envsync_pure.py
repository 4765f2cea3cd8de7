"""Pure envsync pieces: option parsing, the local snapshot, the wanted set, the diff."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from remote_futures.envsync import EnvSpec, env_spec_from_option, local_snapshot
from remote_futures.envsync.plan import env_key, pin, plan_install, wanted_set
from remote_futures.envsync.remote import (
    check_command,
    envs_root,
    parse_check,
    parse_installer,
    previous_record_path,
)
from remote_futures.envsync.snapshot import (
    LocalDist,
    canonical_name,
    classify,
    local_distributions,
    scan_distributions,
)
from remote_futures.errors import ConfigurationError

LINUX = {
    "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
    "platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.2",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "implementation_version": "3.11.2", "platform_release": "6.1", "platform_version": "#1",
}


def dists(**versions: str) -> dict[str, LocalDist]:
    return {canonical_name(n): LocalDist(canonical_name(n), v) for n, v in versions.items()}


# --- the env= option -----------------------------------------------------------------------------


def test_option_forms(tmp_path: Path) -> None:
    assert env_spec_from_option("sync").mode == "sync"
    assert env_spec_from_option(None).mode == "sync"
    assert env_spec_from_option("off").mode == "off"
    explicit = env_spec_from_option(["numpy>=1.26", "rich"], exclude=["x"], no_index=True)
    assert (explicit.mode, explicit.requirements, explicit.exclude, explicit.no_index) == (
        "explicit", ("numpy>=1.26", "rich"), ("x",), True,
    )
    given = EnvSpec(mode="off")
    assert env_spec_from_option(given) is given


def test_requirements_file_with_include_and_options(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("attrs==23.1  # pinned\n")
    (tmp_path / "req.txt").write_text(
        "# comment\n-r base.txt\n--find-links /srv/wheels\n"
        "rich>=13 \\\n  ; python_version >= '3.8'\n\n"
    )
    spec = env_spec_from_option(str(tmp_path / "req.txt"))
    assert spec.mode == "explicit"
    assert spec.requirements == (
        "attrs==23.1", "--find-links /srv/wheels", "rich>=13   ; python_version >= '3.8'",
    )


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("no-such-file.txt", "no such file"),
        (42, "must be"),
        (["not a requirement!"], "invalid requirement"),
    ],
)
def test_bad_options(value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        env_spec_from_option(value)  # type: ignore[arg-type]


def test_local_paths_are_refused_in_requirement_files(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("-e ./myproject\n")
    with pytest.raises(ConfigurationError, match="env='sync'"):
        env_spec_from_option(tmp_path / "req.txt")


def test_spec_validation() -> None:
    with pytest.raises(ConfigurationError, match="list of strings"):
        EnvSpec(exclude="pip")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="explicit"):
        EnvSpec(mode="sync", requirements=("x",))
    spec = EnvSpec(find_links=["/w"], index_url="https://i", no_index=True, no_deps=True)  # type: ignore[arg-type]
    assert spec.find_links == ("/w",)
    assert spec.uv_options() == [
        "--index-url", "https://i", "--find-links", "/w", "--no-index", "--no-deps",
    ]
    hash(spec)  # frozen and hashable: usable as a cache key per target


# --- the local snapshot --------------------------------------------------------------------------


def _dist_info(site: Path, name: str, version: str, **files: str) -> Path:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nLong: description\n"
    )
    for filename, text in files.items():
        (info / filename.replace("_json", ".json")).write_text(text)
    return info


def test_canonical_names() -> None:
    assert canonical_name("Foo_Bar.baz") == "foo-bar-baz"
    assert canonical_name("ruamel.yaml") == "ruamel-yaml"
    assert canonical_name("A--B__c") == "a-b-c"


def test_scan_normalizes_names_and_first_on_the_path_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist_info(first, "My_Package", "2.0")
    _dist_info(second, "my.package", "1.0")
    _dist_info(second, "Other", "0.1")
    (second / "broken-1.0.dist-info").mkdir()  # no METADATA: skipped, as pip does
    found = scan_distributions(["", str(first), str(second), str(tmp_path / "missing")])
    assert {n: d.version for n, d in found.items()} == {"my-package": "2.0", "other": "0.1"}


def test_snapshot_is_what_pip_list_reports() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    )
    pip = {}
    for line in done.stdout.split():
        name, _, version = line.partition("==")
        pip[canonical_name(name)] = version
    assert local_snapshot() == pip
    assert local_snapshot() is not local_snapshot()  # a copy: callers cannot spoil the cache


def test_classification_from_direct_url(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    editable = {"url": project.as_uri(), "dir_info": {"editable": True}}
    assert classify(LocalDist("p", "1", editable)).kind == "ship"
    assert classify(LocalDist("p", "1", editable)).editable
    gone = {"url": (tmp_path / "gone").as_uri(), "dir_info": {}}
    assert classify(LocalDist("p", "1", gone)).kind == "index"
    conda = {"url": "file:///croot/numpy_1/work", "dir_info": {}}
    assert classify(LocalDist("numpy", "1.26", conda, installer="conda")).kind == "index"
    vcs = {"url": "https://github.com/o/r", "vcs_info": {"vcs": "git", "commit_id": "abc"}}
    assert classify(LocalDist("r", "1", vcs)).url == "r @ git+https://github.com/o/r@abc"
    archive = {"url": "https://example.org/r-1.tar.gz", "archive_info": {}}
    assert classify(LocalDist("r", "1", archive)).kind == "url"
    assert classify(LocalDist("r", "1")).kind == "index"


def test_scan_reads_direct_url_and_installer(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    _dist_info(
        tmp_path / "site", "rf-edit", "0.1",
        direct_url_json=json.dumps({"url": project.as_uri(), "dir_info": {"editable": True}}),
        INSTALLER="uv\n",
    )
    dist = scan_distributions([str(tmp_path / "site")])["rf-edit"]
    assert dist.installer == "uv"
    assert dist.source.kind == "ship" and dist.source.path == str(project)


def test_remote_futures_itself_is_mirrored() -> None:
    # The user's modules are imported on the remote side and often import remote_futures.
    assert local_distributions().get("remote-futures") is not None
    wanted = wanted_set(EnvSpec(), local_distributions(), cloudpickle_version="3.0.0")
    assert "remote-futures" in {item.name for item in wanted.items}
    assert "remote-futures" not in dict(wanted.excluded)


# --- the wanted set and its key ------------------------------------------------------------------


def test_wanted_set_excludes_tools_and_patterns_and_keeps_cloudpickle() -> None:
    local = dists(pip="24", setuptools="70", wheel="0.43", uv="0.4", **{
        "nvidia-cublas": "12", "numpy": "2.0", "cloudpickle": "3.0.0", "Rich": "13.7",
    })
    spec = EnvSpec(exclude=("nvidia_*", "cloudpickle"), extra=("rich>=13", "attrs"))
    wanted = wanted_set(spec, local, cloudpickle_version="3.0.0")
    lines = {item.name: item.requirement for item in wanted.items}
    assert lines == {
        "numpy": "numpy==2.0", "cloudpickle": "cloudpickle==3.0.0",
        "rich": "rich>=13", "attrs": "attrs",
    }
    excluded = dict(wanted.excluded)
    assert set(excluded) == {
        "pip", "setuptools", "wheel", "uv", "nvidia-cublas", "cloudpickle", "rich",
    }
    assert "kept" in excluded["cloudpickle"]
    assert "extra" in excluded["rich"]


def test_explicit_mode_installs_exactly_that_plus_cloudpickle() -> None:
    spec = EnvSpec(mode="explicit", requirements=("--find-links /w", "numpy>=2"))
    wanted = wanted_set(spec, dists(pandas="2.2"), cloudpickle_version="3.1.0")
    assert [(i.name, i.requirement) for i in wanted.items] == [
        ("", "--find-links /w"), ("numpy", "numpy>=2"), ("cloudpickle", "cloudpickle==3.1.0"),
    ]


def test_pin_of_a_legacy_version() -> None:
    assert pin("a", "1.0.post1") == "a==1.0.post1"
    assert pin("a", "2013b-custom") == "a===2013b-custom"


def test_env_key_is_stable_and_sensitive() -> None:
    wanted = wanted_set(EnvSpec(), dists(a="1"), cloudpickle_version="3")
    key = env_key(wanted, spec=EnvSpec(), python_version="3.11", python="python3", fingerprints={})
    assert len(key) == 16
    assert key == env_key(
        wanted_set(EnvSpec(), dists(a="1"), cloudpickle_version="3"),
        spec=EnvSpec(), python_version="3.11", python="python3", fingerprints={},
    )
    others = {
        env_key(wanted_set(EnvSpec(), dists(a="2"), cloudpickle_version="3"), spec=EnvSpec(),
                python_version="3.11", python="python3", fingerprints={}),
        env_key(wanted, spec=EnvSpec(), python_version="3.12", python="python3", fingerprints={}),
        env_key(wanted, spec=EnvSpec(), python_version="3.11", python="python", fingerprints={}),
        env_key(wanted, spec=EnvSpec(no_index=True), python_version="3.11", python="python3",
                fingerprints={}),
    }
    assert key not in others and len(others) == 4


# --- the diff ------------------------------------------------------------------------------------


def test_diff_installs_missing_and_changed_versions_only() -> None:
    wanted = wanted_set(EnvSpec(extra=("rich>=13",)), dists(a="1.0", b="2.0", c="3.0"),
                        cloudpickle_version="3.0.0")
    plan = plan_install(
        wanted, markers=LINUX,
        remote_packages={"a": "1.0", "b": "1.9", "rich": "13.7.1", "cloudpickle": "3.0"},
    )
    assert [item.requirement for item in plan.packages] == ["b==2.0", "c==3.0"]
    assert plan.changes == (("b", "1.9", "2.0"),)
    assert set(plan.satisfied) == {"a", "rich", "cloudpickle"}  # 3.0 == 3.0.0 as versions
    nothing = plan_install(wanted, markers=LINUX, remote_packages={
        "a": "1.0", "b": "2.0", "c": "3.0", "rich": "14", "cloudpickle": "3.0.0"})
    assert nothing.install == ()


def test_options_ride_along_only_when_something_is_installed() -> None:
    spec = EnvSpec(mode="explicit", requirements=("--find-links /w", "x==1"))
    wanted = wanted_set(spec, {}, cloudpickle_version="3")
    assert plan_install(wanted, markers=LINUX, remote_packages={"x": "1", "cloudpickle": "3"}
                        ).install == ()
    lines = [i.requirement for i in plan_install(wanted, markers=LINUX, remote_packages={}).install]
    assert lines == ["--find-links /w", "x==1", "cloudpickle==3"]


def test_platform_only_packages_are_skipped_with_a_reason() -> None:
    local = dists(pywin32="306", **{"pyobjc-framework-Cocoa": "10", "a": "1"})
    wanted = wanted_set(EnvSpec(), local, cloudpickle_version="3")
    plan = plan_install(wanted, markers=LINUX, remote_packages={})
    skipped = dict(plan.skipped)
    assert skipped == {
        "pywin32": "Windows-only (the remote is Linux)",
        "pyobjc-framework-cocoa": "macOS-only (the remote is Linux)",
    }
    assert {i.name for i in plan.packages} == {"a", "cloudpickle"}


def test_dependencies_needed_only_on_another_platform_are_skipped() -> None:
    local = dists(click="8.1", colorama="0.4", requests="2.31", pysocks="1.7", tzdata="2024.1",
                  winext="1", pandas="2.2")
    requires = {
        "click": ['colorama; platform_system == "Windows"'],
        "requests": ['PySocks!=1.5.7,>=1.5.6; extra == "socks"'],
        "pandas": ['tzdata>=2022.7'],
        "winext": [],
    }
    # winext is itself required only on Windows by pandas' sibling: make it a dependent.
    requires["pandas"].append('winext; sys_platform == "win32"')
    wanted = wanted_set(EnvSpec(), local, cloudpickle_version="3")
    plan = plan_install(wanted, markers=LINUX, remote_packages={}, requires=requires)
    skipped = dict(plan.skipped)
    assert set(skipped) == {"colorama", "winext"}
    assert "click" in skipped["colorama"]
    # pysocks: behind an extra, cannot judge -> kept; tzdata: unconditional -> kept.
    assert {"pysocks", "tzdata", "click", "requests", "pandas"} <= {i.name for i in plan.packages}


def test_extra_with_a_false_marker_is_reported() -> None:
    wanted = wanted_set(EnvSpec(extra=('pywinauto; sys_platform == "win32"',)), {},
                        cloudpickle_version="3")
    plan = plan_install(wanted, markers=LINUX, remote_packages={})
    assert "marker" in dict(plan.skipped)["pywinauto"]


def test_shipped_distribution_counts_as_there_only_in_the_target_venv(tmp_path: Path) -> None:
    info = {"url": tmp_path.as_uri(), "dir_info": {"editable": True}}
    wanted = wanted_set(EnvSpec(), {"p": LocalDist("p", "1.0", info)}, cloudpickle_version="3")
    base = plan_install(wanted, markers=LINUX, remote_packages={"p": "1.0", "cloudpickle": "3"},
                        remote_is_target=False)
    assert [i.name for i in base.packages] == ["p"]
    own = plan_install(wanted, markers=LINUX, remote_packages={"p": "1.0", "cloudpickle": "3"})
    assert own.packages == []


# --- remote command lines and their output -------------------------------------------------------


def test_envs_root_quoting() -> None:
    assert envs_root("/data/my work") == "'/data/my work/envs'"
    assert envs_root("~/.rf") == '"$HOME"/.rf/envs'
    assert envs_root(".rf") == '"$HOME"/.rf/envs'
    assert envs_root("~") == '"$HOME"/envs'
    assert previous_record_path("/w/envs/py3.11-Linux-x86_64-0123456789abcdef") == (
        "/w/envs/last-py3.11-Linux-x86_64.json"
    )


def test_check_command_quotes_the_python_and_parses(tmp_path: Path) -> None:
    command = check_command(work_dir=str(tmp_path / "a b"), python="/opt/my python/bin/python3",
                            want="3.11", key="k" * 16)
    assert shlex.quote("/opt/my python/bin/python3") in command
    out = (
        "Welcome to the cluster!\n@@rf-venv /w/envs/py3.11-Linux-x86_64-kkk\n"
        '@@rf-marker {"key": "kkk"}\n'
    )
    parsed = parse_check(out)
    assert parsed is not None
    assert parsed.venv_dir == "/w/envs/py3.11-Linux-x86_64-kkk"
    assert parsed.marker == {"key": "kkk"} and parsed.facts is None
    damaged = parse_check("@@rf-venv /x\n@@rf-marker {not json\n")
    assert damaged is not None and damaged.marker == {}
    assert parse_check("bash: python3: command not found\n") is None
    assert parse_installer('noise\n@@rf-install {"status": "present"}\n') == {"status": "present"}
