#!/usr/bin/env bash
# bench/profile.sh — where a causalkv replica spends its time: a flame graph under load.
#
# Builds causalkv (release; the release profile keeps line tables, enough for symbols),
# starts a 3-replica cluster on 127.0.0.1 as bench/compare.sh does, drives it with
# `causalkv bench --prepopulate`, and once the keys are written and the warm-up is over
# samples one replica with `perf record` (999 Hz, with call graphs) for DURATION - 2
# seconds of the measured period. The samples become a flame graph (inferno), and
# bench/results/profile-STAMP/ gets:
#   flamegraph.svg   the flame graph (open it in a browser: it is interactive)
#   collapsed.txt    the folded stacks it was drawn from, weighed by the event's period
#                    (ns of CPU for cpu-clock; compare two with inferno-diff-folded)
#   top.txt          the 25 hottest functions by self time (perf report --no-children)
#   bench.json       the load generator's report for the same run
#   environment.txt  date, machine, commit, tools and parameters
#
# Everything listens on 127.0.0.1 only, lives in a temp dir, and every process this script
# starts is stopped by its PID when it ends, fails or is interrupted. Every load is bounded
# in time. Installs linux-perf and curl with apt-get when missing (as root, or through
# sudo), and inferno with `cargo install inferno --locked` when it is missing. If perf
# may not sample (kernel.perf_event_paranoid), says so and exits 2.
#
# Usage: bench/profile.sh [--workload a|b|c|write] [--concurrency N] [--keys K]
#                         [--value-size BYTES] [--duration SECONDS] [--warmup SECONDS]
#                         [--replica-index 0|1|2] [--call-graph dwarf|fp|lbr|dwarf,BYTES]
#                         [--port-base P] [--causalkv-threads N]
# Defaults: workload c, 16 clients, 1,000 keys, 32 B values, 10 s measured after a 2 s
# warm-up, replica 0, call graph dwarf,16384 (DWARF unwinding: works without frame
# pointers, but heavy; 16 KiB of stack reaches each tokio task's poll, not always the
# runtime below it, shown as [unknown]: a larger size, up to dwarf,65528, reaches further
# for more data; fp is cheap and may cut Rust stacks short; lbr needs real hardware),
# ports 17200-17202, each replica's worker threads the machine's cores / 3 (at least 1).
# --duration must be at least 3 (perf records DURATION - 2 seconds).

set -euo pipefail

WORKLOAD=c
CONCURRENCY=16
KEYS=1000
VALUE_SIZE=32
DURATION=10
WARMUP=2
REPLICA_INDEX=0
CALL_GRAPH=dwarf,16384
PORT_BASE=17200
CAUSALKV_THREADS=
FREQUENCY=999

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --workload) WORKLOAD=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --value-size) VALUE_SIZE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --replica-index) REPLICA_INDEX=$2; shift 2 ;;
        --call-graph) CALL_GRAPH=$2; shift 2 ;;
        --port-base) PORT_BASE=$2; shift 2 ;;
        --causalkv-threads) CAUSALKV_THREADS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "profile.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
done

bad() { echo "profile.sh: $*" >&2; usage 2 >&2; }
is_count() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-1}" ]; }
case "$WORKLOAD" in a|b|c|write) ;; *) bad "--workload must be a, b, c or write" ;; esac
case "$REPLICA_INDEX" in 0|1|2) ;; *) bad "--replica-index must be 0, 1 or 2" ;; esac
case "$CALL_GRAPH" in
    dwarf) CALL_GRAPH=dwarf,16384 ;;
    fp|lbr) ;;
    dwarf,*) [[ ${CALL_GRAPH#dwarf,} =~ ^[0-9]+$ ]] || bad "--call-graph dwarf,BYTES needs a number" ;;
    *) bad "--call-graph must be dwarf, fp, lbr or dwarf,BYTES" ;;
esac
is_count "$CONCURRENCY" || bad "--concurrency must be a positive integer"
is_count "$KEYS" || bad "--keys must be a positive integer"
is_count "$VALUE_SIZE" || bad "--value-size must be a positive integer"
is_count "$DURATION" 3 || bad "--duration must be an integer of at least 3 (seconds)"
is_count "$WARMUP" 0 || bad "--warmup must be a non-negative integer (seconds)"
if ! is_count "$PORT_BASE" 1 || [ "$PORT_BASE" -gt 65533 ]; then bad "--port-base must be a port"; fi
[ -z "$CAUSALKV_THREADS" ] || is_count "$CAUSALKV_THREADS" || bad "--causalkv-threads must be a positive integer"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/results/profile-$STAMP"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/causalkv-profile.XXXXXX")
PIDS=()
RECORD_SECONDS=$((DURATION - 2))
# Prepopulation runs before the warm-up; allow it a generous rate of 1,000 writes/s.
PREPOPULATE_TIMEOUT=$((KEYS / 1000 + 30))
LOAD_TIMEOUT=$((PREPOPULATE_TIMEOUT + WARMUP + DURATION * 3 + 60))
# perf script unwinds every DWARF sample: slow, but bounded.
POST_TIMEOUT=600

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- setup

install_missing() {
    local missing=()
    command -v perf >/dev/null || missing+=(linux-perf)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
            sudo=sudo
        fi
        command -v apt-get >/dev/null ||
            die "no apt-get: install ${missing[*]} yourself (perf is linux-tools-* on Ubuntu)"
        say "installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
        command -v perf >/dev/null || die "perf is still missing after installing linux-perf"
    fi
    # cargo install puts binaries here, which may not be on PATH yet.
    PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
    if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
        command -v cargo >/dev/null || die "need cargo to install inferno"
        say "installing inferno (cargo install inferno --locked)"
        cargo install inferno --locked >&2
        command -v inferno-flamegraph >/dev/null || die "inferno-flamegraph still missing after cargo install"
    fi
}

# Exits 2 with the fix when the kernel does not let this user sample (perf_event_paranoid).
perf_refused() {
    local log=$1
    grep -qiE 'perf_event_paranoid|permission denied|not permitted|no permission|access to performance monitoring' "$log"
}

refuse() {
    local paranoid
    paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo unknown)
    {
        echo "profile.sh: perf may not sample here (kernel.perf_event_paranoid = $paranoid):"
        sed 's/^/    /' "$1"
        echo "profile.sh: allow it, as root, until the next reboot:"
        echo "    sysctl kernel.perf_event_paranoid=1"
        if [ "$(id -u)" = 0 ]; then
            echo "profile.sh: (as root already: a container may also need CAP_PERFMON and perf_event_open allowed by its seccomp profile)"
        else
            echo "profile.sh: (or run this script as root)"
        fi
    } >&2
    exit 2
}

# Checks that perf may count and sample, picks the event (cycles where the CPU exposes
# them, else the cpu-clock timer: virtual machines often have no hardware counters), and
# tries the call-graph mode on a trivial command.
check_perf() {
    mkdir -p "$WORK/logs"
    local log="$WORK/logs/perf-check.log"
    if ! perf stat -e instructions true >"$log" 2>&1; then
        perf_refused "$log" && refuse "$log"
    fi
    if perf stat -e cycles true 2>&1 | grep -qE '^ *[0-9][0-9,.]* +cycles'; then
        EVENT=cycles
    else
        EVENT=cpu-clock
    fi
    if ! perf record -e "$EVENT" -F "$FREQUENCY" --call-graph "$CALL_GRAPH" --no-buildid-cache \
        -o "$WORK/probe.data" -- true >"$log" 2>&1; then
        perf_refused "$log" && refuse "$log"
        cat "$log" >&2
        die "perf record -e $EVENT --call-graph $CALL_GRAPH does not work here (try --call-graph fp or dwarf)"
    fi
    rm -f "$WORK/probe.data"
}

build() {
    say "building causalkv (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin causalkv)
    local built="${CARGO_TARGET_DIR:-$ROOT/target}/release/causalkv"
    [ -x "$built" ] || die "no binary at $built"
    # Run a private copy: a rebuild by someone else before perf reads the symbols must not
    # swap the binary under the profile.
    BIN="$WORK/causalkv"
    cp "$built" "$BIN"
}

# ---------------------------------------------------------------- the run

# True once the replica at $1 holds at least $2 keys (its /metrics gauge).
holds_keys() {
    local keys
    keys=$(curl -sf --max-time 1 "http://$1/metrics" | awk '$1 == "causalkv_keys" { print $2 }')
    [ -n "$keys" ] && [ "${keys%.*}" -ge "$2" ]
}

# True while the process $1 runs.
running() { kill -0 "$1" 2>/dev/null; }

run() {
    local p=$PORT_BASE
    local view="127.0.0.1:$p,127.0.0.1:$((p + 1)),127.0.0.1:$((p + 2))"
    local target="127.0.0.1:$((p + REPLICA_INDEX))"
    check_ports "$p" $((p + 1)) $((p + 2))
    say "causalkv: 3 replicas on $view"
    # Three replicas share this machine: by default each gets an equal share of its cores,
    # as `causalkv cluster` (and bench/compare.sh) gives them.
    local share=$(($(nproc) / 3))
    THREADS=${CAUSALKV_THREADS:-$((share > 0 ? share : 1))}
    local i pids=()
    for i in 0 1 2; do
        start "causalkv-$i" env "CAUSALKV_WORKER_THREADS=$THREADS" "$BIN" serve \
            --listen "127.0.0.1:$((p + i))" --view "$view"
        pids+=("$LAST_PID")
    done
    for i in 0 1 2; do
        wait_until 30 "causalkv replica $i" view_lists_all "127.0.0.1:$((p + i))" "$view"
    done
    # `env` execs the server, so the PID started is the replica's own.
    TARGET_PID=${pids[$REPLICA_INDEX]}
    running "$TARGET_PID" || die "replica $REPLICA_INDEX is not running (logs: $WORK/logs)"

    say "causalkv: workload $WORKLOAD, $CONCURRENCY clients, ${DURATION}s after ${WARMUP}s of warm-up"
    mkdir -p "$WORK/logs"
    timeout "$LOAD_TIMEOUT" "$BIN" bench --replica "$view" --label causalkv \
        --workload "$WORKLOAD" --concurrency "$CONCURRENCY" --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --prepopulate --json >"$WORK/bench.json" 2>"$WORK/logs/bench.log" &
    local bench_pid=$!
    PIDS+=("$bench_pid")

    # The measured period starts WARMUP seconds after the last key is written; start
    # sampling half a second later, and stop with more than a second to spare.
    wait_until "$PREPOPULATE_TIMEOUT" "prepopulation of $KEYS keys" holds_keys "$target" "$KEYS"
    sleep "$WARMUP.5"
    running "$bench_pid" || die "the load generator ended before sampling began (logs: $WORK/logs/bench.log)"

    say "perf: sampling replica $REPLICA_INDEX (PID $TARGET_PID, $target) for ${RECORD_SECONDS}s ($EVENT at ${FREQUENCY} Hz, call graph $CALL_GRAPH)"
    start perf-record timeout $((RECORD_SECONDS + 60)) perf record -e "$EVENT" -F "$FREQUENCY" \
        --call-graph "$CALL_GRAPH" --no-buildid-cache -p "$TARGET_PID" -o "$WORK/perf.data" \
        -- sleep "$RECORD_SECONDS"
    local perf_pid=$LAST_PID
    wait "$perf_pid" || {
        cat "$WORK/logs/perf-record.log" >&2
        die "perf record failed"
    }
    running "$bench_pid" ||
        echo "profile.sh: warning: the load ended before sampling did; the profile includes idle time" >&2

    say "causalkv: waiting for the load generator's report"
    wait "$bench_pid" || {
        cat "$WORK/logs/bench.log" >&2
        die "causalkv bench failed"
    }
    [ -s "$WORK/bench.json" ] || die "causalkv bench wrote no report"
    stop_pids "${PIDS[@]}"
    PIDS=()
}

# ---------------------------------------------------------------- the flame graph

flamegraph() {
    say "perf: unwinding samples and drawing the flame graph"
    mkdir -p "$OUT"
    timeout "$POST_TIMEOUT" perf script -i "$WORK/perf.data" 2>"$WORK/logs/perf-script.log" |
        inferno-collapse-perf >"$OUT/collapsed.txt" 2>"$WORK/logs/collapse.log" ||
        die "perf script | inferno-collapse-perf failed (logs: $WORK/logs)"
    [ -s "$OUT/collapsed.txt" ] || die "no samples of replica $REPLICA_INDEX (logs: $WORK/logs)"
    # Stacks are weighed by the event's period: nanoseconds of CPU for cpu-clock.
    local countname=ns
    [ "$EVENT" = cpu-clock ] || countname=$EVENT
    inferno-flamegraph --title "causalkv replica, workload $WORKLOAD" --countname "$countname" \
        --subtitle "replica $REPLICA_INDEX of 3, $CONCURRENCY clients, $KEYS keys, $VALUE_SIZE B values, $THREADS worker thread(s) each; $EVENT at $FREQUENCY Hz for ${RECORD_SECONDS}s, call graph $CALL_GRAPH; $STAMP" \
        "$OUT/collapsed.txt" >"$OUT/flamegraph.svg" 2>"$WORK/logs/flamegraph.log" ||
        die "inferno-flamegraph failed (logs: $WORK/logs/flamegraph.log)"

    timeout "$POST_TIMEOUT" perf report -i "$WORK/perf.data" --no-children --sort symbol -n \
        --stdio -g none >"$WORK/report.txt" 2>"$WORK/logs/perf-report.log" ||
        die "perf report failed (logs: $WORK/logs/perf-report.log)"
    SAMPLES=$(grep -o '([0-9]* samples)' "$WORK/logs/perf-record.log" | tr -dc '0-9' || true)
    LOST=$(awk '/^# Total Lost Samples:/ { print $NF; exit }' "$WORK/report.txt")
    {
        echo "# The 25 hottest functions of replica $REPLICA_INDEX by self time (perf report --no-children --sort symbol)"
        echo "# ${SAMPLES:-?} samples of $EVENT at $FREQUENCY Hz over ${RECORD_SECONDS}s, workload $WORKLOAD"
        echo "# Overhead  Samples  Symbol ([k] kernel, [.] user space)"
        # Without branch records perf's IPC columns are only dashes: drop them.
        awk '!/^#/ && NF { sub(/[ \t]+-[ \t]+-[ \t]*$/, ""); sub(/[ \t]+$/, ""); print; if (++n == 25) exit }' \
            "$WORK/report.txt"
    } >"$OUT/top.txt"

    cp "$WORK/bench.json" "$OUT/bench.json"
}

environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cores: $(nproc); memory: $(free -h | awk '/^Mem:/ { print $2 }'); kernel: $(uname -r)"
    echo "load average at start: $LOADAVG"
    echo "causalkv: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "perf: $(perf version 2>/dev/null); inferno: $(cargo install --list 2>/dev/null | awk '/^inferno / { sub(/:$/, "", $2); print $2 }')"
    echo "kernel.perf_event_paranoid: $(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo unknown)"
    echo "cluster: 3 replicas on 127.0.0.1:$PORT_BASE-$((PORT_BASE + 2)), $THREADS worker thread(s) each"
    echo "parameters: workload $WORKLOAD, concurrency $CONCURRENCY, keys $KEYS, value size $VALUE_SIZE B, duration ${DURATION}s, warm-up ${WARMUP}s, prepopulated"
    echo "profiled: replica $REPLICA_INDEX (127.0.0.1:$((PORT_BASE + REPLICA_INDEX))), perf record -e $EVENT -F $FREQUENCY --call-graph $CALL_GRAPH for ${RECORD_SECONDS}s of the measured period: ${SAMPLES:-?} samples, ${LOST:-0} lost"
}

# ---------------------------------------------------------------- main

main() {
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
    install_missing
    check_perf
    build
    run
    flamegraph
    environment >"$OUT/environment.txt"
    say "results"
    cat "$OUT/environment.txt"
    echo
    cat "$OUT/top.txt"
    echo
    echo "saved in $OUT (open flamegraph.svg in a browser)"
}

main
