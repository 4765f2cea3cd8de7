"""Payloads over a Secret's limit and results over what a pod log carries travel through an S3
bucket (moto's S3 server on loopback): presigned URLs made by the client, urllib in the pod,
checksums checked, objects deleted after the fetch. Both against the in-test fake API server
(tier A) and the testbed's real kube-apiserver (tier B)."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_apiserver import FakeServer
from testbed_facts import require_testbed

from remote_futures import JobFailedError, RemoteExecutor

pytest.importorskip("aioboto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.timeout(120)
Make = Callable[..., RemoteExecutor]
MiB = 1024 * 1024


class S3:
    """moto's S3 server on 127.0.0.1 with one bucket, and a boto3 client to look inside."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import boto3

        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY",
                           "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket="rf-bucket")

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket="rf-bucket")
        return [item["Key"] for item in listed.get("Contents") or []]

    def options(self) -> dict[str, Any]:
        return {"bucket": "s3://rf-bucket/spill/area", "bucket_endpoint_url": self.endpoint}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    store = S3(monkeypatch)
    yield store
    store.server.stop()


def _digest_and_grow(data: bytes, size: int) -> tuple[str, bytes]:
    """The sha256 of what arrived, and ``size`` bytes back (incompressible, so no pickle or
    transport trick makes it small)."""
    import hashlib as h
    import os as o

    return h.sha256(data).hexdigest(), o.urandom(size)


def _round_trip(ex: RemoteExecutor) -> None:
    argument = bytes(range(256)) * (3 * MiB // 256)  # 3 MiB
    digest, result = ex.submit(_digest_and_grow, argument, 8 * MiB).result(timeout=90)
    assert digest == hashlib.sha256(argument).hexdigest()
    assert len(result) == 8 * MiB
    # A small call next to it still travels through the Secret and the log alone.
    assert ex.submit(len, b"x" * 1000).result(timeout=60) == 1000


def _record_receipts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every termination receipt the client reads, as it read it."""
    from remote_futures.transports import kubernetes

    seen: list[dict[str, Any]] = []

    def record(message: str | None) -> dict[str, object] | None:
        receipt = real(message)
        if receipt is not None:
            seen.append(dict(receipt))
        return receipt

    real = kubernetes.parse_receipt
    monkeypatch.setattr(kubernetes, "parse_receipt", record)
    return seen


def _secret_sizes(fake: FakeServer) -> list[int]:
    return [sum(len(v) for v in (o.get("data") or {}).values())
            for (k, _, _), o in list(fake.cluster.objects.items()) if k == "secrets"]


def test_large_argument_and_result_go_through_the_bucket(
    k8s_executor: Make, fake: FakeServer, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = _record_receipts(monkeypatch)
    created: list[int] = []
    with k8s_executor(**s3.options()) as ex:
        argument = bytes(range(256)) * (3 * MiB // 256)
        future = ex.submit(_digest_and_grow, argument, 8 * MiB)
        while not future.done():
            created += _secret_sizes(fake)
            time.sleep(0.05)
        digest, result = future.result()
        assert digest == hashlib.sha256(argument).hexdigest()
        assert len(result) == 8 * MiB
        assert ex.submit(len, b"x" * 1000).result(timeout=60) == 1000
    # The pod got URLs, never the payload itself: no Secret held the 3 MiB.
    assert created and max(created) < 900 * 1024
    # The pod's receipt said the result came by URL, with the object's checksum.
    spilled = [r for r in receipts if r.get("channel") == "url"]
    assert len(spilled) == 1 and len(spilled[0]["url"]) == 1
    assert len(next(iter(spilled[0]["url"].values()))) == 64
    # (The small call's receipt is not asserted: its result can come from the followed log,
    # and then its pod is released without its receipt being read.)
    assert s3.keys() == []  # fetched results deleted, inputs deleted at release/shutdown


def _tampering_result(size: int) -> bytes:
    import os as o

    return o.urandom(size)


def test_a_result_changed_in_the_bucket_is_refused(
    k8s_executor: Make, fake: FakeServer, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_futures.transports import kubernetes_bucket

    real_fetch = kubernetes_bucket.Bucket.fetch

    async def tamper(self: Any, key: str, size: int, sha256: str) -> bytes:
        # Someone else overwrote the object after the pod uploaded it.
        await self._s3.put_object(Bucket=self.name, Key=key, Body=b"y" * size)
        return await real_fetch(self, key, size, sha256)

    monkeypatch.setattr(kubernetes_bucket.Bucket, "fetch", tamper)
    with k8s_executor(**s3.options()) as ex, pytest.raises(JobFailedError, match="corrupt"):
        ex.submit(_tampering_result, 5 * MiB).result(timeout=90)


def test_a_large_result_without_a_bucket_is_still_a_clear_error(k8s_executor: Make) -> None:
    with k8s_executor() as ex, pytest.raises(Exception, match="give the executor a bucket"):
        ex.submit(_tampering_result, 5 * MiB).result(timeout=90)


def test_unreachable_bucket_is_named_on_the_first_call(k8s_executor: Make, s3: S3) -> None:
    from remote_futures import BrokenRemoteExecutor

    options = {"bucket": "s3://no-such-bucket", "bucket_endpoint_url": s3.endpoint}
    with k8s_executor(**options) as ex, pytest.raises(BrokenRemoteExecutor, match="no-such"):
        ex.submit(len, b"").result(timeout=60)


@pytest.mark.testbed
def test_tier_b_large_argument_and_result_go_through_the_bucket(s3: S3) -> None:
    facts = require_testbed("kubernetes")
    options: dict[str, Any] = {
        "kubeconfig": str(facts.raw["RF_K8S_KUBECONFIG"]),
        "namespace": str(facts.raw["RF_K8S_NAMESPACE"]),
        "python": sys.executable, "start_grace": 5.0, "max_workers": 2, **s3.options(),
    }
    with RemoteExecutor("kubernetes", **options) as ex:
        _round_trip(ex)
    assert s3.keys() == []


def test_many_calls_put_their_result_urls_in_the_bucket_too(
    k8s_executor: Make, fake: FakeServer, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_futures.transports import kubernetes_bucket

    uploaded: list[str] = []
    real_put = kubernetes_bucket.Bucket.put

    async def put(self: Any, key: str, data: bytes) -> None:
        uploaded.append(key)
        await real_put(self, key, data)

    monkeypatch.setattr(kubernetes_bucket.Bucket, "put", put)
    # 3000 calls in two tasks: 3000 presigned PUT URLs (~0.4 KiB each) overflow a Secret, so
    # each task's URL table travels through the bucket behind a GET URL of its own.
    sizes: list[int] = []
    with k8s_executor(**s3.options()) as ex:
        futures = ex.map(abs, range(-3000, 0), chunksize=1500)
        while not sizes:
            sizes = _secret_sizes(fake)
            time.sleep(0.05)
        assert list(futures) == list(range(3000, 0, -1))
    assert max(sizes) < 900 * 1024
    assert {"task-0.json", "task-1.json"} <= {k.rsplit("/", 1)[1] for k in uploaded}
    assert s3.keys() == []
