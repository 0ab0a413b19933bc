#!/usr/bin/env bash
# Instructions per call, counted by callgrind: deterministic, whatever else the
# machine is doing, so it can gate CI where timings cannot.
#
#   bash bench/callgrind.sh            count every scenario below and print the table
#   bash bench/callgrind.sh --check    count the gated scenarios and fail when one is more than
#                                      10 % over bench/callgrind-baseline.txt (what .ci/run does)
#   bash bench/callgrind.sh --update   count the gated scenarios and rewrite the baseline; commit
#                                      it on its own, saying why the count moved
#
# Method. The measured process runs under `valgrind --tool=callgrind` twice: once for N1 and
# once for N2 calls made one after the other by `vra-loadgen count` (one tokio worker, so the
# schedule is the same every time). Instructions per call = (total(N2) - total(N1)) / (N2 - N1):
# start-up, connection set-up and shutdown cancel out. The gateway runs as bench/run.sh runs it:
# memory ledger, RUST_LOG=warn, no metrics listener, no OTLP export, REFINE calls (primary,
# cloud tier) to the fast fake upstream (`vra-loadgen upstream`), each call a new report.
#
# Scenarios (the gated ones are marked *):
#   gateway*        vra-gateway, memory ledger
#   gateway-http*   the same, driven through its OpenAI-compatible door (HTTP/1.1, the report in
#                   x-vra-* headers) instead of gRPC
#   gateway-redis*  vra-gateway, Redis ledger (gateway process only; needs redis-server)
#   grpc-floor      `vra-loadgen grpc-echo`: the gateway's service answering at once
#   reqwest-client  a bare reqwest client sending the gateway's upstream request
#   hyper-client    the same with a bare hyper-util client (HTTP/1.1)
#
# CARGO_TARGET_DIR is honoured; VRA_CALLGRIND_N1 / VRA_CALLGRIND_N2 override the call counts.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MODE=all
case "${1:-}" in
"") ;;
--check) MODE=check ;;
--update) MODE=update ;;
*)
    echo "usage: bash bench/callgrind.sh [--check | --update]" >&2
    exit 2
    ;;
esac

BASELINE=$ROOT/bench/callgrind-baseline.txt
TOLERANCE_PCT=10
N1=${VRA_CALLGRIND_N1:-100}
N2=${VRA_CALLGRIND_N2:-600}
if ! [[ "$N1" =~ ^[0-9]+$ && "$N2" =~ ^[0-9]+$ ]] || [ "$N2" -le "$N1" ]; then
    echo "callgrind: VRA_CALLGRIND_N2 must be a count above VRA_CALLGRIND_N1" >&2
    exit 2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
OUT=$TARGET_DIR/callgrind
mkdir -p "$OUT"

command -v valgrind >/dev/null || {
    echo "callgrind: valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 1
}
# The same command as bench/run.sh, so CI reuses the binaries its smoke run built.
cargo build --release --quiet --workspace --bins

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy NO_PROXY no_proxy
WORK=$(mktemp -d -t vra-callgrind.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$BIN/vra-loadgen" free-port; }
wait_port() { # PORT PID SECONDS
    local port=$1 pid=$2
    for _ in $(seq $(($3 * 10))); do
        kill -0 "$pid" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
total_of() { # CALLGRIND_OUT_FILE
    awk '/^(totals|summary):/ { print $2; exit }' "$1"
}
# Runs PROGRAM under callgrind with the environment in the array CG_ENV (`env` arguments; it
# is set outside valgrind, which does not follow `env`'s exec). It replaces the calling (sub)shell,
# so run it with `&` or in `( )`: the background job's pid is then valgrind's.
CG_ENV=()
CG_CLIENT=()
callgrind() { # NAME N PROGRAM ARGS...
    local name=$1 n=$2
    shift 2
    exec env "${CG_ENV[@]}" TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file="$OUT/$name-$n.out" "$@" >"$OUT/$name-$n.stdout" 2>"$OUT/$name-$n.log"
}

UP_PORT=$(free_port)
"$BIN/vra-loadgen" upstream --addr "127.0.0.1:$UP_PORT" >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" $! 10 || {
    echo "callgrind: the fake upstream did not start; see $OUT/upstream.log" >&2
    exit 1
}

REDIS_URL=
if command -v redis-server >/dev/null; then
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    wait_port "$REDIS_PORT" $! 10 && REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
fi

# One server under callgrind for N calls; prints its total instructions.
count_server() { # NAME N PORT PROGRAM ARGS...
    local name=$1 n=$2 port=$3 pid total
    shift 3
    callgrind "$name" "$n" "$@" &
    pid=$!
    if ! wait_port "$port" "$pid" 120; then
        kill "$pid" 2>/dev/null || true
        echo "callgrind: $name did not start; see $OUT/$name-$n.log" >&2
        return 1
    fi
    local client=(grpc --target "127.0.0.1:$port")
    [ "${#CG_CLIENT[@]}" -gt 0 ] && client=("${CG_CLIENT[@]}")
    if ! "$BIN/vra-loadgen" count "${client[@]}" --calls "$n" \
        >"$OUT/$name-$n.client.log" 2>&1; then
        kill "$pid" 2>/dev/null || true
        echo "callgrind: the calls to $name failed: $(tail -n 1 "$OUT/$name-$n.client.log")" >&2
        return 1
    fi
    # SIGTERM: the gateway shuts down gracefully, grpc-echo dies; callgrind writes its totals
    # either way.
    kill -TERM "$pid"
    wait "$pid" || true
    total=$(total_of "$OUT/$name-$n.out")
    [ -n "$total" ] || {
        echo "callgrind: no totals from $name; see $OUT/$name-$n.log" >&2
        return 1
    }
    echo "$total"
}

gateway() { # NAME N [VAR=VALUE...]
    local name=$1 n=$2 port total
    shift 2
    port=$(free_port)
    # A clean environment and an empty working directory (no stray .env), as in bench/run.sh.
    CG_ENV=(-i PATH="$PATH" HOME="${HOME:-/root}" RUST_LOG=warn
        VRA_GATEWAY_ADDR="127.0.0.1:$port" VRA_METRICS_ADDR= VRA_HYBRID_MODE=true
        MAX_CLOUD_CALLS=1000000000 OPENAI_BASE_URL="http://127.0.0.1:$UP_PORT/v1"
        OPENAI_API_KEY=sk-bench OLLAMA_HOST="http://127.0.0.1:$UP_PORT" "$@")
    total=$(cd "$WORK" && count_server "$name" "$n" "$port" "$BIN/vra-gateway" serve) || return 1
    CG_ENV=()
    echo "$total"
}

# The gateway driven through its OpenAI-compatible door instead of gRPC.
gateway_http() { # NAME N
    local door
    door=$(free_port)
    CG_CLIENT=(http --target "http://127.0.0.1:$door/v1/chat/completions")
    gateway "$1" "$2" VRA_HTTP_ADDR="127.0.0.1:$door" || {
        CG_CLIENT=()
        return 1
    }
    CG_CLIENT=()
}

grpc_floor() { # NAME N
    local port
    port=$(free_port)
    count_server "$1" "$2" "$port" "$BIN/vra-loadgen" grpc-echo --addr "127.0.0.1:$port"
}

http_client() { # NAME N CLIENT: `vra-loadgen count CLIENT` (hyper or reqwest) under callgrind
    (callgrind "$1" "$2" "$BIN/vra-loadgen" count "$3" \
        --target "http://127.0.0.1:$UP_PORT/v1/chat/completions" --calls "$2")
    total_of "$OUT/$1-$2.out"
}

declare -A PER_CALL=()
SCENARIOS=()
measure() { # NAME FUNCTION [ARGS...]
    local name=$1 fn=$2 t1 t2
    shift 2
    # `set -e` does not reach into $( ): check each total, so a failed run never counts as 0.
    t1=$("$fn" "$name" "$N1" "$@") || t1=
    t2=$("$fn" "$name" "$N2" "$@") || t2=
    if ! [[ "$t1" =~ ^[0-9]+$ && "$t2" =~ ^[0-9]+$ ]] || [ "$t2" -le "$t1" ]; then
        echo "callgrind: $name: no valid totals (N1: '$t1', N2: '$t2'); see $OUT/$name-*.log" >&2
        exit 1
    fi
    PER_CALL[$name]=$(((t2 - t1) / (N2 - N1)))
    SCENARIOS+=("$name")
    printf 'callgrind: %-15s %9d instructions per call (%d - %d over %d calls)\n' \
        "$name" "${PER_CALL[$name]}" "$t2" "$t1" $((N2 - N1)) >&2
}

measure gateway gateway
measure gateway-http gateway_http
if [ -n "$REDIS_URL" ]; then
    measure gateway-redis gateway VRA_LEDGER_URL="$REDIS_URL"
elif [ "$MODE" != all ] && [ "${VRA_REQUIRE_REDIS:-0}" = 1 ]; then
    echo "callgrind: redis-server is required (VRA_REQUIRE_REDIS=1) but did not start" >&2
    exit 1
fi
if [ "$MODE" = all ]; then
    measure grpc-floor grpc_floor
    measure reqwest-client http_client reqwest
    measure hyper-client http_client hyper
fi

# The table (also written to $OUT/counts.md).
{
    echo "| scenario | instructions per call |"
    echo "|---|---:|"
    for name in "${SCENARIOS[@]}"; do
        printf '| %s | %s |\n' "$name" "${PER_CALL[$name]}"
    done
    if [ -n "${PER_CALL[gateway-http]:-}" ]; then
        awk -v h="${PER_CALL[gateway-http]}" -v m="${PER_CALL[gateway]}" \
            'BEGIN { printf "| gateway-http / gateway | %.2fx |\n", h / m }'
    fi
    if [ -n "${PER_CALL[gateway-redis]:-}" ]; then
        awk -v r="${PER_CALL[gateway-redis]}" -v m="${PER_CALL[gateway]}" \
            'BEGIN { printf "| gateway-redis / gateway | %.2fx |\n", r / m }'
    fi
    if [ -n "${PER_CALL[grpc-floor]:-}" ]; then
        # The gateway's own floor: a gRPC server answering at once plus the client it uses.
        floor=${PER_CALL[grpc-floor]} client=${PER_CALL[hyper-client]}
        printf '| grpc-floor + hyper-client | %s |\n' $((floor + client))
    fi
} | tee "$OUT/counts.md"

case "$MODE" in
update)
    {
        echo "# Instructions per unary Generate, counted by bench/callgrind.sh; CI fails"
        echo "# when a count grows more than $TOLERANCE_PCT % over its line here. Update"
        echo "# it with \`bash bench/callgrind.sh --update\`, in a commit of its own that says why."
        for name in "${SCENARIOS[@]}"; do
            echo "$name ${PER_CALL[$name]}"
        done
    } >"$BASELINE"
    echo "callgrind: wrote $BASELINE"
    ;;
check)
    failed=0
    while read -r name base; do
        case "$name" in "#"* | "") continue ;; esac
        now=${PER_CALL[$name]:-}
        if [ -z "$now" ]; then
            echo "callgrind: FAIL $name: in the baseline but not measured" >&2
            failed=1
        elif [ $((now * 100)) -gt $((base * (100 + TOLERANCE_PCT))) ]; then
            echo "callgrind: FAIL $name: $now instructions per call, more than $TOLERANCE_PCT % over the baseline $base" >&2
            failed=1
        else
            echo "callgrind: ok $name: $now instructions per call (baseline $base)"
        fi
    done <"$BASELINE"
    exit "$failed"
    ;;
esac
