#!/usr/bin/env bash
# The benchmark suite of vra-gateway: one entry point.
#
#   bash bench/run.sh           full run (~10-15 min on 2 cores): writes bench/RESULTS.md
#   bash bench/run.sh --smoke   1-second scenarios, no nginx / LiteLLM / criterion: checks the
#                               harness end to end; writes target/bench-smoke/RESULTS.md
#   bash bench/run.sh --report-only
#                               rewrites bench/RESULTS.md from the last full run's raw results
#                               (target/bench-run/), e.g. after editing bench/findings.md
#
# It builds in release mode, starts on 127.0.0.1 only: the fast fake upstream
# (`vra-loadgen upstream`), nginx (proxy_pass with keep-alive, when installed), the gateway
# with the in-memory ledger, Redis and the gateway with the Redis ledger (when redis-server is
# installed), LiteLLM (full mode, via bench/litellm.sh, when it can be installed); drives
# them all with the same load generator (`vra-loadgen`), and stops everything on exit. A
# missing optional tool is skipped with a notice, never a failure.
#
# BENCH_ONLY=overload runs only the overload scenario (no nginx / Redis / LiteLLM / criterion)
# and writes target/bench-overload/RESULTS.md (target/bench-smoke/ with --smoke); bench/RESULTS.md
# is left alone.
#
# Environment: CARGO_TARGET_DIR is honoured. VRA_BENCH_PIN=0 disables CPU pinning.
# VRA_BENCH_LITELLM=0 skips LiteLLM. VRA_BENCH_DURATION / VRA_BENCH_WARMUP override the
# per-scenario seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SMOKE=0
REPORT_ONLY=0
ONLY=${BENCH_ONLY:-}
case "$ONLY" in
"" | overload) ;;
*)
    echo "bench: BENCH_ONLY must be empty or 'overload', not '$ONLY'" >&2
    exit 2
    ;;
esac
case "${1:-}" in
--smoke) SMOKE=1 ;;
--report-only) REPORT_ONLY=1 ;;
"") ;;
*)
    echo "usage: bash bench/run.sh [--smoke | --report-only]" >&2
    exit 2
    ;;
esac

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
if [ "$SMOKE" = 1 ]; then
    OUT_DIR=$ROOT/target/bench-smoke
    RESULTS_MD=$OUT_DIR/RESULTS.md
    DURATION=${VRA_BENCH_DURATION:-1}
    WARMUP=${VRA_BENCH_WARMUP:-0.2}
    STREAMS=100
    LEDGER_REPORTS=20000
else
    OUT_DIR=$ROOT/target/bench-run
    RESULTS_MD=$ROOT/bench/RESULTS.md
    DURATION=${VRA_BENCH_DURATION:-10}
    WARMUP=${VRA_BENCH_WARMUP:-2}
    STREAMS=1000
    LEDGER_REPORTS=1000000
fi
if [ "$ONLY" = overload ] && [ "$SMOKE" = 0 ]; then
    OUT_DIR=$ROOT/target/bench-overload
    RESULTS_MD=$OUT_DIR/RESULTS.md
fi
LOGS=$OUT_DIR/logs
RESULTS=$OUT_DIR/results.jsonl
COMMANDS=$OUT_DIR/commands.txt
SETUP=$OUT_DIR/setup.md
TABLES=$OUT_DIR/tables.md

# RESULTS.md = setup (written during the run) + tables (from the raw results) + findings +
# commands.
assemble() {
    local criterion=()
    if [ -f "$OUT_DIR/criterion-ran" ]; then criterion=(--criterion "$TARGET_DIR/criterion"); fi
    "$BIN/vra-loadgen" report --results "$RESULTS" "${criterion[@]}" --out "$TABLES"
    {
        cat "$SETUP"
        echo
        cat "$TABLES"
        echo "## Findings"
        echo
        if [ -f "$ROOT/bench/findings.md" ]; then
            cat "$ROOT/bench/findings.md"
        else
            echo "(none recorded)"
        fi
        echo
        echo "## Commands"
        echo
        echo '```'
        cat "$COMMANDS"
        echo '```'
    } >"$RESULTS_MD"
}

if [ "$REPORT_ONLY" = 1 ]; then
    for f in "$RESULTS" "$SETUP" "$COMMANDS" "$BIN/vra-loadgen"; do
        [ -e "$f" ] || {
            echo "bench: $f is missing: run bash bench/run.sh first" >&2
            exit 1
        }
    done
    assemble
    echo "bench: rewrote $RESULTS_MD from $RESULTS"
    exit 0
fi

rm -rf "$OUT_DIR"
mkdir -p "$LOGS"
: >"$RESULTS"
: >"$COMMANDS"
WORK=$(mktemp -d -t vra-bench.XXXXXX)
STARTED_AT=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# Traffic goes to 127.0.0.1 only: never through an environment proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy NO_PROXY no_proxy
# 1k concurrent streams need ~3k sockets across the processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '[bench %4ds] %s\n' "$(($(date +%s) - STARTED_AT))" "$*"; }
note_skip() { # TARGET REASON
    log "SKIP $1: $2"
    printf '{"kind":"skip","target":"%s","reason":"%s"}\n' "$1" "${2//\"/\'}" >>"$RESULTS"
}

# --- processes we start, stopped on exit -------------------------------------------------
PIDS=()
stop_pid() {
    local pid=$1 child
    kill -0 "$pid" 2>/dev/null || return 0
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        kill "$child" 2>/dev/null || true
    done
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- CPU split -----------------------------------------------------------------------------
PIN_SERVER=()
PIN_CLIENT=()
if [ "${VRA_BENCH_PIN:-1}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 1)
    PIN_CLIENT=(taskset -c 0)
    CPU_SPLIT="pinned with taskset: the server under test (vra-gateway, nginx or LiteLLM) on CPU 1; the load generator, the fake upstream and Redis on CPU 0"
else
    CPU_SPLIT="not pinned (taskset missing, fewer than 2 CPUs, or VRA_BENCH_PIN=0): every process shares every core"
fi

# Benchmark processes that are not the server under test (upstreams, Redis): their CPU is not
# counted as interference from the rest of the machine.
ENV_PIDS=()

# --- helpers -------------------------------------------------------------------------------
free_port() { "$BIN/vra-loadgen" free-port; }

wait_port() { # PORT PID SECONDS
    local port=$1 pid=$2 tries=$(($3 * 10))
    for _ in $(seq "$tries"); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

record_idle_rss() { # TARGET PID
    local kb
    kb=$(rss_kb "$2")
    printf '{"kind":"rss","label":"%s-idle","kb":%s}\n' "$1" "${kb:-0}" >>"$RESULTS"
    log "idle RSS of $1: ${kb:-0} kB"
}

# Runs one load scenario; a failing run is noted, not fatal.
load() { # LABEL PROTO TARGET WATCH_PID [loadgen args...]
    local label=$1 proto=$2 target=$3 pid=$4
    shift 4
    local cmd=("${PIN_CLIENT[@]}" "$BIN/vra-loadgen" "$proto" --target "$target" --label "$label"
        --watch-pid "$pid" "${ENV_PIDS[@]}" --duration "$DURATION" --warmup "$WARMUP" --out "$RESULTS" "$@")
    echo "${cmd[*]}" >>"$COMMANDS"
    log "$label"
    if ! "${cmd[@]}" >"$LOGS/load-${label//\//-}.log" 2>&1; then
        note_skip "$label" "load generator failed: $(tail -n 1 "$LOGS/load-${label//\//-}.log")"
        return 0
    fi
    grep -v '^{' "$LOGS/load-${label//\//-}.log" | sed 's/^/    /'
}

start_upstream() { # NAME PORT [upstream args...]; sets LAST_PID
    local name=$1 port=$2
    shift 2
    "${PIN_CLIENT[@]}" "$BIN/vra-loadgen" upstream --addr "127.0.0.1:$port" "$@" >"$LOGS/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$port" "$LAST_PID" 10 || {
        echo "bench: $name did not start; see $LOGS/$name.log" >&2
        exit 1
    }
}

# The gateway with a clean environment and an empty working directory (no stray .env).
start_gateway() { # NAME PORT UPSTREAM_PORT [VAR=VALUE...]; sets LAST_PID
    local name=$1 port=$2 up=$3
    shift 3
    (
        cd "$WORK"
        exec env -i PATH="$PATH" HOME="${HOME:-/root}" RUST_LOG=warn \
            VRA_GATEWAY_ADDR="127.0.0.1:$port" VRA_METRICS_ADDR= VRA_HYBRID_MODE=true \
            MAX_CLOUD_CALLS=1000000000 OPENAI_BASE_URL="http://127.0.0.1:$up/v1" \
            OPENAI_API_KEY=sk-bench OLLAMA_HOST="http://127.0.0.1:$up" "$@" \
            "${PIN_SERVER[@]}" "$BIN/vra-gateway" serve
    ) >"$LOGS/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$port" "$LAST_PID" 20 || {
        echo "bench: $name did not start; see $LOGS/$name.log" >&2
        tail -n 20 "$LOGS/$name.log" >&2 || true
        exit 1
    }
}

# Overload: open-loop EXPAND calls (routed to the local secondary) at twice what
# the upstream can serve. The upstream has OVL_SLOTS slots, each held OVL_DELAY_MS per request
# (capacity OVL_SLOTS * 1000 / OVL_DELAY_MS calls/s; later requests wait in FIFO order). The
# same load goes to a fresh gateway with limits (the local provider's per-endpoint
# max_in_flight = the slots, max_queue, VRA_MAX_IN_FLIGHT) and to a fresh one without; each
# gateway's /metrics is scraped after its run for the queue-wait histogram.
OVL_SLOTS=8
OVL_DELAY_MS=100
OVL_QUEUE=8
OVL_MAX_IN_FLIGHT=64
OVL_RATE=$((2 * OVL_SLOTS * 1000 / OVL_DELAY_MS))
OVL_TIMEOUT_MS=2000
overload_scenario() {
    local port pid cfg run metrics_port gw_port limits
    port=$(free_port)
    start_upstream upstream-overload "$port" --tokens 16 --delay-ms "$OVL_DELAY_MS" --max-concurrency "$OVL_SLOTS"
    local up_pid=$LAST_PID
    echo "vra-loadgen upstream --addr 127.0.0.1:$port --tokens 16 --delay-ms $OVL_DELAY_MS --max-concurrency $OVL_SLOTS" >>"$COMMANDS"
    log "overload: upstream capacity $OVL_SLOTS slots x ${OVL_DELAY_MS} ms = $((OVL_RATE / 2)) calls/s; offering $OVL_RATE calls/s"
    for run in limits no-limits; do
        cfg=$OUT_DIR/overload-$run.toml
        if [ "$run" = limits ]; then
            limits=(VRA_MAX_IN_FLIGHT="$OVL_MAX_IN_FLIGHT")
            printf '[providers.local]\nkind = "ollama"\nbase_url = "http://127.0.0.1:%s"\ntier = "local"\nmax_in_flight = %s\nmax_queue = %s\n' \
                "$port" "$OVL_SLOTS" "$OVL_QUEUE" >"$cfg"
        else
            limits=(VRA_MAX_IN_FLIGHT=1000000)
            printf '[providers.local]\nkind = "ollama"\nbase_url = "http://127.0.0.1:%s"\ntier = "local"\n' "$port" >"$cfg"
        fi
        metrics_port=$(free_port)
        gw_port=$(free_port)
        start_gateway "gateway-overload-$run" "$gw_port" "$port" VRA_GATEWAY_CONFIG="$cfg" \
            VRA_METRICS_ADDR="127.0.0.1:$metrics_port" "${limits[@]}"
        pid=$LAST_PID
        {
            echo "# overload/$run: $cfg"
            sed 's/^/#   /' "$cfg"
            echo "#   env: ${limits[*]}"
        } >>"$COMMANDS"
        sleep 0.5
        load "overload/$run" grpc "127.0.0.1:$gw_port" "$pid" --env-pid "$up_pid" --mode open --rate "$OVL_RATE" \
            --phase expand --connections 8 --timeout-ms "$OVL_TIMEOUT_MS" --warmup 0
        if curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$LOGS/metrics-overload-$run.txt"; then
            awk -v label="overload/$run" '
                /^vra_gateway_queue_wait_seconds_count/ { count += $NF }
                /^vra_gateway_queue_wait_seconds_bucket/ && /le="0.001"/ { fast += $NF }
                END { printf "{\"kind\":\"queue_wait\",\"label\":\"%s\",\"count\":%d,\"under_1ms\":%d}\n", label, count, fast }
            ' "$LOGS/metrics-overload-$run.txt" >>"$RESULTS"
            grep -E '^vra_gateway_(requests_rejected_total|queue_wait_seconds_(count|sum))' \
                "$LOGS/metrics-overload-$run.txt" | sed 's/^/    /' || true
        else
            log "overload/$run: could not scrape /metrics on 127.0.0.1:$metrics_port"
        fi
        stop_pid "$pid"
    done
    stop_pid "$up_pid"
}

# --- RESULTS.md ----------------------------------------------------------------------------
write_results() {
    log "writing $RESULTS_MD"

    CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)
    MEM_GB=$(awk '/^MemTotal:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "?")
    COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=""
    if [ -n "$(git status --porcelain 2>/dev/null)" ]; then DIRTY=" (with uncommitted changes)"; fi
    MODE="full"
    [ "$SMOKE" = 1 ] && MODE="smoke (1-second scenarios; not for comparison)"
    {
        echo "# Benchmark results"
        echo
        echo "Written by \`bash bench/run.sh\` — do not edit by hand: rerun it. The Findings section is"
        echo "copied from \`bench/findings.md\` (\`bash bench/run.sh --report-only\` refreshes it)."
        echo
        echo "## Setup"
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); mode: $MODE; total run time $(($(date +%s) - STARTED_AT)) s"
        echo "- Load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
        echo "  (other work on the machine skews every number: see Interference below)"
        echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $MEM_GB GiB memory, Linux $(uname -r)"
        echo "- Git commit: $COMMIT$DIRTY; $(rustc --version 2>/dev/null || echo 'rustc unknown'), release profile"
        echo "- CPU split: $CPU_SPLIT"
        echo "- Upstream: \`vra-loadgen upstream\`, a fast fake OpenAI-compatible server (fixed 16-token"
        echo "  completion; the SSE stream in one chunk), not nginx serving a static file"
        echo "- Gateway: \`vra-gateway serve\`, RUST_LOG=warn, no metrics listener, no OTLP export,"
        echo "  VRA_HYBRID_MODE=true, MAX_CLOUD_CALLS=1000000000; calls are REFINE (primary, cloud tier:"
        echo "  every call reserves and records a budget unit) — except in the Overload section: EXPAND"
        echo "  calls to the local secondary, gateways with a metrics listener"
        echo "- Load: \`vra-loadgen\` (same binary for every target): gRPC \`Generate\` (tonic client) to"
        echo "  the gateway and the gRPC floor, the same chat JSON over HTTP/1.1 keep-alive (a minimal"
        echo "  client, wrk-like) to the others; ${WARMUP} s warm-up then ${DURATION} s measured per"
        echo "  scenario; report ids cycle over 100,000 ids"
        echo "- gRPC floor: \`vra-loadgen grpc-echo\`, the gateway's own service answering at once with a"
        echo "  fixed response — what the gRPC round trip alone costs, for the same client"
        echo "- nginx: $NGINX_VERSION; Redis: $REDIS_VERSION; LiteLLM: $LITELLM_VERSION (one worker)"
    } >"$SETUP"
    assemble
    log "done: $RESULTS_MD"
}

# --- build ---------------------------------------------------------------------------------
log "building release binaries (cargo build --release --workspace --bins)"
echo "cargo build --release --workspace --bins" >>"$COMMANDS"
if ! cargo build --release --workspace --bins >"$LOGS/build.log" 2>&1; then
    tail -n 40 "$LOGS/build.log" >&2
    echo "bench: release build failed" >&2
    exit 1
fi
log "build done"

if [ "$ONLY" = overload ]; then
    NGINX_VERSION="not run (BENCH_ONLY=overload)"
    REDIS_VERSION="not run (BENCH_ONLY=overload)"
    LITELLM_VERSION="not run (BENCH_ONLY=overload)"
    note_skip others "BENCH_ONLY=overload: only the overload scenario ran"
    overload_scenario
    write_results
    exit 0
fi

# --- upstream and servers ------------------------------------------------------------------
UP_PORT=$(free_port)
start_upstream upstream "$UP_PORT" --tokens 16
UP_PID=$LAST_PID
ENV_PIDS+=(--env-pid "$UP_PID")
UP_URL=http://127.0.0.1:$UP_PORT/v1/chat/completions
echo "vra-loadgen upstream --addr 127.0.0.1:$UP_PORT --tokens 16" >>"$COMMANDS"
log "fake upstream on 127.0.0.1:$UP_PORT (pid $UP_PID)"

GW_PORT=$(free_port)
GWH_PORT=$(free_port)
start_gateway gateway "$GW_PORT" "$UP_PORT" VRA_HTTP_ADDR="127.0.0.1:$GWH_PORT"
GW_PID=$LAST_PID
# The same gateway process serves both doors; the scenarios drive one door at a time.
DOOR="http://127.0.0.1:$GWH_PORT/v1/chat/completions"
log "gateway (memory ledger) on 127.0.0.1:$GW_PORT (gRPC) and $DOOR (OpenAI door) (pid $GW_PID)"

# The gRPC floor: the gateway's service answering at once, on the server CPU like the gateway.
ECHO_PORT=$(free_port)
"${PIN_SERVER[@]}" "$BIN/vra-loadgen" grpc-echo --addr "127.0.0.1:$ECHO_PORT" --tokens 16 >"$LOGS/grpc-echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_port "$ECHO_PORT" "$ECHO_PID" 10 || {
    echo "bench: grpc-echo did not start; see $LOGS/grpc-echo.log" >&2
    exit 1
}
echo "vra-loadgen grpc-echo --addr 127.0.0.1:$ECHO_PORT --tokens 16" >>"$COMMANDS"
log "gRPC floor (vra-loadgen grpc-echo) on 127.0.0.1:$ECHO_PORT (pid $ECHO_PID)"
ECHO=127.0.0.1:$ECHO_PORT
sleep 1
record_idle_rss gateway "$GW_PID"
record_idle_rss direct "$UP_PID"

NGINX_VERSION="not installed"
NGX_PID=""
if [ "$SMOKE" = 1 ]; then
    NGINX_VERSION="skipped in smoke mode"
    note_skip nginx "skipped in smoke mode"
elif ! command -v nginx >/dev/null; then
    note_skip nginx "nginx is not installed (apt-get install nginx); thin-proxy comparison skipped"
else
    NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
    NGX_PORT=$(free_port)
    mkdir -p "$WORK/nginx"
    NGINX_USER=""
    [ "$(id -u)" = 0 ] && NGINX_USER="user root;"
    cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream fake_llm {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://fake_llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    "${PIN_SERVER[@]}" nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" >"$LOGS/nginx.log" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    if wait_port "$NGX_PORT" "$NGX_PID" 10; then
        log "nginx $NGINX_VERSION on 127.0.0.1:$NGX_PORT (pid $NGX_PID)"
        sleep 0.5
        record_idle_rss nginx "$NGX_PID"
    else
        note_skip nginx "nginx did not start: $(tail -n 1 "$WORK/nginx/error.log" 2>/dev/null)"
        NGX_PID=""
    fi
fi

REDIS_VERSION="not installed"
GWR_PID=""
if ! command -v redis-server >/dev/null; then
    note_skip gateway-redis "redis-server is not installed; Redis-ledger scenarios skipped"
else
    REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
    REDIS_PORT=$(free_port)
    "${PIN_CLIENT[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no --dir "$WORK" >"$LOGS/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    ENV_PIDS+=(--env-pid "$REDIS_PID")
    if wait_port "$REDIS_PORT" "$REDIS_PID" 10; then
        GWR_PORT=$(free_port)
        start_gateway gateway-redis "$GWR_PORT" "$UP_PORT" VRA_LEDGER_URL="redis://127.0.0.1:$REDIS_PORT/0"
        GWR_PID=$LAST_PID
        log "Redis $REDIS_VERSION on 127.0.0.1:$REDIS_PORT; gateway (Redis ledger) on 127.0.0.1:$GWR_PORT (pid $GWR_PID)"
        sleep 1
        record_idle_rss gateway-redis "$GWR_PID"
    else
        note_skip gateway-redis "redis-server did not start"
    fi
fi

# The response cache: a gateway with the memory store (memory ledger), and one with the Redis
# store (and the Redis ledger). Hit scenarios send one prompt (every call after the first is a
# hit); miss scenarios a prompt per call (--distinct-prompts: every call looks up, goes upstream
# and stores).
GWK_PORT=$(free_port)
start_gateway gateway-cache "$GWK_PORT" "$UP_PORT" VRA_CACHE=memory
GWK_PID=$LAST_PID
log "gateway (memory cache) on 127.0.0.1:$GWK_PORT (pid $GWK_PID)"
GWKR_PID=""
if [ -n "$GWR_PID" ]; then
    GWKR_PORT=$(free_port)
    start_gateway gateway-cache-redis "$GWKR_PORT" "$UP_PORT" \
        VRA_LEDGER_URL="redis://127.0.0.1:$REDIS_PORT/0" VRA_CACHE=redis
    GWKR_PID=$LAST_PID
    log "gateway (Redis cache, Redis ledger) on 127.0.0.1:$GWKR_PORT (pid $GWKR_PID)"
else
    note_skip gateway-cache-redis "needs the Redis ledger above"
fi

# Confirmed reservations (VRA_LEDGER_MIN_REPLICAS=1): a replica of that Redis, and a gateway
# whose every reservation waits (WAIT 1) until the replica holds it.
GWRC_PID=""
if [ -z "$GWR_PID" ] || ! command -v redis-cli >/dev/null; then
    note_skip gateway-redis-confirmed "needs the Redis ledger above and redis-cli"
else
    REPLICA_PORT=$(free_port)
    mkdir -p "$WORK/replica"
    echo "redis-server --port $REPLICA_PORT --replicaof 127.0.0.1 $REDIS_PORT --save '' --appendonly no" >>"$COMMANDS"
    "${PIN_CLIENT[@]}" redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --replicaof 127.0.0.1 "$REDIS_PORT" --dir "$WORK/replica" \
        >"$LOGS/redis-replica.log" 2>&1 &
    REPLICA_PID=$!
    PIDS+=("$REPLICA_PID")
    ENV_PIDS+=(--env-pid "$REPLICA_PID")
    synced=0
    if wait_port "$REPLICA_PORT" "$REPLICA_PID" 10; then
        # The initial sync has no event to wait for: poll the link.
        for _ in $(seq 1 100); do
            if redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q master_link_status:up; then
                synced=1
                break
            fi
            sleep 0.1
        done
    fi
    if [ "$synced" = 1 ]; then
        GWRC_PORT=$(free_port)
        start_gateway gateway-redis-confirmed "$GWRC_PORT" "$UP_PORT" \
            VRA_LEDGER_URL="redis://127.0.0.1:$REDIS_PORT/0" VRA_LEDGER_MIN_REPLICAS=1
        GWRC_PID=$LAST_PID
        log "Redis replica on 127.0.0.1:$REPLICA_PORT; gateway (confirmed reservations) on 127.0.0.1:$GWRC_PORT (pid $GWRC_PID)"
        sleep 1
    else
        note_skip gateway-redis-confirmed "the Redis replica did not sync"
    fi
fi

# The cluster ledger: three Redis Cluster masters (no replicas) on loopback, a gateway on it,
# and a second one with a clients file of one client (every key of that client carries its
# hash tag: one shard takes all of its work).
GWC_PID=""
GWCC_PID=""
CLUSTER_PIDS=()
CLUSTER_TOKEN=vra_bench_cluster_client_token
node_port() { # a free port whose cluster-bus port (+10000) is a valid port
    local p
    while :; do
        p=$(free_port)
        [ "$p" -le 55535 ] && break
    done
    echo "$p"
}
cluster_cpu() { # utime + stime ticks of each master, space-separated
    local pid out=""
    for pid in "${CLUSTER_PIDS[@]}"; do
        out="$out $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    done
    echo "$out"
}
if [ "$SMOKE" = 1 ]; then
    note_skip gateway-cluster "skipped in smoke mode"
elif ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    note_skip gateway-cluster "redis-server or redis-cli is not installed; cluster-ledger scenarios skipped"
else
    CLUSTER_NODES=()
    for _ in 1 2 3; do
        p=$(node_port)
        mkdir -p "$WORK/cluster-$p"
        "${PIN_CLIENT[@]}" redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$WORK/cluster-$p/nodes.conf" --save "" --appendonly no \
            --dir "$WORK/cluster-$p" >"$LOGS/redis-cluster-$p.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        ENV_PIDS+=(--env-pid "$pid")
        CLUSTER_PIDS+=("$pid")
        wait_port "$p" "$pid" 10 || note_skip gateway-cluster "a cluster node did not start"
        CLUSTER_NODES+=("127.0.0.1:$p")
    done
    echo "redis-cli --cluster create ${CLUSTER_NODES[*]} --cluster-replicas 0 --cluster-yes" >>"$COMMANDS"
    if redis-cli --cluster create "${CLUSTER_NODES[@]}" --cluster-replicas 0 --cluster-yes \
        >"$LOGS/redis-cluster-create.log" 2>&1; then
        # The cluster gossips its state: poll until every node says ok.
        for _ in $(seq 100); do
            ok=1
            for n in "${CLUSTER_NODES[@]}"; do
                redis-cli -p "${n#*:}" cluster info 2>/dev/null | grep -q cluster_state:ok || ok=0
            done
            [ "$ok" = 1 ] && break
            sleep 0.1
        done
        CLUSTER_URL="redis+cluster://$(
            IFS=,
            echo "${CLUSTER_NODES[*]}"
        )"
        GWC_PORT=$(free_port)
        start_gateway gateway-cluster "$GWC_PORT" "$UP_PORT" VRA_LEDGER_URL="$CLUSTER_URL"
        GWC_PID=$LAST_PID
        printf '[[client]]\nid = "bench"\ntoken_sha256 = "%s"\n' \
            "$(printf %s "$CLUSTER_TOKEN" | sha256sum | cut -d' ' -f1)" >"$WORK/clients.toml"
        GWCC_PORT=$(free_port)
        start_gateway gateway-cluster-client "$GWCC_PORT" "$UP_PORT" VRA_LEDGER_URL="$CLUSTER_URL" \
            VRA_CLIENTS_FILE="$WORK/clients.toml"
        GWCC_PID=$LAST_PID
        log "Redis Cluster (3 masters) on ${CLUSTER_NODES[*]}; gateways on it: 127.0.0.1:$GWC_PORT, with one client 127.0.0.1:$GWCC_PORT"
    else
        note_skip gateway-cluster "redis-cli --cluster create failed: $(tail -n 1 "$LOGS/redis-cluster-create.log")"
    fi
fi
# Runs a load scenario against a cluster gateway and records how the masters shared the
# Redis work (CPU ticks per master over the scenario).
cluster_load() { # LABEL loadgen-args...
    local label=$1 before after
    shift
    before=$(cluster_cpu)
    load "$label" "$@"
    after=$(cluster_cpu)
    # The ticks span the warm-up too: the report scales the calls by (warm-up + duration) / duration.
    printf '{"kind":"shard_cpu","label":"%s","before":[%s],"after":[%s],"warmup_s":%s,"duration_s":%s}\n' \
        "$label" "$(echo $before | tr ' ' ',')" "$(echo $after | tr ' ' ',')" "$WARMUP" "$DURATION" >>"$RESULTS"
}

LITELLM_VERSION="not run"
# The master key LiteLLM requires (bench/litellm.sh serve reads it); local only.
export LITELLM_BENCH_KEY=sk-vra-bench-local-only-not-a-secret
LL_PID=""
if [ "$SMOKE" = 1 ]; then
    LITELLM_VERSION="skipped in smoke mode"
    note_skip litellm "skipped in smoke mode"
elif [ "${VRA_BENCH_LITELLM:-1}" != 1 ]; then
    note_skip litellm "VRA_BENCH_LITELLM=0"
else
    log "installing LiteLLM into bench/.venv (bounded to 10 minutes)"
    echo "bash bench/litellm.sh install" >>"$COMMANDS"
    if timeout 600 bash bench/litellm.sh install >"$LOGS/litellm-install.log" 2>&1; then
        LITELLM_VERSION=$(bash bench/litellm.sh version 2>/dev/null || echo unknown)
        LL_PORT=$(free_port)
        echo "bash bench/litellm.sh serve $LL_PORT http://127.0.0.1:$UP_PORT/v1" >>"$COMMANDS"
        "${PIN_SERVER[@]}" bash bench/litellm.sh serve "$LL_PORT" "http://127.0.0.1:$UP_PORT/v1" >"$LOGS/litellm.log" 2>&1 &
        LL_PID=$!
        PIDS+=("$LL_PID")
        if wait_port "$LL_PORT" "$LL_PID" 180; then
            log "LiteLLM $LITELLM_VERSION on 127.0.0.1:$LL_PORT (pid $LL_PID)"
            sleep 2
            record_idle_rss litellm "$LL_PID"
        else
            note_skip litellm "LiteLLM did not start (it exited, or 180 s passed): $(grep -v '^\s*$' "$LOGS/litellm.log" 2>/dev/null | tail -n 1)"
            stop_pid "$LL_PID"
            LL_PID=""
        fi
    else
        note_skip litellm "installing litellm[proxy] from PyPI failed or took too long: $(tail -n 1 "$LOGS/litellm-install.log" 2>/dev/null)"
    fi
fi

# --- scenarios -----------------------------------------------------------------------------
GW=127.0.0.1:$GW_PORT
# One connection in flight, unary.
load c1/direct http "$UP_URL" "$UP_PID" --mode closed --concurrency 1
[ -n "$NGX_PID" ] && load c1/nginx http "http://127.0.0.1:$NGX_PORT/v1/chat/completions" "$NGX_PID" --mode closed --concurrency 1
load c1/grpc-floor grpc "$ECHO" "$ECHO_PID" --mode closed --concurrency 1
load c1/gateway grpc "$GW" "$GW_PID" --mode closed --concurrency 1
load c1/gateway-http http "$DOOR" "$GW_PID" --model vra-auto --vra-phase refine --mode closed --concurrency 1
[ -n "$GWR_PID" ] && load c1/gateway-redis grpc "127.0.0.1:$GWR_PORT" "$GWR_PID" --mode closed --concurrency 1
[ -n "$GWRC_PID" ] && load c1/gateway-redis-confirmed grpc "127.0.0.1:$GWRC_PORT" "$GWRC_PID" --mode closed --concurrency 1
[ -n "$GWC_PID" ] && load c1/gateway-cluster grpc "127.0.0.1:$GWC_PORT" "$GWC_PID" --mode closed --concurrency 1
[ -n "$LL_PID" ] && load c1/litellm http "http://127.0.0.1:$LL_PORT/v1/chat/completions" "$LL_PID" --model bench-model --api-key "$LITELLM_BENCH_KEY" --mode closed --concurrency 1

# Open loop at 1000 RPS (LiteLLM tops out far below it; its capacity is the c64 scenario).
load open1000/direct http "$UP_URL" "$UP_PID" --mode open --rate 1000
[ -n "$NGX_PID" ] && load open1000/nginx http "http://127.0.0.1:$NGX_PORT/v1/chat/completions" "$NGX_PID" --mode open --rate 1000
load open1000/grpc-floor grpc "$ECHO" "$ECHO_PID" --mode open --rate 1000
load open1000/gateway grpc "$GW" "$GW_PID" --mode open --rate 1000
load open1000/gateway-http http "$DOOR" "$GW_PID" --model vra-auto --vra-phase refine --mode open --rate 1000
[ -n "$GWR_PID" ] && load open1000/gateway-redis grpc "127.0.0.1:$GWR_PORT" "$GWR_PID" --mode open --rate 1000
[ -n "$GWRC_PID" ] && load open1000/gateway-redis-confirmed grpc "127.0.0.1:$GWRC_PORT" "$GWRC_PID" --mode open --rate 1000
[ -n "$GWC_PID" ] && load open1000/gateway-cluster grpc "127.0.0.1:$GWC_PORT" "$GWC_PID" --mode open --rate 1000

# 16 in flight: both doors of the gateway beside nginx and LiteLLM.
load c16/direct http "$UP_URL" "$UP_PID" --mode closed --concurrency 16
[ -n "$NGX_PID" ] && load c16/nginx http "http://127.0.0.1:$NGX_PORT/v1/chat/completions" "$NGX_PID" --mode closed --concurrency 16
load c16/gateway grpc "$GW" "$GW_PID" --mode closed --concurrency 16
load c16/gateway-http http "$DOOR" "$GW_PID" --model vra-auto --vra-phase refine --mode closed --concurrency 16
[ -n "$LL_PID" ] && load c16/litellm http "http://127.0.0.1:$LL_PORT/v1/chat/completions" "$LL_PID" --model bench-model --api-key "$LITELLM_BENCH_KEY" --mode closed --concurrency 16 --timeout-ms 30000

# Max throughput: 64 in flight.
load c64/direct http "$UP_URL" "$UP_PID" --mode closed --concurrency 64
[ -n "$NGX_PID" ] && load c64/nginx http "http://127.0.0.1:$NGX_PORT/v1/chat/completions" "$NGX_PID" --mode closed --concurrency 64
load c64/grpc-floor grpc "$ECHO" "$ECHO_PID" --mode closed --concurrency 64
load c64/gateway grpc "$GW" "$GW_PID" --mode closed --concurrency 64
load c64/gateway-http http "$DOOR" "$GW_PID" --model vra-auto --vra-phase refine --mode closed --concurrency 64
[ -n "$GWR_PID" ] && load c64/gateway-redis grpc "127.0.0.1:$GWR_PORT" "$GWR_PID" --mode closed --concurrency 64
[ -n "$GWRC_PID" ] && load c64/gateway-redis-confirmed grpc "127.0.0.1:$GWRC_PORT" "$GWRC_PID" --mode closed --concurrency 64
[ -n "$GWC_PID" ] && cluster_load c64/gateway-cluster grpc "127.0.0.1:$GWC_PORT" "$GWC_PID" --mode closed --concurrency 64
[ -n "$GWCC_PID" ] && cluster_load c64/gateway-cluster-client grpc "127.0.0.1:$GWCC_PORT" "$GWCC_PID" --mode closed --concurrency 64 --token "$CLUSTER_TOKEN"
[ -n "$LL_PID" ] && load c64/litellm http "http://127.0.0.1:$LL_PORT/v1/chat/completions" "$LL_PID" --model bench-model --api-key "$LITELLM_BENCH_KEY" --mode closed --concurrency 64 --timeout-ms 30000

# The response cache: hits (one prompt) and misses (a prompt per call), memory and Redis stores.
for c in 1 64; do
    load "c$c/gateway-cache-hit" grpc "127.0.0.1:$GWK_PORT" "$GWK_PID" --mode closed --concurrency "$c"
    load "c$c/gateway-cache-miss" grpc "127.0.0.1:$GWK_PORT" "$GWK_PID" --mode closed --concurrency "$c" --distinct-prompts
    if [ -n "$GWKR_PID" ]; then
        load "c$c/gateway-cache-redis-hit" grpc "127.0.0.1:$GWKR_PORT" "$GWKR_PID" --mode closed --concurrency "$c"
        load "c$c/gateway-cache-redis-miss" grpc "127.0.0.1:$GWKR_PORT" "$GWKR_PID" --mode closed --concurrency "$c" --distinct-prompts
    fi
done

# One hot report: every call reserves on the same ledger entry.
load hot-c64/gateway grpc "$GW" "$GW_PID" --mode closed --concurrency 64 --hot-report
[ -n "$GWR_PID" ] && load hot-c64/gateway-redis grpc "127.0.0.1:$GWR_PORT" "$GWR_PID" --mode closed --concurrency 64 --hot-report
[ -n "$GWRC_PID" ] && load hot-c64/gateway-redis-confirmed grpc "127.0.0.1:$GWRC_PORT" "$GWRC_PID" --mode closed --concurrency 64 --hot-report
[ -n "$GWC_PID" ] && cluster_load hot-c64/gateway-cluster grpc "127.0.0.1:$GWC_PORT" "$GWC_PID" --mode closed --concurrency 64 --hot-report

# Streaming time to first token, one stream in flight.
load stream-c1/direct http "$UP_URL" "$UP_PID" --mode closed --concurrency 1 --stream
load stream-c1/grpc-floor grpc "$ECHO" "$ECHO_PID" --mode closed --concurrency 1 --stream
load stream-c1/gateway grpc "$GW" "$GW_PID" --mode closed --concurrency 1 --stream
load stream-c1/gateway-http http "$DOOR" "$GW_PID" --model vra-auto --vra-phase refine --mode closed --concurrency 1 --stream

# Memory under many concurrent streams: a slow upstream (each stream lasts ~2 s; ~0.5 s in
# smoke mode) and a fresh gateway, so its RSS is not inflated by the scenarios above.
if [ "$SMOKE" = 1 ]; then SLOW=(--tokens 5 --token-delay-ms 100); else SLOW=(--tokens 20 --token-delay-ms 100); fi
SLOW_PORT=$(free_port)
start_upstream upstream-slow "$SLOW_PORT" "${SLOW[@]}"
ENV_PIDS+=(--env-pid "$LAST_PID")
echo "vra-loadgen upstream --addr 127.0.0.1:$SLOW_PORT ${SLOW[*]}" >>"$COMMANDS"
GWS_PORT=$(free_port)
start_gateway gateway-streams "$GWS_PORT" "$SLOW_PORT"
GWS_PID=$LAST_PID
sleep 0.5
load "stream-1k/gateway" grpc "127.0.0.1:$GWS_PORT" "$GWS_PID" --mode closed --concurrency "$STREAMS" --stream \
    --timeout-ms 30000 --warmup 0
stop_pid "$GWS_PID"

overload_scenario

# Memory per tracked report.
log "ledger-mem: $LEDGER_REPORTS reports"
echo "vra-loadgen ledger-mem --reports $LEDGER_REPORTS" >>"$COMMANDS"
"${PIN_CLIENT[@]}" "$BIN/vra-loadgen" ledger-mem --reports "$LEDGER_REPORTS" --out "$RESULTS" >"$LOGS/ledger-mem.log" 2>&1 ||
    note_skip ledger-mem "failed: $(tail -n 1 "$LOGS/ledger-mem.log")"
grep -v '^{' "$LOGS/ledger-mem.log" | sed 's/^/    /' || true

# Stop the servers before the micro-benchmarks so nothing competes with them.
for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
done
PIDS=()

if [ "$SMOKE" = 1 ]; then
    log "micro-benchmarks skipped in smoke mode"
else
    log "micro-benchmarks (criterion)"
    echo "cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3" >>"$COMMANDS"
    # Build on every core, then run the built executable pinned like the servers (a second
    # `cargo bench` would rebuild, pinned, if the tree changed meanwhile).
    MICRO_EXE=""
    if cargo bench --bench micro --no-run >"$LOGS/criterion-build.log" 2>&1; then
        MICRO_EXE=$(sed -n 's/.*Executable benches\/micro.rs (\(.*\))$/\1/p' "$LOGS/criterion-build.log" | tail -n 1)
    fi
    if [ -n "$MICRO_EXE" ] && CRITERION_HOME="$TARGET_DIR/criterion" "${PIN_SERVER[@]}" "$MICRO_EXE" --bench \
        --warm-up-time 1 --measurement-time 3 >"$LOGS/criterion.log" 2>&1; then
        grep -E '^[a-z_0-9]+/[a-z_0-9]+|time:|thrpt:' "$LOGS/criterion.log" | sed 's/^/    /' || true
        touch "$OUT_DIR/criterion-ran"
    else
        note_skip criterion "cargo bench failed: $(tail -n 1 "$LOGS/criterion.log" "$LOGS/criterion-build.log" 2>/dev/null | tail -n 1)"
    fi
fi

write_results
