"""Fixtures of the ``ec2`` tests: a fake cloud (moto + a local hypervisor) per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakecloud import Cloud, start_cloud


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Cloud:
    """moto's EC2 on loopback, a hypervisor booting its instances locally, the network guard."""
    return start_cloud(request)
