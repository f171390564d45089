#!/usr/bin/env bash
# Single-node SLURM cluster for tunelab's tests.
#
# Usage:  tests/slurm/harness.sh {start|stop|status|conf}
#
#   start   install slurm-wlm + munge with apt-get if missing, write a slurm.conf
#           for this machine into the state dir, start munged, slurmctld and slurmd
#           (as root) and wait until the node is idle.  Idempotent: if the cluster of
#           this state dir is already up it only says so.  The last line on stdout is
#           `export SLURM_CONF=<state dir>/slurm.conf`, so callers can
#               eval "$(tests/slurm/harness.sh start | tail -n 1)"
#           (all other messages go to stderr).  Every slurm client command (sbatch,
#           squeue, scontrol, ...) needs SLURM_CONF pointing there.
#   stop    cancel this cluster's jobs, then stop exactly the daemons that `start`
#           recorded in the state dir (checked against their command line) and remove
#           the PID files.  Never touches other slurm/munge processes.
#   status  print sinfo and squeue, or say the cluster is down (exit 1 when down).
#   conf    print the slurm.conf path.
#
# Environment:
#   TUNELAB_SLURM_DIR        state dir            (default /tmp/tunelab-slurm)
#   TUNELAB_SLURM_CTLD_PORT  slurmctld port       (default 6817)
#   TUNELAB_SLURM_SLURMD_PORT slurmd port         (default 6818)
#   TUNELAB_SLURM_PROCTRACK  ProctrackType (default proctrack/pgid)
#   TUNELAB_SLURM_TIMEOUT    seconds to wait for the node to become idle (default 60)
#   TUNELAB_SLURM_CRED_EXPIRE credential lifetime = delay before a requeued job may start
#                            again (default 10; slurm's own default is 120)
#
# The cluster is self-contained: its own munge key and socket, spool/state/log dirs and
# PID files all live in the state dir, so it neither needs nor disturbs a system munged.
# No cgroups are used (ProctrackType=proctrack/pgid, TaskPlugin=task/none).
set -euo pipefail

STATE_DIR="${TUNELAB_SLURM_DIR:-/tmp/tunelab-slurm}"
CTLD_PORT="${TUNELAB_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${TUNELAB_SLURM_SLURMD_PORT:-6818}"
TIMEOUT="${TUNELAB_SLURM_TIMEOUT:-60}"
# Seconds a requeued job waits before it may start again (slurm default: 120).
CRED_EXPIRE="${TUNELAB_SLURM_CRED_EXPIRE:-10}"
PROCTRACK="${TUNELAB_SLURM_PROCTRACK:-proctrack/pgid}"

CONF="$STATE_DIR/slurm.conf"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGED_PID="$RUN_DIR/munged.pid"
SLURMCTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
DAEMONS=(slurmd slurmctld munged) # stop order; start order is the reverse

log() { echo "harness: $*" >&2; }
die() {
    echo "harness: ERROR: $*" >&2
    exit 1
}

pidfile_of() {
    case "$1" in
    munged) echo "$MUNGED_PID" ;;
    slurmctld) echo "$SLURMCTLD_PID" ;;
    slurmd) echo "$SLURMD_PID" ;;
    esac
}

# The string that must appear in a daemon's command line for it to be "ours".
marker_of() {
    case "$1" in
    munged) echo "$MUNGE_SOCKET" ;;
    *) echo "$CONF" ;;
    esac
}

# Print the recorded PID of daemon $1 if that process is alive and is really our daemon
# (guards against PID reuse and against other slurm/munge processes on the machine).
our_pid() {
    local name="$1" pidfile pid cmdline
    pidfile="$(pidfile_of "$name")"
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$name"* && "$cmdline" == *"$(marker_of "$name")"* ]] || return 1
    echo "$pid"
}

node_name() { hostname -s; }

slurm_env() { SLURM_CONF="$CONF" "$@"; }

node_state() {
    slurm_env sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1
}

all_up() {
    local d
    for d in "${DAEMONS[@]}"; do our_pid "$d" >/dev/null || return 1; done
    slurm_env scontrol ping >/dev/null 2>&1 || return 1
}

show_logs() {
    local f
    for f in "$LOG_DIR"/munged.log "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log; do
        [[ -f "$f" ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2 || true
    done
}

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || [[ -x /usr/sbin/munged ]] || missing+=(munge)
    if ! { [[ -x /usr/sbin/slurmctld ]] && [[ -x /usr/sbin/slurmd ]] && command -v sbatch >/dev/null 2>&1; }; then
        missing+=(slurm-wlm)
    fi
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "need root to install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not available; cannot install ${missing[*]}"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! apt-get install "${apt_opts[@]}" "${missing[@]}" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install "${apt_opts[@]}" "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
    fi
}

write_conf() {
    local host cpus mem_total headroom mem defmem
    host="$(node_name)"
    cpus="$(nproc)"
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Leave 10% (at least 256 MB) for the OS, or slurmd would declare the node invalid.
    headroom=$((mem_total / 10))
    ((headroom < 256)) && headroom=256
    mem=$((mem_total - headroom))
    ((mem < 256)) && mem=256
    # Without a default, a job that does not ask for memory gets the whole node and
    # blocks every other job, so give each CPU an equal share.
    defmem=$((mem / cpus))
    cat >"$CONF" <<EOF
# Generated by tests/slurm/harness.sh -- single-node test cluster on $host.
ClusterName=tunelab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits (BeginTime) before it runs again.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE
MailProg=/bin/true
MpiDefault=none
# No cgroups: proctrack/cgroup fails here ("cgroup namespace 'freezer' not mounted").
# proctrack/pgid kills what a batch script leaves running in the background when the job
# ends (like cgroups would); proctrack/linuxproc loses such orphans once their parent exits.
ProctrackType=$PROCTRACK
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Run the schedulers often so that requeued jobs start soon after their BeginTime.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
# CR_CPU (not CR_Core): a 1-CPU job takes one logical CPU even where cores have 2 threads.
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem
# Trust the node definition below rather than the probed topology.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

ensure_munge_key() {
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating munge key $MUNGE_KEY"
        if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
            PATH="$PATH:/usr/sbin" mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chmod 0400 "$MUNGE_KEY"
}

wait_for_pid() { # name seconds
    local name="$1" deadline=$((SECONDS + $2))
    until our_pid "$name" >/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

start_daemons() {
    mkdir -p "$STATE_DIR"/{state,spool} "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR"
    chmod 0755 "$STATE_DIR" "$RUN_DIR" "$LOG_DIR"
    chmod 0755 "$MUNGE_DIR" # the key itself is 0400; the socket must be reachable
    ensure_munge_key
    write_conf
    export SLURM_CONF="$CONF"
    local f # keep one old log per daemon so the tails shown on failure are this run's
    for f in munged slurmctld slurmd; do
        [[ -f "$LOG_DIR/$f.log" ]] && mv -f "$LOG_DIR/$f.log" "$LOG_DIR/$f.log.old"
    done

    log "starting munged (socket $MUNGE_SOCKET)"
    rm -f "$MUNGED_PID"
    /usr/sbin/munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGED_PID" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null >/dev/null 2>>"$LOG_DIR/munged.log" 9>&- ||
        {
            show_logs
            die "munged failed to start"
        }
    wait_for_pid munged 10 || {
        show_logs
        die "munged did not come up"
    }

    log "starting slurmctld"
    rm -f "$SLURMCTLD_PID"
    # -c: start from a clean state (no jobs left over from an earlier run).
    /usr/sbin/slurmctld -c -f "$CONF" </dev/null >/dev/null 2>>"$LOG_DIR/slurmctld.log" 9>&- ||
        {
            show_logs
            die "slurmctld failed to start"
        }
    wait_for_pid slurmctld 15 || {
        show_logs
        die "slurmctld did not come up"
    }

    log "starting slurmd"
    rm -f "$SLURMD_PID"
    /usr/sbin/slurmd -f "$CONF" </dev/null >/dev/null 2>>"$LOG_DIR/slurmd.log" 9>&- ||
        {
            show_logs
            die "slurmd failed to start"
        }
    wait_for_pid slurmd 15 || {
        show_logs
        die "slurmd did not come up"
    }
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state="$(node_state || true)"
        case "$state" in
        idle | mixed | allocated) return 0 ;;
        esac
        sleep 0.5
    done
    show_logs
    die "node $(node_name) not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
}

stop_daemons() {
    local d pid pidfile deadline
    for d in "${DAEMONS[@]}"; do
        pidfile="$(pidfile_of "$d")"
        if pid="$(our_pid "$d")"; then
            log "stopping $d (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 15))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then
                log "$d (pid $pid) ignored SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    done
}

cancel_jobs() {
    local jobs deadline
    jobs="$(slurm_env squeue -h -o '%i' 2>/dev/null || true)"
    [[ -n "$jobs" ]] || return 0
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    slurm_env scancel $jobs 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        [[ -z "$(slurm_env squeue -h -t running,completing -o '%i' 2>/dev/null || true)" ]] && return 0
        sleep 0.5
    done
    log "some jobs still running after scancel"
}

with_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/harness.lock"
    flock -w 120 9 || die "could not lock $STATE_DIR/harness.lock"
}

cmd_start() {
    with_lock
    if all_up; then
        log "cluster in $STATE_DIR already up (node $(node_name): $(node_state || echo '?'))"
    else
        install_packages
        # Partial leftovers (a daemon died): stop what is ours and start afresh.
        stop_daemons
        local t0=$SECONDS
        start_daemons
        wait_idle
        log "cluster up in $((SECONDS - t0))s: node $(node_name) $(node_state), conf $CONF"
    fi
    echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
    with_lock
    if our_pid slurmctld >/dev/null && our_pid munged >/dev/null; then
        cancel_jobs
    fi
    stop_daemons
    log "stopped"
}

cmd_status() {
    if all_up; then
        echo "SLURM cluster up (SLURM_CONF=$CONF)"
        local d
        for d in munged slurmctld slurmd; do echo "  $d pid $(our_pid "$d")"; done
        slurm_env sinfo
        slurm_env squeue
    else
        local d up=()
        for d in munged slurmctld slurmd; do our_pid "$d" >/dev/null && up+=("$d"); done
        if ((${#up[@]})); then
            echo "SLURM cluster in $STATE_DIR partly up (running: ${up[*]})"
        else
            echo "SLURM cluster in $STATE_DIR is down"
        fi
        return 1
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
conf) echo "$CONF" ;;
*)
    echo "usage: $0 {start|stop|status|conf}" >&2
    exit 2
    ;;
esac
