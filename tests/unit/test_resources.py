"""``Resources``: sizes, walltimes, aliases and validation."""

from __future__ import annotations

import dataclasses

import pytest

from remote_futures import ConfigurationError, Resources


@pytest.mark.parametrize(
    ("memory", "megabytes"),
    [
        ("8G", 8192),
        ("8g", 8192),
        ("8GB", 8192),
        ("8GiB", 8192),
        ("2Gi", 2048),
        ("512M", 512),
        ("512MB", 512),
        ("1.5G", 1536),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("100", 100),  # a bare number is megabytes, as for sbatch --mem
        (" 16 G ", 16384),
        ("1073741824B", 1024),
        ("1K", 1),  # rounded up, never 0
    ],
)
def test_memory_megabytes(memory: str, megabytes: int) -> None:
    assert Resources(memory=memory).memory_megabytes() == megabytes


@pytest.mark.parametrize("memory", ["lots", "8X", "-1G", "G", "8 G B extra", ""])
def test_bad_memory_is_a_configuration_error(memory: str) -> None:
    with pytest.raises(ConfigurationError, match="memory"):
        Resources(memory=memory)


@pytest.mark.parametrize(
    ("walltime", "seconds", "hms"),
    [
        ("01:00:00", 3600, "01:00:00"),
        ("1:02:03", 3723, "01:02:03"),
        ("0:00:59", 59, "00:00:59"),
        ("1-00:00:00", 86400, "24:00:00"),
        ("2-12:30:00", 217800, "60:30:00"),
        ("90", 5400, "01:30:00"),  # minutes
        ("100:00:00", 360000, "100:00:00"),
    ],
)
def test_walltime(walltime: str, seconds: int, hms: str) -> None:
    resources = Resources(walltime=walltime)
    assert resources.walltime_seconds() == seconds
    assert resources.walltime_hms() == hms


@pytest.mark.parametrize("walltime", ["1h", "10:00", "1:2", "a:b:c", "1-", "-1", "1:00:00:00"])
def test_bad_walltime_is_a_configuration_error(walltime: str) -> None:
    with pytest.raises(ConfigurationError, match="walltime"):
        Resources(walltime=walltime)


def test_unset_fields_are_none() -> None:
    resources = Resources()
    assert resources.memory_megabytes() is None
    assert resources.walltime_seconds() is None
    assert resources.walltime_hms() is None


@pytest.mark.parametrize("field", ["cpus", "gpus"])
@pytest.mark.parametrize("value", [0, -2, 1.5, "4"])
def test_counts_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Resources(**{field: value})  # type: ignore[arg-type]


def test_list_fields_become_tuples_and_reject_strings() -> None:
    resources = Resources(
        job_extra_directives=["--exclusive"], job_script_prologue=["module load x"]
    )
    assert resources.job_extra_directives == ("--exclusive",)
    assert resources.job_script_prologue == ("module load x",)
    with pytest.raises(ConfigurationError, match="job_extra_directives"):
        Resources(job_extra_directives="--exclusive")  # type: ignore[arg-type]


def test_aliases_cores_queue_project() -> None:
    resources = Resources.from_mapping({"cores": 4, "queue": "short", "project": "abc123"})
    assert resources == Resources(cpus=4, partition="short", account="abc123")


def test_from_mapping_with_canonical_names() -> None:
    values = {"cpus": 2, "memory": "1G", "walltime": "00:10:00", "gpus": 1, "partition": "gpu"}
    assert Resources.from_mapping(values) == Resources(**values)  # type: ignore[arg-type]


def test_unknown_resource_lists_valid_names_and_where() -> None:
    with pytest.raises(ConfigurationError) as info:
        Resources.from_mapping({"ram": "8G"}, where="profile 'x'")
    message = str(info.value)
    assert "'ram'" in message and "profile 'x'" in message
    for name in [f.name for f in dataclasses.fields(Resources)] + ["cores", "queue"]:
        assert name in message


def test_from_mapping_validates_values() -> None:
    with pytest.raises(ConfigurationError, match="memory"):
        Resources.from_mapping({"memory": "lots"})


def test_merged_takes_the_fields_the_other_sets() -> None:
    base = Resources(cpus=2, memory="1G", partition="short", job_extra_directives=("--a",))
    merged = base.merged(Resources(memory="4G", walltime="01:00:00"))
    assert merged == Resources(
        cpus=2, memory="4G", walltime="01:00:00", partition="short", job_extra_directives=("--a",)
    )
    assert base.merged(None) is base
    assert base.merged(Resources()) == base


def test_resources_are_frozen_and_hashable() -> None:
    resources = Resources(cpus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resources.cpus = 2  # type: ignore[misc]
    assert hash(resources) == hash(Resources(cpus=1))


_INJECTIONS = ["short\n#SBATCH --uid=0", "short\rx", "a\x00b", "a\x1bb", "a\x7fb", "a\u2028b"]


@pytest.mark.parametrize("value", _INJECTIONS)
@pytest.mark.parametrize("field", ["partition", "account", "memory", "walltime"])
def test_control_characters_in_a_value_are_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"Resources\.{field} .*control character"):
        Resources(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", _INJECTIONS)
@pytest.mark.parametrize("field", ["job_extra_directives", "job_script_prologue"])
def test_control_characters_in_a_line_are_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"Resources\.{field}\[1\] .*control character"):
        Resources(**{field: ["--fine", value]})  # type: ignore[arg-type]


def test_trailing_newline_of_a_size_or_walltime_is_refused() -> None:
    # The size and walltime patterns end in `$`, which also matches before a final newline:
    # "8G\n" used to pass their validation and reach the job script.
    for field, value in [("memory", "8G\n"), ("walltime", "01:00:00\n")]:
        with pytest.raises(ConfigurationError, match="control character"):
            Resources(**{field: value})  # type: ignore[arg-type]


def test_control_characters_are_refused_from_a_mapping_and_the_queue_alias() -> None:
    with pytest.raises(ConfigurationError, match="partition"):
        Resources.from_mapping({"queue": "all.q\n#$ -u root"})


def test_tab_and_unicode_text_stay_allowed() -> None:
    resources = Resources(partition="gpu-ä", job_script_prologue=["export A=\t1"])
    assert resources.partition == "gpu-ä"


def test_a_value_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="partition must be a string"):
        Resources(partition=["a", "b"])  # type: ignore[arg-type]


def test_executor_refuses_an_injected_resource_before_submitting() -> None:
    from remote_futures import RemoteExecutor

    with (
        RemoteExecutor("local") as ex,
        pytest.raises(ConfigurationError, match="control character"),
    ):
        ex.with_resources(partition="short\n#SBATCH --wrap=evil")


def test_a_batch_executor_refuses_an_injected_default_at_construction() -> None:
    from remote_futures import RemoteExecutor

    # Refused while options are read: no shell is opened, nothing reaches sbatch.
    with pytest.raises(ConfigurationError, match=r"Resources\.account .*control character"):
        RemoteExecutor("slurm", resources={"account": "lab\n#SBATCH --qos=top"})


def test_coerce_takes_resources_or_a_table_and_refuses_anything_else() -> None:
    given = Resources(cpus=2)
    assert Resources.coerce(given) is given
    assert Resources.coerce({"cores": 3, "queue": "short"}) == Resources(cpus=3, partition="short")
    with pytest.raises(ConfigurationError, match="table of resources"):
        Resources.coerce("cpus=2")
