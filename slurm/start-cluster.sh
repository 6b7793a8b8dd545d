#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (munge, slurmctld, slurmd; partition `debug`), for the tests and CI.
# Run (as root): bash slurm/start-cluster.sh          # LANDSCAPE_SLURM_DIR=/tmp/landscape-slurm by default
# Stop:          bash slurm/stop-cluster.sh
# Idempotent: daemons already running are left alone. The config goes to /etc/slurm/slurm.conf (where Debian's
# slurm clients look), so sbatch/srun/sinfo and submitit work from any shell with no extra environment.
set -euo pipefail

STATE=${LANDSCAPE_SLURM_DIR:-/tmp/landscape-slurm}   # state, spool, pid and log files
CONF=/etc/slurm/slurm.conf
MARK="# Written by landscape-engine slurm/start-cluster.sh"
WAIT_S=${LANDSCAPE_SLURM_WAIT_S:-60}                 # how long to wait for the node to show idle
NODE=$(hostname -s)
CPUS=${LANDSCAPE_SLURM_CPUS:-$(nproc)}

die() { echo "start-cluster.sh: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # a pid file whose process is running

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null; then
  echo "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi
command -v slurmctld >/dev/null || die "slurmctld is still missing after apt-get install slurm-wlm"

mkdir -p "$STATE"

# munge: the key and /run/munge belong to the munge user, and so does the daemon.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  su -s /bin/sh munge -c munged
  touch "$STATE/munged.ours"   # stop-cluster.sh stops munged only when this script started it
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid"; then
  echo "SLURM cluster already running (state in $STATE)"
else
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace it"
  fi
  mkdir -p "$(dirname "$CONF")" "$STATE/slurmctld" "$STATE/slurmd"
  # MinJobAge=4 keeps finished jobs 4 s: below 2x sbatch's first poll, so `sbatch --wait` polls every 2 s (not 32).
  MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat >"$CONF" <<EOF
$MARK: a one-node test cluster.
ClusterName=landscape
SlurmctldHost=$NODE
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=4
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if ! alive "$STATE/slurmctld.pid"; then
    slurmctld || die "slurmctld did not start (see $STATE/slurmctld.log)"
  fi
  if ! alive "$STATE/slurmd.pid"; then
    slurmd || die "slurmd did not start (see $STATE/slurmd.log)"
  fi
  echo "SLURM cluster started: node $NODE, $CPUS CPUs, partition debug (state in $STATE)"
fi

# Bounded wait until the node can take jobs.
deadline=$((SECONDS + WAIT_S))
resumed=0
while :; do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1 || true)
  case "$state" in
    idle | mix | alloc | comp) break ;;
    down* | drain* | drng*)
      if [ "$resumed" = 0 ]; then scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true; resumed=1; fi ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    die "node $NODE not idle after ${WAIT_S}s (sinfo state: '${state:-no answer}'); see $STATE/slurmctld.log and $STATE/slurmd.log"
  fi
  sleep 0.5
done
sinfo
