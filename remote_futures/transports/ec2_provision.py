"""The pure part of the ``ec2`` transport: tags, user data and the RunInstances request.

Nothing here talks to AWS, so every rule (the 16 KB user-data limit, the tags, the shutdown
behaviour, IMDSv2, spot options) is checked by plain unit tests on the request itself, which
matters because the emulator used in tests does not enforce all of them.

The user data is a bash script (cloud-init runs it once, as root, at first boot). In order:

1. **lifetime guard**: ``shutdown -h +N`` with N = ``max_lifetime`` in minutes, first, so that it
   holds even if the rest fails; with ``InstanceInitiatedShutdownBehavior=terminate`` a shutdown
   *terminates* the instance, so a client that was killed outright still stops paying;
2. the client's public key appended to the login user's ``authorized_keys`` (no key pair
   resource exists, so none can be left behind, and the private key never leaves the client);
3. the SSH host keys printed to the console between markers, so the client can pin them
   (``GetConsoleOutput``) instead of trusting the first key it sees;
4. **idle watchdog**: a loop that shuts the instance down once no worker process ran and nothing
   under the work directory changed for ``idle_timeout``.

A few ``RF_*`` variables (``RF_HOME``, ``RF_ETC_SSH``, ``RF_CONSOLE``) default to the real
locations; the project's tests set them to run the very same script in a sandbox.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import math
import os
import re
import shlex
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError

__all__ = [
    "HOST_KEYS_BEGIN",
    "HOST_KEYS_END",
    "MAX_USER_DATA",
    "TAG_CLIENT",
    "TAG_EXPIRES",
    "TAG_MANAGED",
    "TAG_OWNER",
    "TAG_SESSION",
    "LaunchPlan",
    "default_image_parameter",
    "host_keys_from_console",
    "launch_request",
    "parse_duration",
    "render_user_data",
    "session_tags",
]

#: EC2 refuses user data above 16 KB (before base64); checked here since emulators do not.
MAX_USER_DATA = 16 * 1024

TAG_MANAGED = "remote-futures:managed-by"
TAG_OWNER = "remote-futures:owner"
TAG_SESSION = "remote-futures:session"
TAG_EXPIRES = "remote-futures:expires-at"
#: ``host:pid`` of the client process, so that a sweep can tell a dead session from a live one.
TAG_CLIENT = "remote-futures:client"
MANAGED_BY = "remote-futures"

HOST_KEYS_BEGIN = "-----BEGIN REMOTE-FUTURES HOST KEYS-----"
HOST_KEYS_END = "-----END REMOTE-FUTURES HOST KEYS-----"
#: cloud-init's own block, printed by most images; accepted too.
_CLOUD_INIT_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
_CLOUD_INIT_END = "-----END SSH HOST KEY KEYS-----"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_KEY_LINE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/=]+")
#: A whole public key line: type, base64 body, an optional plain comment.
_PUBLIC_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [A-Za-z0-9@._:+-]*)?"
)
_LOGIN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def parse_duration(value: object, *, what: str) -> float:
    """Seconds in ``value``: a number of seconds or ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a duration like '2h', not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ConfigurationError(
            f"{what} must be a duration like '90s', '15m' or '2h' (or seconds), not {value!r}"
        )
    if seconds <= 0:
        raise ConfigurationError(f"{what} must be positive, not {value!r}")
    return seconds


def default_image_parameter(architecture: str) -> str:
    """The SSM public parameter naming the current Amazon Linux 2023 image for an architecture."""
    arch = "arm64" if architecture == "arm64" else "x86_64"
    return f"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"


def session_tags(
    session: str, *, owner: str, expires_at: datetime.datetime, client: str | None = None
) -> dict[str, str]:
    """The tags every resource of one executor session carries."""
    return {
        TAG_MANAGED: MANAGED_BY,
        TAG_OWNER: owner,
        TAG_SESSION: session,
        TAG_EXPIRES: expires_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        TAG_CLIENT: client or f"{socket.gethostname()}:{os.getpid()}",
        "Name": f"remote-futures-{session}",
    }


def new_session_id() -> str:
    """A short random session id (tag value and resource-name suffix)."""
    return uuid.uuid4().hex[:12]


def render_user_data(
    *,
    public_key: str,
    user: str,
    max_lifetime: float,
    idle_timeout: float | None,
    work_dir: str = ".remote_futures",
) -> str:
    """The first-boot script (see the module docstring); raises if it exceeds 16 KB."""
    if not _PUBLIC_KEY.fullmatch(public_key.strip()):
        raise ConfigurationError(f"not an OpenSSH public key line: {public_key[:40]!r}")
    if not _LOGIN.match(user):
        raise ConfigurationError(f"user must be a plain login name, not {user!r}")
    minutes = max(1, math.ceil(max_lifetime / 60))
    lines = [
        "#!/bin/bash",
        "# remote-futures first-boot script. The lifetime guard comes first, so that it holds",
        "# even if anything below fails; the instance terminates on shutdown.",
        f"shutdown -h +{minutes} 'remote-futures: max_lifetime reached' >/dev/null 2>&1 || true",
        f"u={shlex.quote(user)}",
        'home="${RF_HOME:-$(getent passwd "$u" | cut -d: -f6)}"',
        'if [ -z "$home" ]; then useradd -m "$u" && home=$(getent passwd "$u" | cut -d: -f6); fi',
        'mkdir -p "$home/.ssh" && chmod 700 "$home/.ssh"',
        f"printf '%s\\n' {shlex.quote(public_key.strip())} >> \"$home/.ssh/authorized_keys\"",
        'chmod 600 "$home/.ssh/authorized_keys"',
        'chown -R "$u:" "$home/.ssh" 2>/dev/null || true',
        "# Host keys on the console, so that the client pins them (GetConsoleOutput).",
        'etc="${RF_ETC_SSH:-/etc/ssh}"; console="${RF_CONSOLE:-/dev/console}"',
        "{ echo; echo " + shlex.quote(HOST_KEYS_BEGIN) + '; cat "$etc"/ssh_host_*_key.pub; '
        "echo " + shlex.quote(HOST_KEYS_END) + "; } >>\"$console\" 2>/dev/null || true",
    ]
    if idle_timeout is not None:
        idle = max(1, math.ceil(idle_timeout))
        every = max(1, min(60, idle // 4))
        if work_dir.startswith("~/"):
            work_dir = work_dir[2:]
        work = (
            shlex.quote(work_dir) if work_dir.startswith("/")
            else f'"$home"/{shlex.quote(work_dir)}'
        )
        # Busy: a worker process runs, or something under the work directory changed (jobs
        # are written and results land there). Idle for `idle` seconds: shut down.
        watchdog = (
            f'w={work}; idle={idle}; last=$(date +%s); '
            f"while sleep {every}; do now=$(date +%s); "
            'if pgrep -f "$w/worker-" >/dev/null 2>&1 || '
            '[ -n "$(find "$w" -newermt "@$((now - idle))" -print -quit 2>/dev/null)" ]; '
            "then last=$now; fi; "
            "if [ $((now - last)) -ge $idle ]; then "
            "shutdown -h now 'remote-futures: idle_timeout reached'; exit 0; fi; done"
        )
        lines += [
            "# Idle watchdog: no worker process and no change under the work directory.",
            f"watchdog={shlex.quote(watchdog)}",
            'export home',
            'if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemd-run'
            # A transient unit does not inherit this environment: hand $home over explicitly.
            ' >/dev/null; then systemd-run --unit=remote-futures-idle --setenv=home="$home"'
            ' /bin/bash -c "$watchdog";'
            ' else nohup setsid /bin/bash -c "$watchdog" </dev/null >/dev/null 2>&1 & fi',
        ]
    text = "\n".join(lines) + "\n"
    size = len(text.encode())
    if size > MAX_USER_DATA:
        raise ConfigurationError(
            f"the instance user data is {size} bytes; EC2 accepts at most {MAX_USER_DATA}"
        )
    return text


def host_keys_from_console(output: str) -> list[str]:
    """The SSH host public keys an instance printed between the markers (ours or cloud-init's);
    an empty list until they appear. Only key lines are kept (algorithm and base64 body)."""
    keys: list[str] = []
    for begin, end in ((HOST_KEYS_BEGIN, HOST_KEYS_END), (_CLOUD_INIT_BEGIN, _CLOUD_INIT_END)):
        start = output.rfind(begin)
        if start < 0:
            continue
        stop = output.find(end, start)
        if stop < 0:
            continue  # the block is still being written
        for line in output[start + len(begin) : stop].splitlines():
            # Console lines may carry a prefix such as "ec2: " or a timestamp.
            for marker in ("ssh-ed25519 ", "ecdsa-sha2-", "ssh-rsa "):
                at = line.find(marker)
                if at >= 0:
                    match = _KEY_LINE.match(line[at:].strip())
                    if match and match.group(0) not in keys:
                        keys.append(match.group(0))
                    break
        if keys:
            break
    return keys


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything one RunInstances call needs, minus the subnet (tried in turn)."""

    image_id: str
    instance_type: str
    count: int
    user_data: str
    tags: Mapping[str, str]
    security_group_ids: Sequence[str] = ()
    key_name: str | None = None
    spot: bool = False
    spot_max_price: str | None = None
    volume_size_gb: int | None = None
    root_device_name: str = "/dev/xvda"
    client_token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


def launch_request(plan: LaunchPlan, subnet_id: str | None) -> dict[str, Any]:
    """The keyword arguments of ``ec2.run_instances`` for ``plan`` in ``subnet_id``.

    Every instance terminates (not stops) on an OS shutdown, requires IMDSv2 tokens, deletes its
    volumes on termination, and carries the session tags on itself, its volumes and its network
    interfaces; spot instances are one-time and terminate on interruption. ``ClientToken``
    makes a retried call (after a timeout) return the same instances instead of new ones; a
    different subnet gets a different token, since it is a different request.
    """
    tags = [{"Key": k, "Value": v} for k, v in plan.tags.items()]
    ebs: dict[str, Any] = {"DeleteOnTermination": True}
    if plan.volume_size_gb is not None:
        ebs["VolumeSize"] = plan.volume_size_gb
    request: dict[str, Any] = {
        "ImageId": plan.image_id,
        "InstanceType": plan.instance_type,
        "MinCount": plan.count,
        "MaxCount": plan.count,
        "UserData": plan.user_data,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": plan.root_device_name, "Ebs": ebs}],
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": tags}
            for kind in ("instance", "volume", "network-interface")
        ],
        "ClientToken": f"{plan.client_token[:48]}-{subnet_id or 'default'}"[:64],
    }
    if plan.security_group_ids:
        request["SecurityGroupIds"] = list(plan.security_group_ids)
    if subnet_id is not None:
        request["SubnetId"] = subnet_id
    if plan.key_name is not None:
        request["KeyName"] = plan.key_name
    if plan.spot:
        spot: dict[str, Any] = {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        if plan.spot_max_price is not None:
            spot["MaxPrice"] = plan.spot_max_price
        request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    if len(plan.user_data.encode()) > MAX_USER_DATA:
        raise ConfigurationError(f"user data exceeds {MAX_USER_DATA} bytes")
    return request


def user_data_b64(text: str) -> str:
    """Base64 of the user data, as DescribeInstanceAttribute returns it (for comparisons)."""
    return base64.b64encode(text.encode()).decode()
