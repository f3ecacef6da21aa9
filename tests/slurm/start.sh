#!/usr/bin/env bash
# Start a small SLURM cluster on this machine for tests/test_slurm.py.
#
#   bash tests/slurm/start.sh            # install if missing, start, wait until the nodes are idle
#   bash tests/slurm/stop.sh             # stop the daemons by their PIDs
#
# Installs SLURM and munge from the distribution's packages when slurmctld is
# missing (Debian/Ubuntu, as root). No systemd: a private munged, slurmctld
# and two slurmd daemons (two nodes on this machine, so multi-node launches
# run for real) are started directly, with all state, logs, PID files and
# the munge key under $ALEXNET_SLURM_DIR (default /tmp/alexnet-slurm). The
# first node is the machine's short hostname, the second <hostname>-2; each
# has two fake GPUs (character devices). Partitions: cpu (default) and gpu.
# /etc/slurm/slurm.conf becomes a link to the state's slurm.conf when no
# slurm.conf is installed there (srun inside jobs looks there, see below).
# Running it again while the cluster is up only checks that it answers.
# Environment: ALEXNET_SLURM_DIR, ALEXNET_SLURM_CTLD_PORT (6817),
# ALEXNET_SLURM_SLURMD_PORT (6818; the second node uses the next port),
# ALEXNET_SLURM_NO_INSTALL=1 (never apt-get).
# Seen here: Debian 12, Slurm 22.05, up in about 2 s once installed
# (installing takes about a minute).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${ALEXNET_SLURM_DIR:-/tmp/alexnet-slurm}"
CTLD_PORT="${ALEXNET_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${ALEXNET_SLURM_SLURMD_PORT:-6818}"
SLURMD_PORT2=$((SLURMD_PORT + 1))
ETC_CONF=/etc/slurm/slurm.conf
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "slurm-test: $*" >&2; }
die() { say "error: $*"; exit 1; }

install_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    [ "${ALEXNET_SLURM_NO_INSTALL:-0}" = 1 ] && die "slurmctld/munged missing and ALEXNET_SLURM_NO_INSTALL=1"
    command -v apt-get >/dev/null || die "slurmctld missing and no apt-get here: install slurm-wlm and munge"
    [ "$(id -u)" = 0 ] || die "slurmctld missing: run as root to install slurm-wlm and munge"
    say "installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() {
    pid_alive "$STATE/munged.pid" && pid_alive "$STATE/slurmctld.pid" \
        && pid_alive "$STATE/slurmd-$HOST.pid" && pid_alive "$STATE/slurmd-$HOST2.pid"
}

wait_idle() {  # every node of partition cpu idle (or busy), none down or unknown
    local states=""
    for _ in $(seq 1 60); do
        states="$(SLURM_CONF="$STATE/slurm.conf" sinfo -h -N -p cpu -o %t 2>/dev/null | sort -u || true)"
        if [ -n "$states" ] && ! grep -qvE '^(idle|mix|alloc)$' <<<"$states"; then
            return 0
        fi
        sleep 0.5
    done
    say "nodes are '$(echo ${states:-not answering})' after 30 s; logs follow"
    tail -n 20 "$STATE"/log/*.log >&2 || true
    return 1
}

fill() {  # fill a template's @NAME@ fields
    sed -e "s|@HOST@|$HOST|g" -e "s|@HOST2@|$HOST2|g" -e "s|@STATE@|$STATE|g" -e "s|@USER@|$USER_NAME|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@SLURMD_PORT2@|$SLURMD_PORT2|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" "$1"
}

install_slurm

# slurmd finds its node by the short hostname; the first node line must match it.
HOST="$(hostname -s)"
HOST2="$HOST-2"
USER_NAME="$(id -un)"
# Multi-node jobs meet at their first node by name (torchrun's rendezvous).
getent hosts "$HOST" >/dev/null || say "warning: $HOST does not resolve; multi-node launches will fail"
# Declared larger than most machines so the profile's requests fit (see slurm.conf.in).
CPUS="${ALEXNET_SLURM_CPUS:-64}"
MEM_MB="${ALEXNET_SLURM_MEM_MB:-512000}"

if running; then
    say "already running (state in $STATE)"
    wait_idle
    exit 0
fi
# Leftovers of a half-started cluster: stop what is left, then start afresh.
bash "$HERE/stop.sh" >/dev/null 2>&1 || true

# Only a folder this script made (or an empty one) is wiped.
if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -f "$STATE/slurm.conf" ]; then
    die "$STATE is not empty and holds no slurm.conf; set ALEXNET_SLURM_DIR to a new folder"
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{ctld,log,munge,dev} "$STATE/slurmd/$HOST" "$STATE/slurmd/$HOST2"
chmod 700 "$STATE/munge"

# Two fake GPUs: the NVIDIA major number, minors 0 and 1. Nothing opens them.
for i in 0 1; do mknod "$STATE/dev/nvidia$i" c 195 "$i"; done

fill "$HERE/slurm.conf.in" >"$STATE/slurm.conf"
fill "$HERE/gres.conf.in" >"$STATE/gres.conf"

# Job steps do not always inherit SLURM_CONF (Snakemake's SLURM jobstep drops
# every SLURM_* variable before its srun), so the clients inside jobs need the
# default location too: a link to this cluster's file, made only where no
# other slurm.conf is installed, and removed by stop.sh.
if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$STATE/slurm.conf" ]; then
    :
elif [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
    die "$ETC_CONF exists (a real SLURM installation?); this test cluster will not replace it"
else
    mkdir -p "$(dirname "$ETC_CONF")" && ln -s "$STATE/slurm.conf" "$ETC_CONF"
fi

# A fresh munge key, readable by its owner only (munged refuses anything else).
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --force \
    --key-file="$STATE/munge/munge.key" \
    --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munged.pid" \
    --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/munged.seed" \
    || die "munged did not start; see $STATE/log/munged.log"

export SLURM_CONF="$STATE/slurm.conf"
# -i: ignore (absent) saved state. All daemons fork and write their PID files.
slurmctld -i -f "$SLURM_CONF" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
slurmd -f "$SLURM_CONF" -N "$HOST" || die "slurmd ($HOST) did not start; see $STATE/log/slurmd-$HOST.log"
slurmd -f "$SLURM_CONF" -N "$HOST2" || die "slurmd ($HOST2) did not start; see $STATE/log/slurmd-$HOST2.log"

for _ in $(seq 1 20); do running && break; sleep 0.5; done
running || die "a daemon exited; see $STATE/log/"
wait_idle || die "the nodes did not become idle; see $STATE/log/"
say "cluster up: nodes $HOST, $HOST2 ($CPUS CPUs, 2 fake GPUs each), partitions cpu, gpu; SLURM_CONF=$SLURM_CONF"
