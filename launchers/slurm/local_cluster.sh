#!/usr/bin/env bash
# A real Slurm cluster on this machine, for tests: two emulated nodes (c1, c2), each a slurmd on
# localhost, one slurmctld, munge for authentication. Needs root (CI machines run as root).
#
#   launchers/slurm/local_cluster.sh install   # apt-get install slurm-wlm munge (if missing)
#   launchers/slurm/local_cluster.sh start     # write the config, start munged, slurmctld, slurmd x2
#   launchers/slurm/local_cluster.sh status
#   launchers/slurm/local_cluster.sh stop      # stop every daemon it started, undo /etc/hosts
#
# State, logs and pid files live in $SLURM_TEST_DIR (default /tmp/megagoku-slurm). What works on
# these machines, measured: ../shared/docs/slurm-facts.md of the project's workspace.
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/megagoku-slurm}
NODES=(c1 c2)
HOSTS_MARK="# megagoku local slurm"

install_packages() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge
}

write_config() {
    local host cpus mem port=17001
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / ${#NODES[@]} / 2 ))
    mkdir -p "$DIR"/{state,spool,log,run}
    {
        echo "ClusterName=megagoku-test"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=cred_expire=5"          # a requeued job starts at once, not after 121 s
        echo "MailProg=/bin/true"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SchedulerParameters=sched_interval=2,bf_interval=2"
        # `sbatch --wait` sleeps 2 s, then x4 (to 32 s) while its sleep < MinJobAge/2: under the
        # default 300 it sees a 12-s job end at 42 s. 4 keeps every poll at 2 s, and a finished
        # job's record outlives a poll (slurmctld raises 0, "never purge", to 2).
        echo "MinJobAge=4"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        echo "JobRequeue=1"
        echo "SlurmctldPort=16817"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool/%n"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
        for node in "${NODES[@]}"; do
            echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem State=UNKNOWN"
            port=$((port + 1))
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
    } > /etc/slurm/slurm.conf
    for node in "${NODES[@]}"; do mkdir -p "$DIR/spool/$node"; done
    # The node names must resolve (torch's c10d rendezvous connects to the first one).
    if ! grep -q "$HOSTS_MARK" /etc/hosts; then
        echo "127.0.0.1 ${NODES[*]} $HOSTS_MARK" >> /etc/hosts
    fi
}

start() {
    if scontrol ping 2>/dev/null | grep -q "is UP"; then
        echo "local slurm: already running"
        status
        return
    fi
    install_packages
    write_config
    install -d -o munge -g munge /run/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    slurmctld
    for node in "${NODES[@]}"; do slurmd -N "$node"; done
    for _ in $(seq 100); do
        [ "$(sinfo -h -t idle -o %D 2>/dev/null | head -n1)" = "${#NODES[@]}" ] && { status; return; }
        sleep 0.2
    done
    echo "local slurm: nodes never became idle; logs in $DIR/log" >&2
    sinfo >&2 || true
    exit 1
}

status() {
    sinfo -N -o "%N %T %c" 2>/dev/null || echo "local slurm: not running"
}

stop() {
    scancel --user=root 2>/dev/null || true
    for pidfile in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
        sleep 0.1
    done
    pkill -x munged 2>/dev/null || true
    sed -i "/$HOSTS_MARK/d" /etc/hosts
    echo "local slurm: stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|status|stop" >&2; exit 2 ;;
esac
