#!/usr/bin/env bash
# start.sh [STATE_DIR]
#
# Starts the remote_futures test bed on this machine (run as root, after
# install.sh):  sshd on 127.0.0.1:$RF_SSH_PORT (key-only), munged, a single-node
# Slurm cluster (slurmctld + slurmd, node "localhost"), Torque/PBS wrappers for
# the PBS test user, and a single-node Son of Grid Engine cell (sge_qmaster +
# sge_execd, host "localhost").  Everything it generates (keys, configs, spool
# dirs, logs, pid files) lives under STATE_DIR, except the few files clients
# must find at fixed system paths: /etc/slurm/slurm.conf and the SGE cell link
# /var/lib/gridengine/default -> STATE_DIR/sge/cell.
#
# Idempotent: daemons that are already running (per their pid files) are left
# alone; configs and keys are generated once per STATE_DIR.
#
# Writes STATE_DIR/testbed.env (shell) and STATE_DIR/testbed.json with the
# connection facts.  Stop with stop.sh STATE_DIR.
#
# Environment knobs (defaults):
#   RF_TESTBED_DIR=/tmp/rf-testbed   state dir when no argument is given
#   RF_TESTBED_COMPONENTS="ssh slurm slurmdbd sge"  (pbs comes with slurm and is
#                         listed in the facts when the Torque wrappers are installed;
#                         slurmdbd only by default when slurmdbd+mariadb are installed)
#   RF_SSH_PORT=2222  RF_SLURMCTLD_PORT=6817  RF_SLURMD_PORT=6818
#   RF_SLURMDBD_PORT=6819  RF_MYSQL_PORT=3307
#   RF_SGE_QMASTER_PORT=6444  RF_SGE_EXECD_PORT=6445
#   RF_SLURM_USER=slurmuser  RF_PBS_USER=pbsuser  RF_SGE_USER=sgeuser
#   RF_SLURM_CPUS=<max(nproc,4)>  CPUs Slurm advertises (may exceed real cores)
#   RF_SGE_SLOTS=<max(nproc,4)>   slots of all.q
#   RF_SLURM_MIN_JOB_AGE=300  seconds a finished job stays visible in squeue/scontrol
#   RF_TORQUE_PREFIX=/opt/slurm-torque   where install.sh unpacked the wrappers
#   k8s component (on by default): see k8s/start.sh for its RF_K8S_* knobs
set -euo pipefail
umask 022
# never wait for input (CI has none)
exec </dev/null

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || rf_die "start.sh must run as root"

STATE="$(rf_state_dir "${1:-}")"
# slurmdbd (+MariaDB) is on by default when install.sh installed it
if [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/mariadbd ]; then DEFAULT_COMPONENTS="ssh slurm slurmdbd sge k8s"
else DEFAULT_COMPONENTS="ssh slurm sge k8s"; fi
COMPONENTS=" ${RF_TESTBED_COMPONENTS:-$DEFAULT_COMPONENTS} "
SSH_PORT="${RF_SSH_PORT:-2222}"
SLURMCTLD_PORT="${RF_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${RF_SLURMD_PORT:-6818}"
SLURMDBD_PORT="${RF_SLURMDBD_PORT:-6819}"
MYSQL_PORT="${RF_MYSQL_PORT:-3307}"
SGE_QMASTER_PORT="${RF_SGE_QMASTER_PORT:-6444}"
SGE_EXECD_PORT="${RF_SGE_EXECD_PORT:-6445}"
SLURM_USER="${RF_SLURM_USER:-slurmuser}"
PBS_USER="${RF_PBS_USER:-pbsuser}"
SGE_USER="${RF_SGE_USER:-sgeuser}"
NCPU="$(nproc)"
# At least 4 job slots even on a 2-core machine: the test jobs mostly sleep or wait, and the
# contract suite checks that max_workers=4 calls really run side by side.
MIN_SLOTS=4
SLURM_CPUS="${RF_SLURM_CPUS:-$(( NCPU > MIN_SLOTS ? NCPU : MIN_SLOTS ))}"
SGE_SLOTS="${RF_SGE_SLOTS:-$(( NCPU > MIN_SLOTS ? NCPU : MIN_SLOTS ))}"
MIN_JOB_AGE="${RF_SLURM_MIN_JOB_AGE:-300}"
TORQUE_PREFIX="${RF_TORQUE_PREFIX:-/opt/slurm-torque}"
SLURM_PARTITION="batch"
SGE_QUEUE=all.q
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export SGE_QMASTER_PORT SGE_EXECD_PORT

has() { [[ "$COMPONENTS" == *" $1 "* ]]; }

# --------------------------------------------------------------------------
# 0. sanity + state dir
# --------------------------------------------------------------------------
if has slurmdbd && ! has slurm; then rf_die "component slurmdbd needs slurm"; fi
if has pbs && ! has slurm; then rf_die "component pbs (Torque wrappers over Slurm) needs slurm"; fi
for c in ssh slurm slurmdbd sge; do
    if has "$c"; then
        case "$c" in
            ssh)   command -v /usr/sbin/sshd >/dev/null || rf_die "openssh-server missing: run install.sh" ;;
            slurm) command -v slurmctld >/dev/null && command -v munged >/dev/null || rf_die "slurm/munge missing: run install.sh" ;;
            slurmdbd) [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/mariadbd ] || rf_die "slurmdbd/mariadb-server missing: run install.sh" ;;
            sge)   [ -x /usr/lib/gridengine/sge_qmaster ] || rf_die "gridengine missing: run install.sh" ;;
        esac
    fi
done

mkdir -p "$STATE"
chmod 755 "$STATE"
# Daemons running as munge/slurm/sgeadmin and the test users must be able to
# traverse every ancestor of STATE.
d="$STATE"
while [ "$d" != "/" ]; do
    perms="$(stat -c %A "$d")"
    case "${perms:9:1}" in x|t) ;; *) rf_die "$d is not world-traversable (o+x); pick another state dir" ;; esac
    d="$(dirname "$d")"
done

HOST="$(hostname)"
HOST_SHORT="${HOST%%.*}"
# SGE resolves the machine's own hostname AND its short form (sge_qmaster
# loops forever, silently, when e.g. 'node-x' of 'node-x.example.test' does
# not resolve); make sure both resolve, to 127.0.0.1 if they don't already.
unresolved=()
for n in "$HOST" "$HOST_SHORT"; do
    getent hosts "$n" >/dev/null 2>&1 || [[ " ${unresolved[*]-} " == *" $n "* ]] || unresolved+=("$n")
done
if [ "${#unresolved[@]}" -gt 0 ]; then
    rf_log "hostname(s) ${unresolved[*]} do not resolve; adding '127.0.0.1 ${unresolved[*]}' to /etc/hosts"
    printf '127.0.0.1\t%s\n' "${unresolved[*]}" >> /etc/hosts
fi
HOST_FQDN="$(hostname -f 2>/dev/null || echo "$HOST")"

# --------------------------------------------------------------------------
# 1. test users (uid >= 1000: SGE's default min_uid is 1000)
# --------------------------------------------------------------------------
ALL_USERS=()
has ssh && ALL_USERS+=("$SLURM_USER" "$PBS_USER" "$SGE_USER")
for u in "${ALL_USERS[@]}"; do
    if ! id "$u" >/dev/null 2>&1; then
        rf_log "creating user $u"
        useradd --create-home --shell /bin/bash "$u"
    fi
    # useradd leaves the password field '!' (locked); with UsePAM no, sshd
    # refuses even key logins to locked accounts.  '*' = no password, not locked.
    usermod -p '*' "$u"
done

# --------------------------------------------------------------------------
# 2. SSH: keys, sshd_config, known_hosts, sshd on 127.0.0.1:$SSH_PORT
# --------------------------------------------------------------------------
start_ssh() {
    local sd="$STATE/ssh" pid u home
    mkdir -p "$sd"
    chmod 700 "$sd"
    [ -f "$sd/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "rf-testbed-host" -f "$sd/ssh_host_ed25519_key"
    [ -f "$sd/ssh_host_rsa_key" ] || ssh-keygen -q -t rsa -b 3072 -N '' -C "rf-testbed-host" -f "$sd/ssh_host_rsa_key"
    [ -f "$sd/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "rf-testbed-client" -f "$sd/id_ed25519"
    [ -f "$sd/id_rsa" ] || ssh-keygen -q -t rsa -b 3072 -N '' -C "rf-testbed-client" -f "$sd/id_rsa"

    # known_hosts for strict host key checking (both host key types, both names)
    : > "$sd/known_hosts"
    for k in ssh_host_ed25519_key ssh_host_rsa_key; do
        printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' \
            "$SSH_PORT" "$(cut -d' ' -f1,2 "$sd/$k.pub")" \
            "$SSH_PORT" "$(cut -d' ' -f1,2 "$sd/$k.pub")" >> "$sd/known_hosts"
    done

    for u in "${ALL_USERS[@]}"; do
        home="$(getent passwd "$u" | cut -d: -f6)"
        install -d -m 700 -o "$u" -g "$(id -gn "$u")" "$home/.ssh"
        cat "$sd/id_ed25519.pub" "$sd/id_rsa.pub" > "$home/.ssh/authorized_keys"
        chown "$u:$(id -gn "$u")" "$home/.ssh/authorized_keys"
        chmod 600 "$home/.ssh/authorized_keys"
    done

    # Login shells (bash -l) run /etc/profile, which resets PATH; re-add the
    # wrappers in the PBS user's ~/.profile too (SetEnv below covers the rest).
    home="$(getent passwd "$PBS_USER" | cut -d: -f6)"
    if ! grep -q 'remote_futures testbed: torque wrappers' "$home/.profile" 2>/dev/null; then
        printf '\n# remote_futures testbed: torque wrappers before SGE qsub\nPATH="%s/bin:$PATH"; export PATH\n' \
            "$TORQUE_PREFIX" >> "$home/.profile"
        chown "$PBS_USER:$(id -gn "$PBS_USER")" "$home/.profile"
    fi

    cat > "$sd/sshd_config" <<EOF
# generated by remote_futures testbed start.sh
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $sd/ssh_host_ed25519_key
HostKey $sd/ssh_host_rsa_key
PidFile $sd/sshd.pid
LogLevel VERBOSE
# key-only authentication, unprivileged test users only
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers ${ALL_USERS[*]}
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
# pam_loginuid fails in containers without audit support -> no PAM
UsePAM no
PermitUserEnvironment no
# like most real clusters: only locale variables may be passed by the client
AcceptEnv LANG LC_*
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
# asyncssh multiplexes many channels over one connection; the default
# MaxSessions 10 would refuse the 11th concurrent channel.
MaxSessions 256
MaxStartups 200:30:400
ClientAliveInterval 30
Subsystem sftp internal-sftp

# The PBS test user sees the Torque-compatible wrappers (qsub/qstat/qdel on
# top of Slurm) before SGE's qsub in /usr/bin.
Match User $PBS_USER
    SetEnv PATH=$TORQUE_PREFIX/bin:/usr/local/bin:/usr/bin:/bin SGE_QMASTER_PORT=$SGE_QMASTER_PORT SGE_EXECD_PORT=$SGE_EXECD_PORT
Match User $SGE_USER,$SLURM_USER
    SetEnv SGE_QMASTER_PORT=$SGE_QMASTER_PORT SGE_EXECD_PORT=$SGE_EXECD_PORT
EOF
    # privilege separation directory
    install -d -m 755 /run/sshd
    /usr/sbin/sshd -t -f "$sd/sshd_config"

    if pid="$(rf_pid_alive "$sd/sshd.pid" '/usr/sbin/sshd')"; then
        rf_log "sshd already running (pid $pid); reloading config"
        kill -HUP "$pid"
    else
        rf_log "starting sshd on 127.0.0.1:$SSH_PORT"
        /usr/sbin/sshd -f "$sd/sshd_config" -E "$sd/sshd.log"
    fi
    rf_wait_for 20 "sshd login as $SLURM_USER" \
        ssh -p "$SSH_PORT" -i "$sd/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=yes \
            -o UserKnownHostsFile="$sd/known_hosts" -o ConnectTimeout=5 "$SLURM_USER@127.0.0.1" true \
        || { tail -20 "$sd/sshd.log" >&2; rf_die "sshd not usable"; }
    rf_log "sshd ready"
}

# --------------------------------------------------------------------------
# 3. munge
# --------------------------------------------------------------------------
start_munge() {
    local md="$STATE/munge" pid
    install -d -m 700 -o munge -g munge "$md"
    if [ ! -f "$md/munge.key" ]; then
        dd if=/dev/urandom bs=1024 count=1 status=none > "$md/munge.key"
    fi
    chown munge:munge "$md/munge.key"; chmod 400 "$md/munge.key"
    install -d -m 755 -o munge -g munge /run/munge
    if pid="$(rf_pid_alive "$md/munged.pid" '/usr/sbin/munged')"; then
        rf_log "munged already running (pid $pid)"
    else
        if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1; then
            rf_die "another munged (not started by this script) already serves /run/munge/munge.socket.2"
        fi
        rf_log "starting munged"
        runuser -u munge -- /usr/sbin/munged --key-file="$md/munge.key" --log-file="$md/munged.log" \
            --pid-file="$md/munged.pid" --seed-file="$md/munged.seed" --num-threads=4
    fi
    rf_wait_for 20 "munge round trip" sh -c 'munge -n | unmunge' || rf_die "munged not usable"
    rf_log "munged ready"
}

# --------------------------------------------------------------------------
# 4. Slurm (+ Torque wrappers)
# --------------------------------------------------------------------------
slurm_node_idle() {
    local st
    st="$(sinfo -h -N -n localhost -o '%T' 2>/dev/null)" || return 1
    case "$st" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

# Writes STATE/slurm/slurm.conf and installs it as /etc/slurm/slurm.conf.
# Sets SLURM_CONF_CHANGED=1 when the installed file changed.
write_slurm_conf() {
    local sd="$STATE/slurm" mem acct
    mkdir -p "$sd/ctld" "$sd/d"
    chown slurm:slurm "$sd" "$sd/ctld"
    # jobcomp/filetxt: one line per finished job.  Without slurmdbd, root can
    # read it with 'sacct -c'; test users cannot (the plugin opens the file
    # O_WRONLY|O_APPEND even for reading and slurmctld resets it to 0644).
    touch "$sd/jobcomp.log" && chown slurm:slurm "$sd/jobcomp.log"
    # RealMemory as slurmd detects it (slightly under; a higher value drains the node)
    mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    mem="${mem:-1024}"
    if has slurmdbd; then
        acct="# accounting in slurmdbd (MariaDB): sacct works for every user
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SLURMDBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct="# no slurmdbd: sacct only works as root with -c (reads JobCompLoc)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat > "$sd/slurm.conf" <<SLURMCONF
# generated by remote_futures testbed start.sh (state dir $STATE)
ClusterName=rftestbed
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$sd/slurmctld.pid
SlurmdPidFile=$sd/slurmd.pid
SlurmdSpoolDir=$sd/d
StateSaveLocation=$sd/ctld
SlurmctldLogFile=$sd/slurmctld.log
SlurmdLogFile=$sd/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SwitchType=switch/none
# bind to the configured addresses (127.0.0.1) instead of 0.0.0.0
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# scheduling
SchedulerType=sched/backfill
# tiny cluster: run the main scheduler and backfill every second, otherwise
# pending array tasks wait up to 60 s (sched_interval default) for a CPU
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0,default_queue_depth=1000
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# CPUs= in the node line is authoritative even if it exceeds the real cores
SlurmdParameters=config_overrides
# timers
InactiveLimit=0
KillWait=5
MinJobAge=$MIN_JOB_AGE
OverTimeLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
MessageTimeout=10
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$sd/jobcomp.log
MaxJobCount=20000
MaxArraySize=10001
# node + partition
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$SLURM_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
SLURMCONF
    mkdir -p /etc/slurm
    if [ -f /etc/slurm/slurm.conf ] && ! grep -q 'generated by remote_futures testbed' /etc/slurm/slurm.conf; then
        rf_die "/etc/slurm/slurm.conf exists and was not written by this script; move it away first"
    fi
    SLURM_CONF_CHANGED=0
    cmp -s "$sd/slurm.conf" /etc/slurm/slurm.conf || SLURM_CONF_CHANGED=1
    install -m 644 "$sd/slurm.conf" /etc/slurm/slurm.conf
}

# --------------------------------------------------------------------------
# 4a. optional: MariaDB (127.0.0.1:$MYSQL_PORT) + slurmdbd (127.0.0.1:$SLURMDBD_PORT)
# --------------------------------------------------------------------------
mysql_up() { mariadb-admin --no-defaults --socket="$STATE/mysql/mysqld.sock" -u root ping >/dev/null 2>&1; }

start_slurmdbd() {
    local md="$STATE/mysql" dd="$STATE/slurmdbd" pid pw
    local myopts=(--no-defaults --user=mysql --datadir="$md/data" --socket="$md/mysqld.sock"
                  --pid-file="$md/mysqld.pid" --bind-address=127.0.0.1 --port="$MYSQL_PORT"
                  --log-error="$md/error.log" --skip-name-resolve --performance-schema=OFF
                  --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900)
    mkdir -p "$md/data" "$dd"
    chown mysql:mysql "$md" "$md/data"; chmod 750 "$md"
    chown slurm:slurm "$dd"; chmod 750 "$dd"
    if [ ! -e "$md/.initialized" ]; then
        rf_log "initialising MariaDB datadir"
        mariadb-install-db "${myopts[@]}" --auth-root-authentication-method=socket --skip-test-db \
            > "$md/install.log" 2>&1 || { tail "$md/install.log" >&2; rf_die "mariadb-install-db failed"; }
        touch "$md/.initialized"
    fi
    if pid="$(rf_pid_alive "$md/mysqld.pid" '/usr/sbin/mariadbd')"; then
        rf_log "mariadbd already running (pid $pid)"
    else
        rf_log "starting mariadbd on 127.0.0.1:$MYSQL_PORT"
        setsid /usr/sbin/mariadbd "${myopts[@]}" </dev/null >/dev/null 2>&1 &
    fi
    rf_wait_for 60 "mariadbd ping" mysql_up || { tail -20 "$md/error.log" >&2; rf_die "mariadbd not up"; }

    [ -s "$dd/dbpass" ] || (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dd/dbpass")
    pw="$(cat "$dd/dbpass")"
    mariadb --no-defaults --socket="$md/mysqld.sock" -u root -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
         ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

    if [ -f /etc/slurm/slurmdbd.conf ] && ! grep -q 'generated by remote_futures testbed' /etc/slurm/slurmdbd.conf; then
        rf_die "/etc/slurm/slurmdbd.conf exists and was not written by this script; move it away first"
    fi
    (umask 077; cat > /etc/slurm/slurmdbd.conf <<DBDCONF
# generated by remote_futures testbed start.sh (state dir $STATE)
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=slurm
PidFile=$dd/slurmdbd.pid
LogFile=$dd/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
DBDCONF
    )
    chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf

    if pid="$(rf_pid_alive "$dd/slurmdbd.pid" '/usr/sbin/slurmdbd*')"; then
        rf_log "slurmdbd already running (pid $pid)"
    else
        rf_log "starting slurmdbd on 127.0.0.1:$SLURMDBD_PORT"
        /usr/sbin/slurmdbd
    fi
    rf_wait_for 60 "slurmdbd answering sacctmgr" sacctmgr -n list cluster \
        || { tail -20 "$dd/slurmdbd.log" >&2; rf_die "slurmdbd not up"; }
    # cluster, account and one association per test user
    sacctmgr -n -P list cluster format=cluster | grep -qx rftestbed \
        || sacctmgr -i add cluster rftestbed >/dev/null
    sacctmgr -n -P list account format=account | grep -qx rftest \
        || sacctmgr -i add account rftest Cluster=rftestbed Description=testbed Organization=testbed >/dev/null
    for u in "$SLURM_USER" "$PBS_USER" "$SGE_USER"; do
        sacctmgr -n -P list assoc user="$u" format=user | grep -qx "$u" \
            || sacctmgr -i add user "$u" Account=rftest Cluster=rftestbed >/dev/null
    done
    rf_log "slurmdbd ready"
}

start_slurm() {
    local sd="$STATE/slurm" pid
    if [ "$SLURM_CONF_CHANGED" = 1 ] && rf_pid_alive "$sd/slurmctld.pid" '/usr/sbin/slurmctld*' >/dev/null; then
        rf_log "slurm.conf changed: restarting slurmctld and slurmd (running jobs survive)"
        rf_kill_pidfile "$sd/slurmd.pid" '/usr/sbin/slurmd*' slurmd
        rf_kill_pidfile "$sd/slurmctld.pid" '/usr/sbin/slurmctld*' slurmctld
    fi
    if pid="$(rf_pid_alive "$sd/slurmctld.pid" '/usr/sbin/slurmctld*')"; then
        rf_log "slurmctld already running (pid $pid)"
    else
        rf_log "starting slurmctld"
        /usr/sbin/slurmctld -f /etc/slurm/slurm.conf
    fi
    rf_wait_for 30 "slurmctld ping" sh -c 'scontrol ping | grep -q UP' \
        || { tail -20 "$sd/slurmctld.log" >&2; rf_die "slurmctld not up"; }

    if pid="$(rf_pid_alive "$sd/slurmd.pid" '/usr/sbin/slurmd*')"; then
        rf_log "slurmd already running (pid $pid)"
    else
        rf_log "starting slurmd"
        /usr/sbin/slurmd -f /etc/slurm/slurm.conf -N localhost
    fi
    if ! rf_wait_for 30 "slurm node idle" slurm_node_idle; then
        # a node left DOWN/DRAIN by an earlier run: resume it once
        scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
        rf_wait_for 30 "slurm node idle" slurm_node_idle \
            || { sinfo -N -l >&2; tail -20 "$sd/slurmd.log" >&2; rf_die "slurm node not idle"; }
    fi
    rf_log "slurm ready: $(sinfo -h -o '%P %a %D %T %C')"

    if [ -x "$TORQUE_PREFIX/bin/qsub" ]; then
        rf_log "torque wrappers present in $TORQUE_PREFIX/bin (PATH of $PBS_USER)"
    else
        rf_log "WARNING: $TORQUE_PREFIX/bin/qsub missing (install.sh step for slurm-wlm-torque)"
    fi
}

# --------------------------------------------------------------------------
# 5. Son of Grid Engine: cell 'default' under /var/lib/gridengine -> STATE/sge/cell
# --------------------------------------------------------------------------
sge_admin() { runuser -u sgeadmin -- env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" "$@"; }

sge_init_cell() {
    local gd="$STATE/sge" cell="$STATE/sge/cell" link=/var/lib/gridengine/default
    mkdir -p "$cell/common" "$gd/qmaster/job_scripts" "$gd/execd" "$gd/spooldb"
    chown -R sgeadmin:sgeadmin "$gd"

    # Point the Debian default cell at our state dir.
    if [ -L "$link" ]; then
        [ "$(readlink "$link")" = "$cell" ] || ln -sfn "$cell" "$link"
    elif [ -d "$link" ]; then
        mv "$link" "$link.orig.$(date +%s)"
        ln -s "$cell" "$link"
    else
        ln -s "$cell" "$link"
    fi

    # Everything resolves to the single name 'localhost': the machine's own
    # hostname is an alias of it, and 127.0.0.1 reverse-resolves to localhost.
    # This makes the cell independent of the machine's hostname and avoids
    # "client IP resolved to host name localhost. This is not identical to
    # clients host name <hostname>" commlib errors.
    printf 'localhost %s\n' "$(printf '%s\n' "$HOST" "$HOST_SHORT" "$HOST_FQDN" | grep -vx localhost | sort -u | tr '\n' ' ')" \
        > "$cell/common/host_aliases"
    echo localhost > "$cell/common/act_qmaster"
    echo rftestbed > "$cell/common/cluster_name"
    cat > "$cell/common/bootstrap" <<EOF
# Version: 8.1.9
# generated by remote_futures testbed start.sh
admin_user              sgeadmin
default_domain          none
ignore_fqdn             true
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         $gd/spooldb
binary_path             /usr/sbin
qmaster_spool_dir       $gd/qmaster
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
EOF
    cat > "$cell/common/settings.sh" <<EOF
SGE_ROOT=$SGE_ROOT; export SGE_ROOT
SGE_CELL=$SGE_CELL; export SGE_CELL
SGE_QMASTER_PORT=$SGE_QMASTER_PORT; export SGE_QMASTER_PORT
SGE_EXECD_PORT=$SGE_EXECD_PORT; export SGE_EXECD_PORT
EOF
    chown -R sgeadmin:sgeadmin "$cell"

    if [ ! -e "$gd/spooldb/.initialized" ]; then
        rf_log "initialising SGE spool ($gd/spooldb)"
        sed -e "s#^execd_spool_dir .*#execd_spool_dir        $gd/execd#" \
            -e "s#^reporting_params .*#reporting_params       accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00#" \
            -e "s#^load_report_time .*#load_report_time       00:00:10#" \
            -e "s#^max_unheard .*#max_unheard            00:01:00#" \
            -e "s#^mailer .*#mailer                 /bin/true#" \
            /usr/share/gridengine/default-configuration > "$gd/global_configuration"
        chown sgeadmin:sgeadmin "$gd/global_configuration"
        sge_admin /usr/lib/gridengine/spoolinit berkeleydb libspoolb "$gd/spooldb" init >/dev/null
        sge_admin /usr/lib/gridengine/spooldefaults configuration "$gd/global_configuration" >/dev/null
        sge_admin /usr/lib/gridengine/spooldefaults complexes /usr/share/gridengine/util/resources/centry >/dev/null
        sge_admin /usr/lib/gridengine/spooldefaults usersets /usr/share/gridengine/util/resources/usersets >/dev/null
        # parallel environments make/smp/mpi (the queue template lists them)
        sge_admin /usr/lib/gridengine/spooldefaults pes /usr/share/gridengine/util/resources/pe >/dev/null
        sge_admin /usr/lib/gridengine/spooldefaults managers sgeadmin root >/dev/null
        touch "$gd/spooldb/.initialized"
    fi
}

sge_qmaster_up() { qconf -sh >/dev/null 2>&1; }
sge_host_up() {
    # the queue instance exists and carries no state flag (u=unknown until the
    # execd's first load report, a=alarm, d=disabled, E=error, ...); qhost alone
    # is not enough: after a restart it shows the previous run's load values
    qstat -f -q "$SGE_QUEUE@localhost" 2>/dev/null \
        | awk -v q="$SGE_QUEUE@localhost" '$1==q {found=1; if (NF>5) bad=1} END{exit !(found && !bad)}'
}

# run a qconf modification quietly; show its output only when it fails
qconf_q() { local out; out="$(qconf "$@" 2>&1)" || { echo "$out" >&2; rf_die "qconf $* failed"; }; }

sge_configure_cluster() {
    local gd="$STATE/sge" t="$STATE/sge/tmpl"
    mkdir -p "$t"
    # hosts: admin + submit + exec
    qconf -sh 2>/dev/null | grep -qx localhost || qconf_q -ah localhost
    qconf -ss 2>/dev/null | grep -qx localhost || qconf_q -as localhost
    if ! qconf -sel 2>/dev/null | grep -qx localhost; then
        printf 'hostname localhost\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' > "$t/exechost"
        qconf_q -Ae "$t/exechost"
    fi
    if ! qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
        printf 'group_name @allhosts\nhostlist localhost\n' > "$t/allhosts"
        qconf_q -Ahgrp "$t/allhosts"
    fi
    # scheduler: schedule every second and right after submit/finish
    qconf -ssconf > "$t/sconf"
    sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
           -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
           -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
           -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
           -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' "$t/sconf"
    qconf_q -Msconf "$t/sconf"
    # queue all.q
    qconf -sq > "$t/queue.tmpl" 2>/dev/null || true
    sed -e "s/^qname .*/qname                 $SGE_QUEUE/" \
        -e "s/^hostlist .*/hostlist              @allhosts/" \
        -e "s/^slots .*/slots                 $SGE_SLOTS/" \
        -e "s#^shell .*#shell                 /bin/bash#" \
        -e "s/^shell_start_mode .*/shell_start_mode      unix_behavior/" \
        -e "s#^tmpdir .*#tmpdir                /tmp#" \
        -e "s/^load_thresholds .*/load_thresholds       NONE/" \
        "$t/queue.tmpl" > "$t/queue"
    if qconf -sql 2>/dev/null | grep -qx "$SGE_QUEUE"; then
        qconf_q -Mq "$t/queue"
    else
        qconf_q -Aq "$t/queue"
    fi
}

start_sge() {
    local gd="$STATE/sge" pid
    sge_init_cell
    if pid="$(rf_pid_alive "$gd/qmaster/qmaster.pid" '/usr/lib/gridengine/sge_qmaster')"; then
        rf_log "sge_qmaster already running (pid $pid)"
    else
        rf_log "starting sge_qmaster (port $SGE_QMASTER_PORT)"
        # it daemonizes, switches to admin_user and writes qmaster_spool_dir/qmaster.pid
        SGE_MASTER_PIDFILE="$gd/qmaster/qmaster.pid" /usr/sbin/sge_qmaster
    fi
    rf_wait_for 60 "sge_qmaster answering qconf" sge_qmaster_up \
        || { tail -20 "$gd/qmaster/messages" >&2 2>/dev/null; rf_die "sge_qmaster not up"; }
    sge_configure_cluster

    if pid="$(rf_pid_alive "$gd/execd.pid" '/usr/lib/gridengine/sge_execd')"; then
        rf_log "sge_execd already running (pid $pid)"
    else
        rf_log "starting sge_execd (port $SGE_EXECD_PORT)"
        SGE_EXECD_PIDFILE="$gd/execd.pid" /usr/sbin/sge_execd
    fi
    # a queue instance may be left in (E)rror/(d)isabled state from an earlier run
    qmod -cq "$SGE_QUEUE" >/dev/null 2>&1 || true
    qmod -e "$SGE_QUEUE" >/dev/null 2>&1 || true
    rf_wait_for 60 "sge_execd reporting, $SGE_QUEUE@localhost without state flags" sge_host_up \
        || { qstat -f >&2; tail -20 "$gd/execd/localhost/messages" >&2 2>/dev/null; rf_die "sge_execd not reporting"; }
    rf_log "sge ready: $(qstat -g c | awk 'NR>2{print $1, "used="$3, "avail="$5, "total="$6}')"
}

# --------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------
T0=$(date +%s%N)
has ssh && start_ssh
if has slurm; then
    start_munge
    write_slurm_conf
    has slurmdbd && start_slurmdbd
    start_slurm
fi
has sge && start_sge
if has k8s; then bash "$HERE/k8s/start.sh" "$STATE"; fi

# connection facts.  "pbs" (the Torque wrappers over Slurm) is listed only
# when Slurm runs and the wrappers are installed.
FACT_COMPONENTS=""
for c in ssh slurm slurmdbd sge; do has "$c" && FACT_COMPONENTS="$FACT_COMPONENTS $c"; done
if has slurm && [ -x "$TORQUE_PREFIX/bin/qsub" ]; then FACT_COMPONENTS="$FACT_COMPONENTS pbs"; fi
if has k8s && [ -f "$STATE/k8s/k8s.env" ]; then FACT_COMPONENTS="$FACT_COMPONENTS kubernetes"; fi
FACT_COMPONENTS="${FACT_COMPONENTS# }"
cat > "$STATE/testbed.env" <<EOF
# generated by start.sh; source me
RF_TESTBED_DIR=$STATE
RF_SSH_HOST=127.0.0.1
RF_SSH_PORT=$SSH_PORT
RF_SSH_KEY=$STATE/ssh/id_ed25519
RF_SSH_KEY_RSA=$STATE/ssh/id_rsa
RF_SSH_KNOWN_HOSTS=$STATE/ssh/known_hosts
RF_SLURM_USER=$SLURM_USER
RF_PBS_USER=$PBS_USER
RF_SGE_USER=$SGE_USER
RF_SLURM_PARTITION=$SLURM_PARTITION
RF_SLURM_NODE=localhost
RF_SLURM_CPUS=$SLURM_CPUS
RF_SLURM_MIN_JOB_AGE=$MIN_JOB_AGE
RF_SLURM_JOBCOMP_LOG=$STATE/slurm/jobcomp.log
RF_SLURM_ACCOUNTING=$(has slurmdbd && echo slurmdbd || echo none)
RF_SLURMDBD_PORT=$SLURMDBD_PORT
RF_MYSQL_PORT=$MYSQL_PORT
RF_TORQUE_BIN=$TORQUE_PREFIX/bin
RF_SGE_ROOT=$SGE_ROOT
RF_SGE_CELL=$SGE_CELL
RF_SGE_QUEUE=$SGE_QUEUE
RF_SGE_SLOTS=$SGE_SLOTS
RF_SGE_QMASTER_PORT=$SGE_QMASTER_PORT
RF_SGE_EXECD_PORT=$SGE_EXECD_PORT
RF_REMOTE_PYTHON=${RF_REMOTE_PYTHON_DIR:-/opt/rf-remote-python}/bin/python
RF_COMPONENTS="$FACT_COMPONENTS"
EOF
if has k8s; then cat "$STATE/k8s/k8s.env" >> "$STATE/testbed.env"; fi
python3 - "$STATE/testbed.env" "$STATE/testbed.json" <<'PY'
import json, shlex, sys
facts = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line and not line.startswith("#"):
        k, v = line.split("=", 1)
        v = shlex.split(v)[0] if v else ""
        facts[k] = int(v) if v.isdigit() else v
json.dump(facts, open(sys.argv[2], "w"), indent=2, sort_keys=True)
PY
chmod 644 "$STATE/testbed.env" "$STATE/testbed.json"
ELAPSED_MS=$(( ($(date +%s%N) - T0) / 1000000 ))
rf_log "all requested components up in $((ELAPSED_MS / 1000)).$(printf '%03d' $((ELAPSED_MS % 1000)))s; facts in $STATE/testbed.env and $STATE/testbed.json"
cat "$STATE/testbed.env"
