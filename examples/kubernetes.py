"""Kubernetes: each array task runs as a Kubernetes Job; results come back through the pod log.

    pip install '.[k8s]' && python examples/kubernetes.py [KUBECONFIG] [NAMESPACE]

Needs a cluster the kubeconfig reaches (default: $KUBECONFIG, then ~/.kube/config) whose
credentials may create Jobs, Secrets and ConfigMaps and watch pods in the namespace. The image
must run the same Python major.minor as this client (cloudpickle is shipped if it lacks it).
On the project's testbed: python examples/kubernetes.py $RF_K8S_KUBECONFIG $RF_K8S_NAMESPACE
"""

import math
import sys

from remote_futures import JobFailedError, RemoteExecutor, Resources


def simulate(seed: int) -> float:
    """A stand-in for real work."""
    return sum(math.sin(seed * k) for k in range(10_000))


def main() -> None:
    kubeconfig = sys.argv[1] if len(sys.argv) > 1 else None
    namespace = sys.argv[2] if len(sys.argv) > 2 else "default"
    with RemoteExecutor(
        "kubernetes",
        kubeconfig=kubeconfig,
        namespace=namespace,
        image=f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim",
        python="python3",
        resources=Resources(cpus=1, memory="512M"),
        max_workers=4,
    ) as ex:
        print("one call:", round(ex.submit(simulate, 42).result(), 6))
        print("map of 8:", [round(r, 3) for r in ex.map(simulate, range(8))])
        try:
            ex.submit(math.sqrt, -1).result()
        except ValueError as exc:
            print("remote exception comes back as itself:", repr(exc))
        try:
            # 512M is the pod's memory limit: this call is OOM-killed.
            ex.submit(bytearray, 2 * 1024**3).result()
        except JobFailedError as exc:
            print("out of memory:", exc.state)


if __name__ == "__main__":
    main()
