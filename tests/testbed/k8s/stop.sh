#!/usr/bin/env bash
# k8s/stop.sh [STATE_DIR] : stop the k8s component's daemons by their pid files.
set -uo pipefail
exec </dev/null
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
STATE="$(rf_state_dir "${1:-}")"
D="$STATE/k8s"
[ -d "$D" ] || exit 0
BIN="${RF_K8S_CACHE:-/var/cache/remote-futures-k8s}/*"
rf_kill_pidfile "$D/kubelet.pid" "*/python3*" kubelet
rf_kill_pidfile "$D/controller-manager.pid" "$BIN/kube-controller-manager" kube-controller-manager
rf_kill_pidfile "$D/apiserver.pid" "$BIN/kube-apiserver" kube-apiserver
rf_kill_pidfile "$D/etcd.pid" '/usr/bin/etcd' etcd
