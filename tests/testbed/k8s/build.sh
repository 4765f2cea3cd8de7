#!/usr/bin/env bash
# build.sh : install what the k8s testbed component needs and build
# kube-apiserver + kube-controller-manager from Debian's own source package.
#
# The binaries are cached OUTSIDE the repository, in
#   ${RF_K8S_CACHE:-/var/cache/remote-futures-k8s}/<source version>/
# so later runs skip the build (about 5 minutes of CPU on 2 cores, ~2 GB of
# scratch disk that is removed afterwards).  Prints the cache directory on
# stdout.  Also creates the kubelet's Python venv (${RF_K8S_VENV:-/opt/rf-k8s-venv}).
# Idempotent; run as root.
set -euo pipefail
exec </dev/null

log() { printf '[k8s-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "build.sh must run as root"

CACHE_ROOT="${RF_K8S_CACHE:-/var/cache/remote-futures-k8s}"
VENV="${RF_K8S_VENV:-/opt/rf-k8s-venv}"
SUITE="${RF_K8S_DEBIAN_SUITE:-bookworm}"
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
# golang-github-modern-go-reflect2-dev: reflect2 1.0.2, see below.
for p in golang-go rsync jq etcd-server bubblewrap openssl curl golang-github-modern-go-reflect2-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "apt-get install ${need_pkgs[*]}"
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2; }
fi

# The kubelet's Python (kubernetes-asyncio); outside the repo so a fresh clone
# and the project's own venv stay untouched.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import kubernetes_asyncio' 2>/dev/null; then
    log "creating kubelet venv $VENV"
    if command -v uv >/dev/null 2>&1; then
        uv venv -q --python python3 "$VENV" >&2
        uv pip install -q --python "$VENV/bin/python" 'kubernetes-asyncio>=30' aiohttp >&2
    else
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'kubernetes-asyncio>=30' aiohttp >&2
    fi
fi

# Bump when the recipe changes, so that an older (broken) build is not reused.
RECIPE=2
# Existing build?  Any version directory of this recipe holding both binaries will do.
for d in "$CACHE_ROOT"/*-r"$RECIPE"/; do
    if [ -x "$d/kube-apiserver" ] && [ -x "$d/kube-controller-manager" ]; then
        log "cached binaries: $d"
        printf '%s\n' "${d%/}"
        exit 0
    fi
done

mkdir -p "$CACHE_ROOT"
WORK="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# deb-src in a private apt config: the machine's sources.list is not touched.
printf 'deb-src http://deb.debian.org/debian %s main\n' "$SUITE" > src.list
mkdir -p lists/partial
APT=(apt-get -q -o "Dir::Etc::SourceList=$WORK/src.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$WORK/lists")
log "fetching Debian's kubernetes source package"
"${APT[@]}" update >&2
"${APT[@]}" source --download-only kubernetes >&2
orig="$(ls kubernetes_*.orig.tar.gz | head -n1)"
[ -n "$orig" ] || die "no orig tarball downloaded"
ver="${orig#kubernetes_}"; ver="${ver%.orig.tar.gz}"
log "unpacking $orig"
tar xzf "$orig"
src="$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[ -n "$src" ] || die "no source tree in $orig"
cd "$src"
# The vendored reflect2 1.0.1 crashes under Go >= 1.18 (SIGSEGV in mapiterinit when
# json-iterator encodes a map, e.g. an object's labels); 1.0.2 fixes it and is API-compatible.
# Debian packages 1.0.2: use its source instead of the vendored copy.
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$R2" ] || die "no $R2 (package golang-github-modern-go-reflect2-dev)"
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$R2" vendor/github.com/modern-go/reflect2
rm -rf vendor/github.com/modern-go/reflect2/debian
log "building kube-apiserver and kube-controller-manager (several minutes)"
T0=$(date +%s)
HOME="$WORK/.home" GOFLAGS= CGO_ENABLED=0 nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
log "build took $(( $(date +%s) - T0 ))s"
dest="$CACHE_ROOT/$ver-r$RECIPE"
mkdir -p "$dest.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$dest.tmp/"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
log "binaries cached in $dest"
printf '%s\n' "$dest"
