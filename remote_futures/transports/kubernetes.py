"""The Kubernetes transport: every array task is a Kubernetes Job running one pod.

Life of a job (see DESIGN.md for the contract)::

    submit   one Secret with every task's payload, the worker and the pod entry (1 MiB limit:
             larger work is refused before anything is created), then one Job per task, then
             the Secret's ownerReferences patched to those Jobs so that garbage collection and
             ``ttlSecondsAfterFinished`` remove it with them
    watch    ONE watch on Jobs and ONE on pods of this executor's session label, for all jobs;
             resumed from the last resourceVersion after a drop, re-listed after 410 Gone
    poll     no API call: the state the watch cached, read through kubernetes_status; when a pod
             succeeds its log is read once and the framed, checksummed result block parsed
    follow   (live output) the log of each running pod, up to MAX_LOG_STREAMS at once: what
             its calls print is shown line by line, tagged with the call, and each finished
             call's result is handed out as its block arrives; a stream dropped while the pod
             runs is followed again, past what was read
    cancel   delete the Job (background propagation: the garbage collector deletes its pods)
    release  delete the job's Jobs once their results are read
    close    delete everything carrying the session label

Objects carry ``app.kubernetes.io/managed-by=remote-futures`` and the session label; a
session ConfigMap holds a heartbeat, so that :func:`sweep` can delete what dead sessions left.

kubernetes-asyncio is the optional ``[k8s]`` extra, imported when the transport opens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio

from .. import k8s_entry, worker
from ..errors import (
    ConfigurationError,
    RemoteEnvironmentError,
    SubmissionError,
    TransportError,
)
from ..jobs import JobHandle, JobSpec, JobStatus, TaskState, TaskStatus
from ..resources import Resources
from .base import Transport
from .kubernetes_bucket import Bucket, parse_bucket
from .kubernetes_channels import (
    MAX_SECRET_BYTES,
    FrameError,
    LogFollower,
    Printed,
    parse_log,
    parse_receipt,
    secret_size,
)
from .kubernetes_status import job_failure, pod_status

__all__ = [
    "MANAGED_BY",
    "SESSION_LABEL",
    "KubernetesOptions",
    "KubernetesTransport",
    "sweep",
    "sweep_sync",
]

log = logging.getLogger("remote_futures")

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "remote-futures"
SESSION_LABEL = "remote-futures.io/session"
JOB_LABEL = "remote-futures.io/job"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
TASK_LABEL = "remote-futures.io/task"
HEARTBEAT_ANNOTATION = "remote-futures.io/heartbeat"
PAYLOAD_DIR = "/rf/payload"
#: Where the cache volume is mounted in pods.
CACHE_DIR = "/rf/cache"
CONTAINER = "task"
#: Seconds a Job's failure waits for its pod's own end when the pod still looks alive here.
JOB_FAILURE_GRACE = 5.0
#: Seconds a probe of an image is trusted: tags are rebuilt (the pods also check the plan).
PROBE_TTL = 3600.0

#: Streams in a row that may end without bringing anything new before a pod's log is no
#: longer followed (its output then shows at its end).
FOLLOW_RETRIES = 5

#: Running pods whose logs are followed at once for live output; the others' output is shown
#: when they end. A followed log (one long-lived request per pod, ``follow=true``) adds no
#: request to a poll and sends each byte once while the pod runs, and the position of each
#: line in it is exact, so that the one full read at the end (needed anyway for the checked
#: results) forwards only what the stream had not: nothing twice, nothing lost. Re-reading
#: the log every poll would cost its whole length each time (the API has no byte offset), and
#: ``sinceSeconds``/``sinceTime`` cut at timestamps, which several lines share. The cap bounds
#: the connections a large map holds open (each is one HTTP request on the API server).
MAX_LOG_STREAMS = 16
#: Seconds between session heartbeats; sweep() treats a session silent for much longer as dead.
HEARTBEAT_SECONDS = 60.0
#: HTTP statuses worth retrying (with the server's Retry-After when it gives one).
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_API_ATTEMPTS = 6
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# An OCI image reference, loosely: registry/path:tag@digest, lower-case path components.
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)

T = TypeVar("T")


def _import_client() -> Any:
    """kubernetes_asyncio, or a ConfigurationError naming the extra that provides it."""
    try:
        import kubernetes_asyncio
    except ImportError as exc:
        raise ConfigurationError(
            "the 'kubernetes' transport needs kubernetes-asyncio: "
            "pip install 'remote_futures[k8s]'"
        ) from exc
    return kubernetes_asyncio


@dataclasses.dataclass(frozen=True)
class KubernetesOptions:
    """Options of the ``kubernetes`` transport."""

    #: The container image the tasks run in; it needs a Python of the client's major.minor
    #: (and cloudpickle, unless ``env="sync"`` ships it).
    image: str = "python:3.11-slim"
    namespace: str = "default"
    #: A kubeconfig file or an already parsed kubeconfig dict; default ``$KUBECONFIG``, then
    #: ``~/.kube/config``. In-cluster configuration is never assumed.
    kubeconfig: str | dict[str, Any] | None = None
    #: The kubeconfig context; default: its current context.
    context: str | None = None
    #: The interpreter in the image.
    python: str = "python3"
    #: ``"sync"`` (default): probe the image once (cached per image: its Python and what
    #: ``pip list`` reports), refuse a different Python major.minor before anything is
    #: submitted, and have each pod install what the local environment has and the image
    #: lacks (with uv, into a directory layered over the image's packages); an
    #: :class:`~remote_futures.envsync.EnvSpec` says the same with excludes, extra
    #: requirements and index options (``find_links`` are URLs the pods can reach).
    #: ``"off"``: run ``python`` as it is.
    env: Any = "sync"
    #: A volume where pods keep installed environments by content hash, so the next pod
    #: with the same difference skips the install: a PersistentVolumeClaim name, or a
    #: Kubernetes volume source such as ``{"hostPath": {"path": "/var/cache/rf",
    #: "type": "DirectoryOrCreate"}}``. Default: none (each pod installs into scratch space).
    cache_volume: str | dict[str, Any] | None = None
    resources: Resources = dataclasses.field(default_factory=Resources)
    service_account: str | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    image_pull_secrets: list[str] | None = None
    #: A dict merged (recursively) into every pod spec, for what the options above lack.
    pod_overrides: dict[str, Any] | None = None
    #: ``s3://name/prefix`` for payloads over a Secret's limit (about 900 KiB) and results
    #: over what a pod log carries safely (4 MiB): pods get presigned URLs, the client keeps
    #: the credentials (aioboto3, the ``[aws]`` extra). Without it such work is refused.
    bucket: str | None = None
    #: The S3 endpoint (an S3-compatible store such as MinIO); default: AWS's.
    bucket_endpoint_url: str | None = None
    #: The bucket's region; default: the AWS profile's or environment's.
    bucket_region: str | None = None
    #: The AWS profile whose credentials sign the URLs; default: the usual AWS environment
    #: (``AWS_ACCESS_KEY_ID``..., ``AWS_PROFILE``, instance roles).
    bucket_profile: str | None = None
    #: Seconds a pod may sit unable to start (image pull errors, a missing Secret, no node
    #: fits) before its task fails, with Kubernetes' own message.
    start_grace: float = 120.0
    #: ``ttlSecondsAfterFinished`` of every Job: the cluster removes what a crashed client
    #: could not.
    ttl_seconds_after_finished: int = 3600
    #: Copy what each task printed to this process's stdout once its result is read.
    forward_output: bool = True

    def __post_init__(self) -> None:
        if not self.image or not _IMAGE.match(self.image):
            raise ConfigurationError(f"option 'image': {self.image!r} is not a valid image name")
        if not _DNS1123.match(self.namespace) or len(self.namespace) > 63:
            raise ConfigurationError(
                f"option 'namespace': {self.namespace!r} is not a valid namespace name"
            )
        from ..envsync import EnvSpec

        if not isinstance(self.env, EnvSpec) and self.env not in ("sync", "off"):
            raise ConfigurationError(
                f"option 'env' of the kubernetes transport must be 'sync', 'off' or an "
                f"EnvSpec, got {self.env!r}"
            )
        if isinstance(self.cache_volume, str):
            if not _DNS1123.match(self.cache_volume):
                raise ConfigurationError(
                    f"option 'cache_volume': {self.cache_volume!r} is not a valid claim name"
                )
        elif self.cache_volume is not None and (
            not isinstance(self.cache_volume, dict) or len(self.cache_volume) != 1
        ):
            raise ConfigurationError(
                "option 'cache_volume' must be a PersistentVolumeClaim name or one volume "
                f"source such as {{'hostPath': {{'path': ...}}}}, got {self.cache_volume!r}"
            )
        if self.bucket is not None:
            parse_bucket(self.bucket)
        elif self.bucket_endpoint_url or self.bucket_region or self.bucket_profile:
            raise ConfigurationError(
                "options 'bucket_endpoint_url', 'bucket_region' and 'bucket_profile' need "
                "option 'bucket'"
            )

    @staticmethod
    def convert_resources(value: Any) -> Resources:
        """A :class:`Resources`, or a table of its fields (``cores``/``queue`` accepted)."""
        return Resources.coerce(value)


@dataclasses.dataclass(eq=False)
class _K8sJob:
    """What the transport tracks of one submitted JobSpec."""

    handle: JobHandle
    #: Task index -> Kubernetes Job name.
    names: dict[int, str]
    #: Task index -> nonce of its result block.
    nonces: dict[int, str]
    cancelled: set[int] = dataclasses.field(default_factory=set)
    #: Task -> final status once it is known (and, on success, its outcomes read).
    final: dict[int, TaskStatus] = dataclasses.field(default_factory=dict)
    outcomes: dict[int, bytes] = dataclasses.field(default_factory=dict)
    #: Task -> the log (or its tail) of the pod that ended it, for error messages.
    logs: dict[int, str] = dataclasses.field(default_factory=dict)
    #: Object keys in the bucket: every one this job may have (inputs and results), and the
    #: result key of each call.
    keys: list[str] = dataclasses.field(default_factory=list)
    result_keys: dict[int, str] = dataclasses.field(default_factory=dict)
    #: One Indexed Job for all tasks (pods told apart by their completion index).
    indexed: bool = False
    #: Task -> when its Job was first seen failed while its pod still looked alive.
    job_failed_at: dict[int, float] = dataclasses.field(default_factory=dict)


class _LogRotated(Exception):
    """A followed log, read again, does not start with what was read before."""


@dataclasses.dataclass(eq=False)
class _Follow:
    """The followed log of one running pod (live output)."""

    state: _K8sJob
    index: int
    follower: LogFollower
    task: asyncio.Task[None] | None = None
    #: The stream broke: the pod's results and output wait for its end (as unfollowed).
    failed: bool = False


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base`` recursively (dicts merged, everything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _memory_quantity(resources: Resources) -> str | None:
    megabytes = resources.memory_megabytes()
    return f"{megabytes}Mi" if megabytes else None


def _cloudpickle_zip() -> bytes:
    """cloudpickle's own package as a zip, for images that lack it (it is pure Python)."""
    import io
    import zipfile

    import cloudpickle

    root = Path(cloudpickle.__file__).resolve().parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*.py")):
            archive.write(path, str(Path("cloudpickle") / path.relative_to(root)))
    return buffer.getvalue()


class KubernetesTransport(Transport):
    """Runs each array task as a Kubernetes Job (see the module docstring)."""

    name = "kubernetes"
    Options: ClassVar[type[Any]] = KubernetesOptions
    poll_interval = (0.5, 5.0)
    coalesce_window = 0.05
    max_tasks_per_job = 1000
    #: With one Job per task there is no native throttle (the core admits only what fits);
    #: where Indexed Jobs with per-index back-off exist, ``open`` turns it on (parallelism).
    supports_throttle = False
    #: Indexed Jobs need ``backoffLimitPerIndex`` (on by default from 1.29): without it one
    #: failed index fails the whole Job and kills its siblings' pods.
    INDEXED_SINCE = (1, 29)

    options: KubernetesOptions

    def __init__(self, options: KubernetesOptions, *, max_workers: int) -> None:
        super().__init__(options, max_workers=max_workers)
        self.session = uuid.uuid4().hex[:12]
        self._client: Any = None
        self._api: Any = None
        self._batch: Any = None
        self._core: Any = None
        self._jobs: dict[str, _K8sJob] = {}
        #: Kubernetes Job name -> (owner, task index).
        self._by_name: dict[str, tuple[_K8sJob, int]] = {}
        #: What the watches saw: name -> object (raw JSON).
        self._k8s_jobs: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._changed = anyio.Event()
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._watch_error: BaseException | None = None
        self._server_version: tuple[int, int] = (0, 0)
        self._extra_files: dict[str, bytes] = {}
        self._extra_path = ""
        self._bucket: Bucket | None = None
        #: Pod name -> its followed log (live output).
        self._follows: dict[str, _Follow] = {}

    @classmethod
    def default_max_workers(cls, options: Any) -> int:
        """Pods at once when the user says nothing."""
        return 8

    def default_chunksize(self, n_calls: int) -> int:
        """About four tasks per worker slot: a pod costs little next to a batch job, and
        smaller tasks balance uneven calls and leave calls that have not started yet
        cancellable (a started task's calls all count as running)."""
        return max(1, math.ceil(n_calls / (4 * max(1, self.max_workers))))

    @property
    def describe(self) -> str:
        """``kubernetes namespace default``."""
        return f"kubernetes namespace {self.options.namespace}"

    # --- connection -------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the kubeconfig, check the namespace and the RBAC verbs the transport needs,
        start the session heartbeat and the two watches."""
        k8s = _import_client()
        self._api = k8s
        self._client = await _make_client(k8s, self.options.kubeconfig, self.options.context)
        self._core = k8s.client.CoreV1Api(self._client)
        self._batch = k8s.client.BatchV1Api(self._client)
        try:
            if self.options.bucket is not None:
                bucket = Bucket(self.options.bucket,
                                endpoint_url=self.options.bucket_endpoint_url,
                                region=self.options.bucket_region,
                                profile=self.options.bucket_profile)
                await bucket.open()
                self._bucket = bucket
            await self._check_access()
            self.supports_throttle = self._server_version >= self.INDEXED_SINCE
            await self._heartbeat()
        except BaseException:
            await self._client.close()
            await self._close_bucket()
            raise
        loop = asyncio.get_running_loop()
        self._watch_tasks = [
            loop.create_task(self._watch("jobs")),
            loop.create_task(self._watch("pods")),
            loop.create_task(self._heartbeat_loop()),
        ]

    async def _check_access(self) -> None:
        ns = self.options.namespace
        k8s = self._api
        try:
            version = await self._raw(k8s.client.VersionApi(self._client).get_code)
            self._server_version = (
                int(re.sub(r"\D", "", str(version.get("major"))) or 0),
                int(re.sub(r"\D", "", str(version.get("minor"))) or 0),
            )
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"cannot reach the Kubernetes API server: {exc!r}") from exc
        verbs = [
            ("", "namespaces", "get", None), ("batch", "jobs", "create", ns),
            ("batch", "jobs", "watch", ns), ("batch", "jobs", "delete", ns),
            ("", "pods", "watch", ns), ("", "pods", "get", ns), ("", "pods/log", "get", ns),
            ("", "secrets", "create", ns), ("", "secrets", "patch", ns),
            ("", "configmaps", "create", ns),
        ]
        denied: list[str] = []
        authorization = k8s.client.AuthorizationV1Api(self._client)

        async def review(group: str, resource: str, verb: str, namespace: str | None) -> None:
            subresource = ""
            if "/" in resource:
                resource, subresource = resource.split("/", 1)
            body = {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {
                    "group": group, "resource": resource, "verb": verb,
                    "namespace": namespace, "subresource": subresource or None,
                }},
            }
            answer = await self._raw(authorization.create_self_subject_access_review, body)
            if not (answer.get("status") or {}).get("allowed") and namespace is not None:
                denied.append(f"{verb} {resource}/{subresource}" if subresource
                              else f"{verb} {resource}")

        # One round trip's latency for all of them.
        async with anyio.create_task_group() as tg:
            for group, resource, verb, namespace in verbs:
                tg.start_soon(review, group, resource, verb, namespace)
        denied.sort()
        if denied:
            raise ConfigurationError(
                f"the Kubernetes credentials may not {', '.join(denied)} in namespace {ns!r}; "
                "grant them to the user or service account (Role + RoleBinding)"
            )
        try:
            await self._raw(self._core.read_namespace, ns)
        except _ApiStatus as exc:
            if exc.status == 404:
                raise ConfigurationError(
                    f"the Kubernetes namespace {ns!r} does not exist"
                ) from None
            if exc.status != 403:  # may not read namespaces: the first create will tell
                raise

    async def close(self) -> None:
        """Stop the watches and delete every object of this session (bounded in time)."""
        for task in self._watch_tasks:
            task.cancel()
        for task in self._watch_tasks:
            try:
                await task
            except BaseException:
                pass
        self._watch_tasks = []
        await self._stop_follows(list(self._follows))
        if self._client is None:
            await self._close_bucket()
            return
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await _delete_session(self._core, self._batch, self.options.namespace,
                                      f"{SESSION_LABEL}={self.session}")
        except Exception as exc:
            log.warning("kubernetes: cleaning up session %s failed: %r", self.session, exc)
        finally:
            await self._client.close()
            self._client = None
            await self._close_bucket()

    async def _close_bucket(self) -> None:
        bucket, self._bucket = self._bucket, None
        if bucket is None:
            return
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await bucket.delete_prefix(bucket.key(self.session, ""))
        except Exception as exc:
            log.warning("kubernetes: deleting the bucket objects of session %s failed: %r",
                        self.session, exc)
        finally:
            await bucket.close()

    # --- API helpers ------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried on 429/5xx (honouring Retry-After) and on dropped
        connections; other API errors become :class:`_ApiStatus`."""
        return await _call(self._api, fn, *args, **kwargs)

    async def _raw(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """The JSON the API returned for ``fn(...)`` (without kubernetes-asyncio's models)."""
        return await _raw(self._api, fn, *args, **kwargs)

    # --- environment ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """With ``env="sync"``: run one probe pod per image to learn its Python; a different
        major.minor is an error before anything is submitted; ship cloudpickle if missing."""
        self._extra_files = {
            "worker.py": Path(worker.__file__).read_bytes(),
            "entry.py": Path(k8s_entry.__file__).read_bytes(),
        }
        if self.options.env == "off":
            return
        probe = await self._probe()
        wanted = tuple(sys.version_info[:2])
        remote = tuple(probe.get("version", ())[:2])
        if remote != wanted:
            raise RemoteEnvironmentError(
                f"the image {self.options.image!r} runs Python "
                f"{'.'.join(map(str, remote)) or '?'} ({self.options.python}) but this client "
                f"runs {wanted[0]}.{wanted[1]}; cloudpickle needs the same major.minor: use an "
                f"image with Python {wanted[0]}.{wanted[1]} (e.g. python:{wanted[0]}."
                f"{wanted[1]}-slim) or point 'python' at one"
            )
        if "cloudpickle" not in probe.get("packages", {}):
            self._extra_files["cloudpickle.zip"] = _cloudpickle_zip()
            self._extra_path = "cloudpickle.zip"
        try:
            install = _environment_difference(self.options.env, probe, self.options.image)
        except RemoteEnvironmentError:
            if not probe.get("cached"):
                raise
            # The image may have gained what it lacked since the cached probe: ask it again
            # before refusing.
            probe = await self._probe(use_cache=False)
            install = _environment_difference(self.options.env, probe, self.options.image)
        if install is not None:
            if install["packages"] and not probe.get("uv") and self._bucket is not None:
                install["uv"] = await self._ship_uv(probe)
            self._extra_files["env.json"] = json.dumps(install).encode()

    async def _ship_uv(self, probe: Mapping[str, Any]) -> dict[str, Any] | None:
        """The image has no uv: upload this machine's uv binary (when it can run there) to the
        bucket, for pods to download with a presigned GET; None when it cannot run there
        (the pods then try ``pip install uv``)."""
        import platform

        from ..envsync import ship

        binary = ship.local_uv_executable()
        if (binary is None or sys.platform != "linux" or probe.get("system") != "Linux"
                or probe.get("machine") != platform.machine() or self._bucket is None):
            return None
        data = await anyio.Path(binary).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        key = self._bucket.key(self.session, f"uv-{sha256[:16]}")
        await self._bucket.put(key, data)
        return {"url": await self._bucket.presign_get(key), "bytes": len(data), "sha256": sha256}

    async def _probe(self, *, use_cache: bool = True) -> dict[str, Any]:
        """What the image's interpreter is and has (version, packages, markers, uv), cached
        per image and interpreter for ``PROBE_TTL`` seconds: a tag can be rebuilt, so the
        pods check the plan made from it against what they really have (``k8s_entry``)."""
        cache = _probe_cache_path(self.options.image, self.options.python)
        if use_cache:
            try:
                cached: dict[str, Any] = json.loads(cache.read_text())
            except (OSError, ValueError):
                pass
            else:
                age = time.time() - float(cached.get("probed_at", 0))
                if 0 <= age < PROBE_TTL:
                    return {**cached, "cached": True}
        from ..envsync import _probe as probe_script

        config = {"uv_candidates": ["uv", "-m uv"], "min_uv": "0.4",
                  "want": "{}.{}".format(*sys.version_info[:2])}
        script = Path(probe_script.__file__).read_text()
        name = f"rf-probe-{self.session}"
        body = self._job_body(name, {"app.kubernetes.io/component": "probe"},
                              [self.options.python, "-c", script, json.dumps(config)],
                              env=[], volumes=False,
                              resources=Resources())
        await self._raw(self._batch.create_namespaced_job, self.options.namespace, body)
        try:
            deadline = time.monotonic() + self.options.start_grace + 60
            while time.monotonic() < deadline:
                pods = [p for p in self._pods.values()
                        if (p.get("metadata") or {}).get("labels", {}).get("job-name") == name]
                for pod in pods:
                    status = pod_status(pod, now=_now(), grace=self.options.start_grace)
                    if status.state is TaskState.COMPLETED:
                        text = await self._pod_log(pod["metadata"]["name"])
                        for line in text.splitlines():
                            if line.startswith(probe_script.MARK):
                                result: dict[str, Any] = json.loads(
                                    line[len(probe_script.MARK):])
                                _write_cache(cache, {**result, "probed_at": time.time()})
                                return result
                        raise TransportError(f"the image probe printed no result: {text[-500:]}")
                    if status.state.terminal:
                        tail = await self._pod_log(pod["metadata"]["name"], tail=20)
                        raise SubmissionError(
                            f"the image {self.options.image!r} cannot run "
                            f"{self.options.python!r}: {status.raw_state}\n{tail}"
                        )
                with anyio.move_on_after(1.0):
                    await self._wait_changed()
            raise TransportError(f"the probe pod of image {self.options.image!r} did not finish")
        finally:
            try:
                await self._raw(self._batch.delete_namespaced_job, name, self.options.namespace,
                                propagation_policy="Background")
            except Exception:
                pass

    # --- submission -------------------------------------------------------------------------

    def _job_body(
        self, name: str, labels: Mapping[str, str], command: list[str], *,
        env: list[dict[str, Any]], volumes: bool, resources: Resources,
        secret: str | None = None, deadline: int | None = None,
    ) -> dict[str, Any]:
        opts = self.options
        all_labels = {MANAGED_BY: MANAGED_BY_VALUE, SESSION_LABEL: self.session, **labels}
        limits: dict[str, str] = {}
        requests: dict[str, str] = {}
        if resources.cpus:
            requests["cpu"] = limits["cpu"] = str(resources.cpus)
        memory = _memory_quantity(resources)
        if memory:
            requests["memory"] = limits["memory"] = memory
        if resources.gpus:
            limits["nvidia.com/gpu"] = str(resources.gpus)
        container: dict[str, Any] = {
            "name": CONTAINER, "image": opts.image, "command": command, "env": env,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if limits:
            container["resources"] = {"limits": limits, "requests": requests}
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if volumes and secret:
            container["volumeMounts"] = [
                {"name": "payload", "mountPath": PAYLOAD_DIR, "readOnly": True}
            ]
            pod["volumes"] = [{"name": "payload", "secret": {"secretName": secret}}]
            cache = opts.cache_volume
            if cache is not None and "env.json" in self._extra_files:
                source = ({"persistentVolumeClaim": {"claimName": cache}}
                          if isinstance(cache, str) else dict(cache))
                pod["volumes"].append({"name": "rf-cache", **source})
                container["volumeMounts"].append({"name": "rf-cache", "mountPath": CACHE_DIR})
                env.append({"name": "RF_ENV_CACHE", "value": CACHE_DIR})
        if opts.service_account:
            pod["serviceAccountName"] = opts.service_account
        if opts.node_selector:
            pod["nodeSelector"] = dict(opts.node_selector)
        if opts.tolerations:
            pod["tolerations"] = list(opts.tolerations)
        if opts.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": s} for s in opts.image_pull_secrets]
        if opts.pod_overrides:
            pod = _merge(pod, opts.pod_overrides)
        spec: dict[str, Any] = {
            # A failed pod is never retried: it would run the user's calls a second time.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": opts.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": all_labels}, "spec": pod},
        }
        if deadline:
            spec["activeDeadlineSeconds"] = deadline
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": all_labels}, "spec": spec,
        }

    async def submit(self, job: JobSpec) -> JobHandle:
        """Create the payload Secret, one Job per task, then make the Jobs own the Secret."""
        ns = self.options.namespace
        data = dict(self._extra_files)
        if job.code is not None:
            data["code.zip"] = job.code.data
        inputs = {f"task-{task.index}.in": task.payload for task in job.tasks}
        bucket = self._bucket
        manifests: dict[int, dict[str, Any]] = {task.index: {} for task in job.tasks}
        result_keys: dict[int, str] = {}
        if bucket is not None:
            # Any call may return more than a pod log carries: a PUT URL for each (signed
            # locally, no round trip), used by the pod only for an outcome over the limit.
            for task in job.tasks:
                urls: dict[str, str] = {}
                for call in task.call_indices:
                    result_keys[call] = bucket.key(self.session, job.name, f"out-{call}")
                    urls[str(call)] = await bucket.presign_put(result_keys[call])
                manifests[task.index]["results"] = urls

        def manifest_files() -> dict[str, bytes]:
            return {f"task-{i}.json": json.dumps(m).encode() for i, m in manifests.items() if m}

        size = secret_size({**data, **inputs, **manifest_files()})
        keys = list(result_keys.values())
        # Secret data travels base64-encoded: 4/3 of the raw size in the request body.
        if size > MAX_SECRET_BYTES and bucket is None:
            raise SubmissionError(
                f"job {job.name}: its payload is {size / 1024:.0f} KiB, over the "
                f"{MAX_SECRET_BYTES // 1024} KiB that fit in a Kubernetes Secret (the API's "
                "object limit is 1 MiB); pass smaller arguments (or fewer calls per task: "
                "chunksize), or give the executor a bucket='s3://name/prefix' for large work"
            )
        if size > MAX_SECRET_BYTES:
            assert bucket is not None
            in_keys = {task.index: bucket.key(self.session, job.name, f"task-{task.index}.in")
                       for task in job.tasks}
            keys += in_keys.values()
            try:
                async with anyio.create_task_group() as tg:
                    for task in job.tasks:
                        tg.start_soon(bucket.put, in_keys[task.index], task.payload)
                for task in job.tasks:
                    manifests[task.index]["input"] = {
                        "url": await bucket.presign_get(in_keys[task.index]),
                        "bytes": len(task.payload),
                        "sha256": hashlib.sha256(task.payload).hexdigest(),
                    }
            except Exception as exc:
                await self._delete_keys(keys)
                raise TransportError(f"job {job.name}: uploading its payload to the "
                                     f"bucket failed: {exc}") from exc
        else:
            data.update(inputs)
        manifests_here = manifest_files()
        if bucket is not None and secret_size({**data, **manifests_here}) > MAX_SECRET_BYTES:
            # Many calls: their result URLs go to the bucket too, a GET URL each task.
            try:
                for filename, blob in list(manifests_here.items()):
                    key = bucket.key(self.session, job.name, filename)
                    keys.append(key)
                    await bucket.put(key, blob)
                    manifests_here[filename] = json.dumps({"manifest": {
                        "url": await bucket.presign_get(key), "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest(),
                    }}).encode()
            except Exception as exc:
                await self._delete_keys(keys)
                raise TransportError(f"job {job.name}: uploading its result URLs to the "
                                     f"bucket failed: {exc}") from exc
        data.update(manifests_here)
        size = secret_size(data)
        if size > MAX_SECRET_BYTES:
            await self._delete_keys(keys)
            raise SubmissionError(
                f"job {job.name}: even with its inputs in the bucket, its Secret is "
                f"{size / 1024:.0f} KiB (the code, the worker and a URL per task), over the "
                f"{MAX_SECRET_BYTES // 1024} KiB a Secret holds; ship less code"
            )
        extra_path = [p for p in (self._extra_path, "code.zip" if job.code else "") if p]
        items = [{"key": key, "path": key} for key in data]
        if job.code is not None:
            # The worker looks for the caller's code in code/<name> beside itself.
            items.append({"key": "code.zip", "path": f"{worker.CODE_DIR}/{job.code.name}"})
        labels = {MANAGED_BY: MANAGED_BY_VALUE, SESSION_LABEL: self.session, JOB_LABEL: job.name}
        secret_name = job.name
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name, "labels": labels},
            "data": {k: _b64(v) for k, v in data.items()},
        }
        await self._created(self._core.create_namespaced_secret, ns, secret, what="Secret")
        indexed = self.supports_throttle and len(job.tasks) > 1
        state = _K8sJob(JobHandle(job.name, job, location=job.name), names={}, nonces={},
                        indexed=indexed, keys=keys, result_keys=result_keys)
        self._jobs[job.name] = state
        deadline = job.resources.walltime_seconds()
        uids: dict[str, str] = {}

        async def create(name: str, indices: list[int]) -> None:
            # The nonce leaves the environment before user code runs: one per Job suffices.
            nonce = secrets.token_hex(16)
            for index in indices:
                state.names[index] = name
                state.nonces[index] = nonce
                self._by_name[name] = (state, index)
            env = [
                {"name": "RF_NONCE", "value": nonce},
                {"name": "RF_PAYLOAD_DIR", "value": PAYLOAD_DIR},
                {"name": "RF_EXTRA_PATH", "value": os.pathsep.join(extra_path)},
                {"name": "PYTHONUNBUFFERED", "value": "1"},
            ]
            labels = {JOB_LABEL: job.name}
            if not indexed:
                env.append({"name": "RF_TASK", "value": str(indices[0])})
                labels[TASK_LABEL] = str(indices[0])
            body = self._job_body(
                name, labels, [self.options.python, f"{PAYLOAD_DIR}/entry.py"], env=env,
                volumes=True, resources=job.resources, secret=secret_name, deadline=deadline,
            )
            body["spec"]["template"]["spec"]["volumes"][0]["secret"]["items"] = items
            if indexed:
                spec = body["spec"]
                del spec["backoffLimit"]  # the per-index limit below is what counts
                spec.update(completionMode="Indexed", completions=len(indices),
                            parallelism=min(len(indices), job.max_concurrent or len(indices)),
                            backoffLimitPerIndex=0)
            created = await self._created(self._batch.create_namespaced_job, ns, body,
                                          what="Job")
            uids[name] = created["metadata"]["uid"]

        try:
            async with anyio.create_task_group() as tg:
                if indexed:
                    tg.start_soon(create, job.name, [task.index for task in job.tasks])
                else:
                    for task in job.tasks:
                        name = f"{job.name}-{task.index}" if len(job.tasks) > 1 else job.name
                        tg.start_soon(create, name, [task.index])
        except BaseException:
            # All or nothing: what was created goes again, so nothing runs unaccounted for.
            with anyio.CancelScope(shield=True):
                await self._delete_jobs(state)
                await self._ignore_missing(self._core.delete_namespaced_secret, secret_name, ns)
                await self._delete_keys(keys)
            self._forget(state)
            raise
        owners = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
             "blockOwnerDeletion": False}
            for name, uid in uids.items()
        ]
        await self._raw(self._core.patch_namespaced_secret, secret_name, ns,
                        {"metadata": {"ownerReferences": owners}})
        return state.handle

    async def _created(
        self, fn: Callable[..., Awaitable[Any]], ns: str, body: dict[str, Any], *, what: str
    ) -> dict[str, Any]:
        """Create an object; a refusal (4xx) becomes a SubmissionError with the API's words.
        A retried create that finds its own object (409 after a lost reply) is a success."""
        try:
            created: dict[str, Any] = await self._raw(fn, ns, body)
            return created
        except _ApiStatus as exc:
            if exc.status == 409:
                read = getattr(
                    self._batch if what == "Job" else self._core,
                    "read_namespaced_job" if what == "Job" else "read_namespaced_secret",
                )
                existing: dict[str, Any] = await self._raw(read, body["metadata"]["name"], ns)
                labels = (existing.get("metadata") or {}).get("labels") or {}
                if labels.get(SESSION_LABEL) == self.session:
                    return existing
            if exc.status == 404:
                raise ConfigurationError(
                    f"the Kubernetes namespace {ns!r} does not exist ({exc.message})"
                ) from None
            if exc.status == 403:
                raise ConfigurationError(
                    f"the Kubernetes credentials may not create {what}s in namespace "
                    f"{ns!r}: {exc.message}"
                ) from None
            raise SubmissionError(
                f"the Kubernetes API refused the {what} {body['metadata']['name']}: "
                f"{exc.message}"
            ) from None

    # --- watching ---------------------------------------------------------------------------

    async def _watch(self, kind: str) -> None:
        """Keep ``self._k8s_jobs`` or ``self._pods`` equal to the server's view: list, then
        watch from the list's resourceVersion; after a drop resume from the last version
        seen, after 410 Gone (history compacted) list again. Forever, until cancelled."""
        ns = self.options.namespace
        selector = f"{SESSION_LABEL}={self.session}"
        if kind == "jobs":
            lister, store = self._batch.list_namespaced_job, self._k8s_jobs
        else:
            lister, store = self._core.list_namespaced_pod, self._pods
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    listed = await self._raw(lister, ns, label_selector=selector)
                    store.clear()
                    for item in listed.get("items") or []:
                        store[item["metadata"]["name"]] = item
                    version = listed["metadata"]["resourceVersion"]
                    self._notify()
                response = await _call(
                    self._api, lister, ns, label_selector=selector, watch=True,
                    resource_version=version, timeout_seconds=240,
                    allow_watch_bookmarks=True, _preload_content=False,
                )
                try:
                    async for line in _lines(response):
                        event = json.loads(line)
                        kind_of, obj = event.get("type"), event.get("object") or {}
                        if kind_of == "ERROR":
                            if obj.get("code") == 410:
                                version = None  # too old: list again
                                break
                            raise TransportError(f"watch error: {obj.get('message')}")
                        meta = obj.get("metadata") or {}
                        version = meta.get("resourceVersion") or version
                        if kind_of == "BOOKMARK":
                            continue
                        if kind_of == "DELETED":
                            store.pop(str(meta.get("name")), None)
                        else:
                            store[meta["name"]] = obj
                        self._notify()
                        failures = 0
                finally:
                    response.release()
            except asyncio.CancelledError:
                raise
            except _ApiStatus as exc:
                if exc.status == 410:
                    version = None
                    continue
                failures += 1
                log.warning("kubernetes: the %s watch failed (%d): %s", kind, failures, exc)
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
            except Exception as exc:
                failures += 1
                log.warning("kubernetes: the %s watch dropped (%d): %r", kind, failures, exc)
                await asyncio.sleep(min(10.0, 0.2 * 2 ** min(failures, 5)))
            if failures >= 30:
                self._watch_error = TransportError(
                    f"the {kind} watch of {self.describe} keeps failing"
                )
                self._notify()
                return

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_changed(self) -> None:
        await self._changed.wait()
        self._changed = anyio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        """Return when a watch saw something (or after ``timeout``)."""
        with anyio.move_on_after(timeout):
            await self._wait_changed()

    async def _heartbeat(self) -> None:
        """Create or refresh this session's ConfigMap (what :func:`sweep` checks)."""
        ns = self.options.namespace
        name = f"rf-session-{self.session}"
        stamp = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {MANAGED_BY: MANAGED_BY_VALUE,
                                                  SESSION_LABEL: self.session},
                         "annotations": {HEARTBEAT_ANNOTATION: stamp}},
            "data": {"host": os.uname().nodename, "pid": str(os.getpid())},
        }
        try:
            await self._raw(self._core.patch_namespaced_config_map, name, ns,
                            {"metadata": {"annotations": {HEARTBEAT_ANNOTATION: stamp}}})
        except _ApiStatus as exc:
            if exc.status != 404:
                raise
            await self._created(self._core.create_namespaced_config_map, ns, body,
                                what="ConfigMap")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._heartbeat()
            except Exception as exc:
                log.warning("kubernetes: session heartbeat failed: %r", exc)

    # --- polling ----------------------------------------------------------------------------

    def _pods_of(self, name: str, index: int | None = None) -> list[dict[str, Any]]:
        """The pods of Job ``name`` (of one completion index of an Indexed Job), oldest first."""
        pods = [p for p in self._pods.values()
                if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == name
                and (index is None or ((p.get("metadata") or {}).get("annotations") or {})
                     .get(COMPLETION_INDEX) == str(index))]
        pods.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
        return pods

    def _task_status(
        self, state: _K8sJob, index: int
    ) -> tuple[TaskStatus, dict[str, Any] | None]:
        """The state of one task and the pod that decides it."""
        name = state.names[index]
        pods = self._pods_of(name, index if state.indexed else None)
        now = _now()
        grace = self.options.start_grace
        for pod in pods:
            if pod_status(pod, now=now, grace=grace).state is TaskState.COMPLETED:
                return TaskStatus(TaskState.COMPLETED, "Succeeded", exit_code=0), pod
        last = pods[-1] if pods else None
        status = pod_status(last, now=now, grace=grace) if last else TaskStatus(
            TaskState.PENDING, "no pod yet"
        )
        k8s_job = self._k8s_jobs.get(name)
        failed = job_failure(k8s_job) if k8s_job else None
        if failed is not None and not status.state.terminal:
            if last is not None:
                # The Job's and the pod's events come on separate watches, in either order:
                # give the pod a moment to say how it ended (Evicted, OOMKilled, its exit
                # code), which says more than the Job's BackoffLimitExceeded.
                seen = state.job_failed_at.setdefault(index, time.monotonic())
                if time.monotonic() - seen < JOB_FAILURE_GRACE:
                    return status, last
            return failed, last
        return status, last

    async def poll(self, jobs: Sequence[JobHandle]) -> dict[JobHandle, JobStatus]:
        """The cached state of every task; a success's outcomes are read before it is
        reported terminal (the core's contract), a failure's log is kept for its error."""
        if self._watch_error is not None:
            raise self._watch_error
        result: dict[JobHandle, JobStatus] = {}
        reads: list[tuple[_K8sJob, int, dict[str, Any], TaskStatus]] = []
        progress: list[tuple[_K8sJob, int, dict[str, Any]]] = []
        for handle in jobs:
            state = self._jobs.get(handle.job_id)
            if state is None:
                continue
            for index in state.names:
                if index in state.final or index in state.cancelled:
                    continue
                status, pod = self._task_status(state, index)
                if status.state.terminal and pod is not None:
                    reads.append((state, index, pod, status))
                elif status.state.terminal:
                    state.final[index] = status
                elif pod is not None and status.state is TaskState.RUNNING:
                    follow = self._follow(state, index, pod)
                    if ((follow is None or follow.failed)
                            and len(handle.spec.tasks[index].call_indices) > 1):
                        progress.append((state, index, pod))
        if reads or progress:
            async with anyio.create_task_group() as tg:
                for state, index, pod, status in reads:
                    tg.start_soon(self._read_result, state, index, pod, status)
                for state, index, pod in progress:
                    tg.start_soon(self._read_progress, state, index, pod)
        for handle in jobs:
            state = self._jobs.get(handle.job_id)
            if state is None:
                continue
            tasks: dict[int, TaskStatus] = {}
            for index in state.names:
                if index in state.final:
                    tasks[index] = state.final[index]
                elif index in state.cancelled:
                    tasks[index] = TaskStatus(TaskState.CANCELLED, "deleted")
                else:
                    status = self._task_status(state, index)[0]
                    if status.state.terminal:
                        # It ended while the reads above were awaited: its outcomes are read
                        # next time; reporting it terminal now would lose them.
                        status = TaskStatus(TaskState.RUNNING, status.raw_state)
                    tasks[index] = status
            result[handle] = JobStatus(tasks, frozenset(state.outcomes))
        return result

    async def _read_result(
        self, state: _K8sJob, index: int, pod: dict[str, Any], status: TaskStatus
    ) -> None:
        """Read a finished pod's log: every call's outcome block (checked against the pod's
        termination receipt when it succeeded), what it printed, and on failure the tail."""
        name = pod["metadata"]["name"]
        follow = self._follows.get(name)
        await self._stop_follows([name])
        # What the followed log showed already (its whole lines) is not shown again.
        shown = follow.follower.settled if follow is not None else 0
        try:
            raw = await self._pod_log_bytes(name)
        except Exception as exc:
            raw = b""
            if status.state is TaskState.COMPLETED:
                status = TaskStatus(TaskState.FAILED, f"Succeeded, but its log is unreadable: "
                                    f"{exc}", exit_code=0)
        text = raw.decode("utf-8", errors="replace")
        receipt = parse_receipt(_termination_message(pod))
        if status.state is not TaskState.COMPLETED:
            receipt = None  # a crash leaves no receipt; the blocks before it still count
        spilled: dict[int, tuple[int, str]] = {}
        try:
            outcomes, printed, errors = parse_log(text, state.nonces[index], receipt, spilled)
        except FrameError as exc:
            outcomes, printed, errors = {}, text, ""
            if status.state is TaskState.COMPLETED:
                status = TaskStatus(TaskState.FAILED, f"Succeeded, but {exc}", exit_code=0)
        if spilled:
            try:
                outcomes.update(await self._fetch_spilled(state, spilled))
            except TransportError as exc:
                status = TaskStatus(TaskState.FAILED, f"{status.raw_state}, but a result in "
                                    f"the bucket is unusable: {exc}", exit_code=status.exit_code)
        self._keep(state, index, outcomes)
        if self._forwarding():
            printed_lines = LogFollower(state.nonces[index]).feed(raw, ended=True)[0]
            self._emit(state, [line for line in printed_lines if line.start >= shown])
        if status.state is not TaskState.COMPLETED:
            state.logs[index] = (errors + printed) if errors else printed
        state.final[index] = status

    async def _fetch_spilled(
        self, state: _K8sJob, spilled: Mapping[int, tuple[int, str]]
    ) -> dict[int, bytes]:
        """The outcomes the pod put in the bucket, each checked against the size and sha256 of
        its (checksummed) log entry, then deleted from the bucket."""
        bucket = self._bucket
        if bucket is None:
            raise TransportError("the pod put results in a bucket but the executor has none")
        fetched: dict[int, bytes] = {}
        errors: list[str] = []

        async def one(call: int, size: int, sha256: str) -> None:
            key = state.result_keys.get(call)
            try:
                if key is None:
                    raise TransportError(f"call {call} has no result URL of this job")
                fetched[call] = await bucket.fetch(key, size, sha256)
            except TransportError as exc:
                errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            for call, (size, sha256) in spilled.items():
                tg.start_soon(one, call, size, sha256)
        await self._delete_keys([state.result_keys[call] for call in fetched])
        if errors:
            raise TransportError("; ".join(errors))
        return fetched

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete bucket objects, best effort (close deletes the session's prefix anyway)."""
        if self._bucket is None or not keys:
            return
        try:
            with anyio.CancelScope(shield=True):
                await self._bucket.delete(list(keys))
        except Exception as exc:
            log.warning("kubernetes: deleting %d bucket objects failed: %r", len(keys), exc)

    async def _read_progress(self, state: _K8sJob, index: int, pod: dict[str, Any]) -> None:
        """The outcomes a running pod of a task of several calls has already written, so that
        they are handed out before the task ends (as result files are on batch schedulers)."""
        try:
            text = await self._pod_log(pod["metadata"]["name"])
            # Results in the bucket are fetched once, when the task ends.
            outcomes = parse_log(text, state.nonces[index], None, {})[0]
        except Exception as exc:
            log.debug("kubernetes: reading the progress of %s: %r", pod["metadata"]["name"],
                      exc)
            return
        self._keep(state, index, outcomes)

    @staticmethod
    def _keep(state: _K8sJob, index: int, outcomes: Mapping[int, bytes]) -> None:
        wanted = set(state.handle.spec.tasks[index].call_indices)
        state.outcomes.update({k: v for k, v in outcomes.items() if k in wanted})

    def _forwarding(self) -> bool:
        return self.options.forward_output and self.output.enabled

    def _emit(self, state: _K8sJob, printed: Sequence[Printed]) -> None:
        """Forward ``printed``, each run of lines of one stream and call in one piece."""
        run: list[str] = []
        for i, line in enumerate(printed):
            run.append(line.text)
            after = printed[i + 1] if i + 1 < len(printed) else None
            if after is None or (after.stream, after.call) != (line.stream, line.call):
                self.output.forward(line.stream, state.handle.job_id, line.call, "".join(run))
                run = []

    def _follow(self, state: _K8sJob, index: int, pod: dict[str, Any]) -> _Follow | None:
        """The followed log of running ``pod``, started now if live output wants it and
        fewer than :data:`MAX_LOG_STREAMS` are followed (None: not followed)."""
        name = pod["metadata"]["name"]
        follow = self._follows.get(name)
        if follow is not None or not (self.output.live and self._forwarding()):
            return follow
        if sum(1 for f in self._follows.values()
               if f.task is not None and not f.task.done()) >= MAX_LOG_STREAMS:
            return None
        follow = self._follows[name] = _Follow(state, index, LogFollower(state.nonces[index]))
        follow.task = asyncio.get_running_loop().create_task(self._follow_log(follow, name))
        return follow

    async def _follow_log(self, follow: _Follow, pod: str) -> None:
        """Forward what the pod's calls print as it reaches the log, and keep each result
        whose block arrives (checked as the end read checks them; spilled ones wait).

        A stream the server ends while the pod runs (a dropped connection, a proxy's or the
        kubelet's idle timeout on a long quiet call) is followed again: the new stream starts
        at the log's beginning, so the bytes already read are skipped, after checking they
        are the same (a rotated log is not: the end read then judges the whole log)."""
        read = 0  # bytes of the log fed to the follower
        digest = hashlib.sha256()  # of those bytes
        failures = 0  # streams in a row that brought nothing new
        while True:
            before = read
            try:
                response = await self._call(
                    self._core.read_namespaced_pod_log, pod, self.options.namespace,
                    container=CONTAINER, follow=True, _preload_content=False)
                try:
                    read = await self._read_stream(follow, response, read, digest)
                finally:
                    response.release()
            except asyncio.CancelledError:
                raise
            except _LogRotated:
                follow.failed = True
                log.debug("kubernetes: the log of %s changed under its stream", pod)
                return
            except Exception as exc:
                log.debug("kubernetes: following the log of %s: %r", pod, exc)
            failures = 0 if read > before else failures + 1
            phase = ((self._pods.get(pod) or {}).get("status") or {}).get("phase")
            if phase != "Running" or failures > FOLLOW_RETRIES:
                # The container ended (the end read shows the rest), or the log cannot be
                # followed: until the end, progress is read as unfollowed.
                follow.failed = True
                return
            await asyncio.sleep(min(0.5 * 2 ** failures, 10.0))

    async def _read_stream(
        self, follow: _Follow, response: Any, read: int, digest: Any
    ) -> int:
        """Feed one followed stream to the follower after skipping its first ``read`` bytes
        (checked against ``digest``, which is then updated); return the bytes read in all."""
        state, index = follow.state, follow.index
        skip, expected, seen = read, digest.digest(), hashlib.sha256()
        while True:
            chunk: bytes = await response.content.readany()
            if not chunk:
                return read
            if skip:
                head, chunk = chunk[:skip], chunk[skip:]
                seen.update(head)
                skip -= len(head)
                if skip == 0 and seen.digest() != expected:
                    raise _LogRotated
                if not chunk:
                    continue
            read += len(chunk)
            digest.update(chunk)
            printed, blocks = follow.follower.feed(chunk)
            self._emit(state, printed)
            kept = False
            for block in blocks:
                try:
                    self._keep(state, index, parse_log(block, state.nonces[index], None, {})[0])
                    kept = True
                except FrameError:
                    follow.failed = True  # the end read judges the whole log
            if kept:
                self._notify()

    async def _stop_follows(self, pods: Sequence[str]) -> None:
        """Stop following these pods' logs (what the stream has not shown yet, the end read
        shows)."""
        tasks = self._cancel_follows(pods)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _cancel_follows(self, pods: Sequence[str]) -> list[asyncio.Task[None]]:
        """Forget these pods' followed logs and cancel their tasks (returned, to await)."""
        tasks = []
        for name in pods:
            follow = self._follows.pop(name, None)
            if follow is not None and follow.task is not None:
                follow.task.cancel()
                tasks.append(follow.task)
        return tasks

    async def _pod_log(self, pod: str, *, tail: int | None = None) -> str:
        return (await self._pod_log_bytes(pod, tail=tail)).decode("utf-8", errors="replace")

    async def _pod_log_bytes(self, pod: str, *, tail: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"container": CONTAINER}
        if tail is not None:
            kwargs["tail_lines"] = tail
        response = await _call(self._api, self._core.read_namespaced_pod_log, pod,
                               self.options.namespace, _preload_content=False, **kwargs)
        try:
            data: bytes = await response.read()
        finally:
            response.release()
        return data

    async def fetch_outcomes(
        self, wanted: Mapping[JobHandle, Sequence[int]]
    ) -> dict[JobHandle, dict[int, bytes]]:
        """The outcomes ``poll`` already read from the pods' logs."""
        out: dict[JobHandle, dict[int, bytes]] = {}
        for handle, calls in wanted.items():
            state = self._jobs.get(handle.job_id)
            found = state.outcomes if state else {}
            out[handle] = {call: found[call] for call in calls if call in found}
        return out

    async def stderr_tail(self, job: JobHandle, task: int, *, lines: int = 20) -> str:
        """The tail of the failed pod's log (stdout and stderr are one stream)."""
        state = self._jobs.get(job.job_id)
        if state is None:
            return ""
        text = state.logs.get(task, "")
        return "\n".join(text.splitlines()[-lines:])

    async def raise_throttle(self, job: JobHandle, max_concurrent: int) -> bool:
        """Raise an Indexed Job's ``parallelism`` (the core granted it more slots)."""
        state = self._jobs.get(job.job_id)
        if state is None or not state.indexed:
            return False
        name = state.names[0]
        parallelism = min(max_concurrent, len(state.names))
        await self._raw(self._batch.patch_namespaced_job, name, self.options.namespace,
                        {"spec": {"parallelism": parallelism}})
        return True

    # --- cancellation and clean-up ----------------------------------------------------------

    async def cancel(self, job: JobHandle, tasks: Sequence[int] | None = None) -> None:
        """Delete the Jobs of the given tasks (their pods go with them)."""
        state = self._jobs.get(job.job_id)
        if state is None:
            return
        targets = set(state.names) if tasks is None else set(tasks)
        targets -= set(state.final)
        state.cancelled |= targets
        if state.indexed:
            # One Job holds every index: it goes once no task of it is wanted any more. A
            # cancelled index whose pod already started still runs; its result is dropped.
            if set(state.names) <= state.cancelled | set(state.final):
                await self._delete_jobs(state)
            return
        await self._delete_jobs(state, targets)

    async def _delete_jobs(self, state: _K8sJob, tasks: set[int] | None = None) -> None:
        names = sorted({name for index, name in state.names.items()
                        if tasks is None or index in tasks})
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(self._delete_job, name)

    async def _delete_job(self, name: str) -> None:
        await self._ignore_missing(self._batch.delete_namespaced_job, name,
                                   self.options.namespace, propagation_policy="Background")

    async def _ignore_missing(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                              **kwargs: Any) -> None:
        try:
            await self._raw(fn, *args, **kwargs)
        except _ApiStatus as exc:
            if exc.status != 404:
                raise TransportError(f"deleting {args[0]}: {exc.message}") from None

    def _forget(self, state: _K8sJob) -> None:
        # A cancelled task's pods: their output no longer matters.
        self._cancel_follows([name for name, follow in self._follows.items()
                              if follow.state is state])
        self._jobs.pop(state.handle.job_id, None)
        for name in state.names.values():
            self._by_name.pop(name, None)

    async def release(self, job: JobHandle) -> None:
        """Delete the job's Jobs now that their results are read (the Secret goes with them)."""
        state = self._jobs.get(job.job_id)
        if state is None:
            return
        self._forget(state)
        await self._delete_jobs(state)
        await self._delete_keys(state.keys)


# --- module-level helpers shared with sweep() -----------------------------------------------


class _ApiStatus(TransportError):
    """An API error status (4xx/5xx) that retrying did not cure, with the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    try:
        return str(json.loads(str(body)).get("message") or body)
    except Exception:
        return str(body or getattr(exc, "reason", exc))


def _retry_after(exc: Any, attempt: int) -> float:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        if value is not None:
            return float(min(30.0, max(0.0, float(value))))
    except ValueError:
        pass
    return float(min(10.0, 0.25 * 2.0 ** attempt))


async def _call(k8s: Any, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    api_exception = k8s.client.exceptions.ApiException
    import aiohttp

    for attempt in range(_API_ATTEMPTS):
        last = attempt == _API_ATTEMPTS - 1
        try:
            result = await fn(*args, **kwargs)
        except api_exception as exc:
            if exc.status in _RETRY_STATUSES and not last:
                await asyncio.sleep(_retry_after(exc, attempt))
                continue
            raise _ApiStatus(int(exc.status or 0), _api_message(exc)) from None
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            if not last:
                await asyncio.sleep(min(5.0, 0.25 * 2 ** attempt))
                continue
            raise TransportError(f"the Kubernetes API is unreachable: {exc!r}") from exc
        if kwargs.get("_preload_content") is False:
            status = getattr(result, "status", 200)
            if status in _RETRY_STATUSES and not last:
                await asyncio.sleep(_retry_after(result, attempt))
                result.release()  # type: ignore[attr-defined]
                continue
            if status >= 400:
                body = await result.text()  # type: ignore[attr-defined]
                result.release()  # type: ignore[attr-defined]
                try:
                    message = str(json.loads(body).get("message") or body)
                except ValueError:
                    message = body
                raise _ApiStatus(status, message)
        return result
    raise AssertionError("unreachable")


async def _raw(k8s: Any, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    response = await _call(k8s, fn, *args, _preload_content=False, **kwargs)
    try:
        body = await response.read()
    finally:
        response.release()
    return json.loads(body) if body else {}


async def _lines(response: Any) -> Any:
    """The lines of a streaming (watch) response."""
    while True:
        line = await response.content.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield line


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _termination_message(pod: Mapping[str, Any]) -> str | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    terminated = (statuses[0].get("state") or {}).get("terminated") or {}
    message = terminated.get("message")
    return message if isinstance(message, str) else None


def _probe_cache_path(image: str, python: str) -> Path:
    from platformdirs import user_cache_dir

    key = hashlib.sha256(f"{image}\0{python}".encode()).hexdigest()[:16]
    # v2: the full interpreter description (packages, markers, uv), not just the version.
    return Path(user_cache_dir("remote_futures")) / "k8s-probe-v2" / f"{key}.json"


def _environment_difference(
    env: Any, probe: Mapping[str, Any], image: str
) -> dict[str, Any] | None:
    """What pods must install over the image (None: nothing), from the local environment and
    the image's probe, with the envsync planning used for SSH hosts. The image's packages
    stay: the difference goes into a directory ahead of them on the path, keyed by a hash of
    what it holds (and the image), so a cache volume can keep it for the next pod."""
    from ..envsync import EnvSpec
    from ..envsync.plan import plan_install, wanted_set
    from ..envsync.snapshot import local_distributions

    spec = env if isinstance(env, EnvSpec) else EnvSpec(mode="sync")
    if spec.mode == "off":
        return None
    import importlib.metadata

    local = local_distributions()
    wanted = wanted_set(spec, local, cloudpickle_version=importlib.metadata.version("cloudpickle"))
    requires = {item.name: local[item.name].requires() for item in wanted.items
                if item.name in local}
    # The image is what the difference is installed over: the same version there is the same
    # distribution, whatever its source here (a checkout baked into the image, say).
    plan = plan_install(wanted, markers=probe.get("markers") or {},
                        remote_packages=probe.get("packages") or {}, requires=requires,
                        remote_is_target=True)
    for name, why in plan.skipped:
        log.info("kubernetes: %s is not installed in the pods: %s", name, why)
    packages = plan.packages
    # What the probe saw in the image at the wanted version, for the pods to check (the
    # probe may be older than the image): pins from an index, which a pod can install.
    satisfied = set(plan.satisfied)
    expected = [[item.name, item.version, item.requirement] for item in wanted.items
                if item.name in satisfied and item.version is not None
                and item.source.kind == "index"]
    if not packages and not expected:
        return None
    local_only = [item.name for item in packages
                  if item.source.kind == "ship"
                  or item.requirement.split(" @ ", 1)[-1].startswith("file:")]
    if local_only:
        raise RemoteEnvironmentError(
            f"the image {image!r} lacks {', '.join(sorted(local_only))}, installed here from "
            "local files that pods cannot reach: add them to the image, publish them to an "
            "index the pods can reach, or leave them out (EnvSpec(exclude=[...]))"
        )
    lines = [item.requirement for item in plan.install]  # index option lines included
    options = spec.uv_options()
    material = json.dumps({"image": image, "lines": sorted(lines), "uv": options,
                           "python": probe.get("executable")}, sort_keys=True)
    if packages:  # else the pods only check what the probe saw
        log.info("kubernetes: pods install %d distributions missing from the image: %s",
                 len(packages), ", ".join(item.name for item in packages))
    return {
        "key": hashlib.sha256(material.encode()).hexdigest()[:16],
        "options": [item.requirement for item in plan.install if item.origin == "option"],
        "packages": [[item.name, item.version, item.requirement] for item in packages],
        "expected": expected,
        "uv_options": options,
        "offline": spec.offline,
    }


def _write_cache(path: Path, value: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    except OSError:
        pass  # a cache only


async def _make_client(k8s: Any, kubeconfig: str | dict[str, Any] | None,
                       context: str | None) -> Any:
    """An ApiClient from a kubeconfig dict, a file, ``$KUBECONFIG`` or ``~/.kube/config``."""
    try:
        if isinstance(kubeconfig, dict):
            return await k8s.config.new_client_from_config_dict(kubeconfig, context=context)
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
            Path.home() / ".kube" / "config"
        )
        if not Path(path).expanduser().is_file():
            raise ConfigurationError(f"no kubeconfig at {path} (option 'kubeconfig')")
        configuration = k8s.client.Configuration()
        await k8s.config.load_kube_config(
            config_file=str(Path(path).expanduser()), context=context,
            client_configuration=configuration, persist_config=False,
        )
        return k8s.client.ApiClient(configuration)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"cannot load the kubeconfig: {exc}") from exc


async def _delete_session(core: Any, batch: Any, ns: str, selector: str) -> None:
    k8s = _import_client()
    for fn, kwargs in (
        (batch.delete_collection_namespaced_job, {"propagation_policy": "Background"}),
        (core.delete_collection_namespaced_pod, {"grace_period_seconds": 0}),
        (core.delete_collection_namespaced_secret, {}),
        (core.delete_collection_namespaced_config_map, {}),
    ):
        await _raw(k8s, fn, ns, label_selector=selector, **kwargs)


async def sweep(
    *, namespace: str = "default", kubeconfig: str | dict[str, Any] | None = None,
    context: str | None = None, older_than: float = 15 * 60, dry_run: bool = False,
) -> list[str]:
    """Delete what dead sessions left behind in ``namespace``; return the sessions swept.

    A session is dead when its heartbeat ConfigMap is older than ``older_than`` seconds, or
    missing while its objects are older than that. Live sessions are never touched.
    """
    k8s = _import_client()
    client = await _make_client(k8s, kubeconfig, context)
    try:
        core = k8s.client.CoreV1Api(client)
        batch = k8s.client.BatchV1Api(client)
        selector = f"{MANAGED_BY}={MANAGED_BY_VALUE}"
        now = _now()
        seen: dict[str, datetime.datetime] = {}
        beats: dict[str, datetime.datetime] = {}
        from .kubernetes_status import parse_time

        for fn in (batch.list_namespaced_job, core.list_namespaced_secret,
                   core.list_namespaced_config_map, core.list_namespaced_pod):
            listed = await _raw(k8s, fn, namespace, label_selector=selector)
            for item in listed.get("items") or []:
                meta = item.get("metadata") or {}
                session = (meta.get("labels") or {}).get(SESSION_LABEL)
                if not session:
                    continue
                created = parse_time(meta.get("creationTimestamp")) or now
                seen[session] = max(seen.get(session, created), created)
                beat = parse_time((meta.get("annotations") or {}).get(HEARTBEAT_ANNOTATION))
                if beat is not None:
                    beats[session] = beat
        dead = sorted(
            session for session, newest in seen.items()
            if (now - beats.get(session, newest)).total_seconds() > older_than
        )
        if not dry_run:
            for session in dead:
                await _delete_session(core, batch, namespace, f"{SESSION_LABEL}={session}")
        return dead
    finally:
        await client.close()


def sweep_sync(**kwargs: Any) -> list[str]:
    """:func:`sweep` for synchronous callers (the command line)."""
    return asyncio.run(sweep(**kwargs))
