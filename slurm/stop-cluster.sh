#!/usr/bin/env bash
# Stop the one-node cluster of slurm/start-cluster.sh: its queued jobs, slurmd, slurmctld (by their pid files),
# and munged when start-cluster.sh started it.
# Run (as root): bash slurm/stop-cluster.sh          # the same LANDSCAPE_SLURM_DIR as the start
set -euo pipefail

STATE=${LANDSCAPE_SLURM_DIR:-/tmp/landscape-slurm}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {  # stop <name=pidfile>...: TERM to all at once (each takes ~2 s to exit), then KILL after 10 s
  local item name pidfile pids=()
  for item in "$@"; do
    name=${item%%=*} pidfile=${item#*=}
    if alive "$pidfile"; then
      pids+=("$(cat "$pidfile")")
      kill "${pids[-1]}"
      echo "stopping $name (pid ${pids[-1]})"
    else
      echo "$name is not running"
    fi
    rm -f "$pidfile"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  done
}

if alive "$STATE/slurmctld.pid"; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs || true
    for _ in $(seq 50); do [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop "slurmd=$STATE/slurmd.pid" "slurmctld=$STATE/slurmctld.pid"
if [ -e "$STATE/munged.ours" ]; then
  stop munged=/run/munge/munged.pid
  rm -f "$STATE/munged.ours"
fi
echo "SLURM cluster stopped"
