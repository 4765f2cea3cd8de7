"""Profiles in the TOML config file, and construction-time validation of targets and options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_futures import ConfigurationError, RemoteExecutor
from remote_futures.config import config_path, load_profiles, resolve_target
from remote_futures.transports import PLANNED, TRANSPORTS, transport_class

pytestmark = pytest.mark.timeout(60)

LOCAL_OPTIONS = ("max_tasks_per_child", "mp_context")


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
    path = write_config(
        """
        [profiles.mine]
        transport = "local"
        mp_context = "forkserver"
        max_tasks_per_child = 5
        """
    )
    resolved = resolve_target("mine", {})
    assert resolved.transport == "local"
    assert resolved.options == {"mp_context": "forkserver", "max_tasks_per_child": 5}
    assert "mine" in resolved.source and str(path) in resolved.source

    ex = RemoteExecutor("mine", max_workers=1)
    executors.append(ex)
    assert ex.transport.name == "local"
    assert ex.transport.options.mp_context.get_start_method() == "forkserver"
    assert ex.transport.options.max_tasks_per_child == 5
    assert ex.submit(abs, -4).result(timeout=30) == 4


def test_keyword_arguments_override_profile_keys(
    write_config: Callable[[str], Path], tmp_path: Path, executors: list[RemoteExecutor]
) -> None:
    write_config(
        """
        [profiles.mine]
        transport = "local"
        max_tasks_per_child = 5
        mp_context = "forkserver"
        """
    )
    resolved = resolve_target("mine", {"max_tasks_per_child": 2})
    assert resolved.options["max_tasks_per_child"] == 2
    assert resolved.options["mp_context"] == "forkserver"

    ex = RemoteExecutor("mine", max_tasks_per_child=None, mp_context="spawn")
    executors.append(ex)
    assert ex.transport.options.max_tasks_per_child is None
    assert ex.transport.options.mp_context.get_start_method() == "spawn"


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
    path = write_config('[profiles.typo]\ntransport = "local"\nmax_task_per_child = 1\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("typo")
    message = str(info.value)
    assert str(path) in message
    assert "'typo'" in message
    assert "'max_task_per_child'" in message
    for valid in LOCAL_OPTIONS:
        assert valid in message


def test_badly_typed_key_in_a_profile_names_file_profile_and_key(
    write_config: Callable[[str], Path],
) -> None:
    path = write_config('[profiles.typed]\ntransport = "local"\nmax_tasks_per_child = "yes"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("typed")
    message = str(info.value)
    assert str(path) in message and "'typed'" in message and "'max_tasks_per_child'" in message


def test_profile_with_an_unknown_transport(write_config: Callable[[str], Path]) -> None:
    path = write_config('[profiles.odd]\ntransport = "carrier-pigeon"\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("odd")
    message = str(info.value)
    assert str(path) in message and "'odd'" in message and "carrier-pigeon" in message
    for name in TRANSPORTS:
        assert name in message


def test_profile_with_a_planned_transport_says_not_available(
    write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile naming a planned transport gets the same "not available yet" story as
    ``RemoteExecutor(name)``, not "is not a transport". No transport is planned today, so one
    is staged."""
    import remote_futures.config

    monkeypatch.setattr(remote_futures.config, "PLANNED", ("gce",))
    write_config('[profiles.cloud]\ntransport = "gce"\n')
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
    write_config('[profiles.pbs]\ntransport = "local"\nmax_tasks_per_child = 3\n')
    ex = RemoteExecutor("pbs", max_workers=1)
    executors.append(ex)
    assert ex.transport.name == "local"
    assert ex.transport.options.max_tasks_per_child == 3


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
    with pytest.raises(ConfigurationError, match="'max_tasks_per_child'"):
        RemoteExecutor("local", max_tasks_per_child="yes")


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        RemoteExecutor("nonesuch")


@pytest.mark.parametrize("bad", ["", None, 3.0])
def test_target_must_be_a_name(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        RemoteExecutor(bad)  # type: ignore[arg-type]


def test_every_transport_of_the_mission_is_available() -> None:
    for name in ("local", "ssh", "slurm", "pbs", "sge", "kubernetes", "ec2"):
        assert name in TRANSPORTS and name not in PLANNED


def test_a_planned_transport_is_named_as_not_available_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No transport is planned today; stage one to keep the message honest when one is.
    import remote_futures.config
    import remote_futures.transports

    for module in (remote_futures.config, remote_futures.transports):
        monkeypatch.setattr(module, "PLANNED", ("gce",))
    with pytest.raises(ConfigurationError, match="not available") as info:
        RemoteExecutor("gce")
    assert "gce" in str(info.value)


# --- executor keywords in a profile ---------------------------------------------------------


def test_profile_sets_max_workers_and_keywords_override_it(
    write_config: Callable[[str], Path], tmp_path: Path, executors: list[RemoteExecutor]
) -> None:
    write_config(
        f"""
        [profiles.mine]
        transport = "local-jobs"
        max_workers = 3
        work_dir = "{tmp_path / 'w'}"
        """
    )
    resolved = resolve_target("mine", {})
    assert resolved.executor_options == {"max_workers": 3}
    assert "max_workers" not in resolved.options  # not handed to the transport

    ex = RemoteExecutor("mine")
    executors.append(ex)
    assert ex.max_workers == 3
    assert ex.submit(abs, -2).result(timeout=30) == 2

    overridden = RemoteExecutor("mine", max_workers=1)
    executors.append(overridden)
    assert overridden.max_workers == 1


@pytest.mark.parametrize("bad", ["0", "-2", '"four"', "true", "2.5"])
def test_bad_max_workers_in_a_profile_names_file_profile_and_key(
    write_config: Callable[[str], Path], bad: str
) -> None:
    path = write_config(f'[profiles.mine]\ntransport = "local"\nmax_workers = {bad}\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("mine")
    message = str(info.value)
    assert str(path) in message and "'mine'" in message and "'max_workers'" in message


def test_profile_takes_resources_and_env_of_a_batch_transport(
    write_config: Callable[[str], Path],
) -> None:
    """The transport keywords ``resources`` and ``env`` reach the transport's options, next to
    the executor's own ``max_workers`` (built without connecting anywhere)."""
    from remote_futures.runtime import make_transport

    write_config(
        """
        [profiles.cluster]
        transport = "slurm"
        host = "login.example.org"
        max_workers = 7
        env = ["numpy==2.1.0"]
        resources = { cpus = 4, memory = "8G", walltime = "01:00:00", queue = "short" }
        """
    )
    resolved = resolve_target("cluster", {"resources": {"cpus": 2}})
    assert resolved.executor_options == {"max_workers": 7}
    transport = make_transport(resolved, resolved.executor_options["max_workers"])
    assert transport.max_workers == 7
    assert transport.options.resources.cpus == 2  # the keyword argument wins
    assert "numpy==2.1.0" in str(transport.options.env)


def test_unknown_key_lists_executor_keys_too(write_config: Callable[[str], Path]) -> None:
    write_config('[profiles.typo]\ntransport = "local"\nmax_worker = 2\n')
    with pytest.raises(ConfigurationError) as info:
        RemoteExecutor("typo")
    assert "'max_worker'" in str(info.value) and "max_workers" in str(info.value)


def test_profile_sets_retries_and_keywords_override_it(
    write_config: Callable[[str], Path], executors: list[RemoteExecutor]
) -> None:
    write_config('[profiles.mine]\ntransport = "local"\nretries = 2\n')
    assert resolve_target("mine", {}).executor_options == {"retries": 2}
    ex = RemoteExecutor("mine", max_workers=1)
    executors.append(ex)
    assert ex._engine._retry.retries == 2
    none = RemoteExecutor("mine", max_workers=1, retries=0)
    executors.append(none)
    assert none._engine._retry.retries == 0


def test_negative_retries_in_a_profile_names_the_key(write_config: Callable[[str], Path]) -> None:
    write_config('[profiles.mine]\ntransport = "local"\nretries = -1\n')
    with pytest.raises(ConfigurationError, match="'retries' must be an integer >= 0"):
        RemoteExecutor("mine")
