#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start.sh started: the slurmd
# daemons, slurmctld and munged, each by the PID in its PID file under
# $ALEXNET_SLURM_DIR (default /tmp/alexnet-slurm). Jobs still running are
# cancelled first. The state folder is kept (logs) unless --clean is given.
set -uo pipefail

STATE="${ALEXNET_SLURM_DIR:-/tmp/alexnet-slurm}"
ETC_CONF=/etc/slurm/slurm.conf
export PATH="$PATH:/usr/sbin:/sbin"

stop_pid_file() {
    local file="$1" pid
    pid="$(cat "$file" 2>/dev/null)" || return 0  # a daemon removes its own file on exit
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-test: $(basename "$file" .pid) ($pid) ignored TERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$file"
}

if [ -f "$STATE/slurm.conf" ] && [ -s "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    # Cancel jobs first, so their processes end through SLURM.
    SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    sleep 1
fi
# TERM every slurmd at once, then wait for each.
for f in "$STATE"/slurmd-*.pid; do kill -TERM "$(cat "$f" 2>/dev/null)" 2>/dev/null; done
for f in "$STATE"/slurmd-*.pid; do stop_pid_file "$f"; done
stop_pid_file "$STATE/slurmctld.pid"
stop_pid_file "$STATE/munged.pid"
# The link start.sh made, and only that.
if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$STATE/slurm.conf" ]; then
    rm -f "$ETC_CONF"
fi
if [ "${1:-}" = "--clean" ]; then
    rm -rf "$STATE"
fi
echo "slurm-test: stopped (state in $STATE)" >&2
