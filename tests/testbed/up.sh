#!/usr/bin/env bash
# up.sh [STATE_DIR]
#
# One call for CI and for `nox -s testbed`: installs the system packages
# (install.sh, idempotent), starts the test bed (start.sh, idempotent) and
# prints the connection facts (STATE_DIR/testbed.json) on stdout.  Progress
# goes to stderr.  Run as root; needs no input.
#
# STATE_DIR defaults to $RF_TESTBED_DIR, else /tmp/rf-testbed.  All RF_*
# knobs of install.sh and start.sh pass through.
set -euo pipefail
exec </dev/null

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"
[ "$(id -u)" = 0 ] || rf_die "up.sh must run as root (try: sudo bash $0)"

STATE="$(rf_state_dir "${1:-}")"
T0=$(date +%s%N)
bash "$HERE/install.sh"
T1=$(date +%s%N)
# start.sh prints testbed.env on stdout; keep stdout for the JSON facts only
bash "$HERE/start.sh" "$STATE" >/dev/null
T2=$(date +%s%N)

ms() { printf '%d.%03ds' $(( $1 / 1000000000 )) $(( ($1 / 1000000) % 1000 )); }
rf_log "install $(ms $((T1 - T0))), start $(ms $((T2 - T1))); facts: $STATE/testbed.json (shell: $STATE/testbed.env)"
cat "$STATE/testbed.json"
echo
