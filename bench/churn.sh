#!/usr/bin/env bash
# bench/churn.sh — bounded growth under churn: the durability issue's long run.
#
# Runs tests/churn.rs (`churn_stays_bounded`, release build) with 10,000,000 puts and
# deletes (half and half, 16 concurrent clients) over 10,000 keys of 1 KiB values, on a
# replica with a data directory (default fsync policy), then waits until every tombstone
# is collected and the journal compacted. The test fails unless memory growth, the
# store's bytes and the data directory are each within twice the live data. The
# measurements are saved as JSON under bench/results/churn-STAMP/.
#
# Usage: bench/churn.sh [--ops N] [--keys N] [--value-bytes N]

set -euo pipefail

OPS=10000000
KEYS=10000
VALUE_BYTES=1024

while [ $# -gt 0 ]; do
    case "$1" in
        --ops) OPS=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --value-bytes) VALUE_BYTES=$2; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "churn.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/bench/results/churn-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); cores: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "causalkv: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "ops: $OPS; keys: $KEYS; value bytes: $VALUE_BYTES"
} | tee "$OUT/environment.txt"
cd "$ROOT"
CHURN_OPS=$OPS CHURN_KEYS=$KEYS CHURN_VALUE_BYTES=$VALUE_BYTES CHURN_REPORT="$OUT/churn.json" \
    cargo test --release --quiet --test churn -- --nocapture
echo "saved in $OUT"
