# shellcheck shell=bash
# bench/lib.sh — what the benchmark scripts share: messages, starting and stopping
# processes by PID, polling with a deadline, free ports, a causalkv cluster's readiness.
#
# Sourced by bench/compare.sh and bench/profile.sh once they have set WORK (a temp dir,
# kept on failure) and PIDS=(); installs the EXIT/INT/TERM traps that stop every process
# started with `start` and remove WORK on success.

ME=$(basename "$0")

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "$ME: $*" >&2; exit 1; }

# Stops the given PIDs: SIGTERM, then SIGKILL after 5 s.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
    if [ "$status" = 0 ]; then
        rm -rf "$WORK"
    else
        echo "$ME: failed (status $status); logs kept in $WORK" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a command in the background, its output in $WORK/logs/NAME.log; records its PID
# (in PIDS, and in LAST_PID for the caller).
start() {
    local name=$1; shift
    mkdir -p "$WORK/logs"
    "$@" >>"$WORK/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# Stops every process started so far.
stop_all() {
    if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
    PIDS=()
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what not ready within ${seconds}s (logs: $WORK/logs)"
        sleep 0.2
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local port
    for port in "$@"; do port_free "$port" || die "port $port is in use (try --port-base)"; done
}

# view_lists_all ADDR VIEW: the replica at ADDR lists every address of VIEW (comma-separated).
view_lists_all() {
    local addr=$1 view=$2 count
    count=$(curl -sf --max-time 1 "http://$addr/view" | grep -o '"127\.0\.0\.1:[0-9]*"' | sort -u | wc -l)
    [ "$count" -eq "$(echo "$view" | tr ',' '\n' | wc -l)" ]
}
