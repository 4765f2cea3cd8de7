from __future__ import annotations

import pytest
from fakecloud import Cloud

from remote_futures import RemoteExecutor

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def test_map_runs_on_instances_and_terminates_them(cloud: Cloud) -> None:
    with RemoteExecutor("ec2", **cloud.options()) as ex:
        assert list(ex.map(square, range(6))) == [x * x for x in range(6)]
        assert len(cloud.instances("running")) == 2
    states = {i["State"]["Name"] for i in cloud.instances()}
    assert states == {"terminated"}
