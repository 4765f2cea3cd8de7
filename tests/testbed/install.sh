#!/usr/bin/env bash
# install.sh — install the system packages the remote_futures test bed needs
# (Debian 12 bookworm, run as root).  Idempotent: a re-run only re-checks.
#
#   apt:  openssh-server, munge, slurm-wlm (slurmctld/slurmd/slurm-client 22.05),
#         libslurm-perl libslurmdb-perl libswitch-perl (Torque wrapper deps),
#         gridengine-master/-exec/-client/-common (Son of Grid Engine 8.1.9),
#         slurmdbd + mariadb-server (skip with RF_WITH_SLURMDBD=0)
#   dpkg -x: slurm-wlm-torque into $RF_TORQUE_PREFIX (default /opt/slurm-torque),
#         because its qsub/qstat/qdel conflict with gridengine-client's
#
# Python packages are not installed here: the tests run in their own venv.
# No daemon is started here (a policy-rc.d that denies service starts is put
# in place for the duration of the apt run when none exists); start.sh starts them.
set -euo pipefail
# never wait for input (CI has none)
exec </dev/null

[ "$(id -u)" = 0 ] || { echo "install.sh must run as root" >&2; exit 1; }

TORQUE_PREFIX="${RF_TORQUE_PREFIX:-/opt/slurm-torque}"
export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(
    openssh-server openssh-client
    munge
    slurm-wlm slurmctld slurmd slurm-client
    libslurm-perl libslurmdb-perl libswitch-perl perl
    gridengine-master gridengine-exec gridengine-client gridengine-common
    procps iproute2 hostname python3 python3-venv
    # a csh-family login shell, for the tests that run commands through one
    tcsh
)
# real accounting (sacct for all users): slurmdbd + MariaDB; RF_WITH_SLURMDBD=0 skips
if [ "${RF_WITH_SLURMDBD:-1}" = 1 ]; then
    APT_PACKAGES+=(slurmdbd mariadb-server mariadb-client)
fi

log() { printf '[install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
T0=$(date +%s)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "apt packages to install: ${missing[*]}"
    # Don't let the Debian SGE postinst build a cell: start.sh creates one,
    # independent of this machine's hostname, under its state directory.
    # (The "shared/..." names are the gridengine packages' own debconf questions.)
    debconf-set-selections <<'EOF'
gridengine-common shared/gridengineconfig boolean false
gridengine-common shared/gridenginecell string default
gridengine-master shared/gridenginemaster string localhost
gridengine-exec shared/gridenginemaster string localhost
gridengine-client shared/gridenginemaster string localhost
EOF
    # Keep maintainer scripts from starting daemons (no systemd here anyway).
    # Only create policy-rc.d if there is none, and only remove what we created.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from remote_futures testbed install.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    cleanup; trap - EXIT
    log "apt install done in $(( $(date +%s) - T0 ))s"
else
    log "apt packages already installed"
fi

# ---------------------------------------------------------------------------
# Torque/PBS wrappers from slurm-wlm-torque, unpacked (not installed) so that
# gridengine-client keeps /usr/bin/qsub.  The wrappers find sbatch/salloc/srun
# via FindBin (their own directory), so link those next to them.
# ---------------------------------------------------------------------------
slurm_ver="$(dpkg-query -W -f='${Version}' slurm-client)"
stamp="$TORQUE_PREFIX/.version"
if [ ! -x "$TORQUE_PREFIX/bin/qsub" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$slurm_ver" ]; then
    log "unpacking slurm-wlm-torque $slurm_ver into $TORQUE_PREFIX"
    tmp="$(mktemp -d)"
    ( cd "$tmp" && apt-get download -qq "slurm-wlm-torque=$slurm_ver" 2>/dev/null ) \
        || ( cd "$tmp" && apt-get update -qq && apt-get download -qq "slurm-wlm-torque=$slurm_ver" )
    rm -rf "$TORQUE_PREFIX"
    mkdir -p "$TORQUE_PREFIX/pkg" "$TORQUE_PREFIX/bin"
    dpkg -x "$tmp"/slurm-wlm-torque_*.deb "$TORQUE_PREFIX/pkg"
    rm -rf "$tmp"
    for f in "$TORQUE_PREFIX"/pkg/usr/bin/*; do
        install -m 755 "$f" "$TORQUE_PREFIX/bin/$(basename "$f")"
    done
    ln -sf mpiexec.slurm "$TORQUE_PREFIX/bin/mpiexec"
    for b in sbatch salloc srun squeue scontrol scancel sinfo; do
        ln -sf "/usr/bin/$b" "$TORQUE_PREFIX/bin/$b"
    done
    echo "$slurm_ver" > "$stamp"
else
    log "torque wrappers already in $TORQUE_PREFIX/bin"
fi
# sanity: the perl modules the wrappers use are installed.  (Don't 'use Slurm'
# here: loading it without /etc/slurm/slurm.conf makes libslurm try a
# "configless" DNS SRV lookup for _slurmctld._tcp and die.)
perl -e 'for my $m (qw(Slurm.pm Slurmdb.pm Switch.pm)) { grep { -f "$_/$m" } @INC or die "perl module $m missing\n" }' \
    || exit 1

# ---------------------------------------------------------------------------
# The remote interpreter for env="off" tests: the system Python 3 plus cloudpickle, in a venv
# of its own so that the system python3 itself stays without cloudpickle (the environment-sync
# tests start from that bare interpreter, as a fresh cluster account would).
REMOTE_PY="${RF_REMOTE_PYTHON_DIR:-/opt/rf-remote-python}"
if ! "$REMOTE_PY/bin/python" -c 'import cloudpickle' 2>/dev/null; then
    log "creating $REMOTE_PY (system python3 + cloudpickle)"
    rm -rf "$REMOTE_PY"
    /usr/bin/python3 -m venv "$REMOTE_PY"
    "$REMOTE_PY/bin/python" -m pip install --quiet --disable-pip-version-check cloudpickle
    chmod -R a+rX "$REMOTE_PY"
else
    log "$REMOTE_PY already has cloudpickle"
fi

# ---------------------------------------------------------------------------
# Kubernetes (the k8s component): etcd, bubblewrap, a kube-apiserver and kube-controller-manager
# built from Debian's source package (cached outside the repository; ~5 minutes the first time)
# and the testbed kubelet's venv.  RF_TESTBED_NO_K8S=1 skips it.
if [ -z "${RF_TESTBED_NO_K8S:-}" ]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/k8s/build.sh" >/dev/null
fi

log "done in $(( $(date +%s) - T0 ))s"
