#!/usr/bin/env bash
# bench/scale.sh — the scale report: memory against data size, and recovery time.
#
# Builds causalkv (release) and runs `causalkv bench --scale` four times, each on a fresh
# local 3-replica cluster that it starts and stops itself (loopback, free ports, temp dirs):
#   * many small entries: 1,000,000 keys of 32-byte values;
#   * large values: 16,384 keys of 64 KiB values (1 GiB of values);
# each once in memory and once durable (a data directory per replica, default fsync).
# Each run reports every replica's resident memory (VmRSS/VmHWM from /proc) against the
# raw size of keys plus values, and how long a replica killed with SIGKILL and started
# again (in memory: empty; durable: on its data directory) takes to answer, to serve, to
# hold the whole store (every session's last write; /health counting every key; then a
# read of every key), and to be in every view, with every replica's memory meanwhile. A
# durable run then kills all three and restarts them on their directories, and reports
# from each one's log when it had read its directory and written its fresh snapshot. The
# small-entries runs also put the loaded store under --under-writes of writes
# (--concurrency writers) with as many readers: read p50/p99/p99.9 and each replica's
# lock holds (causalkv_lock_hold_seconds) during the phase. Results are saved as JSON
# under bench/results/scale-STAMP/ (scale-STAMP-reduced/ when any size is below the
# issue's, whose targets are stated for 1,000,000 × 32 B and 16,384 × 64 KiB).
#
# Usage: bench/scale.sh [--small-keys N] [--large-keys N] [--large-value-size BYTES]
#                       [--concurrency N] [--under-writes DURATION]

set -euo pipefail

SMALL_KEYS=1000000
LARGE_KEYS=16384
LARGE_VALUE_SIZE=65536
CONCURRENCY=16
UNDER_WRITES=20s

while [ $# -gt 0 ]; do
    case "$1" in
        --small-keys) SMALL_KEYS=$2; shift 2 ;;
        --large-keys) LARGE_KEYS=$2; shift 2 ;;
        --large-value-size) LARGE_VALUE_SIZE=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --under-writes) UNDER_WRITES=$2; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scale.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REDUCED=
if [ "$SMALL_KEYS" -lt 1000000 ] || [ "$LARGE_KEYS" -lt 16384 ] || [ "$LARGE_VALUE_SIZE" -lt 65536 ]; then
    REDUCED=-reduced
fi
OUT="$ROOT/bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ)$REDUCED"
BENCH_PID=

# `causalkv bench --scale` kills its replicas when it stops; pass interruptions on to it.
stop_bench() {
    if [ -n "$BENCH_PID" ]; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
}
trap 'stop_bench; exit 130' INT
trap 'stop_bench; exit 143' TERM

echo "==> building causalkv (release)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin causalkv)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/causalkv"
mkdir -p "$OUT"

# run NAME KEYS VALUE_SIZE [OPTION...]: one scale report, as text on stdout and in
# $OUT/NAME.txt, and as JSON in $OUT/NAME.json.
run() {
    local name=$1 keys=$2 size=$3
    shift 3
    echo "==> $name: $keys keys of $size bytes $*" >&2
    "$BIN" bench --scale --keys "$keys" --value-size "$size" \
        --concurrency "$CONCURRENCY" --save "$OUT/$name" "$@" >"$OUT/$name.txt" &
    BENCH_PID=$!
    wait "$BENCH_PID"
    BENCH_PID=
    cat "$OUT/$name.txt"
    echo
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); cores: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "causalkv: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "small entries: $SMALL_KEYS × 32 B; large values: $LARGE_KEYS × $LARGE_VALUE_SIZE B; concurrency $CONCURRENCY; under writes $UNDER_WRITES"
    if [ -n "$REDUCED" ]; then
        echo "REDUCED RUN: smaller than the issue's 1,000,000 × 32 B and 16,384 × 64 KiB; a check of the tooling, not a measurement of the targets"
    fi
} | tee "$OUT/environment.txt"
run small-entries "$SMALL_KEYS" 32 --under-writes "$UNDER_WRITES"
run large-values "$LARGE_KEYS" "$LARGE_VALUE_SIZE"
run small-entries-durable "$SMALL_KEYS" 32 --durable --under-writes "$UNDER_WRITES"
run large-values-durable "$LARGE_KEYS" "$LARGE_VALUE_SIZE" --durable
echo "saved in $OUT${REDUCED:+ (a reduced run)}"
