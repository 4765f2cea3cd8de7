"""A client process for the orphan tests: opens an ``ec2`` executor on the fake cloud, runs
one call, prints ``ready <instance ids>`` and waits to be killed. Options as JSON in argv[1]."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakecloud

fakecloud.install_network_guard()

from remote_futures import RemoteExecutor  # noqa: E402 - after the guard
from remote_futures.transports import ec2  # noqa: E402

ec2._session_hooks.append(fakecloud.console_hook)


def where(_: object) -> str:
    return os.environ["RF_VM_ID"]


options = {
    "region": fakecloud.REGION,
    "endpoint_url": json.loads((Path(os.environ["RF_FAKE_CLOUD"]) / "cloud.json").read_text())[
        "endpoint"
    ],
    "resolve_address": fakecloud.resolve_address,
    "instances": 1,
    "python": sys.executable,
    "env": "off",
    "boot_timeout": "60s",
    **json.loads(sys.argv[1]),
}
#: Leave at once, without shutting the executor down (the exit hooks must clean up).
exit_at_once = options.pop("exit_at_once", False)
executor = RemoteExecutor("ec2", **options)
print("ready", executor.submit(where, 0).result(timeout=120), flush=True)
if not exit_at_once:
    time.sleep(3600)
