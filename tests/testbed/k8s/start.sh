#!/usr/bin/env bash
# k8s/start.sh [STATE_DIR]
#
# The testbed's Kubernetes component: etcd, a real kube-apiserver and
# kube-controller-manager (built by build.sh from Debian's source package) on
# loopback with a token, and the Python kubelet (kubelet.py) that registers a
# node and runs pods in bubblewrap sandboxes.  Everything lives in
# STATE_DIR/k8s; writes STATE_DIR/k8s/k8s.env (RF_K8S_KUBECONFIG,
# RF_K8S_NAMESPACE, ...), which start.sh folds into testbed.env/testbed.json.
# Idempotent: running daemons (per their pid files) are left alone.
#
# Knobs: RF_K8S_ETCD_PORT=23790 RF_K8S_ETCD_PEER_PORT=23800
#        RF_K8S_API_PORT=16443 RF_K8S_KUBELET_PORT=10250 RF_K8S_NAMESPACE=rf-test
#        RF_K8S_CACHE / RF_K8S_VENV (see build.sh)
set -euo pipefail
umask 022
exec </dev/null
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
[ "$(id -u)" = 0 ] || rf_die "k8s/start.sh must run as root"

STATE="$(rf_state_dir "${1:-}")"
D="$STATE/k8s"
ETCD_PORT="${RF_K8S_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${RF_K8S_ETCD_PEER_PORT:-23800}"
API_PORT="${RF_K8S_API_PORT:-16443}"
KUBELET_PORT="${RF_K8S_KUBELET_PORT:-10250}"
NAMESPACE="${RF_K8S_NAMESPACE:-rf-test}"
VENV="${RF_K8S_VENV:-/opt/rf-k8s-venv}"

BIN="$(bash "$HERE/build.sh")"   # cached after the first build
mkdir -p "$D" "$D/certs" "$D/kubelet"
chmod 700 "$D"
[ -f "$D/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$D/token"
TOKEN="$(cat "$D/token")"
if [ ! -f "$D/sa.key" ]; then
    openssl genrsa -out "$D/sa.key" 2048 2>/dev/null
    openssl rsa -in "$D/sa.key" -pubout -out "$D/sa.pub" 2>/dev/null
fi
printf '%s,admin,1,"system:masters"\n' "$TOKEN" > "$D/tokens.csv"
if [ ! -f "$D/kubelet.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=127.0.0.1 \
        -keyout "$D/kubelet.key" -out "$D/kubelet.crt" 2>/dev/null
fi
cat > "$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
current-context: testbed
clusters:
- name: testbed
  cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: testbed
  context: {cluster: testbed, user: admin, namespace: $NAMESPACE}
KC
chmod 644 "$D/kubeconfig"

start_bg() {  # start_bg NAME PIDFILE EXE_GLOB CMD...
    local name="$1" pidfile="$2" glob="$3"; shift 3
    if rf_pid_alive "$pidfile" "$glob" >/dev/null; then
        rf_log "$name: already running"
        return 0
    fi
    rf_log "starting $name"
    setsid "$@" >"$D/$name.log" 2>&1 </dev/null &
    echo $! > "$pidfile"
}

start_bg etcd "$D/etcd.pid" '/usr/bin/etcd' \
    /usr/bin/etcd --name default --data-dir "$D/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --quota-backend-bytes 1073741824
rf_wait_for 30 "etcd" curl -sf "http://127.0.0.1:$ETCD_PORT/health" || { tail -20 "$D/etcd.log" >&2; rf_die "etcd did not start"; }

start_bg kube-apiserver "$D/apiserver.pid" "$BIN/kube-apiserver" \
    "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$D/certs" --token-auth-file="$D/tokens.csv" --authorization-mode=AlwaysAllow \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$D/sa.pub" \
    --service-account-signing-key-file="$D/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=InternalIP --feature-gates=TTLAfterFinished=true
api_ready() { curl -sfk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" >/dev/null; }
rf_wait_for 90 "kube-apiserver" api_ready || { tail -30 "$D/kube-apiserver.log" >&2; rf_die "kube-apiserver did not start"; }

start_bg kube-controller-manager "$D/controller-manager.pid" "$BIN/kube-controller-manager" \
    "$BIN/kube-controller-manager" --kubeconfig="$D/kubeconfig" \
    --controllers=job,garbagecollector,ttl-after-finished,namespace \
    --leader-elect=false --use-service-account-credentials=false --port=0 --secure-port=0 \
    --feature-gates=TTLAfterFinished=true

# Leftovers of an earlier run (one stopped half-way keeps its Jobs, pods and Secrets in etcd):
# removed before a new kubelet would run those pods again. Only when no kubelet runs, so that
# bringing an already running testbed "up" never touches the objects of tests in progress.
api() { curl -sfk -H "Authorization: Bearer $TOKEN" "$@"; }
if ! rf_pid_alive "$D/kubelet.pid" "*/python3*" >/dev/null \
        && api "https://127.0.0.1:$API_PORT/api/v1/namespaces/$NAMESPACE" >/dev/null; then
    ns="https://127.0.0.1:$API_PORT/api/v1/namespaces/$NAMESPACE"
    mine='labelSelector=app.kubernetes.io%2Fmanaged-by%3Dremote-futures'
    for url in "https://127.0.0.1:$API_PORT/apis/batch/v1/namespaces/$NAMESPACE/jobs?propagationPolicy=Background" \
               "$ns/pods?gracePeriodSeconds=0" "$ns/secrets?$mine" "$ns/configmaps?$mine"; do
        api -X DELETE "$url" >/dev/null || rf_log "could not clear $url"
    done
    rf_log "k8s: cleared what an earlier run left in namespace $NAMESPACE"
fi

# The kubelet binds the pytest temporary root read-write into its sandboxes, so that the
# contract suite's marker files are shared with the calls (as on the other transports).
start_bg kubelet "$D/kubelet.pid" "*/python3*" \
    "$VENV/bin/python" "$HERE/kubelet.py" --kubeconfig "$D/kubeconfig" --node-name rf-node \
    --port "$KUBELET_PORT" --cert "$D/kubelet.crt" --key "$D/kubelet.key" \
    --state-dir "$D/kubelet" --rw-path /tmp/pytest-of-root
node_ready() {
    curl -sfk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/api/v1/nodes/rf-node" \
        | grep -q '"InternalIP"'
}
rf_wait_for 60 "kubelet node registration" node_ready || { tail -30 "$D/kubelet.log" >&2; rf_die "the kubelet did not register"; }
ns_exists() { curl -sfk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/api/v1/namespaces/$NAMESPACE" >/dev/null; }
if ! ns_exists; then
    curl -sfk -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -X POST \
        "https://127.0.0.1:$API_PORT/api/v1/namespaces" \
        -d "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$NAMESPACE\"}}" >/dev/null
fi
cat > "$D/k8s.env" <<ENV
RF_K8S_KUBECONFIG=$D/kubeconfig
RF_K8S_NAMESPACE=$NAMESPACE
RF_K8S_API_PORT=$API_PORT
RF_K8S_VERSION=$(basename "$BIN")
ENV
rf_log "k8s ready: apiserver https://127.0.0.1:$API_PORT, namespace $NAMESPACE, binaries $BIN"
