"""A small "kubelet + scheduler" for the testbed's real kube-apiserver (no container runtime).

It registers one node (address InternalIP 127.0.0.1 only), binds every unscheduled pod that fits
it, and runs container[0]'s command of each bound pod in a bubblewrap sandbox: the image is
ignored, the host filesystem is mounted read-only, Secret/ConfigMap volumes and
``/dev/termination-log`` are bound at their real paths, scratch space (``TMPDIR``) is a private
tmpfs at ``/dev/shm``; directories given with ``--rw-path`` are writable. It reports the
pod's status like a kubelet (``Running``; ``Succeeded``/``Failed`` with the container's
``terminated`` state and termination message), serves container logs over HTTPS for the
apiserver's log proxy, enforces ``limits.memory`` with an RSS watchdog (``OOMKilled``, 137) and
kills a pod's process when the pod is deleted.

Staging knobs for tests: an image whose name contains ``rf-testbed-missing`` fails to "pull"
(``ErrImagePull``, then ``ImagePullBackOff``); a pod asking for more memory than the node has,
or a nodeSelector the node lacks, stays Pending with ``Unschedulable``.

Run with a Python that has kubernetes-asyncio (the testbed makes a venv for it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import logging
import os
import shutil
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client, config

log = logging.getLogger("kubelet")
NODE_MEMORY_MI = 8192
BAD_IMAGE_MARK = "rf-testbed-missing"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_memory(value: str | None) -> int | None:
    """Bytes of a Kubernetes quantity (``512Mi``, ``1G``, ``100M``, ``1024``)."""
    if not value:
        return None
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
             "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(float(value))


class Kubelet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node = args.node_name
        self.state = Path(args.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, asyncio.Task[None]] = {}  # pod uid -> runner
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[tuple[str, str], Path] = {}  # (ns, pod) -> log file
        self.uids: dict[tuple[str, str], str] = {}
        self.api: Any = None

    # --- API plumbing ---------------------------------------------------------------------

    async def raw(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        resp = await fn(*args, _preload_content=False, **kwargs)
        try:
            body = await resp.read()
        finally:
            resp.release()
        return json.loads(body) if body else {}

    async def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self.raw(self.core.patch_namespaced_pod_status, meta["name"],
                           meta["namespace"], {"status": status})
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s: %s", meta["name"], exc.reason)

    # --- node -----------------------------------------------------------------------------

    async def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "remote-futures.io/testbed": "true"}}}
        try:
            await self.raw(self.core.create_node, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
        await self.node_status()

    async def node_status(self) -> None:
        capacity = {"cpu": str(os.cpu_count() or 2), "memory": f"{NODE_MEMORY_MI}Mi",
                    "pods": "110"}
        status = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "testbed kubelet", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
            "nodeInfo": {"machineID": "rf", "systemUUID": "rf", "bootID": "rf",
                         "kernelVersion": os.uname().release, "osImage": "testbed",
                         "containerRuntimeVersion": "bwrap://0", "kubeletVersion": "v1.20.2",
                         "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }
        await self.raw(self.core.patch_node_status, self.node, {"status": status})

    async def node_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                await self.node_status()
            except Exception as exc:
                log.warning("node heartbeat: %r", exc)

    # --- watch all pods -------------------------------------------------------------------

    async def watch_pods(self) -> None:
        version = None
        while True:
            try:
                if version is None:
                    listed = await self.raw(self.core.list_pod_for_all_namespaces)
                    version = listed["metadata"]["resourceVersion"]
                    for pod in listed.get("items") or []:
                        await self.handle(pod)
                resp = await self.core.list_pod_for_all_namespaces(
                    watch=True, resource_version=version, timeout_seconds=120,
                    allow_watch_bookmarks=True, _preload_content=False)
                try:
                    while True:
                        line = await resp.content.readline()
                        if not line:
                            break
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            version = None
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            await self.handle(obj)
                finally:
                    resp.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod watch: %r", exc)
                version = None
                await asyncio.sleep(0.5)

    async def pending_sweeper(self) -> None:
        """Re-examine pods that wait on something (a Secret not created yet)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                listed = await self.raw(self.core.list_pod_for_all_namespaces,
                                        field_selector="status.phase=Pending")
                for pod in listed.get("items") or []:
                    await self.handle(pod)
            except Exception as exc:
                log.warning("pending sweep: %r", exc)

    async def handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            await self.kill(pod)
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase != "Pending" or uid in self.running:
            return
        node = spec.get("nodeName")
        if not node:
            await self.schedule(pod)
            return
        if node == self.node:
            self.running[uid] = asyncio.get_running_loop().create_task(self.run(pod))

    async def schedule(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        wanted = 0
        for c in spec.get("containers") or []:
            res = c.get("resources") or {}
            wanted += parse_memory((res.get("requests") or {}).get("memory")
                                   or (res.get("limits") or {}).get("memory")) or 0
        selector = spec.get("nodeSelector") or {}
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                  "remote-futures.io/testbed": "true"}
        problem = None
        if wanted > NODE_MEMORY_MI * 1024**2:
            problem = "0/1 nodes are available: 1 Insufficient memory."
        elif any(labels.get(k) != v for k, v in selector.items()):
            problem = "0/1 nodes are available: 1 node(s) didn't match node selector."
        if problem:
            conditions = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("reason") == "Unschedulable" for c in conditions):
                await self.patch_status(pod, {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": problem, "lastTransitionTime": now()}]})
            return
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        try:
            await self.raw(self.core.create_namespaced_pod_binding, meta["name"],
                           meta["namespace"], body)
        except client.exceptions.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s: %s", meta["name"], exc.reason)

    # --- running a pod --------------------------------------------------------------------

    async def materialise(self, pod: dict[str, Any], root: Path) -> list[tuple[Path, str]] | str:
        """Volumes as host dirs: [(host dir, mountPath)], or the reason they are missing."""
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        binds: list[tuple[Path, str]] = []
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            if name not in mounts:
                continue
            target = root / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in volume or "configMap" in volume:
                source = volume.get("secret") or volume.get("configMap")
                is_secret = "secret" in volume
                obj_name = source.get("secretName") if is_secret else source.get("name")
                try:
                    if is_secret:
                        obj = await self.raw(self.core.read_namespaced_secret, obj_name,
                                             meta["namespace"])
                    else:
                        obj = await self.raw(self.core.read_namespaced_config_map, obj_name,
                                             meta["namespace"])
                except client.exceptions.ApiException as exc:
                    if exc.status == 404:
                        kind = "secret" if is_secret else "configmap"
                        return f'MountVolume.SetUp failed for volume "{name}" : {kind} ' \
                               f'"{obj_name}" not found'
                    raise
                data: dict[str, bytes] = {}
                for key, value in (obj.get("data") or {}).items():
                    data[key] = base64.b64decode(value) if is_secret else value.encode()
                for key, value in (obj.get("binaryData") or {}).items():
                    data[key] = base64.b64decode(value)
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    path = target / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data.get(item["key"], b""))
            elif "emptyDir" in volume:
                pass
            elif "hostPath" in volume:
                # The node's directory itself, read-write (as a real hostPath volume is).
                host = Path(volume["hostPath"]["path"])
                kind = volume["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    host.mkdir(parents=True, exist_ok=True)
                if not host.is_dir():
                    return f'MountVolume.SetUp failed for volume "{name}" : hostPath ' \
                           f'type check failed: {host} is not a directory'
                binds.append((host, mounts[name]))
                continue
            else:
                return f"volume {name}: type not supported by the testbed kubelet"
            binds.append((target, mounts[name]))
        return binds

    def sandbox(self, pod: dict[str, Any], binds: list[tuple[Path, str]], termlog: Path,
                env: dict[str, str]) -> list[str]:
        container = pod["spec"]["containers"][0]
        cmd = ["bwrap", "--die-with-parent", "--unshare-pid", "--tmpfs", "/"]
        for entry in sorted(os.listdir("/")):
            host = Path("/") / entry
            if entry in ("proc", "dev"):
                continue
            if host.is_symlink():
                cmd += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                cmd += ["--ro-bind", str(host), str(host)]
        # /tmp is the host's, read-only like the rest (a checkout or venv may live there);
        # the pod's scratch space is a private tmpfs, TMPDIR.
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
        for path in self.args.rw_path:
            if os.path.isdir(path):
                cmd += ["--bind", path, path]
        for host, mount in binds:
            cmd += ["--bind", str(host), mount]
        cmd += ["--bind", str(termlog), "/dev/termination-log"]
        cmd += ["--chdir", container.get("workingDir") or "/", "--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        command = list(container.get("command") or []) + list(container.get("args") or [])
        return [*cmd, "--", *command]

    async def run(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        container = spec["containers"][0]
        root = self.state / "pods" / uid
        root.mkdir(parents=True, exist_ok=True)
        logfile = root / "container.log"
        logfile.touch()
        self.logs[(meta["namespace"], meta["name"])] = logfile
        self.uids[(meta["namespace"], meta["name"])] = uid
        base = {"name": container["name"], "image": container.get("image", ""),
                "imageID": "", "ready": False, "restartCount": 0}
        try:
            if BAD_IMAGE_MARK in container.get("image", ""):
                reason = "ErrImagePull"
                while True:
                    await self.patch_status(pod, {"phase": "Pending", "hostIP": "127.0.0.1",
                        "containerStatuses": [{**base, "state": {"waiting": {
                            "reason": reason,
                            "message": f'rpc error: pull access denied for '
                                       f'{container.get("image")}, repository does not exist'}}}]})
                    reason = "ImagePullBackOff"
                    await asyncio.sleep(5)
            while True:
                binds = await self.materialise(pod, root)
                if not isinstance(binds, str):
                    break
                await self.patch_status(pod, {"phase": "Pending", "hostIP": "127.0.0.1",
                    "containerStatuses": [{**base, "state": {"waiting": {
                        "reason": "ContainerCreating", "message": binds}}}]})
                await asyncio.sleep(1)
            termlog = root / "termination-log"
            termlog.write_bytes(b"")
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOSTNAME": meta["name"], "HOME": "/root", "TMPDIR": "/dev/shm"}
            for item in container.get("env") or []:
                if "value" in item:
                    env[item["name"]] = item.get("value") or ""
                elif (item.get("valueFrom") or {}).get("fieldRef"):
                    field = item["valueFrom"]["fieldRef"]["fieldPath"]
                    env[item["name"]] = {"metadata.name": meta["name"],
                                         "metadata.namespace": meta["namespace"],
                                         "metadata.uid": uid}.get(field, "")
            cmd = self.sandbox(pod, binds, termlog, env)
            limit = parse_memory(((container.get("resources") or {}).get("limits") or {})
                                 .get("memory"))
            started = now()
            with open(logfile, "ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True)
            self.procs[uid] = proc
            await self.patch_status(pod, {
                "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "startTime": started,
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": "True"}],
                "containerStatuses": [{**base, "ready": True, "started": True,
                                       "containerID": f"bwrap://{proc.pid}",
                                       "state": {"running": {"startedAt": started}}}]})
            oom = False
            waiter = asyncio.ensure_future(proc.wait())
            while not waiter.done():
                await asyncio.wait([waiter], timeout=0.05)
                if limit and not waiter.done() and tree_rss(proc.pid) > limit:
                    oom = True
                    kill_tree(proc.pid)
            code = proc.returncode if proc.returncode is not None else 137
            if code < 0:
                code = 128 - code
            if oom:
                code = 137
            message = termlog.read_bytes()[:4096].decode(errors="replace")
            reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
            if not message and code != 0 and \
                    container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                lines = logfile.read_bytes()[-2048:].decode(errors="replace").splitlines()
                message = "\n".join(lines[-80:])
            terminated = {"exitCode": code, "reason": reason, "startedAt": started,
                          "finishedAt": now(), "containerID": f"bwrap://{proc.pid}"}
            if message:
                terminated["message"] = message
            if uid in self.procs:  # not deleted meanwhile
                await self.patch_status(pod, {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "conditions": [{"type": "PodScheduled", "status": "True"},
                                   {"type": "Ready", "status": "False",
                                    "reason": "PodCompleted"}],
                    "containerStatuses": [{**base, "state": {"terminated": terminated}}]})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("running %s: %r", meta["name"], exc)
        finally:
            self.procs.pop(uid, None)
            # Volumes hold payloads (Secrets): nothing stays on disk after the pod.
            shutil.rmtree(root / "volumes", ignore_errors=True)

    async def kill(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        proc = self.procs.pop(uid, None)
        if proc is not None and proc.returncode is None:
            kill_tree(proc.pid)
        task = self.running.pop(uid, None)
        if task is not None and proc is None:
            task.cancel()  # still pulling or mounting
        try:
            await self.raw(self.core.delete_namespaced_pod, meta["name"], meta["namespace"],
                           grace_period_seconds=0)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                log.warning("deleting %s: %s", meta["name"], exc.reason)
        self.logs.pop((meta["namespace"], meta["name"]), None)
        root = self.state / "pods" / uid
        shutil.rmtree(root, ignore_errors=True)

    # --- the log endpoint the apiserver proxies to ----------------------------------------

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod = request.match_info["ns"], request.match_info["pod"]
        path = self.logs.get((ns, pod))
        if path is None or not path.exists():
            return web.Response(status=404, text=f"pod {ns}/{pod} has no logs here")
        query = request.query
        data = path.read_bytes()
        if query.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]):])
        if query.get("limitBytes"):
            data = data[: int(query["limitBytes"])]
        if query.get("follow", "").lower() not in ("true", "1", "t"):
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(data)
        offset = path.stat().st_size
        uid = self.uids.get((ns, pod))
        while True:
            running = uid in self.procs
            size = path.stat().st_size if path.exists() else offset
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    await response.write(f.read(size - offset))
                offset = size
            if not running:
                break
            await asyncio.sleep(0.1)
        return response

    async def serve(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.args.cert, self.args.key)
        site = web.TCPSite(runner, "127.0.0.1", self.args.port, ssl_context=ctx)
        await site.start()

    async def main(self) -> None:
        self.api = await config.new_client_from_config(config_file=self.args.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        await self.serve()
        await self.register()
        log.info("node %s registered; logs on 127.0.0.1:%d", self.node, self.args.port)
        await asyncio.gather(self.watch_pods(), self.pending_sweeper(), self.node_heartbeat())


def descendants(pid: int) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def tree_rss(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def kill_tree(pid: int) -> None:
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="rf-node")
    parser.add_argument("--port", type=int, default=10250)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--rw-path", action="append", default=[],
                        help="host directory bound read-write into every sandbox if it exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s kubelet %(levelname)s %(message)s")
    asyncio.run(Kubelet(args).main())


if __name__ == "__main__":
    main()
