"""A batch scheduler with no ``host``: this machine is the login node. Check that it is.

``RemoteExecutor("pbs")`` without a host (nor a profile giving one) runs ``qsub`` and friends
here. Before anything else happens (no connection, no environment built), check that the
scheduler's commands are on ``PATH`` and that they belong to the scheduler asked for: on many
machines ``qsub`` is Grid Engine's, and ``pbs`` must not call it (nor ``sge`` a PBS ``qsub``).

The same probe answers for a remote host (:func:`identify_scheduler` parses the output of
:data:`PROBE_COMMANDS`), which is what ``remote-futures check`` shows.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from .config import config_path
from .errors import ConfigurationError

__all__ = [
    "PROBE_COMMANDS",
    "SCHEDULER_COMMANDS",
    "check_scheduler_here",
    "identify_scheduler",
]

#: The commands each scheduler transport runs on the login node (accounting is optional).
SCHEDULER_COMMANDS: dict[str, tuple[str, ...]] = {
    "slurm": ("sbatch", "squeue", "scancel"),
    "pbs": ("qsub", "qstat", "qdel"),
    "sge": ("qsub", "qstat", "qdel"),
}

#: One cheap command per scheduler whose output says which scheduler answers (stdout and
#: stderr together; a non-zero exit is fine: Torque's wrappers reject ``--version``).
PROBE_COMMANDS: dict[str, str] = {
    "slurm": "sbatch --version",
    "pbs": "qstat --version",
    "sge": "qstat -help",
}

# Grid Engine prints its name and version first: "SGE 8.1.9", "GE 6.2u5", "OGS/GE 2011.11p1",
# "UGE 8.6.4", "Univa Grid Engine 8.x", "Altair Grid Engine 2023.1".
_GRID_ENGINE = re.compile(
    r"^\s*(?:SGE|GE|OGS/GE|UGE|Univa Grid Engine|Altair Grid Engine|Open Grid Scheduler)"
    r"\s+\d",
    re.MULTILINE,
)
# PBS Professional / OpenPBS: "pbs_version = 19.1.3"; Torque: "Version: 6.1.3".
_PBS = re.compile(r"pbs_version\s*=|^\s*[Vv]ersion:\s*\d", re.MULTILINE)
# SchedMD's Torque wrappers over Slurm (perl): "Unknown option: version" and a pod usage.
_TORQUE_WRAPPER = re.compile(r"Unknown option: version|^\s*qstat \[-f\]", re.MULTILINE)
_SLURM = re.compile(r"\bslurm(?:-wlm)?\s+\d", re.IGNORECASE)
_VERSION_NUMBER = re.compile(r"\d+(?:\.\d+)+\S*")


def identify_scheduler(output: str) -> tuple[str | None, str]:
    """Which scheduler printed ``output`` (of a :data:`PROBE_COMMANDS` entry), and its version.

    Returns ``("slurm" | "pbs" | "sge" | None, version or description)``; Slurm's Torque
    wrappers count as ``pbs`` (that is what they imitate).
    """
    first = next((line.strip() for line in output.splitlines() if line.strip()), "")
    match = _GRID_ENGINE.search(output)
    if match:
        line = output[match.start():].strip().splitlines()[0]
        return "sge", line
    if _PBS.search(output):
        version = _VERSION_NUMBER.search(output)
        kind = "PBS Pro/OpenPBS" if "pbs_version" in output else "Torque"
        return "pbs", f"{kind} {version.group(0) if version else ''}".strip()
    if _TORQUE_WRAPPER.search(output):
        return "pbs", "Slurm's Torque wrappers"
    if _SLURM.search(output):
        return "slurm", first
    return None, first


def _how_to_give_a_host(name: str) -> str:
    return (
        f"To submit through a login node, give its address, e.g. RemoteExecutor({name!r}, "
        f'host="login.example.org", user="me"), or put transport = "{name}" and '
        f'host = "..." in a [profiles.NAME] table of {config_path()} and use '
        f'RemoteExecutor("NAME").'
    )


def check_scheduler_here(name: str, *, timeout: float = 15.0) -> str:
    """Check that scheduler ``name`` can be driven from this machine; return its version.

    Raises :class:`ConfigurationError` saying which command is missing, or which scheduler
    answers instead, and how to give a host or a profile.
    """
    commands = SCHEDULER_COMMANDS[name]
    missing = [command for command in commands if shutil.which(command) is None]
    lead = (
        f"the {name!r} transport was given no host, so this machine must be the cluster's "
        f"login node"
    )
    if missing:
        raise ConfigurationError(
            f"{lead}, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on "
            f"PATH here. {_how_to_give_a_host(name)}"
        )
    probe = PROBE_COMMANDS[name]
    try:
        done = subprocess.run(
            probe.split(), capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
        output = f"{done.stdout}\n{done.stderr}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(
            f"{lead}, but `{probe}` failed here: {exc}. {_how_to_give_a_host(name)}"
        ) from None
    found, version = identify_scheduler(output)
    if found is not None and found != name:
        where = shutil.which(commands[0])
        raise ConfigurationError(
            f"{lead}, but {commands[0]} here ({where}) belongs to {found} ({version}), not "
            f"{name}. Use RemoteExecutor({found!r}) if that is the scheduler you want; otherwise "
            f"put {name}'s commands first on PATH. {_how_to_give_a_host(name)}"
        )
    return version
