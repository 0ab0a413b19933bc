//! The load engine shared by the gRPC and HTTP drivers: open and closed loop, HDR histograms,
//! and the one-line JSON summary.
//!
//! Open loop sends call `i` at `start + i / rate` from a dedicated OS thread (tokio's timer has
//! 1 ms granularity, far coarser than the overheads measured here) and measures each call from
//! that *intended* time. A server that stalls therefore shows its stall in every call that
//! should have been sent meanwhile, instead of silently slowing the sender (coordinated
//! omission). Calls beyond `max_in_flight` wait for a slot, and the wait counts as latency.
//!
//! Closed loop runs `concurrency` workers that each send the next call when the previous one
//! is answered; it measures capacity, not latency under a given load.

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procstat::{self, Usage};
use crate::{LoadArgs, ModeArg};

/// Most calls one open-loop phase may schedule (bounds the memory of the schedule).
pub const MAX_SCHEDULED: u64 = 5_000_000;

/// Highest latency the histograms hold (longer ones are clamped): above any timeout used.
const MAX_TRACKED: Duration = Duration::from_secs(600);

/// Error messages kept as samples in the summary.
const ERROR_SAMPLES: usize = 3;

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Open { rate: f64 },
    Closed { concurrency: usize },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub max_in_flight: usize,
}

/// Descriptive fields of a run, for the summary.
pub struct Info {
    pub proto: &'static str,
    pub target: String,
    pub connections: Option<usize>,
    pub hot_report: bool,
}

/// One kind of call under load.
pub trait Target: Clone + Send + Sync + 'static {
    /// Makes call number `seq`; on success returns when its first token arrived (streams only).
    fn call(&self, seq: u64) -> impl Future<Output = Result<Option<Instant>, String>> + Send;
}

/// Latency histograms and counters of one phase.
struct Recorder {
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    /// Open loop: how late each call actually started, after its intended send time. This
    /// part of the latency is the load generator's own (timer wake-up, task scheduling).
    lag: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// Errors by kind: the gRPC status code (`ResourceExhausted`, …), `Timeout` (the
    /// client's `--timeout-ms`), or `Other`.
    error_kinds: std::collections::BTreeMap<String, u64>,
    samples: Vec<String>,
    last_done: Option<Instant>,
}

impl Recorder {
    fn new() -> Result<Self, String> {
        let hist = || {
            Histogram::new_with_bounds(1, MAX_TRACKED.as_nanos() as u64, 3)
                .map_err(|e| format!("histogram: {e}"))
        };
        Ok(Self {
            latency: hist()?,
            ttft: hist()?,
            lag: hist()?,
            ok: 0,
            errors: 0,
            error_kinds: Default::default(),
            samples: Vec::new(),
            last_done: None,
        })
    }

    /// Records a call that started (or was due) at `start` and ended at `end`.
    fn record(&mut self, start: Instant, result: Result<Option<Instant>, String>, end: Instant) {
        self.last_done = Some(self.last_done.map_or(end, |d| d.max(end)));
        match result {
            Ok(first) => {
                self.ok += 1;
                self.latency
                    .saturating_record(end.saturating_duration_since(start).as_nanos() as u64);
                if let Some(first) = first {
                    self.ttft
                        .saturating_record(first.saturating_duration_since(start).as_nanos() as u64);
                }
            }
            Err(e) => {
                self.errors += 1;
                *self
                    .error_kinds
                    .entry(error_kind(&e).to_string())
                    .or_default() += 1;
                if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&e) {
                    self.samples.push(e);
                }
            }
        }
    }
}

/// The kind of a call's error message: the drivers write a failed gRPC status as
/// `Code: message` (`{:?}` of `tonic::Code`) and a client timeout as `timeout after N ms`.
fn error_kind(e: &str) -> &str {
    if e.starts_with("timeout after") {
        return "Timeout";
    }
    match e.split_once(':') {
        Some((code, _))
            if !code.is_empty()
                && code.chars().all(|c| c.is_ascii_alphabetic())
                && code.starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            code
        }
        _ => "Other",
    }
}

fn lock(rec: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    rec.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one phase produced.
struct Outcome {
    rec: Recorder,
    sent: u64,
    /// From the first scheduled send to the last answer (open) or the last worker's end.
    elapsed: Duration,
}

async fn call_bounded<T: Target>(
    target: &T,
    seq: u64,
    timeout: Duration,
) -> Result<Option<Instant>, String> {
    match tokio::time::timeout(timeout, target.call(seq)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
    }
}

async fn run_phase<T: Target>(
    target: &T,
    plan: &Plan,
    duration: Duration,
    seq: &Arc<AtomicU64>,
) -> Result<Outcome, String> {
    let rec = Arc::new(Mutex::new(Recorder::new()?));
    let timeout = plan.timeout;
    let (start, sent) = match plan.mode {
        Mode::Open { rate } => {
            let total = (duration.as_secs_f64() * rate).floor() as u64;
            let sem = Arc::new(Semaphore::new(plan.max_in_flight));
            let handle = tokio::runtime::Handle::current();
            let start = Instant::now() + Duration::from_millis(2);
            let (t, r, s, base) = (
                target.clone(),
                rec.clone(),
                sem.clone(),
                seq.fetch_add(total, Ordering::Relaxed),
            );
            let dispatcher = tokio::task::spawn_blocking(move || {
                // Linux wakes a sleeping thread up to its timer slack (50 µs by default) late,
                // and that lateness would count as latency; 1 ns makes the wake-up precise.
                let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
                let mut tasks = Vec::with_capacity(total as usize);
                for i in 0..total {
                    let intended = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let (t, r, s) = (t.clone(), r.clone(), s.clone());
                    tasks.push(handle.spawn(async move {
                        let Ok(_permit) = s.acquire_owned().await else {
                            return;
                        };
                        let started = Instant::now();
                        let result = call_bounded(&t, base + i, timeout).await;
                        let mut rec = lock(&r);
                        rec.lag.saturating_record(
                            started.saturating_duration_since(intended).as_nanos() as u64,
                        );
                        rec.record(intended, result, Instant::now());
                    }));
                }
                tasks
            });
            let tasks = dispatcher
                .await
                .map_err(|e| format!("dispatcher failed: {e}"))?;
            for task in tasks {
                let _ = task.await;
            }
            (start, total)
        }
        Mode::Closed { concurrency } => {
            let start = Instant::now();
            let deadline = start + duration;
            let sent = Arc::new(AtomicU64::new(0));
            let mut workers = JoinSet::new();
            for _ in 0..concurrency {
                let (t, r, seq, sent) = (target.clone(), rec.clone(), seq.clone(), sent.clone());
                workers.spawn(async move {
                    while Instant::now() < deadline {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        sent.fetch_add(1, Ordering::Relaxed);
                        let t0 = Instant::now();
                        let result = call_bounded(&t, n, timeout).await;
                        lock(&r).record(t0, result, Instant::now());
                    }
                });
            }
            while workers.join_next().await.is_some() {}
            (start, sent.load(Ordering::Relaxed))
        }
    };
    let rec = Arc::try_unwrap(rec)
        .map_err(|_| "a call outlived its phase".to_string())?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let end = rec
        .last_done
        .unwrap_or_else(Instant::now)
        .max(start + duration);
    Ok(Outcome {
        elapsed: end.saturating_duration_since(start),
        rec,
        sent,
    })
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
    })
}

fn human_percentiles(name: &str, v: &serde_json::Value) -> String {
    let f = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    format!(
        "  {name:<10} µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        f("p50"),
        f("p90"),
        f("p99"),
        f("p999"),
        f("max")
    )
}

/// Runs the warm-up, then the measured phase with server accounting, and prints (and
/// optionally appends) the summary.
pub async fn run_and_report<T: Target>(
    target: T,
    plan: Plan,
    args: &LoadArgs,
    info: Info,
) -> Result<(), String> {
    let seq = Arc::new(AtomicU64::new(0));
    if !plan.warmup.is_zero() {
        run_phase(&target, &plan, plan.warmup, &seq).await?;
    }
    let watch = procstat::Watch::start(&args.watch_pids, &args.env_pids);
    let outcome = run_phase(&target, &plan, plan.duration, &seq).await?;
    let usage = watch.map(procstat::Watch::finish);

    let rec = &outcome.rec;
    let secs = outcome.elapsed.as_secs_f64();
    let calls = rec.ok + rec.errors;
    let latency = percentiles(&rec.latency);
    let ttft = percentiles(&rec.ttft);
    let lag = percentiles(&rec.lag);
    let server = usage.as_ref().map(|u: &Usage| {
        json!({
            "pids": u.pids,
            "cpu_s": u.cpu_seconds,
            "cpu_us_per_call": if calls > 0 { u.cpu_seconds * 1e6 / calls as f64 } else { 0.0 },
            "cpu_util": if secs > 0.0 { u.cpu_seconds / secs } else { 0.0 },
            "rss_kb_start": u.rss_kb_start,
            "rss_kb_peak": u.rss_kb_peak,
            "rss_kb_end": u.rss_kb_end,
            "foreign_cpu_util": if secs > 0.0 { u.foreign_cpu_seconds / secs } else { 0.0 },
        })
    });
    let (mode, rate, concurrency) = match plan.mode {
        Mode::Open { rate } => ("open", Some(rate), None),
        Mode::Closed { concurrency } => ("closed", None, Some(concurrency)),
    };
    debug_assert_eq!(mode == "open", args.mode == ModeArg::Open);
    let summary = json!({
        "kind": "load",
        "label": args.label,
        "proto": info.proto,
        "target": info.target,
        "mode": mode,
        "rate": rate,
        "concurrency": concurrency,
        "connections": info.connections,
        "stream": args.stream,
        "hot_report": info.hot_report,
        "duration_s": plan.duration.as_secs_f64(),
        "elapsed_s": secs,
        "sent": outcome.sent,
        "ok": rec.ok,
        "errors": rec.errors,
        "errors_by_kind": rec.error_kinds,
        "error_samples": rec.samples,
        "achieved_rps": if secs > 0.0 { rec.ok as f64 / secs } else { 0.0 },
        "latency_us": latency,
        "ttft_us": ttft,
        "send_lag_us": lag,
        "server": server,
    });

    // Written with `writeln!` and errors ignored: a closed stdout (`| head`) must not panic.
    let mut out = std::io::stdout().lock();
    let shape = match plan.mode {
        Mode::Open { rate } => format!("open {rate} rps"),
        Mode::Closed { concurrency } => format!("closed c={concurrency}"),
    };
    let _ = writeln!(
        out,
        "{} {} {shape}{} {:.1}s: ok {} errors {} -> {:.0} calls/s",
        if args.label.is_empty() {
            "run"
        } else {
            &args.label
        },
        info.proto,
        if args.stream { " stream" } else { "" },
        secs,
        rec.ok,
        rec.errors,
        summary["achieved_rps"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(out, "{}", human_percentiles("latency", &latency));
    if !ttft.is_null() {
        let _ = writeln!(out, "{}", human_percentiles("ttft", &ttft));
    }
    if !lag.is_null() {
        let _ = writeln!(out, "{}", human_percentiles("send lag", &lag));
    }
    if !rec.error_kinds.is_empty() {
        let kinds: Vec<String> = rec
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "  errors by kind: {}", kinds.join(", "));
    }
    for e in &rec.samples {
        let _ = writeln!(out, "  error sample: {e}");
    }
    if let Some(u) = &usage {
        let _ = writeln!(
            out,
            "  server     cpu {:.1} µs/call ({:.0}% of a core), rss {:.1} MB -> peak {:.1} MB; \
             other processes {:.0}% of a core",
            summary["server"]["cpu_us_per_call"].as_f64().unwrap_or(0.0),
            summary["server"]["cpu_util"].as_f64().unwrap_or(0.0) * 100.0,
            u.rss_kb_start as f64 / 1024.0,
            u.rss_kb_peak as f64 / 1024.0,
            summary["server"]["foreign_cpu_util"]
                .as_f64()
                .unwrap_or(0.0)
                * 100.0
        );
    }
    let line = summary.to_string();
    let _ = writeln!(out, "{line}");
    if let Some(path) = &args.out {
        append_line(path, &line)?;
    }
    Ok(())
}

/// Appends one line to a results file.
pub fn append_line(path: &std::path::Path, line: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Sleepy(Duration);

    impl Target for Sleepy {
        async fn call(&self, seq: u64) -> Result<Option<Instant>, String> {
            tokio::time::sleep(self.0).await;
            if seq % 10 == 9 {
                Err("every tenth fails".into())
            } else {
                Ok(None)
            }
        }
    }

    fn plan(mode: Mode) -> Plan {
        Plan {
            mode,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            max_in_flight: 1000,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_the_scheduled_calls() {
        let seq = Arc::new(AtomicU64::new(0));
        let out = run_phase(
            &Sleepy(Duration::from_millis(5)),
            &plan(Mode::Open { rate: 200.0 }),
            Duration::from_millis(300),
            &seq,
        )
        .await
        .unwrap();
        assert_eq!(out.sent, 60);
        assert_eq!(out.rec.ok + out.rec.errors, 60);
        assert_eq!(out.rec.errors, 6);
        assert_eq!(out.rec.error_kinds.get("Other"), Some(&6));
        assert!(out.rec.latency.value_at_quantile(0.5) >= 5_000_000);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            error_kind("ResourceExhausted: gateway overloaded"),
            "ResourceExhausted"
        );
        assert_eq!(error_kind("Unavailable: a: b"), "Unavailable");
        assert_eq!(error_kind("timeout after 2000 ms"), "Timeout");
        assert_eq!(error_kind("empty completion"), "Other");
        assert_eq!(error_kind("bad thing: x"), "Other");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_keeps_concurrency() {
        let seq = Arc::new(AtomicU64::new(0));
        let out = run_phase(
            &Sleepy(Duration::from_millis(10)),
            &plan(Mode::Closed { concurrency: 4 }),
            Duration::from_millis(300),
            &seq,
        )
        .await
        .unwrap();
        // ~30 rounds of 4 calls; generous bounds for a loaded machine.
        let calls = out.rec.ok + out.rec.errors;
        assert!((40..=130).contains(&calls), "{calls}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_counts_queueing_from_the_intended_time() {
        // One slot, 20 ms calls, 100 calls/s: the server keeps up with only half, so later
        // calls wait and their latency grows well past the 20 ms service time.
        let seq = Arc::new(AtomicU64::new(0));
        let mut p = plan(Mode::Open { rate: 100.0 });
        p.max_in_flight = 1;
        let out = run_phase(
            &Sleepy(Duration::from_millis(20)),
            &p,
            Duration::from_millis(300),
            &seq,
        )
        .await
        .unwrap();
        assert!(
            out.rec.latency.max() > 100_000_000,
            "{}",
            out.rec.latency.max()
        );
    }
}
