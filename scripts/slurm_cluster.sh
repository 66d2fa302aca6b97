#!/usr/bin/env bash
# A one-node Slurm cluster with accounting on this machine, for cnnlab's Slurm integration tests
# (tests/test_slurm_cluster.py) and for trying hydra/launcher=slurm by hand. Run as root.
#
#   scripts/slurm_cluster.sh install  # only install the Debian packages (make test does this)
#   scripts/slurm_cluster.sh up     # install (Debian packages) and start; idempotent
#   scripts/slurm_cluster.sh down   # cancel this cluster's jobs, stop the daemons it started
#
# Exit status 3: the packages are missing and cannot be installed (no apt-get, no network).
# No systemd needed: munged, mariadbd, slurmdbd, slurmctld and slurmd are started directly and
# their PIDs kept in $STATE_DIR; `down` stops exactly those PIDs. Accounting (slurmdbd) is on:
# submitit needs `sacct` to notice a job that ended without a result (scancel, time limit).
# AuthInfo=cred_expire shortens the wait before a requeued job may start again (default 120 s),
# and sched_interval/bf_interval the wait for the next scheduling pass after it (60 s / 30 s).
set -euo pipefail

STATE_DIR=${STATE_DIR:-/run/cnnlab-slurm}
LOG_DIR=${LOG_DIR:-/var/log/slurm}
SPOOL=${SPOOL:-/var/spool/slurm}
PARTITION=${PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

say() { echo "[slurm_cluster] $*"; }
die() { say "ERROR: $*" >&2; exit 1; }
running() { # running <pidfile> <comm>: the pid in the file is a live <comm>
    [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}
retry() { # retry <seconds> <command...>
    local n=$(($1 * 10)); shift
    until "$@" >/dev/null 2>&1; do n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1; done
}
stop() { # stop <name>...: SIGTERM the pid in $STATE_DIR/<name>.pid of each live <name>, then
    # wait for all of them (each daemon takes a second or two to shut down)
    local name pid_file pid stopped=()
    for name in "$@"; do
        pid_file="$STATE_DIR/$name.pid"
        running "$pid_file" "$name" || { rm -f "$pid_file"; continue; }
        pid=$(cat "$pid_file")
        kill "$pid"
        stopped+=("$name:$pid")
    done
    for name in "${stopped[@]}"; do
        pid=${name#*:}
        retry 30 test ! -e "/proc/$pid" || kill -9 "$pid" 2>/dev/null || true
        rm -f "$STATE_DIR/${name%%:*}.pid"
        say "stopped ${name%%:*} (pid $pid)"
    done
}

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get to install them" >&2; exit 3; }
    local pkgs=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
    say "apt-get install ${pkgs[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends)
    "${apt[@]}" "${pkgs[@]}" >/dev/null || { apt-get update -q >/dev/null && "${apt[@]}" "${pkgs[@]}" >/dev/null; } \
        || { say "apt-get install ${pkgs[*]} failed" >&2; exit 3; }
}

start_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    if ! running /run/munge/munged.pid munged; then
        rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
        runuser -u munge -- /usr/sbin/munged
        retry 10 running /run/munge/munged.pid munged || die "munged did not start"
        cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
        say "munged started"
    fi
}

start_accounting() {
    mkdir -p /run/mysqld /var/log/mysql
    chown mysql:mysql /run/mysqld /var/log/mysql
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    if ! running "$STATE_DIR/mariadbd.pid" mariadbd; then
        rm -f /run/mysqld/mariadbd.pid
        setsid runuser -u mysql -- /usr/sbin/mariadbd --skip-networking \
            --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mariadbd.pid \
            --innodb-buffer-pool-size=16M --log-error=/var/log/mysql/mariadbd.log \
            </dev/null >/dev/null 2>&1 &
        retry 60 mariadb -e 'select 1' || die "mariadbd did not start (/var/log/mysql/mariadbd.log)"
        retry 10 test -s /run/mysqld/mariadbd.pid
        cp /run/mysqld/mariadbd.pid "$STATE_DIR/mariadbd.pid"
        say "mariadbd started"
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'cnnlab-test';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    write_if_changed "$DBD_CONF" 0600 slurmdbd <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=cnnlab-test
StorageLoc=slurm_acct_db
EOF
    if ! running "$STATE_DIR/slurmdbd.pid" slurmdbd; then
        /usr/sbin/slurmdbd
        retry 30 running "$STATE_DIR/slurmdbd.pid" slurmdbd || die "slurmdbd did not start"
        say "slurmdbd started"
    fi
    retry 60 timeout 5 sacctmgr -n list cluster || die "slurmdbd does not answer ($LOG_DIR/slurmdbd.log)"
    if ! timeout 20 sacctmgr -n -P list cluster format=cluster | grep -qx local; then
        stop slurmctld # 22.05 needs the cluster in the database before slurmctld starts
        timeout 30 sacctmgr -i add cluster local >/dev/null || die "sacctmgr add cluster failed"
    fi
}

write_if_changed() { # write_if_changed <path> <mode> <daemon to restart> < content
    local new
    new=$(mktemp)
    cat >"$new"
    if ! cmp -s "$new" "$1"; then
        install -m "$2" "$new" "$1"
        stop "$3"
        [ "$3" = slurmctld ] && stop slurmd
    fi
    rm -f "$new"
}

write_slurm_conf() { # before slurmdbd: sacctmgr reads slurm.conf too
    local node cpus mem
    node=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(($(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
    write_if_changed "$CONF" 0644 slurmctld <<EOF
# Written by cnnlab scripts/slurm_cluster.sh: one node, no cgroups, accounting through slurmdbd.
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
# A requeued job waits for its begin time (cred_expire), then for a scheduling pass: every 2 s
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
InactiveLimit=0
MinJobAge=300
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
    local node
    node=$(hostname -s)
    if ! running "$STATE_DIR/slurmctld.pid" slurmctld; then
        /usr/sbin/slurmctld
        retry 30 scontrol ping || die "slurmctld does not answer ($LOG_DIR/slurmctld.log)"
        say "slurmctld started"
    fi
    if ! running "$STATE_DIR/slurmd.pid" slurmd; then
        /usr/sbin/slurmd
        retry 30 running "$STATE_DIR/slurmd.pid" slurmd || die "slurmd did not start ($LOG_DIR/slurmd.log)"
        say "slurmd started"
    fi
    node_up() { sinfo -h -n "$node" -o %t | grep -qE '^(idle|mix|alloc)$'; }
    if ! retry 30 node_up; then # e.g. drained by an earlier run
        scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
        retry 30 node_up || die "node $node is not up: $(sinfo -h -n "$node" -o '%t %E')"
    fi
    say "ready: $(sinfo -h -n "$node" -o 'partition %P, node %n, %c CPUs, %m MB')"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root"
    install_packages
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d" /etc/slurm
    if [ -d /run/systemd/system ]; then # we run our own daemons, not the packaged units
        systemctl stop slurmd slurmctld slurmdbd munge mariadb 2>/dev/null || true
    fi
    start_munge
    write_slurm_conf
    start_accounting
    start_slurm
}

down() {
    if running "$STATE_DIR/slurmctld.pid" slurmctld; then
        mapfile -t jobs < <(squeue -h -o %A 2>/dev/null)
        if [ ${#jobs[@]} -gt 0 ]; then
            scancel --quiet "${jobs[@]}"
            # submitit jobs ignore SIGTERM (it announces preemption): no need to sit out KillWait
            retry 2 test -z "$(squeue -h 2>/dev/null)" \
                || scancel --quiet --full --signal=KILL "${jobs[@]}" 2>/dev/null || true
            retry 15 test -z "$(squeue -h 2>/dev/null)" || true
        fi
    fi
    # the Slurm daemons first (together: an accounting record slurmdbd misses is kept by
    # slurmctld for its next start), then the database and munge, which they use until they end
    stop slurmd slurmctld slurmdbd
    stop mariadbd munged
}

case "${1:-}" in
install) [ "$(id -u)" = 0 ] || die "run as root"; install_packages ;;
up) up ;;
down) down ;;
*) die "usage: $0 install|up|down" ;;
esac
