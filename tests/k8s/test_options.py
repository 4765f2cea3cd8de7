"""Bad options of the kubernetes transport fail before anything reaches a cluster."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from remote_futures import BrokenRemoteExecutor, ConfigurationError, RemoteExecutor
from remote_futures.transports.kubernetes import _import_client


@pytest.mark.parametrize(("option", "value", "words"), [
    ("image", "Not An/Image Name", "not a valid image name"),
    ("namespace", "Bad_Namespace", "not a valid namespace"),
    ("env", "sometimes", "'sync', 'off' or an EnvSpec"),
    ("bucket", "gs://bucket/prefix", "s3://name"),
    ("bucket", "s3:///prefix", "names no bucket"),
    ("bucket_endpoint_url", "http://127.0.0.1:9", "need option 'bucket'"),
])
def test_bad_option_is_refused_at_construction(option: str, value: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        RemoteExecutor("kubernetes", **{option: value})


def test_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config"
    ex = RemoteExecutor("kubernetes", kubeconfig=str(missing))
    try:
        with pytest.raises(BrokenRemoteExecutor, match="no kubeconfig at"):
            ex.submit(abs, 1).result(timeout=30)
    finally:
        ex.shutdown()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)
    with pytest.raises(ConfigurationError, match=r"remote_futures\[k8s\]"):
        _import_client()


def test_bucket_without_aioboto3_names_the_aws_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_futures.transports.kubernetes_bucket import Bucket

    monkeypatch.setitem(sys.modules, "aioboto3", None)
    with pytest.raises(ConfigurationError, match=r"remote_futures\[aws\]"):
        asyncio.run(Bucket("s3://name/prefix").open())
