#!/usr/bin/env bash
# bench/compare.sh — causalkv against Redis, etcd and the machine's ceiling: one command,
# one machine, interleaved rounds.
#
# Builds causalkv (release), then runs --rounds rounds (default 3); in each round, one
# system at a time so that none competes with an idle other for the CPU:
#   * a 3-replica causalkv cluster, driven by `causalkv bench` (HTTP contract);
#   * a Redis primary with two replicas (Debian's redis-server), driven by redis-benchmark
#     at the same concurrency, key count and value size (GET, SET; workload A runs a SET
#     and a GET benchmark side by side, half the clients each);
#   * a 3-member etcd cluster (Debian's etcd-server), driven by `causalkv bench --target
#     etcd` through etcd's JSON gateway (/v3/kv/put, /v3/kv/range, serializable reads);
#   * the ceiling: three `causalkv ceiling` servers (a replica's runtime and HTTP stack
#     answering one fixed JSON answer, no store), driven by `causalkv bench` exactly as the
#     replicas are: the fastest HTTP/JSON answer this machine gives causalkv's stack;
# runs the same workloads on each, prints one table of medians over the rounds (with each
# figure's range, and for the systems `causalkv bench` drives, the servers' CPU time per
# operation) and the ratios of causalkv to each peer (targets count on medians), and
# saves JSON, the raw reports and a PNG chart under bench/results/compare-STAMP/.
#
# Everything listens on 127.0.0.1 only, lives in a temp dir, and every process this script
# starts is stopped by its PID when it ends, fails or is interrupted. Every load is bounded
# in time. Installs redis-server, redis-tools, etcd-server, etcd-client, curl and
# fonts-dejavu-core with apt-get when missing (as root, or through sudo).
#
# Usage: bench/compare.sh [--duration SECONDS] [--warmup SECONDS] [--concurrency N]
#                         [--keys K] [--value-size BYTES] [--workloads "c write a"]
#                         [--systems "causalkv redis etcd ceiling"] [--port-base P]
# More systems for --systems: causalkv-always, causalkv-interval (durable replicas:
# --data-dir with that --fsync policy), redis-aof-always, redis-aof-everysec (Redis
# with appendonly and that appendfsync), causalkv-5 (five in-memory replicas: every write
# is acknowledged after all four peers applied it).
#                         [--causalkv-threads N] [--rounds N]
# --causalkv-threads N runs each causalkv replica with N worker threads
# (`serve --worker-threads`; default: the machine's cores split among the three replicas,
# as `causalkv cluster` does, since they share this machine).
# The original Python/Flask system is not available on this machine and is not run.

set -euo pipefail

DURATION=10
WARMUP=2
CONCURRENCY=16
KEYS=1000
VALUE_SIZE=32
WORKLOADS="c write a"
SYSTEMS="causalkv redis etcd ceiling"
ROUNDS=3
ROUND=1
PORT_BASE=17100
CAUSALKV_THREADS=

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --value-size) VALUE_SIZE=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --port-base) PORT_BASE=$2; shift 2 ;;
        --causalkv-threads) CAUSALKV_THREADS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/results/compare-$STAMP"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/causalkv-compare.XXXXXX")
PIDS=()
LOAD_TIMEOUT=$((DURATION * 3 + WARMUP + 60))

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- setup

install_missing() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-benchmark >/dev/null || missing+=(redis-tools)
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v etcdctl >/dev/null || missing+=(etcd-client)
    command -v curl >/dev/null || missing+=(curl)
    [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
        sudo=sudo
    fi
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

build() {
    say "building causalkv (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin causalkv)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/causalkv"
    [ -x "$BIN" ] || die "no binary at $BIN"
}

# The processes started for the system under load, comma-separated: `causalkv bench
# --server-pids` reports their CPU time per operation (steadier than throughput).
server_pids() {
    local IFS=,
    echo "${PIDS[*]}"
}

# The options every `causalkv bench` run shares.
bench_args() {
    BENCH_ARGS=(--concurrency "$CONCURRENCY" --keys "$KEYS" --value-size "$VALUE_SIZE"
        --duration "${DURATION}s" --warmup "${WARMUP}s" --prepopulate --json)
}

# ---------------------------------------------------------------- causalkv

# run_causalkv [LABEL [SERVE_OPTION...]]: the cluster labelled LABEL (default causalkv), of
# CLUSTER_SIZE replicas (default 3);
# with options, each replica gets a fresh data directory (--data-dir) and the options
# (causalkv-always, causalkv-interval: that --fsync policy).
run_causalkv() {
    local label=${1:-causalkv}
    [ $# -gt 0 ] && shift
    local n=${CLUSTER_SIZE:-3}
    local p=$PORT_BASE
    local ports=() i
    for ((i = 0; i < n; i++)); do ports+=($((p + i))); done
    local view
    view=$(printf '127.0.0.1:%s,' "${ports[@]}")
    view=${view%,}
    check_ports "${ports[@]}"
    say "$label: $n replicas on $view"
    # The replicas share this machine: by default each gets an equal share of its cores,
    # as `causalkv cluster` gives them (Redis runs one main thread per instance).
    local share=$(($(nproc) / n))
    local threads=(env "CAUSALKV_WORKER_THREADS=${CAUSALKV_THREADS:-$((share > 0 ? share : 1))}")
    for ((i = 0; i < n; i++)); do
        local durable=()
        if [ "$#" -gt 0 ]; then
            rm -rf "$WORK/$label-data-$i"
            durable=(--data-dir "$WORK/$label-data-$i")
        fi
        start "$label-$i" "${threads[@]}" "$BIN" serve --listen "127.0.0.1:$((p + i))" --view "$view" \
            "${durable[@]}" "$@"
    done
    for ((i = 0; i < n; i++)); do
        wait_until 30 "causalkv replica $i" view_lists_all "127.0.0.1:$((p + i))" "$view"
    done
    local w
    for w in $WORKLOADS; do
        say "$label: workload $w"
        timeout "$LOAD_TIMEOUT" "$BIN" bench --replica "$view" --label "$label" \
            --server-pids "$(server_pids)" --workload "$w" "${BENCH_ARGS[@]}" >"$WORK/$label-$w-r$ROUND.json"
    done
    stop_all
    rm -rf "$WORK/$label"-data-*
}

# ---------------------------------------------------------------- redis

redis_replicas_online() {
    [ "$(redis-cli -h 127.0.0.1 -p "$1" info replication | grep -c 'state=online')" -eq 2 ]
}

# redis-benchmark with the common options; extra options follow.
redis_bench() {
    timeout "$LOAD_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -r "$KEYS" \
        -d "$VALUE_SIZE" --csv "$@"
}

# The requests per second of a redis-benchmark CSV.
csv_rps() { awk -F, 'NR == 2 { gsub(/"/, ""); print $2 }' "$1"; }

# redis_row WORKLOAD NOTE RPS CSV...: one report row from one CSV, or from two run side by
# side: p50 averaged weighted by throughput, p99 the worse; throughput RPS if not empty,
# else the CSV's.
redis_row() {
    local workload=$1 note=$2 rps=$3
    shift 3
    awk -F, -v label="$REDIS_LABEL" -v workload="$workload" -v note="$note" -v total="$rps" '
        FNR == 2 { gsub(/"/, ""); rps += $2; p50 += $2 * $5; if ($7 + 0 > p99 + 0) p99 = $7 }
        END {
            if (total == "") total = rps
            printf "{\"system\":\"%s\",\"workload\":\"%s\",\"throughput_ops_s\":%.2f,", label, workload, total
            printf "\"overall\":{\"latency\":{\"p50_ms\":%.3f,\"p99_ms\":%.3f}},", (rps ? p50 / rps : 0), p99
            printf "\"note\":\"%s\"}\n", note
        }' "$@"
}

# Workload A: a SET and a GET redis-benchmark side by side, half the clients each; the
# throughput is all their requests over the wall time of the pair.
redis_mixed() {
    local n=$1 half=$2
    local t0 t1
    t0=$(date +%s%N)
    redis_bench -c "$half" -n $((n / 2)) -t set >"$WORK/redis-a-set.csv" &
    local set_pid=$!
    PIDS+=("$set_pid")
    redis_bench -c "$half" -n $((n / 2)) -t get >"$WORK/redis-a-get.csv"
    wait "$set_pid"
    t1=$(date +%s%N)
    local rps
    rps=$(awk -v n=$(((n / 2) * 2)) -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", n / (ns / 1e9) }')
    redis_row A "SET and GET redis-benchmark side by side, $half clients each" "$rps" \
        "$WORK/redis-a-set.csv" "$WORK/redis-a-get.csv" >"$WORK/$REDIS_LABEL-a-r$ROUND.json"
}

# run_redis [LABEL [APPENDFSYNC]]: without APPENDFSYNC, no persistence (the in-memory
# row); with it (always, everysec), every instance keeps an append-only file.
run_redis() {
    REDIS_LABEL=${1:-redis}
    local persistence=(--appendonly no)
    [ -n "${2:-}" ] && persistence=(--appendonly yes --appendfsync "$2")
    local p=$((PORT_BASE + 10))
    REDIS_PORT=$p
    check_ports "$p" $((p + 1)) $((p + 2))
    say "$REDIS_LABEL: primary on 127.0.0.1:$p, replicas on :$((p + 1)) and :$((p + 2))"
    local i
    for i in 0 1 2; do
        rm -rf "$WORK/redis-$i"
        mkdir -p "$WORK/redis-$i"
        local replica_of=()
        [ "$i" = 0 ] || replica_of=(--replicaof 127.0.0.1 "$p")
        start "redis-$i" redis-server --port $((p + i)) --bind 127.0.0.1 --protected-mode yes \
            --save '' "${persistence[@]}" --dir "$WORK/redis-$i" --daemonize no "${replica_of[@]}"
    done
    wait_until 30 "redis replication" redis_replicas_online "$p"
    say "redis: prepopulating and calibrating"
    redis_bench -c "$CONCURRENCY" -n $((KEYS * 20)) -t set >/dev/null
    redis_bench -c "$CONCURRENCY" -n 100000 -t get >"$WORK/redis-calibrate.csv"
    local rps n
    rps=$(csv_rps "$WORK/redis-calibrate.csv")
    n=$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { n = int(r * d); print (n < 1000 ? 1000 : n) }')
    local half=$((CONCURRENCY / 2)) w
    [ "$half" -ge 1 ] || half=1
    for w in $WORKLOADS; do
        say "$REDIS_LABEL: workload $w ($n requests)"
        case "$w" in
            c|C) redis_bench -c "$CONCURRENCY" -n "$n" -t get >"$WORK/redis-c.csv"
                 redis_row C "redis-benchmark GET" "" "$WORK/redis-c.csv" >"$WORK/$REDIS_LABEL-c-r$ROUND.json" ;;
            write) redis_bench -c "$CONCURRENCY" -n "$n" -t set >"$WORK/redis-write.csv"
                 redis_row write "redis-benchmark SET" "" "$WORK/redis-write.csv" >"$WORK/$REDIS_LABEL-write-r$ROUND.json" ;;
            a|A) redis_mixed "$n" "$half" ;;
            *) echo "compare.sh: redis has no workload $w; skipped" >&2 ;;
        esac
    done
    stop_all
}

# ---------------------------------------------------------------- etcd

etcd_answers() {
    curl -sf --max-time 1 -X POST -d '{"key":"AA=="}' "http://$1/v3/kv/range"
}

run_etcd() {
    local c=$((PORT_BASE + 20)) peer=$((PORT_BASE + 30))
    check_ports "$c" $((c + 1)) $((c + 2)) "$peer" $((peer + 1)) $((peer + 2))
    local cluster="e0=http://127.0.0.1:$peer,e1=http://127.0.0.1:$((peer + 1)),e2=http://127.0.0.1:$((peer + 2))"
    local endpoints="127.0.0.1:$c,127.0.0.1:$((c + 1)),127.0.0.1:$((c + 2))"
    say "etcd: 3 members on $endpoints"
    local i
    for i in 0 1 2; do
        start "etcd-$i" etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:$((c + i))" \
            --advertise-client-urls "http://127.0.0.1:$((c + i))" \
            --listen-peer-urls "http://127.0.0.1:$((peer + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((peer + i))" \
            --initial-cluster "$cluster" --initial-cluster-token causalkv-compare \
            --initial-cluster-state new --logger zap --log-level warn
    done
    for i in 0 1 2; do
        wait_until 60 "etcd member $i" etcd_answers "127.0.0.1:$((c + i))"
    done
    local w
    for w in $WORKLOADS; do
        say "etcd: workload $w"
        timeout "$LOAD_TIMEOUT" "$BIN" bench --target etcd --replica "$endpoints" --label etcd \
            --server-pids "$(server_pids)" --workload "$w" "${BENCH_ARGS[@]}" >"$WORK/etcd-$w-r$ROUND.json"
    done
    stop_all
}

# ---------------------------------------------------------------- ceiling

ceiling_answers() {
    curl -sf --max-time 1 "http://$1/kvs/probe" >/dev/null
}

run_ceiling() {
    local p=$((PORT_BASE + 40))
    local addrs="127.0.0.1:$p,127.0.0.1:$((p + 1)),127.0.0.1:$((p + 2))"
    check_ports "$p" $((p + 1)) $((p + 2))
    say "ceiling: 3 fixed-answer servers on $addrs"
    local i
    for i in 0 1 2; do
        start "ceiling-$i" "$BIN" ceiling --listen "127.0.0.1:$((p + i))"
    done
    for i in 0 1 2; do
        wait_until 30 "ceiling server $i" ceiling_answers "127.0.0.1:$((p + i))"
    done
    local w
    for w in $WORKLOADS; do
        say "ceiling: workload $w"
        timeout "$LOAD_TIMEOUT" "$BIN" bench --replica "$addrs" --label ceiling \
            --server-pids "$(server_pids)" --workload "$w" "${BENCH_ARGS[@]}" >"$WORK/ceiling-$w-r$ROUND.json"
    done
    stop_all
}

# ---------------------------------------------------------------- main

environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cores: $(nproc); memory: $(free -h | awk '/^Mem:/ { print $2 }'); kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "causalkv: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "redis: $(redis-server --version | head -1)"
    echo "etcd: $(etcd --version 2>/dev/null | head -1)"
    echo "causalkv replicas' worker threads: ${CAUSALKV_THREADS:-cores split among replicas ($(nproc) / 3, at least 1)}"
    echo "parameters: concurrency $CONCURRENCY, keys $KEYS, value size $VALUE_SIZE B, duration ${DURATION}s, warm-up ${WARMUP}s (causalkv bench only), workloads $WORKLOADS, $ROUNDS interleaved rounds of: $SYSTEMS"
    echo "original Python/Flask system: not available on this machine, not run"
}

main() {
    install_missing
    build
    bench_args
    environment >"$WORK/environment.txt"
    local system
    for ROUND in $(seq 1 "$ROUNDS"); do
        say "round $ROUND of $ROUNDS"
        for system in $SYSTEMS; do
            case "$system" in
                causalkv) run_causalkv ;;
                causalkv-always) run_causalkv causalkv-always --fsync always ;;
                causalkv-interval) run_causalkv causalkv-interval --fsync interval ;;
                causalkv-5) CLUSTER_SIZE=5 run_causalkv causalkv-5 ;;
                redis) run_redis ;;
                redis-aof-always) run_redis redis-aof-always always ;;
                redis-aof-everysec) run_redis redis-aof-everysec everysec ;;
                etcd) run_etcd ;;
                ceiling) run_ceiling ;;
                *) die "unknown system $system" ;;
            esac
        done
    done
    mkdir -p "$OUT/raw"
    cp "$WORK"/*.json "$OUT/raw/"
    cp "$WORK/environment.txt" "$OUT/"
    say "results"
    cat "$OUT/environment.txt"
    echo
    "$BIN" bench --summarize "$OUT"/raw/*.json --save "$OUT/summary"
    echo "saved in $OUT"
}

main
