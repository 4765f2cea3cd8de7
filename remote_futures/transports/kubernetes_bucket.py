"""The object-store channel of the Kubernetes transport: payloads over a Secret's limit and
results over what a pod log carries safely travel through ``bucket="s3://name/prefix"``.

The client holds the credentials; pods get only presigned URLs (a GET for a task's input, a
PUT per call for a large result) and use them with plain ``urllib``, so the image needs no
cloud SDK and no credentials. aioboto3 is the optional ``[aws]`` extra, imported when an
executor with a bucket opens.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from ..errors import ConfigurationError, TransportError

__all__ = ["Bucket", "parse_bucket"]

#: SigV4's longest validity: a presigned URL must outlive the task that uses it.
MAX_EXPIRY = 7 * 24 * 3600


def parse_bucket(url: str) -> tuple[str, str]:
    """``s3://name/prefix`` -> (name, prefix ending in "/" or empty); ConfigurationError else."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ConfigurationError(
            f"option 'bucket' must be an s3://name[/prefix] URL, got {url!r}"
        )
    name, _, prefix = url[len("s3://"):].partition("/")
    if not name:
        raise ConfigurationError(f"option 'bucket': {url!r} names no bucket")
    prefix = prefix.strip("/")
    return name, (prefix + "/" if prefix else "")


def _import_aioboto3() -> Any:
    try:
        import aioboto3
    except ImportError as exc:
        raise ConfigurationError(
            "option 'bucket' of the kubernetes transport needs aioboto3: "
            "pip install 'remote_futures[aws]'"
        ) from exc
    return aioboto3


class Bucket:
    """An S3 client for one executor: upload, presign, fetch (checked) and delete objects."""

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
        profile: str | None = None, expiry: int = MAX_EXPIRY,
    ) -> None:
        self.name, self.prefix = parse_bucket(url)
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.expiry = expiry
        self._stack = contextlib.AsyncExitStack()
        self._s3: Any = None

    async def open(self) -> None:
        """Create the client (credentials from the profile or the usual AWS environment) and
        check that the bucket is reachable, so a typo fails the first call clearly."""
        aioboto3 = _import_aioboto3()
        from botocore.config import Config

        session = aioboto3.Session(profile_name=self.profile)
        self._s3 = await self._stack.enter_async_context(session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            # SigV4 URLs: what every region accepts (SigV2 is gone in the newer ones).
            config=Config(signature_version="s3v4"),
        ))
        try:
            await self._s3.head_bucket(Bucket=self.name)
        except Exception as exc:
            await self.close()
            raise ConfigurationError(
                f"option 'bucket': s3://{self.name} is not reachable with these credentials"
                f"{f' at {self.endpoint_url}' if self.endpoint_url else ''}: {exc}"
            ) from None

    async def close(self) -> None:
        """Close the client."""
        self._s3 = None
        await self._stack.aclose()

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the bucket's prefix."""
        return self.prefix + "/".join(parts)

    async def put(self, key: str, data: bytes) -> None:
        """Upload ``data`` to ``key``."""
        await self._s3.put_object(Bucket=self.name, Key=key, Body=data,
                                  ContentType="application/octet-stream")

    async def presign_get(self, key: str) -> str:
        """A URL a pod can GET ``key`` from without credentials."""
        url: str = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=self.expiry)
        return url

    async def presign_put(self, key: str) -> str:
        """A URL a pod can PUT ``key`` to without credentials."""
        url: str = await self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=self.expiry)
        return url

    async def fetch(self, key: str, size: int, sha256: str) -> bytes:
        """The object at ``key``, checked against the size and sha256 the pod reported."""
        try:
            response = await self._s3.get_object(Bucket=self.name, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:
            raise TransportError(f"fetching s3://{self.name}/{key}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if len(data) != size or actual != sha256:
            raise TransportError(
                f"s3://{self.name}/{key} is corrupt: {len(data)} bytes with sha256 "
                f"{actual[:12]}..., the pod wrote {size} bytes with sha256 {sha256[:12]}..."
            )
        return data

    async def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` (missing ones are fine)."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            if chunk:
                await self._s3.delete_objects(
                    Bucket=self.name,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (what a session left)."""
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents") or []]
        await self.delete(keys)
