# shellcheck shell=bash
# Shared helpers for bench/compare.sh and bench/stream.sh. Source it; don't run it.
#
# Every background process goes through start_bg, which records its PID; the
# EXIT trap installed by bench_init kills exactly those PIDs (and their
# children), so an interrupted run leaves nothing behind and never touches a
# process this script did not start.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
STEELYARD_BIN="$REPO_DIR/target/release/steelyard"

WORK=""          # the run's private temp dir (mktemp -d)
BG_PIDS=()       # every PID started by start_bg, in start order
LAST_PID=""      # PID of the most recent start_bg

log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Creates the temp dir and installs the cleanup trap. INT and TERM turn into a
# normal exit so the EXIT trap runs exactly once.
bench_init() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/steelyard-bench.XXXXXX")"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# All descendants of a PID (children, grandchildren, ...), one per line.
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

# A PID plus all its descendants: "the balancer's processes" (nginx master + workers).
proc_tree() {
    echo "$1"
    descendants "$1"
}

# Stops one PID we started: SIGTERM to it and its children, up to 5 s grace, then SIGKILL.
stop_pid() {
    local pid=$1 tree i
    kill -0 "$pid" 2>/dev/null || return 0
    tree="$(proc_tree "$pid")"
    # shellcheck disable=SC2086  # word splitting of the PID list is intended
    kill -TERM $tree 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $tree 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    # Stop in reverse start order: clients first, origins last.
    for ((i = ${#BG_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BG_PIDS[i]}"
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$status" -ne 0 && "${KEEP_WORK:-0}" == 1 ]]; then
            log "kept $WORK for inspection"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

# start_bg NAME CMD... : runs CMD in the background with stdout+stderr in
# $WORK/NAME.log, records the PID (also in $WORK/NAME.pid) and sets LAST_PID.
# Commands are run via exec-style wrappers (taskset execs its argument), so
# the PID is the real server's PID, not a subshell's.
start_bg() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    BG_PIDS+=("$LAST_PID")
    echo "$LAST_PID" >"$WORK/$name.pid"
}

# Prints N distinct free loopback ports, space-separated.
free_ports() {
    python3 "$BENCH_DIR/free_ports.py" "$1" | tr '\n' ' '
}

# Waits until 127.0.0.1:PORT accepts connections; fails if PID dies first.
wait_for_port() {
    local port=$1 pid=$2 name=$3 seconds=${4:-10} i
    for ((i = 0; i < seconds * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$WORK/$name.log" >&2 || true
            die "$name exited before listening on 127.0.0.1:$port"
        fi
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within $seconds s"
}

# CPU time in clock ticks, summed over a PID and its descendants: "user system"
# (fields 14 and 15 of /proc/PID/stat). The comm field (2) may contain spaces, so
# split after the last ')'. After it, field 3 is the first word: utime is the 12th.
cpu_ticks() {
    local pid user=0 system=0 rest
    for pid in $(proc_tree "$1"); do
        [[ -r /proc/$pid/stat ]] || continue
        rest="$(sed 's/^.*) //' "/proc/$pid/stat")"
        # shellcheck disable=SC2086
        set -- $rest
        user=$((user + ${12}))
        system=$((system + ${13}))
    done
    echo "$user $system"
}

# Sum of a /proc/PID/status field in kB (VmHWM = peak RSS, VmRSS = current RSS)
# over a PID and its descendants.
status_kb() {
    local field=$1 pid total=0 v
    for pid in $(proc_tree "$2"); do
        v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Installs the named Debian packages if any of the given commands is missing.
# usage: ensure_packages "cmd:package" ...
ensure_packages() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing missing packages: ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Builds the release binary unless SKIP_BUILD=1 (then it must already exist).
build_steelyard() {
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "cargo build --release"
        (cd "$REPO_DIR" && cargo build --release --quiet) >&2
    fi
    [[ -x "$STEELYARD_BIN" ]] || die "missing $STEELYARD_BIN"
}

# Raises the open-file limit to the hard limit: thousands of idle connections
# need thousands of descriptors in the balancer and in the client script.
raise_nofile() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}
