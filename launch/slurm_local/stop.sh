#!/usr/bin/env bash
# launch/slurm_local/stop.sh: cancel jobs, stop the daemons that start.sh started (only those),
# and remove what SLURM_NODES>1 added: the nodes' network namespaces, veth pairs, the bridge and
# the /etc/hosts lines.
set -uo pipefail
STATE=/run/phasedsft-slurm
say() { echo "[slurm_local] $*"; }
[ -s "$STATE/daemons" ] || [ -e "$STATE/net" ] || { say "nothing was started by start.sh"; exit 0; }
touch "$STATE/daemons"
running() { local p; [ -s "$2" ] || return 1; p=$(tr -dc 0-9 <"$2")
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ]; }
if running slurmctld /run/slurm/slurmctld.pid; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | xargs)
  if [ -n "$jobs" ]; then
    say "cancelling jobs $jobs"; scancel $jobs 2>/dev/null
    for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
for name in slurmd slurmctld slurmdbd mariadbd munged; do  # every node's slurmd first
  grep "^$name " "$STATE/daemons" | while read -r _ pidfile; do
    if running "$name" "$pidfile"; then
      pid=$(tr -dc 0-9 <"$pidfile"); kill "$pid"
      for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { say "$name ignored SIGTERM: SIGKILL"; kill -9 "$pid"; }
      say "stopped $name ($pidfile)"
    fi
  done
  sed -i "/^$name /d" "$STATE/daemons"
done
if [ -e "$STATE/net" ]; then
  for ns in $(ls /run/netns 2>/dev/null | grep '^psft-n[0-9]*$'); do
    i=${ns#psft-n}
    ip link del "psft-v$i" 2>/dev/null; ip netns del "$ns" 2>/dev/null
  done
  ip link del psft-br 2>/dev/null
  hosts=$(grep -v '# phasedsft-slurm$' /etc/hosts)
  [ "$(cat /etc/hosts)" = "$hosts" ] || printf '%s\n' "$hosts" >/etc/hosts
  rm -f "$STATE/net"
  say "removed the nodes' namespaces, veth pairs, bridge and /etc/hosts names"
fi
