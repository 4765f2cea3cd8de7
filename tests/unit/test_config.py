"""Profiles in the TOML config file, and construction-time validation of targets and options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_futures import ConfigurationError, RemoteExecutor
from remote_futures.config import config_path, load_profiles, resolve_target
from remote_futures.transports import PLANNED, TRANSPORTS, transport_class

pytestmark = pytest.mark.timeout(60)

LOCAL_OPTIONS = ("keep_job_dirs", "python", "work_dir")


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's real config file."""
    monkeypatch.delenv("REMOTE_FUTURES_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture
def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "profiles.toml"
        path.write_text(text)
        monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(path))
        return path

    return write


@pytest.fixture
def executors() -> Iterator[list[RemoteExecutor]]:
    made: list[RemoteExecutor] = []
    yield made
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


# --- where the file is ----------------------------------------------------------------------


def test_config_path_from_environment(write_config: Callable[[str], Path]) -> None:
    path = write_config("")
    assert config_path() == path


def test_config_path_default_is_the_user_config_dir(tmp_path: Path) -> None:
    assert config_path() == tmp_path / "xdg-config" / "remote_futures" / "config.toml"


def test_no_config_file_means_no_profiles_and_local_works(
    executors: list[RemoteExecutor],
) -> None:
    assert load_profiles() == {}
    ex = RemoteExecutor()
    executors.append(ex)
    assert ex.transport.name == "local"


def test_missing_file_named_by_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("REMOTE_FUTURES_CONFIG", str(missing))
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        resolve_target("local", {})
    assert str(missing) in str(info.value)


# --- profiles -------------------------------------------------------------------------------


def test_profile_is_found(
    write_config: Callable[[str], Path], tmp_path: Path, executors: list[RemoteExecutor]
) -> None:
    work = tmp_path / "work"
    path = write_config(
        f"""
        [profiles.mine]
        transport = "local"
        work_dir = "{work}"
        keep_job_dirs = true
        """
    )
    resolved = resolve_target("mine", {})
    assert resolved.transport == "local"
    assert resolved.options == {"work_dir": str(work), "keep_job_dirs": True}
    assert "mine" in resolved.source and str(path) in resolved.source

    ex = RemoteExecutor("mine", max_workers=1)
    executors.append(ex)
    assert ex.transport.name == "local"
    assert ex.transport.options.work_dir == str(work)
    assert ex.transport.options.keep_job_dirs is True
    assert ex.submit(abs, -4).result(timeout=30) == 4


def test_keyword_arguments_override_profile_keys(
    write_config: Callable[[str], Path], tmp_path: Path, executors: list[RemoteExecutor]
) -> None:
    write_config(
        """
        [profiles.mine]
        transport = "local"
        keep_job_dirs = true
        work_dir = "/nonexistent/from/profile"
        """
    )
    resolved = resolve_target("mine", {"keep_job_dirs": False})
    assert resolved.options["keep_job_dirs"] is False
    assert resolved.options["work_dir"] == "/nonexistent/from/profile"

    ex = RemoteExecutor("mine", keep_job_dirs=False, work_dir=str(tmp_path / "w"))
    executors.append(ex)
    assert ex.transport.options.keep_job_dirs is False
    assert ex.transport.options.work_dir == str(tmp_path / "w")


def test_bad_toml_names_the_file(write_config: Callable[[str], Path]) -> None:
    path = write_config("[profiles.broken\ntransport = local\n")
    with pytest.raises(ConfigurationError, match="not valid TOML") as info:
        RemoteExecutor("broken")
    assert str(path) in str(info.value)


def test_missing_transport_key_names_file_profile_and_key(
    write_config: Callable[[str], Path],
) -> None:
    path = write_config('[profiles.notransport]\nwork_dir = "/tmp"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("notransport")
    message = str(info.value)
    assert str(path) in message
    assert "notransport" in message
    assert "'transport'" in message


def test_unknown_key_in_a_profile_names_file_profile_and_key(
    write_config: Callable[[str], Path],
) -> None:
    path = write_config('[profiles.typo]\ntransport = "local"\nkeep_job_dir = true\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("typo")
    message = str(info.value)
    assert str(path) in message
    assert "'typo'" in message
    assert "'keep_job_dir'" in message
    for valid in LOCAL_OPTIONS:
        assert valid in message


def test_badly_typed_key_in_a_profile_names_file_profile_and_key(
    write_config: Callable[[str], Path],
) -> None:
    path = write_config('[profiles.typed]\ntransport = "local"\nkeep_job_dirs = "yes"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("typed")
    message = str(info.value)
    assert str(path) in message and "'typed'" in message and "'keep_job_dirs'" in message


def test_profile_with_an_unknown_transport(write_config: Callable[[str], Path]) -> None:
    path = write_config('[profiles.odd]\ntransport = "carrier-pigeon"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("odd")
    message = str(info.value)
    assert str(path) in message and "'odd'" in message and "carrier-pigeon" in message
    for name in TRANSPORTS:
        assert name in message


def test_profile_with_a_planned_transport_says_not_available(
    write_config: Callable[[str], Path],
) -> None:
    """A profile naming ``ec2`` gets the same "not available yet" story as
    ``RemoteExecutor("ec2")``, not "is not a transport"."""
    write_config('[profiles.cloud]\ntransport = "ec2"\n')
    with pytest.raises(ConfigurationError, match="not available"):
        RemoteExecutor("cloud")


def test_unknown_top_level_key_is_an_error(write_config: Callable[[str], Path]) -> None:
    path = write_config('[profile.mine]\ntransport = "local"\n')
    with pytest.raises(ConfigurationError, match="'profile'") as info:
        RemoteExecutor("mine")
    assert str(path) in str(info.value)


def test_profile_must_be_a_table(write_config: Callable[[str], Path]) -> None:
    write_config('[profiles]\nmine = "local"\n')
    with pytest.raises(ConfigurationError, match="'mine' must be a table"):
        RemoteExecutor("mine")


def test_profile_named_like_a_transport_wins(
    write_config: Callable[[str], Path], executors: list[RemoteExecutor]
) -> None:
    write_config('[profiles.pbs]\ntransport = "local"\nkeep_job_dirs = true\n')
    ex = RemoteExecutor("pbs", max_workers=1)
    executors.append(ex)
    assert ex.transport.name == "local"
    assert ex.transport.options.keep_job_dirs is True


# --- targets and options given directly -----------------------------------------------------


def test_unknown_target_lists_transports(write_config: Callable[[str], Path]) -> None:
    write_config('[profiles.mine]\ntransport = "local"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("nonesuch")
    message = str(info.value)
    assert "'nonesuch'" in message
    for name in TRANSPORTS:
        assert name in message
    assert "mine" in message  # the profiles that do exist


def test_unknown_target_without_config_lists_transports() -> None:
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("nonesuch")
    for name in TRANSPORTS:
        assert name in str(info.value)


def test_transport_class_lists_valid_transports() -> None:
    with pytest.raises(ConfigurationError) as info:
        transport_class("nonesuch")
    for name in TRANSPORTS:
        assert name in str(info.value)


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("local", colour="red")
    message = str(info.value)
    assert "'colour'" in message
    for valid in LOCAL_OPTIONS:
        assert valid in message


def test_badly_typed_option() -> None:
    with pytest.raises(ConfigurationError, match="'keep_job_dirs'"):
        RemoteExecutor("local", keep_job_dirs="yes")


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        RemoteExecutor("nonesuch")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_target_must_be_a_name(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        RemoteExecutor(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", PLANNED)
def test_planned_transports_are_not_available_yet(name: str) -> None:
    assert "kubernetes" not in PLANNED  # it is a transport now
    with pytest.raises(ConfigurationError, match="not available") as info:
        RemoteExecutor(name)
    assert name in str(info.value)
