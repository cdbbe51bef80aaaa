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
set -euo pipefail
ACCOUNTING=${SLURM_ACCOUNTING:-1}
WAIT_S=${SLURM_WAIT_S:-60}
STATE=/run/phasedsft-slurm
say() { echo "[slurm_local] $*"; }
fail() { echo "[slurm_local] error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts system daemons)"
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
conf="# written by phasedsft launch/slurm_local/start.sh
ClusterName=phasedsft
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
NodeName=$host NodeAddr=127.0.0.1 $node_hw RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP"
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" >/etc/slurm/slurm.conf; changed=1
fi
install -d -o slurm -g slurm /run/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
if [ "$changed" = 1 ]; then  # our daemons must re-read the new config
  for d in slurmd slurmctld; do
    if running "$d" /run/slurm/$d.pid && grep -q "^$d " "$STATE/daemons"; then
      kill "$(cat /run/slurm/$d.pid)"; until_ok "$d to stop" bash -c "! kill -0 $(cat /run/slurm/$d.pid)"
    fi
  done
fi

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
if ! running slurmd /run/slurm/slurmd.pid; then
  # slurmd 22.05 initialises a cgroup plugin even with cgroups off: give it a hierarchy if none
  if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
     [ "$(stat -f -c %T /sys/fs/cgroup/systemd 2>/dev/null)" != cgroupfs ]; then
    mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
    mkdir -p /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
  fi
  /usr/sbin/slurmd; record slurmd /run/slurm/slurmd.pid
fi
t=$SECONDS
while :; do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*|fail*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  (( SECONDS - t < WAIT_S )) ||
    { tail -5 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log; fail "node stuck in '$state'"; }
  sleep 0.2
done
say "node $host is $state: $cpus CPUs, ${mem} MB, accounting=$ACCOUNTING ($(( SECONDS - started_at )) s)"
