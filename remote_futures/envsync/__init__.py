"""Environment sync: make the remote Python able to run the calls this process submits.

Data flow (one direction; :mod:`.sync` orchestrates, and does I/O with :mod:`.bootstrap`,
:mod:`.ship` and :mod:`.wheelhouse`)::

    spec.EnvSpec ──┐
    snapshot ──────┴─▶ plan.wanted_set ─▶ plan.env_key ─▶ remote.check_command ──(hit)──▶ done
                                                   (venv runs? prune) │ (miss or broken: probe)
                                      plan.plan_install ◀─────────────┘
                                             │          bootstrap (uv, base interpreter)
                        ship (wheels / by value) ─▶ remote.installer_command ─▶ done
                                                         │ (cannot reach the index)
                                   wheelhouse (download here, upload) ─▶ installer ─▶ done

:mod:`.report` words the errors and the change lists.

A transport calls :func:`sync_environment` once in ``prepare()`` and runs the worker with the
returned ``SyncResult.python``. See ``DESIGN.md`` ("envsync").
"""

from .plan import DEFAULT_EXCLUDES, PLATFORM_ONLY
from .snapshot import LocalDist, clear_local_cache, local_distributions, local_snapshot
from .spec import EnvSpec, env_spec_from_option, read_requirements_file
from .sync import SyncResult, sync_environment

__all__ = [
    "DEFAULT_EXCLUDES",
    "PLATFORM_ONLY",
    "EnvSpec",
    "LocalDist",
    "SyncResult",
    "clear_local_cache",
    "env_spec_from_option",
    "local_distributions",
    "local_snapshot",
    "read_requirements_file",
    "sync_environment",
]
