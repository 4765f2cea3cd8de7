"""Kubernetes transport against its floor, on the testbed's real kube-apiserver (1.20).

Floor: kubernetes-asyncio alone creating one Job that prints a line, watching its pod until it
succeeds and reading its log: the least any Job-based transport must do per job. Ours: one
`submit` round trip, and a `map` of 200 trivial calls with the default chunking (about four
tasks per worker slot) and with chunksize=25 (one task per slot). Runs are interleaved
(floor, ours, floor, ours...) in the same process.
Needs the testbed with its k8s component (`nox -s testbed`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid

from kubernetes_asyncio import client, config

from remote_futures import RemoteExecutor

STATE = os.environ.get("RF_TESTBED_DIR", "/tmp/rf-testbed")
with open(os.path.join(STATE, "testbed.json")) as _facts:
    FACTS = json.load(_facts)
KUBECONFIG = FACTS["RF_K8S_KUBECONFIG"]
NAMESPACE = FACTS["RF_K8S_NAMESPACE"]
REPEATS = int(os.environ.get("RF_BENCH_REPEATS", "3"))
N = 200


def square(x: int) -> int:
    return x * x


async def floor() -> float:
    api = await config.new_client_from_config(config_file=KUBECONFIG)
    try:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        name = f"floor-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "python:3.11-slim",
                                    "command": ["python3", "-c", "print(42)"]}]}}}}
        start = time.perf_counter()
        await batch.create_namespaced_job(NAMESPACE, body)
        text = ""
        while True:
            pods = await core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}",
                                                  watch=False)
            done = [p for p in pods.items if p.status.phase == "Succeeded"]
            if done:
                text = await core.read_namespaced_pod_log(done[0].metadata.name, NAMESPACE)
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        assert text.strip() == "42", text
        await batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
        return elapsed
    finally:
        await api.close()


def ours_single(ex: RemoteExecutor) -> float:
    start = time.perf_counter()
    assert ex.submit(square, 7).result() == 49
    return time.perf_counter() - start


def ours_map(ex: RemoteExecutor, chunksize: int | None = None) -> float:
    start = time.perf_counter()
    assert list(ex.map(square, range(N), chunksize=chunksize)) == [i * i for i in range(N)]
    return time.perf_counter() - start


def main() -> None:
    floors, singles, maps, maps8 = [], [], [], []
    with RemoteExecutor("kubernetes", kubeconfig=KUBECONFIG, namespace=NAMESPACE,
                        python="/usr/bin/python3", max_workers=8) as ex:
        ours_single(ex)  # warm: probe, connection, watch
        for _ in range(REPEATS):
            floors.append(asyncio.run(floor()))
            singles.append(ours_single(ex))
            maps.append(ours_map(ex))
            maps8.append(ours_map(ex, chunksize=N // 8))
    f, s, m, m8 = (statistics.median(v) for v in (floors, singles, maps, maps8))
    print("| scenario | floor s (1 Job + log) | remote_futures s | ratio |")
    print("|---|---|---|---|")
    print(f"| one `submit` round trip | {f:.2f} | {s:.2f} | {s / f:.1f} |")
    print(f"| `map` of {N} trivial calls (default chunking: {N // 32 + 1} calls a task) "
          f"| {f:.2f} | {m:.2f} | {m / f:.1f} |")
    print(f"| `map` of {N} trivial calls, chunksize={N // 8} (8 tasks) | {f:.2f} | {m8:.2f} "
          f"| {m8 / f:.1f} |")
    print(f"(medians of {REPEATS}; floors {[round(x, 2) for x in floors]}, "
          f"submit {[round(x, 2) for x in singles]}, map {[round(x, 2) for x in maps]}, "
          f"map of 8 tasks {[round(x, 2) for x in maps8]})")


if __name__ == "__main__":
    main()
