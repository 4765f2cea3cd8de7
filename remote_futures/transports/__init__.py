"""The registry of transports: name -> class, imported lazily so that optional extras
(asyncssh, kubernetes-asyncio, aioboto3) are only needed by the transports that use them."""

from __future__ import annotations

import importlib

from ..errors import ConfigurationError
from .base import Transport

__all__ = ["TRANSPORTS", "Transport", "transport_class"]

#: Every transport name users may pass, and where its class lives.
TRANSPORTS: dict[str, str] = {
    "local": "remote_futures.transports.local_pool:LocalPoolTransport",
    #: The previous embedded transport: a fresh process per job, speaking the job-directory
    #: protocol of the remote transports (a test double of them).
    "local-jobs": "remote_futures.transports.local:LocalTransport",
    "ssh": "remote_futures.transports.ssh_pool:SSHPoolTransport",
    #: The previous ssh transport: a detached process per task, files in job directories.
    "ssh-jobs": "remote_futures.transports.ssh_host:SSHHostTransport",
    "slurm": "remote_futures.transports.batch:SlurmTransport",
    "pbs": "remote_futures.transports.batch:PBSTransport",
    "sge": "remote_futures.transports.batch:SGETransport",
    "kubernetes": "remote_futures.transports.kubernetes:KubernetesTransport",
    "ec2": "remote_futures.transports.ec2:EC2Transport",
    #: In-memory, for tests (calls run in threads of this process).
    "mock": "remote_futures.transports.mock:MockTransport",
}

#: Transports planned for a later release: named here so the error says so, not "unknown".
PLANNED: tuple[str, ...] = ()


def transport_class(name: str) -> type[Transport]:
    """The transport class registered under ``name``; ConfigurationError if there is none."""
    if name in PLANNED:
        raise ConfigurationError(
            f"the {name!r} transport is not available in this version of remote_futures yet; "
            f"available: {', '.join(TRANSPORTS)}"
        )
    try:
        target = TRANSPORTS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown transport {name!r}; valid transports: {', '.join(TRANSPORTS)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("remote_futures"):
            raise ConfigurationError(
                f"the {name!r} transport is not available in this version of remote_futures"
            ) from exc
        raise
    cls: type[Transport] = getattr(module, class_name)
    return cls
