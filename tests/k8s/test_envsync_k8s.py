"""Environment sync in pods: what the local environment has and the image lacks is installed
with uv when the pod starts, into a directory keyed by its content hash; with a cache volume
the next pod (of another executor) finds it complete and skips the install.

The "image" of both the fake kubelet and the testbed's is this machine's read-only filesystem,
so the pods run this interpreter: a tiny wheel built here is "installed locally" by putting its
unpacked files on this process's path only, and served over HTTP on loopback as the pods'
index (``find_links`` with ``no_index``). Stopping the server afterwards shows a later pod
really used the cache: without it the install could not succeed."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fake_apiserver import FakeServer
from testbed_facts import require_testbed

from remote_futures import JobFailedError, RemoteExecutor
from remote_futures.envsync import EnvSpec
from remote_futures.envsync.snapshot import clear_local_cache

pytestmark = pytest.mark.timeout(240)
NAME, MODULE, VERSION = "rf-k8s-tiny", "rf_k8s_tiny", "1.0"


def _wheel(directory: Path) -> Path:
    dist_info = f"{MODULE}-{VERSION}.dist-info"
    files = {
        f"{MODULE}/__init__.py": b"MAGIC = 'installed in the pod'\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
        .encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: rf-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{MODULE}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return target


class Index:
    """The wheel, "installed" for this process only, and served on loopback."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        wheels = root / "wheels"
        wheel = _wheel(wheels)
        site = root / "local-site"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        monkeypatch.syspath_prepend(str(site))
        clear_local_cache()
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(10)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    served = Index(tmp_path, monkeypatch)
    yield served
    served.stop()
    clear_local_cache()


def _import_tiny() -> tuple[str, str]:
    import rf_k8s_tiny  # type: ignore[import-not-found]

    return rf_k8s_tiny.MAGIC, rf_k8s_tiny.__file__


def _scenario(make: Callable[..., RemoteExecutor], index: Index, cache: Path) -> None:
    # This interpreter (the pods' "image") lacks the distribution: only the client has it.
    assert MODULE not in sys.modules
    env = EnvSpec(mode="sync", find_links=(index.url,), no_index=True)
    volume = {"hostPath": {"path": str(cache), "type": "DirectoryOrCreate"}}
    with make(env=env, cache_volume=volume) as ex:
        magic, where = ex.submit(_import_tiny).result(timeout=180)
    assert magic == "installed in the pod"
    assert where.startswith("/rf/cache/rf-envs/")
    installed = [p for p in (cache / "rf-envs").iterdir() if not p.name.startswith(".")]
    assert len(installed) == 1 and (installed[0] / ".rf-complete").exists()
    assert [p.name for p in (cache / "rf-envs").iterdir() if p.name.startswith(".")] == []
    stamp = (installed[0] / ".rf-complete").stat().st_mtime_ns

    # The index goes away: only the cached environment can satisfy the next executor's pods.
    index.stop()
    with make(env=env, cache_volume=volume) as ex:
        assert ex.submit(_import_tiny).result(timeout=180)[0] == "installed in the pod"
    assert (installed[0] / ".rf-complete").stat().st_mtime_ns == stamp

    # Without the cache the pod must install, and cannot: a clear error, not a hang.
    with make(env=env) as ex, pytest.raises(JobFailedError, match="installing what the image"):
        ex.submit(_import_tiny).result(timeout=180)


def test_difference_is_installed_and_cached_fake_api(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, index: Index, tmp_path: Path
) -> None:
    _scenario(partial(k8s_executor, start_grace=30.0), index, tmp_path / "cache")


@pytest.mark.testbed
def test_difference_is_installed_and_cached_tier_b(index: Index, tmp_path: Path) -> None:
    facts = require_testbed("kubernetes")

    def make(**options: Any) -> RemoteExecutor:
        return RemoteExecutor(
            "kubernetes", kubeconfig=str(facts.raw["RF_K8S_KUBECONFIG"]),
            namespace=str(facts.raw["RF_K8S_NAMESPACE"]), python=sys.executable,
            start_grace=30.0, max_workers=2, **options)

    # The testbed kubelet binds the pytest temporary root read-write into its sandboxes.
    assert str(tmp_path).startswith("/tmp/pytest-of-"), tmp_path
    _scenario(make, index, tmp_path / "cache")


def test_image_with_a_different_python_is_refused_before_submission(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, tmp_path: Path
) -> None:
    # An "image" whose Python is 3.9 (or 3.10 when this one is 3.9): a shim that says so.
    other = "3, 9" if sys.version_info[:2] != (3, 9) else "3, 10"
    said = '{"version": [' + other + ', 0]}'
    shim = tmp_path / "python"
    shim.write_text(f"#!/bin/sh\necho '@@rf-probe {said}'\n")
    shim.chmod(0o755)
    with k8s_executor(env="sync", python=str(shim)) as ex, pytest.raises(Exception,
                                                                        match="runs Python"):
        ex.submit(len, b"").result(timeout=60)
    assert fake.cluster.count("POST", r"/secrets$") == 0


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: no uv (module or command), no cloudpickle


def _wheelhouse_with_cloudpickle(index: Index, root: Path) -> None:
    """Add a wheel of the cloudpickle installed here to the served directory."""
    import importlib.util

    path = Path(__file__).parents[1] / "envsync" / "envsync_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("envsync_wheelhouse_k8s", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.rewheel_installed("cloudpickle", root / "wheels")


def _no_uv_scenario(make: Callable[..., RemoteExecutor], index: Index, root: Path,
                    bucket: dict[str, Any]) -> None:
    import importlib.metadata

    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import uv"], capture_output=True)
    if probe.returncode == 0 or shutil.which("uv", path="/usr/local/bin:/usr/bin:/bin"):
        pytest.skip(f"{SYSTEM_PYTHON} has uv here; the no-uv image cannot be staged")
    _wheelhouse_with_cloudpickle(index, root)
    # The image's Python on a cluster whose pip reaches no index (this machine's may).
    offline = root / "python3"
    offline.write_text(f"#!/bin/sh\nexport PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null\n"
                       f"exec {SYSTEM_PYTHON} \"$@\"\n")
    offline.chmod(0o755)
    env = EnvSpec(mode="explicit", requirements=(NAME,), find_links=(index.url,), no_index=True)
    # Without a bucket: pip cannot fetch uv, a clear error.
    with make(env=env, python=str(offline)) as ex, pytest.raises(
            JobFailedError, match="the image has no uv"):
        ex.submit(importlib.metadata.version, NAME).result(timeout=180)
    # With one, this machine's uv travels through it.
    with make(env=env, python=str(offline), **bucket) as ex:
        assert ex.submit(importlib.metadata.version, NAME).result(timeout=180) == VERSION


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    pytest.importorskip("aioboto3")
    pytest.importorskip("moto.server")
    from test_bucket import S3

    store = S3(monkeypatch)
    yield store
    store.server.stop()


def test_image_without_uv_gets_the_clients_through_the_bucket_fake_api(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, index: Index, s3: Any,
    tmp_path: Path,
) -> None:
    _no_uv_scenario(partial(k8s_executor, start_grace=30.0), index, tmp_path, s3.options())


@pytest.mark.testbed
def test_image_without_uv_gets_the_clients_through_the_bucket_tier_b(
    index: Index, s3: Any, tmp_path: Path
) -> None:
    facts = require_testbed("kubernetes")

    def make(**options: Any) -> RemoteExecutor:
        return RemoteExecutor(
            "kubernetes", kubeconfig=str(facts.raw["RF_K8S_KUBECONFIG"]),
            namespace=str(facts.raw["RF_K8S_NAMESPACE"]), start_grace=30.0, max_workers=2,
            **options)

    _no_uv_scenario(make, index, tmp_path, s3.options())


def _probe_cache(home: Path) -> Path:
    [cached] = (home / "remote_futures" / "k8s-probe-v2").glob("*.json")
    return cached


def _stale_probe_scenario(make: Callable[..., RemoteExecutor], home: Path) -> None:
    """The client's cached probe of the image is older than the image: it says the image lacks
    a distribution that the image has. No index is reachable, so installing it would fail."""
    import importlib.metadata

    env = EnvSpec(mode="sync", no_index=True)
    with make(env=env) as ex:  # probes the image and caches what it has
        assert ex.submit(len, b"ab").result(timeout=180) == 2
    cached = _probe_cache(home)
    probe = json.loads(cached.read_text())
    assert probe["packages"].pop("iniconfig") == importlib.metadata.version("iniconfig")
    cached.write_text(json.dumps(probe))
    with make(env=env) as ex:
        version = ex.submit(importlib.metadata.version, "iniconfig").result(timeout=180)
    assert version == importlib.metadata.version("iniconfig")


def test_a_stale_probe_does_not_reinstall_what_the_image_has_fake_api(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    _stale_probe_scenario(partial(k8s_executor, start_grace=30.0), tmp_path / "home")


@pytest.mark.testbed
def test_a_stale_probe_does_not_reinstall_what_the_image_has_tier_b(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts = require_testbed("kubernetes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))

    def make(**options: Any) -> RemoteExecutor:
        return RemoteExecutor(
            "kubernetes", kubeconfig=str(facts.raw["RF_K8S_KUBECONFIG"]),
            namespace=str(facts.raw["RF_K8S_NAMESPACE"]), python=sys.executable,
            start_grace=30.0, max_workers=2, **options)

    _stale_probe_scenario(make, tmp_path / "home")


def test_an_expired_probe_is_asked_again(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A probe older than PROBE_TTL is not trusted: the image (tag) may have been rebuilt with
    another Python since."""
    from remote_futures.transports import kubernetes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.INFO, "remote_futures")
    with k8s_executor(env="sync") as ex:
        assert ex.submit(len, b"ab").result(timeout=60) == 2
    # The image has everything: the pods only check, and no install is announced.
    assert "missing from the image" not in caplog.text
    cached = _probe_cache(tmp_path / "home")
    probe = json.loads(cached.read_text())
    probe["version"] = [3, 9, 0] if sys.version_info[:2] != (3, 9) else [3, 10, 0]
    probe["probed_at"] -= kubernetes.PROBE_TTL + 60
    cached.write_text(json.dumps(probe))
    with k8s_executor(env="sync") as ex:
        assert ex.submit(len, b"abc").result(timeout=60) == 3
    # While it is young it is trusted: the same stale answer within the TTL is refused.
    probe["probed_at"] = time.time()
    cached.write_text(json.dumps(probe))
    with k8s_executor(env="sync") as ex, pytest.raises(Exception, match="runs Python"):
        ex.submit(len, b"").result(timeout=60)


def test_a_cached_probe_is_asked_again_before_refusing_a_local_distribution(
    k8s_executor: Callable[..., RemoteExecutor], fake: FakeServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image lacked this project (installed here from a checkout) when it was probed and
    has it now: the client asks the image again rather than refuse."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    with k8s_executor(env="sync") as ex:
        assert ex.submit(len, b"ab").result(timeout=60) == 2
    cached = _probe_cache(tmp_path / "home")
    probe = json.loads(cached.read_text())
    assert probe["packages"].pop("remote-futures", None) is not None
    cached.write_text(json.dumps(probe))
    with k8s_executor(env="sync") as ex:
        assert ex.submit(len, b"abc").result(timeout=60) == 3
    assert "remote-futures" in json.loads(cached.read_text())["packages"]
