"""Tier A: an in-test Kubernetes API server (aiohttp) for what a real one cannot stage on demand.

It speaks the REST surface the transport uses, with kubernetes-asyncio's quirks (``watch=True``
capitalised, ``_preload_content=False``), a global resourceVersion with an event history for
watches, label selectors, 404/409/422 Status bodies and the 1 MiB object limit. A tiny job
controller turns each Job into one pod; a fake kubelet runs the pod's command in a bubblewrap
sandbox (the Secret volume and ``/dev/termination-log`` bound at their real paths), exactly as
the testbed's kubelet does, unless the test scripts the pod's fate instead.

Faults a test can stage:
  * ``fail_next(method, path_regex, status, times, retry_after)``: 429/500 with Retry-After;
  * ``drop_watches()``: cut every open watch stream mid-flight;
  * ``compact()``: forget the event history, so a resumed watch gets ``410 Gone``;
  * ``fate[job_name_prefix] = "image_pull" | "evict" | "unschedulable" | "config_error"``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_OBJECT = 1024 * 1024


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": message, "code": code}
    return web.json_response(body, status=code)


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class FakeCluster:
    """The store, the watches, the job controller and the kubelet."""

    def __init__(self, *, minor: int = 29) -> None:
        self.minor = minor
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = itertools.count(100)
        self.last_rv = 99
        self.history: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.oldest = 0
        self.cond = asyncio.Condition()
        self.namespaces = {"default"}
        self.denied: set[tuple[str, str]] = set()  # (verb, resource)
        self.faults: list[dict[str, Any]] = []
        self.fate: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.watch_epoch = 0
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.root = Path(tempfile.mkdtemp(prefix="rf-fake-k8s-"))
        self.logs: dict[str, Path] = {}
        #: Every log read: (pod, followed).
        self.log_reads: list[tuple[str, bool]] = []
        #: A followed log ends after this many bytes though its pod still runs (as when the
        #: API server drops a long request); only the first ``follow_cuts`` streams of a pod
        #: when that is set (the later ones run to the end).
        self.follow_cut: int | None = None
        #: An evicted pod's Job is marked failed a second before the pod (see ``fate``).
        self.job_failed_first = False
        self.follow_cuts: int | None = None
        #: Streams after a pod's first lack the log's first this many bytes (as when the log
        #: was rotated in between: the kubelet serves the newest file only).
        self.follow_rotated: int = 0
        self._streams: dict[str, int] = {}
        self.max_parallel_seen: dict[str, int] = {}

    # --- fault staging --------------------------------------------------------------------

    def fail_next(self, method: str, path: str, status: int, *, times: int = 1,
                  retry_after: float | None = None) -> None:
        self.faults.append({"method": method, "path": re.compile(path), "status": status,
                            "times": times, "retry_after": retry_after})

    async def drop_watches(self) -> None:
        self.watch_epoch += 1
        async with self.cond:
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget the history, as etcd's compaction does; the revision moves on (other
        objects change meanwhile), so every version a client holds is now too old."""
        self.last_rv = next(self.rv)
        self.oldest = self.last_rv + 1
        self.history.clear()

    def count(self, method: str, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        return sum(1 for m, p in self.requests if m == method and pattern.search(p))

    # --- store ----------------------------------------------------------------------------

    async def put(self, kind: str, ns: str, obj: dict[str, Any], event: str) -> dict[str, Any]:
        rv = next(self.rv)
        self.last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        name = obj["metadata"]["name"]
        if event == "DELETED":
            self.objects.pop((kind, ns, name), None)
        else:
            self.objects[(kind, ns, name)] = obj
        self.history.append((rv, kind, ns, event, copy.deepcopy(obj)))
        async with self.cond:
            self.cond.notify_all()
        return obj

    async def create(self, kind: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        meta.setdefault("labels", {})
        if kind == "jobs":
            spec = obj["spec"]
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            uid_labels = {"controller-uid": meta["uid"], "job-name": meta["name"]}
            spec["selector"] = {"matchLabels": {"controller-uid": meta["uid"]}}
            tmeta = spec["template"].setdefault("metadata", {})
            tmeta["labels"] = {**tmeta.get("labels", {}), **uid_labels}
            obj["status"] = {}
        obj = await self.put(kind, ns, obj, "ADDED")
        if kind == "jobs":
            self._spawn(self._job_controller(ns, meta["name"]))
        return obj

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def delete(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, ns, name))
        if obj is None:
            return None
        await self.put(kind, ns, copy.deepcopy(obj), "DELETED")
        if kind == "pods":
            proc = self.procs.pop(obj["metadata"]["uid"], None)
            if proc is not None and proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        uid = obj["metadata"]["uid"]
        # Garbage collection: dependents whose every owner is gone.
        for (k, n, other), dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if n == ns and owners and all(
                o["uid"] == uid or not self._uid_alive(o["uid"]) for o in owners
            ):
                await self.delete(k, n, other)
        return obj

    def _uid_alive(self, uid: str) -> bool:
        return any(o["metadata"]["uid"] == uid for o in self.objects.values())

    # --- job controller and kubelet -------------------------------------------------------

    async def _job_controller(self, ns: str, name: str) -> None:
        job = self.objects[("jobs", ns, name)]
        spec = job["spec"]
        await self._set_job(ns, name, {"startTime": _now()})
        if spec.get("completionMode") != "Indexed":
            phase = await self._run_pod(ns, job, None)
            if phase is None:
                return
            ok = phase == "Succeeded"
        else:
            if self.minor < 21:
                raise AssertionError("an Indexed Job sent to a server that lacks them")
            limit = asyncio.Semaphore(int(spec.get("parallelism") or 1))
            self.max_parallel_seen[name] = 0
            running = 0

            async def one(index: int) -> str | None:
                nonlocal running
                async with limit:
                    running += 1
                    self.max_parallel_seen[name] = max(self.max_parallel_seen[name], running)
                    try:
                        return await self._run_pod(ns, job, index)
                    finally:
                        running -= 1

            phases = await asyncio.gather(*(one(i) for i in range(int(spec["completions"]))))
            if any(p is None for p in phases):
                return
            ok = all(p == "Succeeded" for p in phases)
        if ok:
            await self._set_job(ns, name, {"active": 0, "succeeded": 1, "completionTime": _now(),
                                           "conditions": [{"type": "Complete",
                                                           "status": "True"}]})
        else:
            await self._set_job(ns, name, {"active": 0, "failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]})

    async def _run_pod(self, ns: str, job: dict[str, Any], index: int | None) -> str | None:
        name = job["metadata"]["name"]
        template = copy.deepcopy(job["spec"]["template"])
        meta: dict[str, Any] = {
            "name": f"{name}-{'' if index is None else f'{index}-'}{secrets.token_hex(3)[:5]}",
            "labels": template["metadata"]["labels"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                 "uid": job["metadata"]["uid"], "controller": True}]}
        if index is not None:
            meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
            for container in template["spec"]["containers"]:
                container.setdefault("env", []).append(
                    {"name": "JOB_COMPLETION_INDEX", "value": str(index)})
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": template["spec"], "status": {"phase": "Pending"}}
        pod = await self.create("pods", ns, pod)
        fate = next((f for prefix, f in self.fate.items() if name.startswith(prefix)), "run")
        if index is not None and fate.startswith("index-"):
            fate = "evict" if fate == f"index-{index}-evict" else "run"
        return await self._kubelet(ns, pod, fate)

    async def _set_job(self, ns: str, name: str, status: dict[str, Any]) -> None:
        job = self.objects.get(("jobs", ns, name))
        if job is not None:
            job = copy.deepcopy(job)
            job["status"] = {**job.get("status", {}), **status}
            await self.put("jobs", ns, job, "MODIFIED")

    async def _set_pod(self, ns: str, name: str, status: dict[str, Any]) -> bool:
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return False
        pod = copy.deepcopy(pod)
        pod["status"] = {**pod.get("status", {}), **status}
        await self.put("pods", ns, pod, "MODIFIED")
        return True

    async def _kubelet(self, ns: str, pod: dict[str, Any], fate: str) -> str | None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        base = {"name": container["name"], "image": container["image"], "imageID": "",
                "ready": False, "restartCount": 0}
        if fate in ("image_pull", "config_error"):
            reason, message = {
                "image_pull": ("ErrImagePull", "pull access denied, repository does not exist"),
                "config_error": ("CreateContainerConfigError", 'secret "gone" not found'),
            }[fate]
            await self._set_pod(ns, name, {"containerStatuses": [
                {**base, "state": {"waiting": {"reason": reason, "message": message}}}]})
            return None
        if fate == "unschedulable":
            await self._set_pod(ns, name, {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]})
            return None
        if fate == "evict":
            await self._set_pod(ns, name, {"phase": "Running", "containerStatuses": [
                {**base, "state": {"running": {"startedAt": _now()}}}]})
            await asyncio.sleep(0.2)
            if self.job_failed_first:
                # A client can see the Job's failure before the pod's: separate watches.
                owner = pod["metadata"]["ownerReferences"][0]["name"]
                await self._set_job(ns, owner, {"active": 0, "failed": 1, "conditions": [{
                    "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}]})
                await asyncio.sleep(1.0)
            await self._set_pod(ns, name, {
                "phase": "Failed", "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "containerStatuses": [{**base, "state": {"terminated": {
                    "exitCode": 137, "reason": "Error"}}}]})
            return "Failed"
        root = self.root / pod["metadata"]["uid"]
        volume = root / "payload"
        volume.mkdir(parents=True)
        binds: list[str] = []
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        for vol in pod["spec"].get("volumes") or []:
            if "hostPath" in vol:  # the node's directory, read-write
                host = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "DirectoryOrCreate":
                    host.mkdir(parents=True, exist_ok=True)
                binds += ["--bind", str(host), mounts[vol["name"]]]
                continue
            secret = self.objects.get(("secrets", ns, vol["secret"]["secretName"]))
            if secret is None:
                await self._set_pod(ns, name, {"containerStatuses": [{**base, "state": {
                    "waiting": {"reason": "ContainerCreating"}}}]})
                return None
            data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
            for item in vol["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                target = volume / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[item["key"]])
            binds += ["--bind", str(volume), mounts[vol["name"]]]
        term = root / "termination-log"
        term.write_bytes(b"")
        logfile = root / "log"
        self.logs[name] = logfile
        cmd = ["bwrap", "--die-with-parent", "--unshare-pid", "--tmpfs", "/"]
        for entry in sorted(os.listdir("/")):
            host = Path("/") / entry
            if entry in ("proc", "dev"):
                continue
            if host.is_symlink():
                cmd += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                cmd += ["--ro-bind", str(host), str(host)]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", *binds,
                "--bind", str(term), "/dev/termination-log", "--clearenv",
                "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "TMPDIR",
                "/dev/shm"]
        for item in container.get("env") or []:
            cmd += ["--setenv", item["name"], item.get("value") or ""]
        cmd += ["--", *container["command"]]
        with open(logfile, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        self.procs[pod["metadata"]["uid"]] = proc
        await self._set_pod(ns, name, {"phase": "Running", "containerStatuses": [
            {**base, "ready": True, "state": {"running": {"startedAt": _now()}}}]})
        code = await proc.wait()
        if pod["metadata"]["uid"] not in self.procs:
            return None  # deleted meanwhile
        self.procs.pop(pod["metadata"]["uid"], None)
        code = 128 - code if code < 0 else code
        terminated: dict[str, Any] = {"exitCode": code,
                                      "reason": "Completed" if code == 0 else "Error"}
        message = term.read_text()
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        await self._set_pod(ns, name, {"phase": phase, "containerStatuses": [
            {**base, "state": {"terminated": terminated}}]})
        return phase

    # --- HTTP -----------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        for fault in self.faults:
            if fault["times"] > 0 and fault["method"] == request.method and \
                    fault["path"].search(request.path):
                fault["times"] -= 1
                response = _status(fault["status"], "TooManyRequests"
                                   if fault["status"] == 429 else "InternalError",
                                   "staged failure")
                if fault["retry_after"] is not None:
                    response.headers["Retry-After"] = str(fault["retry_after"])
                return response
        result: web.StreamResponse = await handler(request)
        return result

    def app(self) -> web.Application:
        app = web.Application(client_max_size=3 * MAX_OBJECT, middlewares=[self.middleware])
        r = app.router
        r.add_get("/version", self.version)
        r.add_get("/version/", self.version)
        r.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self.access)
        r.add_get("/api/v1/namespaces/{ns}", self.namespace)
        for prefix in ("/api/v1", "/apis/batch/v1"):
            r.add_route("*", prefix + "/namespaces/{ns}/{kind}", self.collection)
            r.add_route("*", prefix + "/namespaces/{ns}/{kind}/{name}", self.item)
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self.log)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": str(self.minor),
                                  "gitVersion": f"v1.{self.minor}.0"})

    async def access(self, request: web.Request) -> web.Response:
        body = await request.json()
        attrs = body["spec"]["resourceAttributes"]
        resource = attrs["resource"] + (f"/{attrs['subresource']}"
                                        if attrs.get("subresource") else "")
        allowed = (attrs["verb"], resource) not in self.denied
        return web.json_response({**body, "status": {"allowed": allowed}}, status=201)

    async def namespace(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found')
        return web.json_response({"kind": "Namespace", "metadata": {"name": ns}})

    async def collection(self, request: web.Request) -> web.StreamResponse:
        ns, kind = request.match_info["ns"], request.match_info["kind"]
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found')
        selector = request.query.get("labelSelector")
        if request.method == "POST":
            body = await request.json()
            name = body["metadata"].get("name", "")
            if (kind, ns, name) in self.objects:
                return _status(409, "AlreadyExists", f'{kind} "{name}" already exists')
            if kind == "secrets":
                size = sum(len(base64.b64decode(v)) for v in (body.get("data") or {}).values())
                if size > MAX_OBJECT:
                    return _status(422, "Invalid", "Too long: must have at most 1048576 bytes")
            return web.json_response(await self.create(kind, ns, body), status=201)
        if request.method == "DELETE":
            for (k, n, name), obj in list(self.objects.items()):
                if k == kind and n == ns and _matches(obj["metadata"].get("labels", {}),
                                                      selector):
                    await self.delete(k, n, name)
            return web.json_response({"kind": "Status", "status": "Success"})
        if request.query.get("watch", "").lower() in ("true", "1", "t"):
            return await self.watch(request, kind, ns, selector)
        items = [o for (k, n, _), o in self.objects.items()
                 if k == kind and n == ns and _matches(o["metadata"].get("labels", {}),
                                                       selector)]
        return web.json_response({"kind": "List", "items": items,
                                  "metadata": {"resourceVersion": str(self.last_rv)}})

    async def watch(self, request: web.Request, kind: str, ns: str,
                    selector: str | None) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        since = int(request.query.get("resourceVersion") or 0)
        if since and since < self.oldest - 1:
            error = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                 "reason": "Expired",
                                                 "message": "too old resource version"}}
            await response.write(json.dumps(error).encode() + b"\n")
            return response
        epoch = self.watch_epoch
        deadline = asyncio.get_running_loop().time() + float(
            request.query.get("timeoutSeconds") or 300)
        cursor = since
        try:
            await self._stream(response, kind, ns, selector, cursor, epoch, deadline)
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        return response

    async def _stream(self, response: web.StreamResponse, kind: str, ns: str,
                      selector: str | None, cursor: int, epoch: int, deadline: float) -> None:
        while True:
            for rv, k, n, event, obj in list(self.history):
                if rv > cursor and k == kind and n == ns and \
                        _matches(obj["metadata"].get("labels", {}), selector):
                    await response.write(json.dumps({"type": event, "object": obj}).encode()
                                         + b"\n")
            cursor = max(cursor, self.last_rv)
            if self.watch_epoch != epoch:
                return  # dropped: the client must resume
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            async with self.cond:
                try:
                    await asyncio.wait_for(self.cond.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
            if self.watch_epoch != epoch:
                return

    async def item(self, request: web.Request) -> web.StreamResponse:
        ns, kind, name = (request.match_info[k] for k in ("ns", "kind", "name"))
        obj = self.objects.get((kind, ns, name))
        if obj is None:
            return _status(404, "NotFound", f'{kind} "{name}" not found')
        if request.method == "GET":
            return web.json_response(obj)
        if request.method == "PATCH":
            patched = _merge(copy.deepcopy(obj), await request.json())
            return web.json_response(await self.put(kind, ns, patched, "MODIFIED"))
        if request.method == "DELETE":
            await self.delete(kind, ns, name)
            return web.json_response({"kind": "Status", "status": "Success"})
        return _status(405, "MethodNotAllowed", request.method)

    async def log(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.logs.get(name)
        if path is None:
            return _status(400, "BadRequest",
                           f'container "task" in pod "{name}" is waiting to start')
        self.log_reads.append((name, request.query.get("follow", "").lower() == "true"))
        if request.query.get("follow", "").lower() != "true":
            return web.Response(body=path.read_bytes(), content_type="text/plain")
        # follow=true: what the log gains, as the kubelet streams it, until the container
        # ends (its pod terminal or gone).
        ns = request.match_info["ns"]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            await self._follow_log(ns, name, path, response)
        except ConnectionError:
            pass  # the client stopped following
        return response

    async def _follow_log(self, ns: str, name: str, path: Path,
                          response: web.StreamResponse) -> None:
        sent = 0
        self._streams[name] = stream = self._streams.get(name, 0) + 1
        cut = self.follow_cut
        if cut is not None and self.follow_cuts is not None and stream > self.follow_cuts:
            cut = None
        while True:
            pod = self.objects.get(("pods", ns, name))
            ended = pod is None or (pod.get("status") or {}).get("phase") in (
                "Succeeded", "Failed")
            if cut is not None and sent >= cut:
                break
            with open(path, "rb") as f:
                f.seek(sent + (self.follow_rotated if stream > 1 else 0))
                data = f.read(1 << 20)
            if cut is not None:
                data = data[:cut - sent]
            if data:
                await response.write(data)
                sent += len(data)
            elif ended:
                break
            else:
                await asyncio.sleep(0.05)
        await response.write_eof()

    async def close(self) -> None:
        await self.drop_watches()
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        shutil.rmtree(self.root, ignore_errors=True)


async def start(cluster: FakeCluster) -> tuple[web.AppRunner, dict[str, Any]]:
    """Serve ``cluster`` on 127.0.0.1:<free port>; return the runner and a kubeconfig dict."""
    runner = web.AppRunner(cluster.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
    }
    return runner, kubeconfig


class FakeServer:
    """A FakeCluster served on loopback from a background event loop."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cluster: FakeCluster = self.call(self._make(kwargs))
        self.runner, self.kubeconfig = self.call(start(self.cluster))

    @staticmethod
    async def _make(kwargs: dict[str, Any]) -> FakeCluster:
        return FakeCluster(**kwargs)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def do(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return self.call(wrapper())

    def close(self) -> None:
        self.call(self.cluster.close())
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
