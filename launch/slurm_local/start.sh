#!/usr/bin/env bash
# launch/slurm_local/start.sh: a real one-node SLURM cluster on this machine, for trying the
# SLURM path (`python train.py -m ... launcher=slurm`) and for CI. Debian/Ubuntu, run as root.
#
# Installs munge, slurmctld, slurmd and (accounting, on by default) MariaDB + slurmdbd, writes a
# loopback-only slurm.conf sized from `slurmd -C`, starts the daemons and waits for the node to
# be idle. Idempotent: daemons already running are left alone. stop.sh stops what this started.
#
#   SLURM_ACCOUNTING=1  (default) sacct works: submitit reads a cancelled job's final state from
#                       it (without it, job.result() on a cancelled job waits forever)
#   SLURM_ACCOUNTING=0  munge + slurmctld + slurmd only
#   SLURM_WAIT_S=60     how long to wait for each daemon
#   SLURM_NODES=1       (default) one node: this machine, on loopback
#   SLURM_NODES=2       two nodes on this one machine, psft-n1 and psft-n2: each slurmd in a network
#                       and UTS namespace of its own (own address 10.77.0.<i>, own hostname),
#                       joined to the controller (10.77.0.254, this machine) by veth pairs on a
#                       bridge, names in /etc/hosts (launch/README.md: "Two nodes on one machine")
set -euo pipefail
ACCOUNTING=${SLURM_ACCOUNTING:-1}
NODES=${SLURM_NODES:-1}
NET=10.77.0  # SLURM_NODES>1: node i is $NET.i, the controller $NET.254 on bridge psft-br
WAIT_S=${SLURM_WAIT_S:-60}
STATE=/run/phasedsft-slurm
say() { echo "[slurm_local] $*"; }
fail() { echo "[slurm_local] error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts system daemons)"
[[ "$NODES" =~ ^[1-9]$ ]] || fail "SLURM_NODES must be 1..9, not '$NODES'"
started_at=$SECONDS

# --- packages
want=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && want+=(slurmdbd mariadb-server)
need=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/phasedsft-slurm-apt.log 2>&1 ||
    { tail -20 /tmp/phasedsft-slurm-apt.log; fail "apt-get install failed (log above)"; }
fi

# --- helpers: a daemon is ours and alive when its pid file names a live process of that name
mkdir -p "$STATE"; touch "$STATE/daemons"
running() { local p; [ -s "$2" ] || return 1; p=$(tr -dc 0-9 <"$2")
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ]; }
record() { grep -qx "$1 $2" "$STATE/daemons" || echo "$1 $2" >>"$STATE/daemons"; }
until_ok() { local what=$1 t=$SECONDS; shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t < WAIT_S )) || fail "gave up waiting for $what after ${WAIT_S}s"; sleep 0.2
  done; }

# --- SLURM_NODES>1: a network namespace per node, veth pairs on a bridge, names in /etc/hosts.
# The nodes share this machine's filesystem and mounts (nothing but the network and the hostname
# is separate), so the venv, the repository and the run directories are the same paths on every
# node, as on a cluster with a shared filesystem. Recorded in $STATE/net for stop.sh.
net_up() {
  ip link show psft-br >/dev/null 2>&1 || ip link add psft-br type bridge
  ip addr replace "$NET.254/24" dev psft-br; ip link set psft-br up
  local i ns
  for i in $(seq "$NODES"); do
    ns=psft-n$i
    [ -e /run/netns/$ns ] || ip netns add $ns
    if ! ip link show psft-v$i >/dev/null 2>&1; then
      ip -n $ns link del eth0 >/dev/null 2>&1 || true
      ip link add psft-v$i type veth peer name eth0 netns $ns
    fi
    ip link set psft-v$i master psft-br up
    ip -n $ns link set lo up
    ip -n $ns addr replace "$NET.$i/24" dev eth0; ip -n $ns link set eth0 up
    ip -n $ns route replace default via "$NET.254"
  done
  # every node's name resolves to its own address, in every namespace (one /etc/hosts for all)
  local hosts; hosts=$(grep -v '# phasedsft-slurm$' /etc/hosts || true)
  for i in $(seq "$NODES"); do hosts+=$'\n'"$NET.$i psft-n$i # phasedsft-slurm"; done
  [ "$(cat /etc/hosts)" = "$hosts" ] || printf '%s\n' "$hosts" >/etc/hosts
  echo "$NODES" >"$STATE/net"
}
in_node() { local i=$1; shift  # run a command as node i: its network namespace and hostname
  nsenter --net=/run/netns/psft-n$i unshare --uts sh -c 'hostname "$0"; exec "$@"' "psft-n$i" "$@"; }

# --- slurm.conf for this host (10% memory headroom or the node is marked invalid)
host=$(hostname -s)
hw=$(slurmd -C | head -1)
cpus=$(grep -o 'CPUs=[0-9]*' <<<"$hw" | cut -d= -f2)
mem=$(grep -o 'RealMemory=[0-9]*' <<<"$hw" | cut -d= -f2)
mem=$(( mem * 9 / 10 ))
node_hw=$(sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//' <<<"$hw")
if [ "$ACCOUNTING" = 1 ]; then
  acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nJobAcctGatherType=jobacct_gather/linux'
else
  acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
fi
if [ "$NODES" = 1 ]; then
  ctl_addr=127.0.0.1 pid_file=/run/slurm/slurmd.pid spool=/var/lib/slurm/slurmd
  log_file=/var/log/slurm/slurmd.log names=$host
  node_lines="NodeName=$host NodeAddr=127.0.0.1 $node_hw RealMemory=$mem State=UNKNOWN"
else  # several slurmd on one machine: %n (the node's name) keeps their files apart
  ctl_addr=$NET.254 pid_file=/run/slurm/slurmd-%n.pid spool=/var/lib/slurm/slurmd-%n
  log_file=/var/log/slurm/slurmd-%n.log names=psft-n[1-$NODES] node_lines=""
  for i in $(seq "$NODES"); do
    node_lines+="${node_lines:+$'\n'}NodeName=psft-n$i NodeAddr=$NET.$i NodeHostname=psft-n$i $node_hw RealMemory=$mem State=UNKNOWN"
  done
fi
conf="# written by phasedsft launch/slurm_local/start.sh
ClusterName=phasedsft
SlurmctldHost=$host($ctl_addr)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=$spool
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=$pid_file
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=$log_file
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
EnforcePartLimits=ALL
ReturnToService=2
InactiveLimit=0
MinJobAge=300
KillWait=5
$node_lines
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP"
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" >/etc/slurm/slurm.conf; changed=1
fi
install -d -o slurm -g slurm /run/slurm /var/lib/slurm/slurmctld /var/log/slurm
if [ "$NODES" = 1 ]; then install -d /var/lib/slurm/slurmd
else for i in $(seq "$NODES"); do install -d /var/lib/slurm/slurmd-psft-n$i; done; fi
if [ "$changed" = 1 ]; then  # our daemons (every slurmd, the controller) must re-read the config
  while read -r d pidfile; do
    case "$d" in slurmd|slurmctld) ;; *) continue ;; esac
    if running "$d" "$pidfile"; then
      pid=$(tr -dc 0-9 <"$pidfile"); kill "$pid"; until_ok "$d to stop" bash -c "! kill -0 $pid"
    fi
    sed -i "\\|^$d $pidfile\$|d" "$STATE/daemons"
  done < <(cat "$STATE/daemons")
fi
[ "$NODES" = 1 ] || net_up

# --- munge
[ -s /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge /run/munge
if ! running munged /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged; record munged /run/munge/munged.pid
fi
until_ok munge bash -c 'munge -n | unmunge'

# --- accounting: MariaDB on a unix socket only, then slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=phasedsft-local
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
  install -d -o mysql -g mysql /run/mysqld /var/log/mysql
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! running mariadbd /run/mysqld/mysqld.pid; then
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --log-error=/var/log/mysql/error.log \
      --innodb-buffer-pool-size=128M </dev/null >/dev/null 2>&1 &
    until_ok mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    until_ok "mariadb pid file" running mariadbd /run/mysqld/mysqld.pid
    record mariadbd /run/mysqld/mysqld.pid
  fi
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'phasedsft-local';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'phasedsft-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if ! running slurmdbd /run/slurm/slurmdbd.pid; then
    /usr/sbin/slurmdbd; record slurmdbd /run/slurm/slurmdbd.pid
  fi
  until_ok slurmdbd sacctmgr -n show cluster
  sacctmgr -n -P show cluster format=cluster | grep -qx phasedsft || sacctmgr -i add cluster phasedsft >/dev/null
fi

# --- controller and node daemon
if ! running slurmctld /run/slurm/slurmctld.pid; then
  /usr/sbin/slurmctld; record slurmctld /run/slurm/slurmctld.pid
fi
until_ok slurmctld scontrol ping
# slurmd 22.05 initialises a cgroup plugin even with cgroups off: give it a hierarchy if none
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
   [ "$(stat -f -c %T /sys/fs/cgroup/systemd 2>/dev/null)" != cgroupfs ]; then
  mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
  mkdir -p /sys/fs/cgroup/systemd
  mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
fi
if [ "$NODES" = 1 ]; then
  if ! running slurmd /run/slurm/slurmd.pid; then
    /usr/sbin/slurmd; record slurmd /run/slurm/slurmd.pid
  fi
  node_names=("$host")
else
  node_names=()
  for i in $(seq "$NODES"); do
    node_names+=(psft-n$i)
    if ! running slurmd /run/slurm/slurmd-psft-n$i.pid; then
      in_node "$i" /usr/sbin/slurmd -N psft-n$i; record slurmd /run/slurm/slurmd-psft-n$i.pid
    fi
  done
fi
t=$SECONDS
for node in "${node_names[@]}"; do
  while :; do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1)
    case "$state" in
      idle|mixed|allocated) break ;;
      down*|drain*|fail*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
    esac
    (( SECONDS - t < WAIT_S )) || { tail -5 /var/log/slurm/slurmd*.log /var/log/slurm/slurmctld.log
      fail "node $node stuck in '$state'"; }
    sleep 0.2
  done
  say "node $node is $state: $cpus CPUs, ${mem} MB"
done
say "accounting=$ACCOUNTING ($(( SECONDS - started_at )) s)"
