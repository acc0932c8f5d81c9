#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and demos.
#
#   bash slurm/local-cluster.sh up      # install slurm-wlm + munge if missing, start munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/ssl-medseg-slurm/slurm.conf   # printed by `up`; sbatch/squeue/submitit use it
#   bash slurm/local-cluster.sh down    # stop the daemons by their pid files
#   bash slurm/local-cluster.sh status
#
# Needs root (apt-get, daemons). The cluster has one node (this host, its real CPU count and
# memory) and one partition "debug". No accounting database: `sacct` fails, submitit warns
# ("Bypassing sacct error") and still works. State lives in $SLURM_LOCAL_DIR.
set -euo pipefail
S="${SLURM_LOCAL_DIR:-/tmp/ssl-medseg-slurm}"
CONF="$S/slurm.conf"
HOST="$(hostname -s)"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
    echo "installing slurm-wlm and munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    mkdir -p "$S/ctld" "$S/slurmd"
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat > "$CONF" <<CONF
ClusterName=sslmedseg
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmdSpoolDir=$S/slurmd
StateSaveLocation=$S/ctld
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if [ -f "$S/munged.pid" ] && kill -0 "$(cat "$S/munged.pid")" 2>/dev/null; then return; fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --pid-file="$S/munged.pid.tmp" 2>/dev/null || /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
    sleep 0.5
    pgrep -n -x munged > "$S/munged.pid"
}

wait_idle() {
    for _ in $(seq 1 60); do
        if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed|allocated"; then return 0; fi
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "slurm node did not become idle; logs in $S" >&2
    sinfo >&2 || true
    return 1
}

up() {
    install
    mkdir -p "$S"
    if pgrep -x slurmctld >/dev/null && ! { [ -f "$S/slurmctld.pid" ] && kill -0 "$(cat "$S/slurmctld.pid")" 2>/dev/null; }; then
        echo "another slurmctld is running on this machine (not from $S); stop it first" >&2
        exit 1
    fi
    write_conf
    export SLURM_CONF="$CONF"
    start_munge
    if ! { [ -f "$S/slurmctld.pid" ] && kill -0 "$(cat "$S/slurmctld.pid")" 2>/dev/null; }; then
        slurmctld -f "$CONF" -i
    fi
    if ! { [ -f "$S/slurmd.pid" ] && kill -0 "$(cat "$S/slurmd.pid")" 2>/dev/null; }; then
        slurmd -f "$CONF"
    fi
    wait_idle
    echo "local SLURM cluster up: node $HOST ($(nproc) CPUs). Use: export SLURM_CONF=$CONF"
}

down() {
    if [ -f "$CONF" ] && [ -f "$S/slurmctld.pid" ] && kill -0 "$(cat "$S/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF="$CONF" scancel --user=root >/dev/null 2>&1 || true   # no job outlives the cluster
        for _ in $(seq 1 30); do [ -z "$(SLURM_CONF="$CONF" squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for d in slurmd slurmctld munged; do
        if [ -f "$S/$d.pid" ]; then
            pid=$(cat "$S/$d.pid")
            if kill "$pid" 2>/dev/null; then
                for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$S/$d.pid"
        fi
    done
    pkill -f "slurmstepd" 2>/dev/null || true
    echo "local SLURM cluster down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) SLURM_CONF="$CONF" sinfo; SLURM_CONF="$CONF" squeue ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
