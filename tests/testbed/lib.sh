# shellcheck shell=bash
# Helpers for start.sh and stop.sh (sourced, not executed).

# State directory: first argument, else $RF_TESTBED_DIR, else /tmp/rf-testbed.
rf_state_dir() {
    local d="${1:-${RF_TESTBED_DIR:-/tmp/rf-testbed}}"
    case "$d" in /*) ;; *) d="$PWD/$d" ;; esac
    printf '%s\n' "${d%/}"
}

rf_log() { printf '[testbed %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
rf_die() { rf_log "ERROR: $*"; exit 1; }

# rf_pid_alive PIDFILE EXE_GLOB -> prints pid and returns 0 when the pid in
# PIDFILE is alive AND its executable matches EXE_GLOB (guards against pid reuse).
rf_pid_alive() {
    local pidfile="$1" exe_glob="$2" pid exe
    [ -s "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' < "$pidfile")"
    [ -n "$pid" ] || return 1
    [ -d "/proc/$pid" ] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    # shellcheck disable=SC2053
    [[ "$exe" == $exe_glob ]] || return 1
    printf '%s\n' "$pid"
}

# rf_wait_for SECONDS DESCRIPTION CMD... : poll CMD every 0.2 s until it succeeds.
rf_wait_for() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            rf_log "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        sleep 0.2
    done
}

# rf_kill_pidfile PIDFILE EXE_GLOB NAME : TERM, wait up to 15 s, then KILL.
rf_kill_pidfile() {
    local pidfile="$1" exe_glob="$2" name="$3" pid
    if ! pid="$(rf_pid_alive "$pidfile" "$exe_glob")"; then
        [ -e "$pidfile" ] && rf_log "$name: not running (stale pid file removed)"
        rm -f "$pidfile"
        return 0
    fi
    rf_log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do
        [ -d "/proc/$pid" ] || break
        # a zombie child of ours would linger; treat as gone
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = "Z" ] && break
        sleep 0.2
    done
    if [ -d "/proc/$pid" ] && rf_pid_alive "$pidfile" "$exe_glob" >/dev/null; then
        rf_log "$name: still alive after 15 s, sending KILL to $pid"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}
