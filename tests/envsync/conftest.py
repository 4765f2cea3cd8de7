"""Fixtures for envsync tests: a hermetic wheelhouse, a counting shell, a wanted set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from remote_futures.envsync import EnvSpec

# The helper modules beside this file, and tests/ for testbed_facts (as tests/ssh does).
for _dir in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
from envsync_support import CLOUDPICKLE, CountingShell  # noqa: E402
from envsync_wheelhouse import build_wheelhouse  # noqa: E402


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture
def spec(wheelhouse: Path) -> EnvSpec:
    return EnvSpec(find_links=(str(wheelhouse),), no_index=True)


@pytest.fixture
def local() -> dict[str, str]:
    """The local snapshot the tests pretend to have: two tiny wheels and cloudpickle."""
    return {"rf-tiny-a": "1.0", "rf_tiny_B": "1.0", "cloudpickle": CLOUDPICKLE}


@pytest.fixture
def shell() -> CountingShell:
    return CountingShell()
