//! Renders the Markdown tables of `RESULTS.md` from the JSON lines of one `bench/run.sh` run
//! (load summaries, idle RSS, ledger memory, skips) and criterion's estimates, and judges the
//! benchmark's targets PASS / MISS.
//!
//! Scenario labels are `SCENARIO/TARGET`, as `bench/run.sh` writes them: scenarios `c1`,
//! `open1000`, `c16`, `c64`, `hot-c64`, `stream-c1`, `stream-1k`; targets `direct`, `nginx`,
//! `grpc-floor`, `gateway` (its gRPC door), `gateway-http` (the same process, its
//! OpenAI-compatible door), `gateway-redis`, `gateway-redis-confirmed` (the same Redis with a
//! replica, `VRA_LEDGER_MIN_REPLICAS=1`), `gateway-cluster`, `gateway-cluster-client`, `litellm`,
//! and the response cache's `gateway-cache-{hit,miss}` and `gateway-cache-redis-{hit,miss}`. `grpc-floor` is `vra-loadgen grpc-echo`:
//! the gateway's gRPC service answering at once, i.e. what the gRPC round trip alone costs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// JSON lines written by the load runs and bench/run.sh.
    #[arg(long)]
    pub results: PathBuf,
    /// criterion's output directory (`$CARGO_TARGET_DIR/criterion`), if the micro-benchmarks ran.
    #[arg(long)]
    pub criterion: Option<PathBuf>,
    /// Where to write the Markdown (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Every target, in table order, with its display name.
const TARGETS: &[(&str, &str)] = &[
    ("direct", "direct to upstream (floor)"),
    ("nginx", "nginx proxy_pass (keep-alive)"),
    ("grpc-floor", "gRPC floor: fixed-answer tonic server"),
    ("gateway", "vra-gateway, memory ledger"),
    (
        "gateway-http",
        "vra-gateway, memory ledger, OpenAI door (HTTP/1.1)",
    ),
    ("gateway-redis", "vra-gateway, Redis ledger"),
    (
        "gateway-redis-confirmed",
        "vra-gateway, Redis ledger, reservations confirmed by a replica",
    ),
    (
        "gateway-cluster",
        "vra-gateway, Redis Cluster ledger (3 masters)",
    ),
    (
        "gateway-cluster-client",
        "vra-gateway, Redis Cluster ledger, one client",
    ),
    ("litellm", "LiteLLM proxy"),
];

/// Share of a core used by other processes during a scenario above which the report flags it.
const FOREIGN_CPU_NOTE: f64 = 0.10;

/// The proxies compared against the direct floor.
const PROXIES: &[&str] = &[
    "nginx",
    "grpc-floor",
    "gateway",
    "gateway-http",
    "gateway-redis",
    "gateway-cluster",
    "litellm",
];

/// Criterion benchmarks reported, by id (`group/function`), with what they measure.
const MICRO: &[(&str, &str)] = &[
    ("route/resolve", "routing::route, one matrix cell"),
    (
        "ledger/reserve_uncontended",
        "MemoryLedger::reserve_now, one thread, one report",
    ),
    (
        "ledger/reserve_uncontended_100k_reports",
        "MemoryLedger::reserve_now, one thread, 100k distinct reports",
    ),
    (
        "ledger/reserve_64_tasks_one_report",
        "MemoryLedger::reserve_now, 64 tokio tasks on one report (per reservation)",
    ),
    (
        "stream/sse_1mib",
        "SSE decode (LineBuffer + SseDecoder), 1 MiB of chunks",
    ),
    (
        "stream/ndjson_1mib",
        "NDJSON decode (LineBuffer + NdjsonDecoder), 1 MiB of lines",
    ),
];

struct Results {
    lines: Vec<Value>,
    criterion: Option<PathBuf>,
}

impl Results {
    fn load(&self, scenario: &str, target: &str) -> Option<&Value> {
        let label = format!("{scenario}/{target}");
        self.lines
            .iter()
            .rev()
            .find(|v| v["kind"] == "load" && v["label"] == label.as_str())
    }

    fn of_kind(&self, kind: &str) -> impl DoubleEndedIterator<Item = &Value> {
        self.lines.iter().filter(move |v| v["kind"] == kind)
    }

    fn idle_rss_kb(&self, target: &str) -> Option<f64> {
        self.of_kind("rss")
            .filter(|v| v["label"] == format!("{target}-idle").as_str())
            .filter_map(|v| v["kb"].as_f64())
            .next_back()
    }

    /// Criterion's estimate for `id`, in nanoseconds (slope if it has one, else the mean).
    fn micro_ns(&self, id: &str) -> Option<f64> {
        let path = self.criterion.as_ref()?.join(id).join("new/estimates.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        v["slope"]["point_estimate"]
            .as_f64()
            .or_else(|| v["mean"]["point_estimate"].as_f64())
    }

    /// Bytes per iteration criterion was told about (for throughput).
    fn micro_bytes(&self, id: &str) -> Option<f64> {
        let path = self.criterion.as_ref()?.join(id).join("new/benchmark.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        v["throughput"]["Bytes"].as_f64()
    }
}

fn pct(v: &Value, key: &str) -> Option<f64> {
    v["latency_us"][key].as_f64()
}

fn ttft(v: &Value, key: &str) -> Option<f64> {
    v["ttft_us"][key].as_f64()
}

fn cpu_per_call(v: &Value) -> Option<f64> {
    v["server"]["cpu_us_per_call"].as_f64()
}

fn us(x: Option<f64>) -> String {
    match x {
        None => "n/a".into(),
        Some(x) if x.abs() >= 10_000.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn signed_us(x: Option<f64>) -> String {
    match x {
        None => "n/a".into(),
        Some(x) if x >= 0.0 => format!("+{}", us(Some(x))),
        Some(x) => us(Some(x)),
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn mb(kb: Option<f64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.1} MB", kb / 1024.0))
}

const PERCENTILES: [(&str, &str); 5] = [
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p999", "p99.9"),
    ("max", "max"),
];

/// One latency table; `lag` adds the open loop's send-lag column.
fn latency_table(out: &mut String, r: &Results, scenario: &str, rate_header: &str, lag: bool) {
    let (lag_header, lag_align) = if lag {
        (" send lag p50 / p99 µs |", "---:|")
    } else {
        ("", "")
    };
    let _ = writeln!(
        out,
        "| target | {rate_header} | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors |{lag_header}"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|{lag_align}");
    for (target, name) in TARGETS {
        let Some(v) = r.load(scenario, target) else {
            let _ = writeln!(
                out,
                "| {name} | not run | | | | | | |{}",
                if lag { " |" } else { "" }
            );
            continue;
        };
        let _ = write!(out, "| {name} | {} ", num(v["achieved_rps"].as_f64(), 0));
        for (key, _) in PERCENTILES {
            let _ = write!(out, "| {} ", us(pct(v, key)));
        }
        let _ = write!(out, "| {} |", v["errors"].as_u64().unwrap_or(0));
        if lag {
            let l = |k: &str| us(v["send_lag_us"][k].as_f64());
            let _ = write!(out, " {} / {} |", l("p50"), l("p99"));
        }
        out.push('\n');
    }
    out.push('\n');
}

fn added(r: &Results, scenario: &str, proxy: &str, key: &str) -> Option<f64> {
    added_over(r, scenario, proxy, "direct", key)
}

fn added_over(r: &Results, scenario: &str, proxy: &str, base: &str, key: &str) -> Option<f64> {
    Some(pct(r.load(scenario, proxy)?, key)? - pct(r.load(scenario, base)?, key)?)
}

fn rps(r: &Results, scenario: &str, target: &str) -> Option<f64> {
    r.load(scenario, target)?["achieved_rps"].as_f64()
}

fn cpu(r: &Results, scenario: &str, target: &str) -> Option<f64> {
    cpu_per_call(r.load(scenario, target)?)
}

fn name_of(target: &str) -> &str {
    TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(target, |(_, n)| n)
}

/// One row of the targets table.
struct Check {
    what: &'static str,
    goal: &'static str,
    measured: Option<f64>,
    unit: &'static str,
    pass: fn(f64) -> bool,
}

/// The overload scenario's runs (`overload/limits`, `overload/no-limits`), in table order.
const OVERLOAD: &[(&str, &str)] = &[
    (
        "limits",
        "limits: endpoint max_in_flight + max_queue, VRA_MAX_IN_FLIGHT",
    ),
    ("no-limits", "no limits"),
];

/// What `VRA_LEDGER_MIN_REPLICAS=1` costs: the Redis ledger with and without reservations
/// confirmed by a replica (`WAIT 1`), scenario by scenario.
fn confirmed_table(out: &mut String, r: &Results) {
    let (plain, confirmed) = ("gateway-redis", "gateway-redis-confirmed");
    if r.load("c1", confirmed).is_none() && r.load("c64", confirmed).is_none() {
        return;
    }
    out.push_str(
        "## What a confirmed reservation costs

",
    );
    out.push_str(
        "The same Redis (one master, one replica on loopback), one gateway without and one \
         with `VRA_LEDGER_MIN_REPLICAS=1`: every reservation waits until the replica holds \
         it. Added = confirmed minus plain.\n\n",
    );
    out.push_str(
        "| scenario | calls/s plain | calls/s confirmed | p50 µs plain | p50 µs confirmed | p50 added µs | p99 added µs | CPU/call plain µs | CPU/call confirmed µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for scenario in ["c1", "open1000", "c64", "hot-c64"] {
        let p50 = |t: &str| r.load(scenario, t).and_then(|v| pct(v, "p50"));
        let _ = writeln!(
            out,
            "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(rps(r, scenario, plain), 0),
            num(rps(r, scenario, confirmed), 0),
            us(p50(plain)),
            us(p50(confirmed)),
            signed_us(added_over(r, scenario, confirmed, plain, "p50")),
            signed_us(added_over(r, scenario, confirmed, plain, "p99")),
            us(cpu(r, scenario, plain)),
            us(cpu(r, scenario, confirmed)),
        );
    }
    out.push('\n');
}

/// The response cache's runs: (store, the gateway without a cache, the hit and miss targets).
const CACHE: &[(&str, &str, &str, &str)] = &[
    (
        "memory",
        "gateway",
        "gateway-cache-hit",
        "gateway-cache-miss",
    ),
    (
        "redis",
        "gateway-redis",
        "gateway-cache-redis-hit",
        "gateway-cache-redis-miss",
    ),
];

/// What the response cache costs and saves: per store and scenario, the gateway without a
/// cache beside a cache miss (lookup, upstream, store) and a hit (no upstream, no reservation).
fn cache_table(out: &mut String, r: &Results) {
    if CACHE
        .iter()
        .all(|(_, _, hit, _)| r.load("c1", hit).is_none() && r.load("c64", hit).is_none())
    {
        return;
    }
    out.push_str(
        "## What a cache hit costs

",
    );
    out.push_str(
        "`VRA_CACHE=memory` (memory ledger) and `VRA_CACHE=redis` (Redis ledger, the same \
         Redis). Hit: one prompt for every call, so all but the first are answered from the \
         cache (no upstream request, no reservation; the cached call is still recorded in the \
         ledger). Miss: a prompt per call (`--distinct-prompts`): a lookup, the upstream call and \
         a store. No cache: the plain gateway of the same ledger. CPU is the gateway's own.\n\n",
    );
    out.push_str(
        "| store | scenario | calls/s no cache | calls/s miss | calls/s hit | p50 µs no cache | p50 µs miss | p50 µs hit | CPU/call no cache µs | CPU/call miss µs | CPU/call hit µs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (store, plain, hit, miss) in CACHE {
        for scenario in ["c1", "c64"] {
            if r.load(scenario, hit).is_none() {
                continue;
            }
            let p50 = |t: &str| r.load(scenario, t).and_then(|v| pct(v, "p50"));
            let _ = writeln!(
                out,
                "| {store} | {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(rps(r, scenario, plain), 0),
                num(rps(r, scenario, miss), 0),
                num(rps(r, scenario, hit), 0),
                us(p50(plain)),
                us(p50(miss)),
                us(p50(hit)),
                us(cpu(r, scenario, plain)),
                us(cpu(r, scenario, miss)),
                us(cpu(r, scenario, hit)),
            );
        }
    }
    out.push('\n');
}

/// The cluster ledger's scenarios, in table order.
const CLUSTER: &[(&str, &str, &str)] = &[
    (
        "c64",
        "gateway-cluster",
        "distinct reports, no clients (tag: the report)",
    ),
    (
        "c64",
        "gateway-cluster-client",
        "distinct reports of one client (tag: the client)",
    ),
    ("hot-c64", "gateway-cluster", "one report"),
];

/// How the Redis Cluster's masters shared the ledger's work (`shard_cpu` lines: each master's
/// CPU ticks before and after the scenario).
fn cluster_table(out: &mut String, r: &Results) {
    // Each master's ticks over the scenario, and the share of the scenario that was measured
    // (the ticks also span the warm-up).
    let shards = |label: &str| {
        r.of_kind("shard_cpu")
            .rfind(|v| v["label"] == label)
            .map(|v| {
                let measured = v["duration_s"].as_f64().unwrap_or(1.0);
                let whole = measured + v["warmup_s"].as_f64().unwrap_or(0.0);
                let ticks = |k: &str| -> Vec<f64> {
                    v[k].as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default()
                };
                let ticks = ticks("after")
                    .iter()
                    .zip(ticks("before"))
                    .map(|(a, b)| (a - b).max(0.0))
                    .collect::<Vec<f64>>();
                (ticks, measured / whole.max(measured))
            })
    };
    if CLUSTER.iter().all(|(s, t, _)| r.load(s, t).is_none()) {
        return;
    }
    out.push_str("## The cluster ledger: how the masters share the work\n\n");
    out.push_str(
        "Closed loop, 64 in flight, REFINE calls (each reserves and records on the ledger) \
         against a gateway whose ledger is a Redis Cluster of three masters on this machine. \
         Redis CPU: all masters' CPU time over the scenario per call; busiest master: its share \
         of that time. A hash tag puts every key of one report — or, with clients, of one \
         client — on one master.\n\n",
    );
    out.push_str(
        "| scenario | calls/s | gateway CPU/call µs | Redis CPU/call µs | busiest master |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for (scenario, target, what) in CLUSTER {
        let Some(v) = r.load(scenario, target) else {
            continue;
        };
        let label = format!("{scenario}/{target}");
        let (ticks, measured_share) = shards(&label).unwrap_or((Vec::new(), 1.0));
        let total: f64 = ticks.iter().sum();
        let calls = v["ok"].as_f64().unwrap_or(0.0) / measured_share;
        // /proc's clock ticks are 1/100 s on Linux.
        let redis_us = (calls > 0.0).then(|| total * 10_000.0 / calls);
        let busiest = ticks.iter().copied().fold(0.0_f64, f64::max);
        let share = if total > 0.0 {
            format!("{:.0}%", busiest * 100.0 / total)
        } else {
            "n/a".into()
        };
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {share} |",
            num(v["achieved_rps"].as_f64(), 0),
            us(cpu(r, scenario, target)),
            us(redis_us),
        );
    }
    out.push('\n');
}

/// Share of `n` in `total`, as a percentage.
fn share(n: u64, total: u64) -> String {
    if total == 0 {
        "n/a".into()
    } else {
        format!("{:.1} %", n as f64 * 100.0 / total as f64)
    }
}

fn ms(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |us| format!("{:.0}", us / 1000.0))
}

/// The overload scenario: the same open-loop load at twice what the upstream can serve,
/// against a gateway with and without limits.
fn overload_table(out: &mut String, r: &Results) {
    out.push_str("## Overload: 2x the upstream's capacity\n\n");
    out.push_str(
        "Open loop, unary EXPAND calls (routed to the local secondary). The fake upstream serves \
         `--max-concurrency` requests at once, each for `--delay-ms`; later ones wait in FIFO \
         order: its capacity is slots / delay. The same load goes to a fresh gateway with \
         limits (the local provider's per-endpoint `max_in_flight` = the upstream's slots, \
         a `max_queue`, and `VRA_MAX_IN_FLIGHT`) and to one without. Latency is from the \
         intended send time, of admitted (successful) calls only; the client gives up after \
         `--timeout-ms`. Queued = the share of endpoint leases that waited 1 ms or more \
         (`vra_gateway_queue_wait_seconds`). RSS of the gateway at the start and end of the \
         run (peak in parentheses).\n\n",
    );
    out.push_str(
        "| gateway | offered calls/s | calls | admitted | p50 ms | p99 ms | max ms | rejected (RESOURCE_EXHAUSTED) | timed out | other errors | queued | RSS start -> end (peak) |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (target, name) in OVERLOAD {
        let label = format!("overload/{target}");
        let Some(v) = r.load("overload", target) else {
            let _ = writeln!(out, "| {name} | not run | | | | | | | | | | |");
            continue;
        };
        let ok = v["ok"].as_u64().unwrap_or(0);
        let errors = v["errors"].as_u64().unwrap_or(0);
        let total = ok + errors;
        let kind = |k: &str| v["errors_by_kind"][k].as_u64().unwrap_or(0);
        let rejected = kind("ResourceExhausted");
        let timeouts = kind("Timeout") + kind("DeadlineExceeded") + kind("Cancelled");
        let other = errors.saturating_sub(rejected + timeouts);
        let queued = r
            .of_kind("queue_wait")
            .rfind(|q| q["label"] == label.as_str())
            .and_then(|q| {
                let count = q["count"].as_u64()?;
                let fast = q["under_1ms"].as_u64()?;
                Some(share(count.saturating_sub(fast), count))
            })
            .unwrap_or_else(|| "n/a".into());
        let server = &v["server"];
        let _ = writeln!(
            out,
            "| {name} | {} | {total} | {} | {} | {} | {} | {} | {} | {} | {queued} | {} -> {} ({}) |",
            num(v["rate"].as_f64(), 0),
            share(ok, total),
            ms(pct(v, "p50")),
            ms(pct(v, "p99")),
            ms(pct(v, "max")),
            share(rejected, total),
            share(timeouts, total),
            share(other, total),
            mb(server["rss_kb_start"].as_f64()),
            mb(server["rss_kb_end"].as_f64()),
            mb(server["rss_kb_peak"].as_f64()),
        );
    }
    out.push('\n');
}

fn render(r: &Results) -> String {
    let mut out = String::new();

    out.push_str("## Latency at one connection\n\n");
    out.push_str(
        "Closed loop, one call in flight, unary. The gateway is driven over gRPC \
         (`Generate`), the others with the same chat payload over HTTP/1.1.\n\n",
    );
    latency_table(&mut out, r, "c1", "calls/s", false);

    out.push_str("## Open loop at 1000 RPS\n\n");
    out.push_str(
        "Fixed arrival rate; each call's latency is measured from its intended send time \
         (no coordinated omission). Send lag: how late the load generator actually started the \
         call (timer wake-up and task scheduling on its shared CPU) — part of every row's \
         latency, the same for every target.\n\n",
    );
    latency_table(&mut out, r, "open1000", "achieved rps", true);

    out.push_str("## Added latency over direct\n\n");
    out.push_str(
        "Proxy percentile minus the baseline percentile of the same scenario, µs. Over direct: \
         what a caller pays for the hop. Over the gRPC floor: what the gateway's pipeline adds \
         beyond the gRPC round trip itself (same client, same transport).\n\n",
    );
    out.push_str(
        "| proxy | baseline | scenario | p50 | p90 | p99 | p99.9 |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    for scenario in ["c1", "open1000"] {
        let rows = PROXIES
            .iter()
            .map(|p| (*p, "direct"))
            .chain(["gateway", "gateway-redis"].map(|p| (p, "grpc-floor")));
        for (proxy, base) in rows {
            if r.load(scenario, proxy).is_none() || r.load(scenario, base).is_none() {
                continue;
            }
            let _ = write!(out, "| {} | {base} | {scenario} ", name_of(proxy));
            for key in ["p50", "p90", "p99", "p999"] {
                let _ = write!(
                    out,
                    "| {} ",
                    signed_us(added_over(r, scenario, proxy, base, key))
                );
            }
            out.push_str("|\n");
        }
    }
    out.push('\n');

    out.push_str("## Max throughput\n\n");
    out.push_str(
        "Closed loop, 64 calls in flight. Server CPU is the proxy's own CPU time over the \
         window (100% = one core).\n\n",
    );
    out.push_str(
        "| target | calls/s | vs direct | vs nginx | vs LiteLLM | server CPU | p50 µs | p99 µs | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (target, name) in TARGETS {
        let Some(v) = r.load("c64", target) else {
            let _ = writeln!(out, "| {name} | not run | | | | | | | |");
            continue;
        };
        let mine = v["achieved_rps"].as_f64();
        let util = v["server"]["cpu_util"].as_f64().map(|u| u * 100.0);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(mine, 0),
            num(ratio(mine, rps(r, "c64", "direct")), 2),
            num(ratio(mine, rps(r, "c64", "nginx")), 2),
            num(ratio(mine, rps(r, "c64", "litellm")), 1),
            util.map_or("n/a".into(), |u| format!("{u:.0}%")),
            us(pct(v, "p50")),
            us(pct(v, "p99")),
            v["errors"].as_u64().unwrap_or(0)
        );
    }
    out.push('\n');

    out.push_str("## CPU per call\n\n");
    out.push_str(
        "Process CPU seconds (utime + stime of the proxy and its children, from /proc) divided \
         by calls, µs. `direct` is the fake upstream's own cost, for scale.\n\n",
    );
    out.push_str(
        "| target | at 1 connection | at 1000 RPS | at max throughput | vs nginx (max thr.) |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for (target, name) in TARGETS {
        let c64 = cpu(r, "c64", target);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            us(cpu(r, "c1", target)),
            us(cpu(r, "open1000", target)),
            us(c64),
            num(ratio(c64, cpu(r, "c64", "nginx")), 2),
        );
    }
    out.push('\n');

    out.push_str("## The two doors\n\n");
    out.push_str(
        "The same gateway process driven through its gRPC door (`Generate`) and through its \
         OpenAI-compatible door (`POST /v1/chat/completions`, the report in `x-vra-*` headers, \
         HTTP/1.1 keep-alive), beside nginx and LiteLLM; closed loop at 1, 16 and 64 calls in \
         flight. Calls/s, then server CPU per call in µs.\n\n",
    );
    out.push_str(
        "| target | calls/s c1 | c16 | c64 | CPU/call c1 | c16 | c64 |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for target in ["gateway", "gateway-http", "nginx", "litellm"] {
        let scenarios = ["c1", "c16", "c64"];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            name_of(target),
            num(rps(r, scenarios[0], target), 0),
            num(rps(r, scenarios[1], target), 0),
            num(rps(r, scenarios[2], target), 0),
            us(cpu(r, scenarios[0], target)),
            us(cpu(r, scenarios[1], target)),
            us(cpu(r, scenarios[2], target)),
        );
    }
    out.push('\n');

    out.push_str("## Budget contention: one hot report\n\n");
    out.push_str(
        "Closed loop, 64 in flight; every call reserves a budget unit. Distinct = report id \
         cycles over 100,000 ids; hot = one report id for every call.\n\n",
    );
    out.push_str(
        "| target | distinct calls/s | hot calls/s | distinct p99 µs | hot p99 µs | hot errors |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for target in [
        "gateway",
        "gateway-redis",
        "gateway-redis-confirmed",
        "gateway-cluster",
    ] {
        let hot = r.load("hot-c64", target);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            name_of(target),
            num(rps(r, "c64", target), 0),
            num(hot.and_then(|v| v["achieved_rps"].as_f64()), 0),
            us(r.load("c64", target).and_then(|v| pct(v, "p99"))),
            us(hot.and_then(|v| pct(v, "p99"))),
            hot.and_then(|v| v["errors"].as_u64())
                .map_or("n/a".into(), |e| e.to_string()),
        );
    }
    out.push('\n');

    confirmed_table(&mut out, r);
    cluster_table(&mut out, r);
    cache_table(&mut out, r);

    out.push_str("## Streaming: time to first token\n\n");
    out.push_str(
        "Closed loop, one stream in flight. Direct: first body chunk of the SSE response; \
         gateway: first `GenerateStream` message with a delta; its OpenAI door: first body \
         chunk of its SSE response.\n\n",
    );
    out.push_str(
        "| target | TTFT p50 µs | TTFT p90 µs | TTFT p99 µs | TTFT p99.9 µs | total p50 µs | total p99 µs | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for target in ["direct", "grpc-floor", "gateway", "gateway-http"] {
        let Some(v) = r.load("stream-c1", target) else {
            let _ = writeln!(out, "| {} | not run | | | | | | |", name_of(target));
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            name_of(target),
            us(ttft(v, "p50")),
            us(ttft(v, "p90")),
            us(ttft(v, "p99")),
            us(ttft(v, "p999")),
            us(pct(v, "p50")),
            us(pct(v, "p99")),
            v["errors"].as_u64().unwrap_or(0)
        );
    }
    let ttft_over_base = |base: &str, key: &str| {
        Some(ttft(r.load("stream-c1", "gateway")?, key)? - ttft(r.load("stream-c1", base)?, key)?)
    };
    let ttft_over = |key: &str| ttft_over_base("direct", key);
    let _ = writeln!(
        out,
        "\nTTFT overhead of the gateway over direct: p50 {} µs, p99 {} µs; over the gRPC floor: \
         p50 {} µs, p99 {} µs.\n",
        signed_us(ttft_over("p50")),
        signed_us(ttft_over("p99")),
        signed_us(ttft_over_base("grpc-floor", "p50")),
        signed_us(ttft_over_base("grpc-floor", "p99"))
    );

    out.push_str("## Memory\n\n| measurement | value |\n|---|---:|\n");
    for (target, name) in TARGETS {
        if let Some(kb) = r.idle_rss_kb(target) {
            let _ = writeln!(out, "| idle RSS, {name} | {} |", mb(Some(kb)));
        }
    }
    for (target, name) in TARGETS {
        if let Some(v) = r.load("c64", target) {
            let _ = writeln!(
                out,
                "| peak RSS at max throughput, {name} | {} |",
                mb(v["server"]["rss_kb_peak"].as_f64())
            );
        }
    }
    if let Some(v) = r.load("stream-1k", "gateway") {
        let _ = writeln!(
            out,
            "| peak RSS, gateway, {} concurrent streams ({} ok, {} errors) | {} |",
            v["concurrency"].as_u64().unwrap_or(0),
            v["ok"].as_u64().unwrap_or(0),
            v["errors"].as_u64().unwrap_or(0),
            mb(v["server"]["rss_kb_peak"].as_f64())
        );
        let _ = writeln!(
            out,
            "| RSS of that gateway before the streams | {} |",
            mb(v["server"]["rss_kb_start"].as_f64())
        );
    }
    if let Some(v) = r.of_kind("ledger_mem").next_back() {
        let _ = writeln!(
            out,
            "| memory ledger, {} reports ({}-byte ids): RSS per report | {:.0} B |",
            v["reports"].as_u64().unwrap_or(0),
            v["id_bytes"].as_u64().unwrap_or(0),
            v["rss_bytes_per_report"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            out,
            "| memory ledger: live heap per report | {:.0} B |",
            v["heap_bytes_per_report"].as_f64().unwrap_or(0.0)
        );
        if let Some(full) = v["rss_full_kb"].as_f64() {
            let _ = writeln!(
                out,
                "| memory ledger: process RSS with {} tracked reports | {} |",
                v["reports"].as_u64().unwrap_or(0),
                mb(Some(full))
            );
            let _ = writeln!(
                out,
                "| memory ledger: process RSS after they all expired and were swept | {} |",
                mb(v["rss_after_expiry_kb"].as_f64())
            );
        }
    }
    out.push('\n');

    overload_table(&mut out, r);

    out.push_str("## Micro-benchmarks\n\ncriterion; time per iteration.\n\n");
    out.push_str("| benchmark | measures | time | throughput |\n|---|---|---:|---:|\n");
    for (id, what) in MICRO {
        let ns = r.micro_ns(id);
        let time = ns.map_or("not run".into(), |ns| {
            if ns >= 10_000.0 {
                format!("{:.1} µs", ns / 1000.0)
            } else {
                format!("{ns:.1} ns")
            }
        });
        let thr = match (ns, r.micro_bytes(id)) {
            (Some(ns), Some(bytes)) if ns > 0.0 => {
                format!("{:.0} MiB/s", bytes / (1024.0 * 1024.0) / (ns / 1e9))
            }
            _ => String::new(),
        };
        let _ = writeln!(out, "| `{id}` | {what} | {time} | {thr} |");
    }
    out.push('\n');

    out.push_str("## Targets\n\n");
    out.push_str(
        "Judged on the gateway with the in-memory ledger. `n/a`: not measured in this run.\n\n",
    );
    out.push_str("| target | goal | measured | result |\n|---|---|---:|---|\n");
    let worst_cpu = match (cpu(r, "open1000", "gateway"), cpu(r, "c64", "gateway")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let ledger_rss = r
        .of_kind("ledger_mem")
        .next_back()
        .and_then(|v| v["rss_bytes_per_report"].as_f64());
    let ttft_p99 = ttft_over("p99");
    let checks = [
        Check {
            what: "added latency p50, one connection",
            goal: "≤ 100 µs",
            measured: added(r, "c1", "gateway", "p50"),
            unit: "µs",
            pass: |x| x <= 100.0,
        },
        Check {
            what: "added latency p50 at 1000 RPS",
            goal: "≤ 150 µs",
            measured: added(r, "open1000", "gateway", "p50"),
            unit: "µs",
            pass: |x| x <= 150.0,
        },
        Check {
            what: "added latency p99 at 1000 RPS",
            goal: "≤ 1000 µs",
            measured: added(r, "open1000", "gateway", "p99"),
            unit: "µs",
            pass: |x| x <= 1000.0,
        },
        Check {
            what: "gateway CPU per unary call (worse of 1000 RPS and max throughput)",
            goal: "≤ 50 µs",
            measured: worst_cpu,
            unit: "µs",
            pass: |x| x <= 50.0,
        },
        Check {
            what: "CPU per call, gateway / nginx (max throughput)",
            goal: "≤ ~3x",
            measured: ratio(cpu(r, "c64", "gateway"), cpu(r, "c64", "nginx")),
            unit: "x",
            pass: |x| x <= 3.0,
        },
        Check {
            what: "CPU per call, OpenAI door / gRPC door (max throughput)",
            goal: "≤ 1.0",
            measured: ratio(cpu(r, "c64", "gateway-http"), cpu(r, "c64", "gateway")),
            unit: "x",
            pass: |x| x <= 1.0,
        },
        Check {
            what: "CPU per call, LiteLLM / gateway (max throughput)",
            goal: "≥ 300x",
            measured: ratio(cpu(r, "c64", "litellm"), cpu(r, "c64", "gateway")),
            unit: "x",
            pass: |x| x >= 300.0,
        },
        Check {
            what: "max throughput, gateway / nginx",
            goal: "≥ 0.5",
            measured: ratio(rps(r, "c64", "gateway"), rps(r, "c64", "nginx")),
            unit: "x",
            pass: |x| x >= 0.5,
        },
        Check {
            what: "max throughput, gateway / LiteLLM (64 in flight)",
            goal: "≥ 100x",
            measured: ratio(rps(r, "c64", "gateway"), rps(r, "c64", "litellm")),
            unit: "x",
            pass: |x| x >= 100.0,
        },
        Check {
            what: "route resolution",
            goal: "< 100 ns",
            measured: r.micro_ns("route/resolve"),
            unit: "ns",
            pass: |x| x < 100.0,
        },
        Check {
            what: "uncontended in-memory reservation",
            goal: "< 1000 ns",
            measured: r.micro_ns("ledger/reserve_uncontended"),
            unit: "ns",
            pass: |x| x < 1000.0,
        },
        Check {
            what: "RSS per tracked report (memory ledger)",
            goal: "≤ 256 B",
            measured: ledger_rss,
            unit: "B",
            pass: |x| x <= 256.0,
        },
        Check {
            what: "idle RSS of the gateway",
            goal: "≤ 30 MB",
            measured: r.idle_rss_kb("gateway").map(|kb| kb / 1024.0),
            unit: "MB",
            pass: |x| x <= 30.0,
        },
        Check {
            what: "streaming TTFT overhead p99",
            goal: "≤ 1000 µs",
            measured: ttft_p99,
            unit: "µs",
            pass: |x| x <= 1000.0,
        },
    ];
    for c in &checks {
        let (measured, verdict) = match c.measured {
            None => ("n/a".to_string(), "n/a"),
            Some(x) => (
                format!(
                    "{} {}",
                    num(Some(x), if c.unit == "x" { 2 } else { 1 }),
                    c.unit
                ),
                if (c.pass)(x) { "PASS" } else { "MISS" },
            ),
        };
        let _ = writeln!(out, "| {} | {} | {measured} | {verdict} |", c.what, c.goal);
    }
    out.push('\n');

    // Interference: CPU used by processes outside the benchmark while a scenario ran.
    let disturbed: Vec<String> = r
        .of_kind("load")
        .filter_map(|v| {
            let f = v["server"]["foreign_cpu_util"].as_f64()?;
            (f > FOREIGN_CPU_NOTE).then(|| {
                format!(
                    "`{}` ({:.0}%)",
                    v["label"].as_str().unwrap_or("?"),
                    f * 100.0
                )
            })
        })
        .collect();
    out.push_str("## Interference\n\n");
    if disturbed.is_empty() {
        let _ = writeln!(
            out,
            "No scenario saw other processes use more than {:.0}% of a core.\n",
            FOREIGN_CPU_NOTE * 100.0
        );
    } else {
        let _ = writeln!(
            out,
            "Other processes on the machine used more than {:.0}% of a core during: {}. Treat \
             those rows with suspicion.\n",
            FOREIGN_CPU_NOTE * 100.0,
            disturbed.join(", ")
        );
    }

    let notes: Vec<String> = r
        .of_kind("skip")
        .map(|v| {
            format!(
                "- {}: {}",
                v["target"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or("skipped")
            )
        })
        .chain(
            r.of_kind("load")
                .filter(|v| v["errors"].as_u64().unwrap_or(0) > 0)
                .map(|v| {
                    format!(
                        "- `{}`: {} errors, e.g. {}",
                        v["label"].as_str().unwrap_or("?"),
                        v["errors"],
                        v["error_samples"]
                    )
                }),
        )
        .collect();
    if !notes.is_empty() {
        out.push_str("## Skipped and failed\n\n");
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn read_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

pub fn run(options: &Options) -> Result<(), String> {
    let results = Results {
        lines: read_lines(&options.results)?,
        criterion: options.criterion.clone(),
    };
    let text = render(&results);
    match &options.out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(label: &str, rps: f64, p50: f64, p99: f64, cpu: f64) -> Value {
        json!({"kind": "load", "label": label, "achieved_rps": rps, "errors": 0,
            "concurrency": 64, "ok": 10,
            "latency_us": {"p50": p50, "p90": p50, "p99": p99, "p999": p99, "max": p99},
            "ttft_us": {"p50": p50, "p90": p50, "p99": p99, "p999": p99, "max": p99},
            "server": {"cpu_us_per_call": cpu, "cpu_util": 0.5, "rss_kb_peak": 20480.0}})
    }

    #[test]
    fn renders_every_section_and_judges_targets() {
        let r = Results {
            lines: vec![
                load("c1/direct", 5000.0, 100.0, 150.0, 5.0),
                load("c1/gateway", 4000.0, 160.0, 260.0, 30.0),
                load("open1000/direct", 1000.0, 100.0, 200.0, 5.0),
                load("open1000/gateway", 1000.0, 300.0, 500.0, 40.0),
                load("c64/gateway", 20000.0, 1000.0, 2000.0, 35.0),
                load("c64/nginx", 30000.0, 1000.0, 2000.0, 15.0),
                load("c16/gateway-http", 15000.0, 800.0, 1500.0, 31.0),
                {
                    let mut v = load("c64/gateway-cluster", 10000.0, 3000.0, 6000.0, 50.0);
                    v["ok"] = json!(100_000);
                    v
                },
                json!({"kind": "shard_cpu", "label": "c64/gateway-cluster",
                    "before": [100, 100, 100], "after": [150, 160, 190],
                    "warmup_s": 2, "duration_s": 10}),
                load("c64/gateway-http", 21000.0, 900.0, 1900.0, 33.0),
                load("c1/gateway-redis", 3000.0, 250.0, 400.0, 40.0),
                load("c1/gateway-redis-confirmed", 2500.0, 300.0, 520.0, 44.0),
                load("c1/gateway-cache-hit", 6000.0, 120.0, 200.0, 20.0),
                load("c1/gateway-cache-miss", 3900.0, 170.0, 280.0, 33.0),
                load("stream-c1/direct", 3000.0, 100.0, 200.0, 5.0),
                load("stream-c1/gateway", 2000.0, 150.0, 400.0, 5.0),
                json!({"kind": "rss", "label": "gateway-idle", "kb": 10240}),
                json!({"kind": "skip", "target": "litellm", "reason": "not installed"}),
            ],
            criterion: None,
        };
        let md = render(&r);
        for header in [
            "## Latency at one connection",
            "## Open loop at 1000 RPS",
            "## Added latency over direct",
            "## Max throughput",
            "## CPU per call",
            "## The two doors",
            "## Streaming: time to first token",
            "## Memory",
            "## Overload: 2x the upstream's capacity",
            "## Micro-benchmarks",
            "## Targets",
        ] {
            assert!(md.contains(header), "missing {header}\n{md}");
        }
        assert!(
            md.contains("| added latency p50, one connection | ≤ 100 µs | 60.0 µs | PASS |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| CPU per call, OpenAI door / gRPC door (max throughput) | ≤ 1.0 | 0.94 x | PASS |"
            ),
            "{md}"
        );
        // 200 ticks (2 s) over 10 + 2 s of 10,000 calls/s: 120,000 calls, 16.7 µs each; the
        // busiest master did 90 of the 200 ticks.
        assert!(
            md.contains(
                "| distinct reports, no clients (tag: the report) | 10000 | 50.0 | 16.7 | 45% |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| vra-gateway, memory ledger, OpenAI door (HTTP/1.1) | n/a | 15000 | 21000 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| added latency p50 at 1000 RPS | ≤ 150 µs | 200.0 µs | MISS |"),
            "{md}"
        );
        assert!(
            md.contains("| max throughput, gateway / nginx | ≥ 0.5 | 0.67 x | PASS |"),
            "{md}"
        );
        assert!(
            md.contains("| route resolution | < 100 ns | n/a | n/a |"),
            "{md}"
        );
        assert!(md.contains("- litellm: not installed"), "{md}");
        assert!(
            md.contains("| c1 | 3000 | 2500 | 250.0 | 300.0 | +50.0 | +120.0 | 40.0 | 44.0 |"),
            "{md}"
        );
        assert!(md.contains("| c64 | n/a | n/a |"), "{md}");
        assert!(
            md.contains(
                "| memory | c1 | 4000 | 3900 | 6000 | 160.0 | 170.0 | 120.0 | 30.0 | 33.0 | 20.0 |"
            ),
            "{md}"
        );
        assert!(
            !md.contains("| redis | c1 |"),
            "a store not run has no row\n{md}"
        );
    }
}
