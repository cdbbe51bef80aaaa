#!/usr/bin/env bash
# launch/slurm_local/stop.sh: cancel jobs, then stop the daemons that start.sh started (only those).
set -uo pipefail
STATE=/run/phasedsft-slurm
say() { echo "[slurm_local] $*"; }
[ -s "$STATE/daemons" ] || { say "nothing was started by start.sh"; exit 0; }
running() { local p; [ -s "$2" ] || return 1; p=$(tr -dc 0-9 <"$2")
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ]; }
if running slurmctld /run/slurm/slurmctld.pid; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | xargs)
  if [ -n "$jobs" ]; then
    say "cancelling jobs $jobs"; scancel $jobs 2>/dev/null
    for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  line=$(grep "^$name " "$STATE/daemons" | tail -1) || continue
  pidfile=${line#* }
  if running "$name" "$pidfile"; then
    pid=$(tr -dc 0-9 <"$pidfile"); kill "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "$name ignored SIGTERM: SIGKILL"; kill -9 "$pid"; }
    say "stopped $name"
  fi
  sed -i "/^$name /d" "$STATE/daemons"
done
