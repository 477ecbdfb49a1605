#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests and for trying the job script:
# munge, one slurmctld and two slurmd (node1, node2) from one slurm.conf, all on 127.0.0.1.
#
#   sudo scripts/slurm/local_cluster.sh start    # idempotent: installs (apt) if needed, starts, waits for 2 idle nodes
#   sudo scripts/slurm/local_cluster.sh status
#   sudo scripts/slurm/local_cluster.sh stop
#
# Needs root (daemons, /etc/slurm). Each node has 1 CPU, so `sbatch -N 2` runs one task per node.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
NODES=(node1 node2)
LOGS=/var/log/slurm

die() { echo "local_cluster.sh: $*" >&2; exit 2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || die "slurmctld, slurmd, slurm-client and munge are missing; run as root to install them with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host
    host=$(hostname -s)
    mkdir -p /etc/slurm /var/spool/slurmctld "$LOGS" /var/spool/slurmd/node1 /var/spool/slurmd/node2
    cat > "$CONF.tmp" <<CONF
# Written by scripts/slurm/local_cluster.sh: two nodes on one machine.
ClusterName=resnet-ocp-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd.%n.pid
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job ends: the grace period a preempted run gets.
KillWait=30
NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install_packages
    [ "$(id -u)" = 0 ] || die "start needs root (it runs the daemons)"
    write_conf
    mkdir -p /run/munge && chown munge:munge /run/munge
    if ! pgrep -x munged >/dev/null; then
        [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
        runuser -u munge -- /usr/sbin/munged
    fi
    running /run/slurmctld.pid || slurmctld
    for node in "${NODES[@]}"; do
        running "/run/slurmd.$node.pid" || slurmd -N "$node"
    done
    for _ in $(seq 60); do
        if [ "$(sinfo -h -o '%T' -N 2>/dev/null | grep -c idle)" = 2 ]; then
            echo "local SLURM cluster up: $(sinfo -h -N -o '%N %T' | tr '\n' ' ')"
            return 0
        fi
        # Nodes left down by an earlier stop come back once told to.
        scontrol update nodename=node[1-2] state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    die "the two nodes did not become idle within 60 s; see $LOGS/"
}

stop() {
    scontrol shutdown >/dev/null 2>&1 || true
    for pidfile in /run/slurmd.node1.pid /run/slurmd.node2.pid /run/slurmctld.pid; do
        running "$pidfile" && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    echo "local SLURM cluster stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo -N -o '%N %T %C' ;;
    *) die "usage: $0 start|stop|status" ;;
esac
