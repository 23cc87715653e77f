#!/usr/bin/env bash
# slurm/local-cluster.sh start|stop|status - a single-node SLURM cluster on this machine, for
# the SLURM tests and for trying `python -m bench run --executor slurm --cluster slurm/local.yaml`.
#
# Needs root on Debian/Ubuntu without systemd (containers, CI). `start` installs Debian's SLURM
# (slurmctld, slurmd, slurmdbd + MariaDB for accounting) and munge if missing, writes
# /etc/slurm/slurm.conf and slurmdbd.conf, starts munged -> mariadbd -> slurmdbd -> slurmctld ->
# slurmd and waits (at most $SLURM_LOCAL_TIMEOUT s per step, default 60) until `sinfo` shows the
# node idle. It is idempotent. `stop` cancels every job and stops the daemons this script
# started, by the pid in their pid files. Packages stay installed.
#
# Why each setting (../shared/SLURM_LOCAL.md has the failures behind them):
# - accounting (slurmdbd): without it `sacct` fails and submitit cannot see a cancelled job;
# - batch_sched_delay=0: jobs start at once instead of 2-3 s later;
# - EnforcePartLimits=ALL: a job asking for more than the node has is rejected at submit time
#   instead of pending forever;
# - RealMemory = 90% of physical memory (a node claiming more is drained), DefMemPerCPU =
#   RealMemory / CPUs, topology from `slurmd -C`;
# - proctrack/linuxproc + task/none: no cgroups needed;
# - a fresh controller state restarts job ids at 1, so the accounting database is dropped with it.
set -euo pipefail

WAIT_S=${SLURM_LOCAL_TIMEOUT:-60}
CLUSTER=localcluster
DB_PASSWORD=bench-local-slurmdbd   # MariaDB listens on 127.0.0.1 only
PIDS=(/run/slurmd.pid:slurmd /run/slurmctld.pid:slurmctld /run/slurmdbd.pid:slurmdbd
      /run/mysqld/mysqld.pid:mariadbd /run/munge/munged.pid:munged)

say() { echo "[local-cluster] $*"; }
fail() {
    echo "[local-cluster] error: $*" >&2
    for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/slurm/slurmdbd.log; do
        [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 10 "$f" >&2; }
    done
    exit 1
}
# running PIDFILE NAME: the pid in PIDFILE is alive and is NAME
running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = "$2" ]
}
# until_ok WHAT COMMAND...: poll COMMAND every 0.2 s for at most WAIT_S seconds
until_ok() {
    local what=$1 i
    shift
    for ((i = 0; i < WAIT_S * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "gave up after ${WAIT_S}s waiting for $what"
}
stop_daemon() {  # PIDFILE NAME
    running "$1" "$2" || return 0
    local pid i
    pid=$(cat "$1")
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    say "stopped $2 (pid $pid)"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_packages() {
    local wanted=(slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin munge mariadb-server)
    local missing=() p
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" \
        >/tmp/local-cluster-apt.log 2>&1 || { tail -n 20 /tmp/local-cluster-apt.log >&2; fail "apt-get failed"; }
}

write_config() {
    local host=$1 topology cpus memory
    topology=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//')
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$topology")
    memory=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 90 / 100 ))
    install -d -m 0755 /etc/slurm
    install -d -o slurm -g slurm -m 0755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
    install -d -m 0755 /var/lib/slurm/slurmd
    cat >/etc/slurm/slurm.conf.new <<EOF
# written by rs-sscl-bench slurm/local-cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus))
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
NodeName=$host NodeAddr=127.0.0.1 $topology RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/slurmdbd.conf.new <<EOF
# written by rs-sscl-bench slurm/local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
    chmod 0600 /etc/slurm/slurmdbd.conf.new && chown slurm:slurm /etc/slurm/slurmdbd.conf.new
    local f changed=1
    for f in slurm.conf slurmdbd.conf; do
        if cmp -s "/etc/slurm/$f.new" "/etc/slurm/$f"; then rm "/etc/slurm/$f.new"; else
            mv "/etc/slurm/$f.new" "/etc/slurm/$f"; changed=0; fi
    done
    return $changed  # 0: a file changed, running daemons must restart
}

start() {
    [ "$(id -u)" -eq 0 ] || fail "must run as root (it installs packages and starts daemons)"
    local t0=$SECONDS host
    install_packages
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host # local-cluster.sh" >>/etc/hosts

    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    running /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
    until_ok munge sh -c 'munge -n | unmunge'

    if write_config "$host"; then
        for entry in "${PIDS[@]:0:3}"; do stop_daemon "${entry%%:*}" "${entry##*:}"; done
    fi

    install -d -o mysql -g mysql -m 0755 /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1 \
        || fail "mariadb-install-db failed"
    if ! mysqladmin ping >/dev/null 2>&1; then
        # its own session, output to a file: it must not hold the caller's pipes (CI)
        setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
            --bind-address=127.0.0.1 >>/var/log/local-cluster-mariadb.log 2>&1 </dev/null &
    fi
    until_ok mariadb mysqladmin ping
    if [ ! -e /var/lib/slurm/slurmctld/job_state ] && ! running /run/slurmctld.pid slurmctld; then
        # job ids restart at 1: forget the old jobs so `sacct -j ID` cannot answer for them
        stop_daemon /run/slurmdbd.pid slurmdbd
        mysql -e "DROP DATABASE IF EXISTS slurm_acct_db"
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "database set-up failed"
    running /run/slurmdbd.pid slurmdbd || /usr/sbin/slurmdbd || fail "slurmdbd did not start"
    until_ok "slurmdbd on port 6819" port_open 6819

    running /run/slurmctld.pid slurmctld || /usr/sbin/slurmctld || fail "slurmctld did not start"
    until_ok slurmctld sh -c 'scontrol ping | grep -q "is UP"'
    running /run/slurmd.pid slurmd || /usr/sbin/slurmd || fail "slurmd did not start"
    node_idle() { sinfo -h -n "$host" -o %t | grep -Eq '^(idle|mix|alloc)$'; }
    if ! (WAIT_S=10 until_ok "node $host" node_idle) 2>/dev/null; then
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true  # left down earlier
        until_ok "node $host to be idle" node_idle
    fi
    sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    until_ok sacct sacct -n -X -S now-1minute
    say "up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %t')"
}

stop() {
    if running /run/slurmctld.pid slurmctld; then
        scancel --partition=debug 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for entry in "${PIDS[@]}"; do stop_daemon "${entry%%:*}" "${entry##*:}"; done
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
