"""``remote-futures sweep ec2``: terminate what executor sessions left behind.

Every instance and security group the ``ec2`` transport creates carries the session tags
(:mod:`.ec2_provision`). A session is *dead* when its ``expires-at`` has passed, or when its
client process ran on this machine and no longer exists. The sweep terminates the instances of
dead sessions (``--all``: of every session) that are not terminated yet, waits for them, then
deletes those sessions' security groups. It never touches a resource without the
``remote-futures:managed-by`` tag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket

import anyio

from .ec2_provision import MANAGED_BY, TAG_CLIENT, TAG_EXPIRES, TAG_MANAGED, TAG_SESSION

__all__ = ["SweepReport", "session_is_dead", "sweep"]

_LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclasses.dataclass
class SweepReport:
    """What a sweep found and did."""

    terminated: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    security_groups_deleted: list[str] = dataclasses.field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def session_is_dead(tags: dict[str, str], *, now: datetime.datetime | None = None) -> bool:
    """Whether the session these tags describe can no longer be using its resources."""
    now = now or datetime.datetime.now(datetime.UTC)
    expires = tags.get(TAG_EXPIRES)
    if expires:
        try:
            when = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.UTC
            )
        except ValueError:
            return True  # a tag this tool did not write: treat as expired
        if when <= now:
            return True
    host, _, pid = tags.get(TAG_CLIENT, "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    return False


async def sweep(
    region: str | None,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    all_sessions: bool = False,
    wait: float = 600.0,
) -> SweepReport:
    """Terminate instances (and delete security groups) of dead sessions, or of all sessions."""
    from .ec2 import _aioboto3, _session_hooks

    session = _aioboto3().Session(profile_name=profile, region_name=region)
    for hook in _session_hooks:
        hook(session)
    report = SweepReport()
    managed = [{"Name": f"tag:{TAG_MANAGED}", "Values": [MANAGED_BY]}]
    async with session.client("ec2", endpoint_url=endpoint_url) as ec2:
        dead_sessions: set[str] = set()
        live_sessions: set[str] = set()
        doomed: list[str] = []
        paginator = ec2.get_paginator("describe_instances")
        async for page in paginator.paginate(
            Filters=[*managed, {"Name": "instance-state-name", "Values": _LIVE_STATES}]
        ):
            for reservation in page["Reservations"]:
                for record in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in record.get("Tags", [])}
                    sid = tags.get(TAG_SESSION, "")
                    if all_sessions or session_is_dead(tags):
                        doomed.append(record["InstanceId"])
                        dead_sessions.add(sid)
                    else:
                        report.kept.append(record["InstanceId"])
                        live_sessions.add(sid)
        if doomed:
            await ec2.terminate_instances(InstanceIds=doomed)
            report.terminated = doomed
            with anyio.move_on_after(wait):
                while True:
                    described = await ec2.describe_instances(InstanceIds=doomed)
                    states = {
                        r["State"]["Name"]
                        for res in described["Reservations"]
                        for r in res["Instances"]
                    }
                    if states <= {"terminated"}:
                        break
                    await anyio.sleep(0.2 if endpoint_url else 3)
        groups = await ec2.describe_security_groups(Filters=managed)
        for group in groups["SecurityGroups"]:
            tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
            sid = tags.get(TAG_SESSION, "")
            if sid in live_sessions:
                continue
            if all_sessions or sid in dead_sessions or session_is_dead(tags):
                with contextlib.suppress(Exception):  # still in use: the next sweep gets it
                    await ec2.delete_security_group(GroupId=group["GroupId"])
                    report.security_groups_deleted.append(group["GroupId"])
    return report
