//! Chaos soak: the real `vra-gateway` binary under hostile clients and hostile upstreams.
//!
//! Two in-process upstreams speak the real wire formats — a "cloud" one (OpenAI Chat
//! Completions, JSON and SSE) and a "local" one (Ollama `/api/chat`, JSON and NDJSON) — and a
//! seeded RNG makes each request either a normal answer or a fault: 5xx / 429 with a hostile
//! `Retry-After`, a hang, a 200 with a garbage body, a stream cut mid-way (cleanly or by a
//! broken connection), a stream with a garbage line or an in-band error, a stream that stalls,
//! an error body carrying control characters and a forged `[Hybrid]` line, or a slow trickle.
//! The cloud upstream attributes every request to its report (the prompt says
//! `report=<id>;`) and counts them.
//!
//! Dozens of concurrent clients mix `Generate` and `GenerateStream` over many reports with
//! random phases and section types; some set short deadlines, some drop their call after a
//! random delay, some send invalid requests (forbidden characters in ids, oversized or blank
//! prompts, unknown enum values) that must be refused or raw hostile `grpc-timeout` values;
//! one task opens raw TCP connections that speak garbage or nothing, and holds two HTTP/2
//! connections full of calls whose message never comes (slowloris). The second scenario uses
//! the Redis ledger (append-only file, fsync always) and kills `redis-server` mid-run, then
//! restarts it on the same port and directory; later it freezes it (SIGSTOP) for a while:
//! connections stay open, nothing answers.
//!
//! At the end: the process is alive, drained (no call in flight), SERVING, answers a normal
//! call from the primary again, exits 0 on SIGTERM; its output holds no panic, no forged line,
//! no control character, no API key; every call ended with a defined status (OK, or a
//! documented error code; CANCELLED only where the client itself cancelled or timed out); every
//! stream ended with `done` or an error, and its text came from one model; for every report
//! the cloud upstream saw at most `MAX_CLOUD_CALLS` requests and no more than the ledger
//! counts; the peak RSS stays under a fixed bound. The figures are printed and written to
//! `target/chaos-<scenario>.txt`.
//!
//! Runs with its own harness (libtest-mimic), so a missing `redis-server` shows as *ignored*
//! in cargo's summary, unless `VRA_REQUIRE_REDIS=1` makes it a failure. `VRA_CHAOS_SECS`
//! (default 10) sets the load time of each scenario and `VRA_CHAOS_SEED` the seed.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::process::{KEY, Running};
use common::redis_server::{self, RedisServer};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::{self, CompilationPhase, SectionType};

/// `MAX_CLOUD_CALLS` of the gateway under test.
const CAP: u32 = 5;
/// Concurrent gRPC clients.
const CLIENTS: u64 = 28;
/// Named report ids in play; the first `HOT_REPORTS` get half of all calls, and 15% of the
/// calls go to a report of their own.
const REPORTS: usize = 150;
const HOT_REPORTS: usize = 20;
/// Peak resident memory allowed to the gateway.
const RSS_LIMIT_MB: u64 = 256;
/// A call without a deadline that has no answer after this long is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(20);
/// Words of every answer; each is one streamed delta.
const WORDS: usize = 8;
/// A `[Hybrid]` line that a hostile upstream tries to forge through its error text.
const FORGED: &str = "[Hybrid] Event=FALLBACK | Reason=COST_LIMIT | Report=forged-by-upstream";
/// The report marker of invalid requests: no upstream may ever see it.
const HOSTILE: &str = "HOSTILE";

/// Gateway settings: small budget, short upstream timeouts (hangs end), tiny backoff cap
/// (hostile `Retry-After` values are capped), a breaker that opens and closes often.
const SETTINGS: &[(&str, &str)] = &[
    ("VRA_HYBRID_MODE", "true"),
    ("VRA_GATEWAY_ADDR", "127.0.0.1:0"),
    ("VRA_METRICS_ADDR", "127.0.0.1:0"),
    ("OPENAI_API_KEY", KEY),
    ("MAX_CLOUD_CALLS", "5"), // CAP
    ("VRA_RETRY_MAX_ATTEMPTS", "3"),
    ("VRA_RETRY_BASE_MS", "1"),
    ("VRA_RETRY_MAX_BACKOFF_MS", "20"),
    ("VRA_UPSTREAM_TIMEOUT_MS", "300"),
    ("VRA_CONNECT_TIMEOUT_MS", "300"),
    ("VRA_STREAM_IDLE_TIMEOUT_MS", "300"),
    ("VRA_CIRCUIT_FAILURES", "2"),
    ("VRA_CIRCUIT_OPEN_MS", "200"),
    ("VRA_LEDGER_TIMEOUT_MS", "200"),
    ("VRA_MAX_PROMPT_BYTES", "4096"), // MAX_PROMPT_BYTES
];

fn main() {
    let mut args = Arguments::from_args();
    // The scenarios each load the machine on their own: one at a time.
    args.test_threads.get_or_insert(1);
    let trials = vec![
        Trial::test("chaos_memory_ledger", || run(Scenario::Memory)),
        Trial::ignorable_test("chaos_redis_ledger_restarted_mid_run", || {
            if redis_server::binary().is_none() {
                if std::env::var("VRA_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                    return Err(
                        "redis-server is required (VRA_REQUIRE_REDIS=1) but not on PATH".into(),
                    );
                }
                eprintln!(
                    "SKIP chaos_redis_ledger_restarted_mid_run: redis-server not found on PATH (apt-get install redis-server, or set VRA_REQUIRE_REDIS=1 to fail instead)"
                );
                return Ok(Completion::ignored_with("redis-server not found on PATH"));
            }
            run(Scenario::Redis).map(|()| Completion::Completed)
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Memory,
    Redis,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Memory => "memory",
            Scenario::Redis => "redis",
        }
    }
}

fn run(scenario: Scenario) -> Result<(), Failed> {
    vra_gateway::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let result = rt.block_on(soak(scenario));
    rt.shutdown_timeout(Duration::from_secs(2));
    result.map_err(Failed::from)
}

fn load_time() -> Duration {
    let secs = std::env::var("VRA_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(10);
    Duration::from_secs(secs.max(2))
}

fn seed() -> u64 {
    std::env::var("VRA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0005_eedc_4a05)
}

// ---------------------------------------------------------------------------------------------
// The hostile upstreams.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Normal,
    /// 500, 502 or 503 with a hostile `Retry-After`.
    Status5xx,
    /// 429 with a hostile `Retry-After`.
    Status429,
    /// Never answers.
    Hang,
    /// 200 whose body is not the wire format.
    Garbage,
    /// Stream (or body) ended cleanly but without its terminal event.
    Truncated,
    /// Stream (or body) cut by a broken connection.
    Broken,
    /// A garbage line in the middle of a stream.
    GarbageLine,
    /// An in-band error event in the middle of a stream (forged text in it).
    StreamError,
    /// Stream (or body) goes silent forever after some output.
    Stall,
    /// Error status whose body carries control characters and a forged `[Hybrid]` line.
    Forged,
    /// Slow headers and a slow trickle of chunks.
    Trickle,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Normal => "normal",
            Fault::Status5xx => "5xx",
            Fault::Status429 => "429",
            Fault::Hang => "hang",
            Fault::Garbage => "garbage",
            Fault::Truncated => "truncated",
            Fault::Broken => "broken",
            Fault::GarbageLine => "garbage-line",
            Fault::StreamError => "stream-error",
            Fault::Stall => "stall",
            Fault::Forged => "forged",
            Fault::Trickle => "trickle",
        }
    }
}

/// The cloud is hostile more than half of the time; the local model a quarter of the time.
const CLOUD_FAULTS: &[(Fault, u32)] = &[
    (Fault::Normal, 40),
    (Fault::Status5xx, 8),
    (Fault::Status429, 8),
    (Fault::Hang, 5),
    (Fault::Garbage, 5),
    (Fault::Truncated, 6),
    (Fault::Broken, 5),
    (Fault::GarbageLine, 5),
    (Fault::StreamError, 4),
    (Fault::Stall, 4),
    (Fault::Forged, 5),
    (Fault::Trickle, 5),
];
const LOCAL_FAULTS: &[(Fault, u32)] = &[
    (Fault::Normal, 75),
    (Fault::Status5xx, 3),
    (Fault::Status429, 2),
    (Fault::Hang, 2),
    (Fault::Garbage, 2),
    (Fault::Truncated, 3),
    (Fault::Broken, 2),
    (Fault::GarbageLine, 2),
    (Fault::StreamError, 2),
    (Fault::Stall, 2),
    (Fault::Forged, 2),
    (Fault::Trickle, 3),
];

/// `Retry-After` values no upstream should be trusted with.
const HOSTILE_RETRY_AFTER: &[Option<&str>] = &[
    Some("1e20"),
    Some("99999999999999999999"),
    Some("18446744073709551615"),
    Some("-1"),
    Some("soon"),
    Some("Fri, 31 Dec 9999 23:59:59 GMT"),
    Some("Thu, 01 Jan 1970 00:00:00 GMT"),
    Some("3600"),
    Some("0"),
    None,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Ollama,
}

/// One upstream's behaviour and what it saw.
struct Upstream {
    wire: Wire,
    /// Prefix of every word it writes, so a client can tell which model wrote a text.
    tag: &'static str,
    faults: &'static [(Fault, u32)],
    rng: Mutex<StdRng>,
    /// Once set, every request gets a normal answer.
    calm: AtomicBool,
    injected: Mutex<BTreeMap<Fault, u64>>,
    per_report: Mutex<HashMap<String, u32>>,
    requests: AtomicU64,
    /// Requests whose body was not JSON or named no report.
    unattributed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to do with one request, drawn under one lock.
struct Plan {
    fault: Fault,
    /// Deltas sent before a stream fault; where a body is cut.
    k: usize,
    variant: usize,
    head_delay: Duration,
    gaps: [Duration; WORDS + 1],
}

impl Upstream {
    fn new(wire: Wire, seed: u64) -> Arc<Upstream> {
        let (tag, faults) = match wire {
            Wire::OpenAi => ("cloudword", CLOUD_FAULTS),
            Wire::Ollama => ("localword", LOCAL_FAULTS),
        };
        Arc::new(Upstream {
            wire,
            tag,
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            calm: AtomicBool::new(false),
            injected: Mutex::new(BTreeMap::new()),
            per_report: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            unattributed: AtomicU64::new(0),
        })
    }

    fn plan(&self) -> Plan {
        let mut rng = lock(&self.rng);
        let total: u32 = self.faults.iter().map(|(_, w)| w).sum();
        let mut pick = rng.random_range(0..total);
        let mut fault = Fault::Normal;
        for &(f, w) in self.faults {
            if pick < w {
                fault = f;
                break;
            }
            pick -= w;
        }
        if self.calm.load(Ordering::SeqCst) {
            fault = Fault::Normal;
        }
        let mut gaps = [Duration::ZERO; WORDS + 1];
        for g in &mut gaps {
            *g = Duration::from_millis(rng.random_range(20..=120));
        }
        Plan {
            fault,
            k: rng.random_range(0..WORDS),
            variant: rng.random_range(0..1000),
            head_delay: Duration::from_millis(rng.random_range(0..=250)),
            gaps,
        }
    }

    fn text(&self) -> String {
        words(self.tag).concat()
    }

    fn cloud_max(&self) -> (u32, usize, u64) {
        let per = lock(&self.per_report);
        let max = per
            .iter()
            .filter(|(r, _)| r.as_str() != HOSTILE)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        let at_cap = per.values().filter(|n| **n >= CAP).count();
        (max, at_cap, per.values().map(|n| u64::from(*n)).sum())
    }
}

fn words(tag: &str) -> Vec<String> {
    (0..WORDS)
        .map(|i| {
            if i + 1 < WORDS {
                format!("{tag}{i} ")
            } else {
                format!("{tag}{i}")
            }
        })
        .collect()
}

fn cloud_text() -> String {
    words("cloudword").concat()
}

fn local_text() -> String {
    words("localword").concat()
}

/// The report a request belongs to: `report=<id>;` in one of its messages.
fn report_of(body: &serde_json::Value) -> Option<String> {
    body["messages"].as_array()?.iter().find_map(|m| {
        let content = m["content"].as_str()?;
        let rest = &content[content.find("report=")? + "report=".len()..];
        Some(rest[..rest.find(';')?].to_string())
    })
}

/// Starts an upstream on a free loopback port; the server ends with the runtime.
async fn serve_upstream(up: Arc<Upstream>) -> SocketAddr {
    let app = Router::new()
        .route("/v1/chat/completions", post(handle))
        .route("/api/chat", post(handle))
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn handle(State(up): State<Arc<Upstream>>, body: Bytes) -> Response {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        up.unattributed.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    match report_of(&json) {
        Some(report) => *lock(&up.per_report).entry(report).or_default() += 1,
        None => {
            up.unattributed.fetch_add(1, Ordering::SeqCst);
        }
    }
    let stream = json["stream"].as_bool().unwrap_or(false);
    let model = json["model"].as_str().unwrap_or_default().to_string();
    let plan = up.plan();
    *lock(&up.injected).entry(plan.fault).or_default() += 1;
    respond(&up, &plan, stream, &model).await
}

/// A piece of a response body.
enum Piece {
    Data(Vec<u8>),
    Sleep(Duration),
    /// Break the connection.
    Break,
    /// Go silent forever.
    Hang,
}

fn body_of(pieces: Vec<Piece>) -> Body {
    let stream = futures_util::stream::unfold(VecDeque::from(pieces), |mut queue| async move {
        loop {
            match queue.pop_front()? {
                Piece::Data(bytes) => return Some((Ok(Bytes::from(bytes)), queue)),
                Piece::Sleep(d) => tokio::time::sleep(d).await,
                Piece::Break => {
                    return Some((Err(std::io::Error::other("chaos: connection cut")), queue));
                }
                Piece::Hang => std::future::pending::<()>().await,
            }
        }
    });
    Body::from_stream(stream)
}

fn reply(
    status: StatusCode,
    ctype: &str,
    retry_after: Option<&str>,
    pieces: Vec<Piece>,
) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype);
    if let Some(ra) = retry_after {
        builder = builder.header(header::RETRY_AFTER, ra);
    }
    builder
        .body(body_of(pieces))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn delta_frame(wire: Wire, model: &str, piece: &str) -> Vec<u8> {
    match wire {
        Wire::OpenAi => format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
        )
        .into_bytes(),
        Wire::Ollama => format!(
            "{}\n",
            serde_json::json!({"model": model, "message": {"role": "assistant", "content": piece}, "done": false})
        )
        .into_bytes(),
    }
}

fn end_frames(wire: Wire, model: &str) -> Vec<Vec<u8>> {
    match wire {
        Wire::OpenAi => vec![
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            )
            .into_bytes(),
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "model": model,
                    "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": WORDS, "total_tokens": 5 + WORDS}})
            )
            .into_bytes(),
            b"data: [DONE]\n\n".to_vec(),
        ],
        Wire::Ollama => vec![
            format!(
                "{}\n",
                serde_json::json!({"model": model, "message": {"role": "assistant", "content": ""},
                    "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": WORDS})
            )
            .into_bytes(),
        ],
    }
}

fn unary_body(wire: Wire, model: &str, text: &str) -> Vec<u8> {
    let v = match wire {
        Wire::OpenAi => serde_json::json!({
            "id": "chatcmpl-chaos", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": WORDS, "total_tokens": 5 + WORDS},
        }),
        Wire::Ollama => serde_json::json!({
            "model": model, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text},
            "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": WORDS,
        }),
    };
    v.to_string().into_bytes()
}

fn error_body(wire: Wire, message: &str) -> Vec<u8> {
    let v = match wire {
        Wire::OpenAi => serde_json::json!({"error": {"message": message, "type": "server_error"}}),
        Wire::Ollama => serde_json::json!({"error": message}),
    };
    v.to_string().into_bytes()
}

/// Error text with control characters, escape sequences and a forged log line.
fn forged_text() -> String {
    format!("boom\n{FORGED}\r\n\u{1b}[31mred\u{0}\u{7f}\u{85}\u{2028}end")
}

fn garbage(variant: usize) -> Vec<u8> {
    match variant % 7 {
        0 => b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        1 => b"\xff\xfe\xfd not utf-8 \x00\x1b[31m".to_vec(),
        2 => b"{\"choices\": 42, \"usage\": \"many\", \"message\": 7}".to_vec(),
        3 => b"null".to_vec(),
        4 => b"data: {\"choices\": [\n\n".to_vec(),
        5 => b"}{\n".to_vec(),
        _ => (0..48u32)
            .map(|i| (variant as u32).wrapping_mul(31).wrapping_add(i * 17) as u8)
            .collect(),
    }
}

fn garbage_line(wire: Wire, variant: usize) -> Vec<u8> {
    match (wire, variant % 4) {
        (Wire::OpenAi, 0) => b"data: }{ not json\n\n".to_vec(),
        (Wire::OpenAi, 1) => b"data: \xff\xfe invalid utf-8\n\n".to_vec(),
        (Wire::OpenAi, 2) => b"data: {\"choices\": [{\"delta\": {\"content\": 17}}]}\n\n".to_vec(),
        (Wire::OpenAi, _) => b"data: [1, 2, 3]\n\n".to_vec(),
        (Wire::Ollama, 0) => b"}{ not json\n".to_vec(),
        (Wire::Ollama, 1) => b"\xff\xfe invalid utf-8\n".to_vec(),
        (Wire::Ollama, 2) => b"{\"message\": {\"content\": 17}, \"done\": false}\n".to_vec(),
        (Wire::Ollama, _) => b"[1, 2, 3]\n".to_vec(),
    }
}

fn stream_error_frame(wire: Wire, message: &str) -> Vec<u8> {
    match wire {
        Wire::OpenAi => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"message": message, "type": "server_error"}})
        )
        .into_bytes(),
        Wire::Ollama => format!("{}\n", serde_json::json!({"error": message})).into_bytes(),
    }
}

async fn respond(up: &Upstream, plan: &Plan, stream: bool, model: &str) -> Response {
    let wire = up.wire;
    let ctype = match (stream, wire) {
        (false, _) => "application/json",
        (true, Wire::OpenAi) => "text/event-stream",
        (true, Wire::Ollama) => "application/x-ndjson",
    };
    let text = up.text();
    let frames: Vec<Vec<u8>> = words(up.tag)
        .iter()
        .map(|w| delta_frame(wire, model, w))
        .collect();
    let data = |v: Vec<Vec<u8>>| v.into_iter().map(Piece::Data).collect::<Vec<_>>();
    let full = unary_body(wire, model, &text);
    let half = full[..full.len() / 2].to_vec();
    let ok = StatusCode::OK;
    match plan.fault {
        Fault::Normal if stream => {
            let mut all = frames;
            all.extend(end_frames(wire, model));
            reply(ok, ctype, None, data(all))
        }
        Fault::Normal => reply(ok, ctype, None, vec![Piece::Data(full)]),
        Fault::Status5xx | Fault::Status429 => {
            let status = match plan.fault {
                Fault::Status429 => StatusCode::TOO_MANY_REQUESTS,
                _ => [
                    StatusCode::INTERNAL_SERVER_ERROR,
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                ][plan.variant % 3],
            };
            let retry_after = HOSTILE_RETRY_AFTER[plan.variant % HOSTILE_RETRY_AFTER.len()];
            let body = error_body(wire, &format!("chaos {}", status.as_u16()));
            reply(
                status,
                "application/json",
                retry_after,
                vec![Piece::Data(body)],
            )
        }
        Fault::Hang => std::future::pending().await,
        Fault::Garbage => reply(ok, ctype, None, vec![Piece::Data(garbage(plan.variant))]),
        Fault::Truncated if stream => {
            let mut pieces = data(frames[..plan.k].to_vec());
            if plan.variant.is_multiple_of(2) {
                // Cut inside the next frame.
                let next = &frames[plan.k];
                pieces.push(Piece::Data(next[..next.len() / 2].to_vec()));
            }
            reply(ok, ctype, None, pieces)
        }
        Fault::Truncated => reply(ok, ctype, None, vec![Piece::Data(half)]),
        Fault::Broken if stream => {
            let mut pieces = data(frames[..plan.k].to_vec());
            pieces.push(Piece::Sleep(Duration::from_millis(20)));
            pieces.push(Piece::Break);
            reply(ok, ctype, None, pieces)
        }
        Fault::Broken => reply(ok, ctype, None, vec![Piece::Data(half), Piece::Break]),
        Fault::GarbageLine if stream => {
            let mut all = frames[..plan.k].to_vec();
            all.push(garbage_line(wire, plan.variant));
            all.extend(frames[plan.k..].iter().cloned());
            all.extend(end_frames(wire, model));
            reply(ok, ctype, None, data(all))
        }
        Fault::GarbageLine => reply(ok, ctype, None, vec![Piece::Data(garbage(plan.variant))]),
        Fault::StreamError if stream => {
            let mut all = frames[..plan.k].to_vec();
            all.push(stream_error_frame(wire, &forged_text()));
            reply(ok, ctype, None, data(all))
        }
        Fault::StreamError => reply(
            ok,
            ctype,
            None,
            vec![Piece::Data(error_body(wire, &forged_text()))],
        ),
        Fault::Stall if stream => {
            let mut pieces = data(frames[..plan.k].to_vec());
            pieces.push(Piece::Hang);
            reply(ok, ctype, None, pieces)
        }
        Fault::Stall => reply(ok, ctype, None, vec![Piece::Data(half), Piece::Hang]),
        Fault::Forged => {
            let status = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::BAD_REQUEST,
            ][plan.variant % 3];
            let body = if plan.variant.is_multiple_of(2) {
                error_body(wire, &forged_text())
            } else {
                forged_text().into_bytes()
            };
            reply(status, "application/json", None, vec![Piece::Data(body)])
        }
        Fault::Trickle => {
            tokio::time::sleep(plan.head_delay).await;
            let mut pieces = Vec::new();
            if stream {
                let mut all = frames;
                all.extend(end_frames(wire, model));
                for (i, frame) in all.into_iter().enumerate() {
                    pieces.push(Piece::Sleep(plan.gaps[i.min(WORDS)]));
                    pieces.push(Piece::Data(frame));
                }
            } else {
                for (i, chunk) in full.chunks(full.len().div_ceil(4)).enumerate() {
                    pieces.push(Piece::Sleep(plan.gaps[i] / 2));
                    pieces.push(Piece::Data(chunk.to_vec()));
                }
            }
            reply(ok, ctype, None, pieces)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile clients.
// ---------------------------------------------------------------------------------------------

/// How a client treats one call.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// No deadline, waits for the answer.
    Plain,
    /// A generous deadline.
    Deadline(Duration),
    /// A deadline too short for most answers.
    Short(Duration),
    /// The client drops the call after this long.
    Cancel(Duration),
    /// An invalid request (a forbidden character in an id, an oversized or blank prompt, an
    /// unknown enum value, an out-of-range option): must be INVALID_ARGUMENT.
    Invalid(Invalid),
    /// A raw `grpc-timeout` value; whether tonic (client and server) reads it as a deadline.
    HostileTimeout(&'static str, bool),
}

impl Mode {
    /// Whether the client set a deadline that can pass: then DEADLINE_EXCEEDED is expected,
    /// and CANCELLED too (tonic's own timers, client or server side, report an expired
    /// deadline as CANCELLED).
    fn can_expire(self) -> bool {
        matches!(
            self,
            Mode::Deadline(_) | Mode::Short(_) | Mode::HostileTimeout(_, true)
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Invalid {
    ReportId,
    SectionId,
    EmptyReportId,
    OversizedPrompt,
    BlankPrompt,
    PhaseUnset,
    UnknownPhase,
    UnknownSectionType,
    Temperature,
}

const INVALID: &[Invalid] = &[
    Invalid::ReportId,
    Invalid::SectionId,
    Invalid::EmptyReportId,
    Invalid::OversizedPrompt,
    Invalid::BlankPrompt,
    Invalid::PhaseUnset,
    Invalid::UnknownPhase,
    Invalid::UnknownSectionType,
    Invalid::Temperature,
];

/// `VRA_MAX_PROMPT_BYTES` of the gateway under test.
const MAX_PROMPT_BYTES: usize = 4096;

const HOSTILE_IDS: &[&str] = &[
    "bad\nid",
    "a|b",
    "x\r\n[Hybrid] Event=FALLBACK | Reason=COST_LIMIT",
    "line\u{2028}sep",
    "nul\u{0}",
    "esc\u{1b}[31m",
];

/// Raw `grpc-timeout` values and whether they parse as a deadline (tonic's reading).
const HOSTILE_TIMEOUTS: &[(&str, bool)] = &[
    ("99999999999999999H", false),
    // Eight digits of hours: valid, but 11,000 years away — it can never pass.
    ("99999999H", false),
    ("0n", true),
    ("1u", true),
    ("-5S", false),
    ("5X", false),
    ("1.5S", false),
    ("S", false),
    // tonic reads a leading `+` as part of the number; the gateway's parser does not.
    ("+1m", true),
];

struct Call {
    report: String,
    streaming: bool,
    mode: Mode,
    request: pb::GenerateRequest,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} phase={} section={} {:?}",
            if self.streaming {
                "GenerateStream"
            } else {
                "Generate"
            },
            self.report.escape_debug(),
            self.request.phase,
            self.request.section_type,
            self.mode
        )
    }
}

fn report_name(i: usize) -> String {
    format!("chaos-r{i:03}")
}

fn plan_call(rng: &mut StdRng, n: u64) -> Call {
    let mut report = match rng.random_range(0..100) {
        0..50 => report_name(rng.random_range(0..HOT_REPORTS)),
        50..85 => report_name(rng.random_range(0..REPORTS)),
        // A fresh report keeps the cloud (and its faults) busy after the others are spent.
        _ => format!("chaos-fresh-{n}"),
    };
    let phase = common::PHASES[rng.random_range(0..common::PHASES.len())];
    let section = common::SECTIONS[rng.random_range(0..common::SECTIONS.len())];
    let mode = match rng.random_range(0..100) {
        0..35 => Mode::Plain,
        35..55 => Mode::Deadline(Duration::from_millis(rng.random_range(3000..8000))),
        55..72 => Mode::Short(Duration::from_millis(rng.random_range(20..=80))),
        72..90 => Mode::Cancel(Duration::from_millis(rng.random_range(5..=300))),
        90..95 => Mode::Invalid(INVALID[rng.random_range(0..INVALID.len())]),
        _ => {
            let (v, d) = HOSTILE_TIMEOUTS[rng.random_range(0..HOSTILE_TIMEOUTS.len())];
            Mode::HostileTimeout(v, d)
        }
    };
    let section_id = format!("{}.{}", rng.random_range(1..10), n % 10);
    let marker = if matches!(mode, Mode::Invalid(_)) {
        HOSTILE
    } else {
        &report
    };
    let mut request = pb::GenerateRequest {
        report_id: report.clone(),
        section_id,
        section_type: section as i32,
        phase: phase as i32,
        prompt: format!("report={marker}; write section {n} of the chaos report"),
        system_prompt: if rng.random_bool(0.3) {
            "You are terse.".into()
        } else {
            String::new()
        },
        options: None,
        messages: Vec::new(),
    };
    if let Mode::Invalid(kind) = mode {
        let bad = HOSTILE_IDS[rng.random_range(0..HOSTILE_IDS.len())].to_string();
        match kind {
            Invalid::ReportId => request.report_id = bad,
            Invalid::SectionId => request.section_id = bad,
            Invalid::EmptyReportId => request.report_id = String::new(),
            Invalid::OversizedPrompt => request.prompt.push_str(&"x".repeat(MAX_PROMPT_BYTES)),
            Invalid::BlankPrompt => request.prompt = " \n\t ".into(),
            Invalid::PhaseUnset => request.phase = 0,
            Invalid::UnknownPhase => request.phase = 42,
            Invalid::UnknownSectionType => request.section_type = 99,
            Invalid::Temperature => {
                request.options = Some(pb::GenerationOptions {
                    temperature: Some(if rng.random_bool(0.5) { 3.0 } else { f32::NAN }),
                    ..Default::default()
                })
            }
        }
        report.clone_from(&request.report_id);
    }
    Call {
        request,
        report,
        streaming: rng.random_bool(0.45),
        mode,
    }
}

/// How one call ended, as the client saw it.
enum Outcome {
    Answer {
        text: String,
        route: Option<pb::Route>,
        budget: Option<pb::Budget>,
    },
    Failed {
        status: Status,
        /// Text a stream delivered before its error.
        partial: String,
    },
    /// The client itself dropped the call.
    Dropped,
    /// No answer long after any deadline or timeout could explain.
    Stuck,
    /// A stream broke the contract (OK end without `done`, empty delta, message after done).
    Broken(String),
}

fn with_mode<T>(mode: Mode, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    match mode {
        Mode::Deadline(d) | Mode::Short(d) => request.set_timeout(d),
        Mode::HostileTimeout(value, _) => {
            request
                .metadata_mut()
                .insert("grpc-timeout", value.parse().expect("ASCII metadata"));
        }
        _ => {}
    }
    request
}

/// Runs `call` under the mode's cancellation, or the stuck-call guard.
async fn bounded(mode: Mode, call: impl std::future::Future<Output = Outcome>) -> Outcome {
    match mode {
        Mode::Cancel(after) => tokio::time::timeout(after, call)
            .await
            .unwrap_or(Outcome::Dropped),
        _ => tokio::time::timeout(STUCK_AFTER, call)
            .await
            .unwrap_or(Outcome::Stuck),
    }
}

async fn unary(client: &mut GatewayServiceClient<Channel>, call: &Call) -> Outcome {
    let request = with_mode(call.mode, call.request.clone());
    bounded(call.mode, async move {
        match client.generate(request).await {
            Ok(r) => {
                let r = r.into_inner();
                Outcome::Answer {
                    text: r.text,
                    route: r.route,
                    budget: r.budget,
                }
            }
            Err(status) => Outcome::Failed {
                status,
                partial: String::new(),
            },
        }
    })
    .await
}

async fn stream(client: &mut GatewayServiceClient<Channel>, call: &Call) -> Outcome {
    let request = with_mode(
        call.mode,
        pb::GenerateStreamRequest::from(call.request.clone()),
    );
    bounded(call.mode, async move {
        let mut stream = match client.generate_stream(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Outcome::Failed {
                    status,
                    partial: String::new(),
                };
            }
        };
        let mut text = String::new();
        loop {
            match stream.message().await {
                Ok(Some(msg)) => match msg.done {
                    Some(done) => {
                        if !msg.delta.is_empty() {
                            return Outcome::Broken("the done message carries a delta".into());
                        }
                        return match stream.message().await {
                            Ok(None) => Outcome::Answer {
                                text,
                                route: done.route,
                                budget: done.budget,
                            },
                            Ok(Some(_)) => Outcome::Broken("a message after done".into()),
                            Err(s) => Outcome::Broken(format!("an error after done: {s:?}")),
                        };
                    }
                    None if msg.delta.is_empty() => {
                        return Outcome::Broken("a message with an empty delta".into());
                    }
                    None => text.push_str(&msg.delta),
                },
                Ok(None) => {
                    return Outcome::Broken(format!(
                        "the stream ended OK without a done message after {} bytes",
                        text.len()
                    ));
                }
                Err(status) => {
                    return Outcome::Failed {
                        status,
                        partial: text,
                    };
                }
            }
        }
    })
    .await
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn fallback_name(reason: i32) -> &'static str {
    match pb::FallbackReason::try_from(reason) {
        Ok(r) => pb::short_name(r.as_str_name(), "FALLBACK_REASON_").unwrap_or("none"),
        Err(_) => "unknown",
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    calls: u64,
    streams: u64,
    codes: BTreeMap<&'static str, u64>,
    /// Calls the client dropped itself (part of CANCELLED).
    dropped: u64,
    /// Fallback reasons of the OK answers.
    fallbacks: BTreeMap<&'static str, u64>,
    failures: u64,
    examples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.examples.len() < 25 {
            self.examples.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.streams += other.streams;
        self.dropped += other.dropped;
        self.failures += other.failures;
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
        for (k, v) in other.fallbacks {
            *self.fallbacks.entry(k).or_default() += v;
        }
        for e in other.examples {
            if self.examples.len() < 25 {
                self.examples.push(e);
            }
        }
    }

    /// Checks one call's end against the contract.
    fn judge(&mut self, call: &Call, outcome: Outcome) {
        self.calls += 1;
        self.streams += u64::from(call.streaming);
        let invalid = matches!(call.mode, Mode::Invalid(_));
        match outcome {
            Outcome::Dropped => {
                *self.codes.entry("CANCELLED").or_default() += 1;
                self.dropped += 1;
            }
            Outcome::Stuck => {
                *self.codes.entry("STUCK").or_default() += 1;
                self.fail(format!("{call}: no answer after {STUCK_AFTER:?}"));
            }
            Outcome::Broken(why) => {
                *self.codes.entry("BROKEN_STREAM").or_default() += 1;
                self.fail(format!("{call}: {why}"));
            }
            Outcome::Answer {
                text,
                route,
                budget,
            } => {
                *self.codes.entry("OK").or_default() += 1;
                if invalid {
                    self.fail(format!("{call}: an invalid request was accepted"));
                    return;
                }
                let Some(route) = route else {
                    self.fail(format!("{call}: OK without a route"));
                    return;
                };
                *self
                    .fallbacks
                    .entry(fallback_name(route.fallback_reason))
                    .or_default() += 1;
                let expected = if route.cloud {
                    cloud_text()
                } else {
                    local_text()
                };
                if text != expected {
                    self.fail(format!(
                        "{call}: OK from {} (cloud={}) with text {:?}, expected that model's full answer",
                        route.provider, route.cloud, text
                    ));
                }
                match budget {
                    Some(b) if b.cloud_calls_used <= CAP && b.cloud_calls_limit == CAP => {}
                    other => self.fail(format!("{call}: OK with budget {other:?}")),
                }
            }
            Outcome::Failed { status, partial } => {
                let code = status.code();
                *self.codes.entry(code_name(code)).or_default() += 1;
                let message = status.message();
                if message.chars().any(char::is_control) {
                    self.fail(format!(
                        "{call}: {} message holds control characters: {message:?}",
                        code_name(code)
                    ));
                }
                if !(partial.is_empty()
                    || cloud_text().starts_with(&partial)
                    || local_text().starts_with(&partial))
                {
                    self.fail(format!(
                        "{call}: partial stream text {partial:?} is not one model's answer"
                    ));
                }
                let defined = match code {
                    Code::InvalidArgument => invalid,
                    _ if invalid => false,
                    Code::Unavailable => {
                        message.starts_with("all providers failed:")
                            || message.starts_with("stream aborted after partial output:")
                    }
                    Code::ResourceExhausted => true,
                    Code::DeadlineExceeded | Code::Cancelled => call.mode.can_expire(),
                    _ => false,
                };
                if !defined {
                    self.fail(format!(
                        "{call}: undefined status {} {message:?}",
                        code_name(code)
                    ));
                }
            }
        }
    }
}

async fn client_task(addr: SocketAddr, index: u64, seed: u64, stop_at: Instant) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut client = common::connect(addr).await;
    let mut tally = Tally::default();
    let mut n = index * 1_000_000;
    while Instant::now() < stop_at {
        let call = plan_call(&mut rng, n);
        let outcome = if call.streaming {
            stream(&mut client, &call).await
        } else {
            unary(&mut client, &call).await
        };
        tally.judge(&call, outcome);
        n += 1;
    }
    tally
}

/// Connections that each open this many gRPC streams, send their headers and never their
/// message, and hold them for the whole load (slowloris).
const HALF_OPEN_CONNECTIONS: u32 = 2;
const HALF_OPEN_STREAMS: u32 = 1000;

/// HTTP/2 bytes of a connection that opens `count` `Generate` calls and sends only their
/// headers (HPACK literals, no Huffman).
fn half_open_streams(count: u32) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/vra.gateway.v1.GatewayService/Generate"),
        (":authority", "chaos"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]); // SETTINGS
    frame(&mut out, 4, 1, 0, &[]); // SETTINGS ACK
    for i in 0..count {
        frame(&mut out, 1, 4, 2 * i + 1, &block); // HEADERS, END_HEADERS, no END_STREAM
    }
    out
}

/// Holds one slowloris connection until `stop_at`, reading (and dropping) what the server says.
async fn hold_half_open(addr: SocketAddr, stop_at: Instant) -> Result<(), String> {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("half-open connect: {e}"))?;
    conn.write_all(&half_open_streams(HALF_OPEN_STREAMS))
        .await
        .map_err(|e| format!("half-open write: {e}"))?;
    let mut buf = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout_at(stop_at, async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Raw TCP connections that speak garbage, half a protocol, or nothing at all.
async fn junk_connections(addr: SocketAddr, seed: u64, stop_at: Instant) -> (u64, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6a75_6e6b);
    let mut held = Vec::new();
    let mut opened = 0;
    let mut errors = Vec::new();
    let slowloris: Vec<_> = (0..HALF_OPEN_CONNECTIONS)
        .map(|_| tokio::spawn(hold_half_open(addr, stop_at)))
        .collect();
    while Instant::now() < stop_at {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut conn) => {
                opened += 1;
                let junk: Vec<u8> = (0..rng.random_range(1..512))
                    .map(|_| rng.random())
                    .collect();
                let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
                match rng.random_range(0..5) {
                    0 => {
                        let _ = conn.write_all(&junk).await;
                    }
                    1 => {
                        let _ = conn.write_all(preface).await;
                        let _ = conn.write_all(&junk).await;
                    }
                    2 => {
                        let _ = conn
                            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                            .await;
                        let mut buf = [0u8; 256];
                        let _ =
                            tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf))
                                .await;
                    }
                    3 if held.len() < 16 => held.push(conn),
                    _ => {
                        let _ = conn.write_all(preface).await;
                        if held.len() < 16 {
                            held.push(conn);
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("raw connect to the gateway failed: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
    for task in slowloris {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("half-open task: {e}")),
        }
    }
    (opened, errors)
}

// ---------------------------------------------------------------------------------------------
// Redis with an append-only file, killed and restarted on the same port and directory.
// ---------------------------------------------------------------------------------------------

/// Each report's `used` count as Redis has it.
async fn redis_used(
    redis: &RedisServer,
    reports: &[String],
) -> Result<HashMap<String, u32>, String> {
    let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for r in reports {
        let used: Option<u32> = redis::cmd("HGET")
            .arg(format!("vra:report:{r}"))
            .arg("used")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        out.insert(r.clone(), used.unwrap_or(0));
    }
    Ok(out)
}

/// What happened to Redis during the run.
struct Outage {
    down_for: Duration,
    paused_for: Duration,
    reports_checked: usize,
    lost: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// The soak.
// ---------------------------------------------------------------------------------------------

/// Collects every failed check, so one run reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn metrics_text(url: &str) -> Result<String, String> {
    let resp = reqwest::get(url).await.map_err(|e| e.to_string())?;
    resp.text().await.map_err(|e| e.to_string())
}

/// Sum of every sample of metric `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn summary_map<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fault_summary(up: &Upstream) -> String {
    let injected = lock(&up.injected);
    let faults: BTreeMap<&str, u64> = injected
        .iter()
        .filter(|(f, _)| **f != Fault::Normal)
        .map(|(f, n)| (f.name(), *n))
        .collect();
    let normal = injected.get(&Fault::Normal).copied().unwrap_or(0);
    format!(
        "{} requests, {} faults ({}), {normal} normal",
        up.requests.load(Ordering::SeqCst),
        faults.values().sum::<u64>(),
        summary_map(&faults)
    )
}

/// Kills Redis a third into the run (SIGKILL, as a crash), keeps it down, restarts it on the
/// same port and directory and checks that no budget count was lost; two thirds into the run,
/// freezes it (SIGSTOP): connections stay open but nothing answers.
async fn redis_outage(
    redis: &mut RedisServer,
    load_started: Instant,
    load: Duration,
) -> Result<Outage, String> {
    tokio::time::sleep_until(load_started + load / 3).await;
    let reports: Vec<String> = (0..REPORTS).map(report_name).collect();
    let before = redis_used(redis, &reports).await?;
    redis.stop().await;
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.restart().await;
    let down_for = down_at.elapsed();
    let after = redis_used(redis, &reports).await?;
    let lost = reports
        .iter()
        .filter(|r| after[*r] < before[*r])
        .map(|r| {
            format!(
                "{r}: used {} before the kill, {} after",
                before[r], after[r]
            )
        })
        .collect();
    tokio::time::sleep_until(load_started + load * 2 / 3).await;
    redis.signal("STOP")?;
    let paused_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal("CONT")?;
    Ok(Outage {
        down_for,
        paused_for: paused_at.elapsed(),
        reports_checked: reports.iter().filter(|r| before[*r] > 0).count(),
        lost,
    })
}

/// With the upstreams calm again, the gateway recovers by itself: within a bounded time a
/// normal call is served by the primary (breaker closed, ledger reachable) and a normal stream
/// ends with `done`.
async fn check_recovery(
    checks: &mut Checks,
    client: &mut GatewayServiceClient<Channel>,
    cloud: &Upstream,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("no call made");
    let mut recovered = false;
    for i in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let report = format!("chaos-final-{i}");
        let req = pb::GenerateRequest {
            prompt: format!("report={report}; one normal call"),
            ..common::request(&report, CompilationPhase::Refine, SectionType::Analysis)
        };
        match client.generate(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let route = r.route.unwrap_or_default();
                if route.tier == pb::ProviderTier::Primary as i32 && route.fallback_reason == 0 {
                    recovered = true;
                    checks.check(r.text == cloud_text(), || {
                        format!("final call text {:?}", r.text)
                    });
                    let seen = lock(&cloud.per_report).get(&report).copied().unwrap_or(0);
                    checks.check(seen == 1, || {
                        format!("the final call reached the cloud {seen} times")
                    });
                    break;
                }
                last = format!(
                    "served by {} ({})",
                    route.provider,
                    fallback_name(route.fallback_reason)
                );
            }
            Err(s) => last = format!("{s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(recovered, || {
        format!("no normal call was served by the primary within 15 s after the load; last: {last}")
    });

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut streamed = false;
    for i in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let report = format!("chaos-final-stream-{i}");
        let call = Call {
            request: pb::GenerateRequest {
                prompt: format!("report={report}; one normal stream"),
                ..common::request(&report, CompilationPhase::Expand, SectionType::Analysis)
            },
            report,
            streaming: true,
            mode: Mode::Plain,
        };
        if let Outcome::Answer { text, .. } = stream(client, &call).await {
            streamed = true;
            checks.check(text == local_text(), || {
                format!("final stream text {text:?}")
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(streamed, || {
        "no normal stream was served within 15 s after the load".into()
    });
}

/// Per report, the cloud saw at most the cap, and no more requests than the ledger counted
/// (every cloud request was budgeted first); no invalid request reached an upstream. Returns
/// the highest per-report count, how many reports reached the cap, and all cloud requests.
async fn check_budget(
    checks: &mut Checks,
    client: &mut GatewayServiceClient<Channel>,
    cloud: &Upstream,
    local: &Upstream,
    reserved: f64,
) -> (u32, usize, u64) {
    let mut over_cap = Vec::new();
    let mut unbudgeted = Vec::new();
    let seen: HashMap<String, u32> = lock(&cloud.per_report).clone();
    for (report, &n) in seen.iter().filter(|(r, _)| r.as_str() != HOSTILE) {
        if n > CAP {
            over_cap.push(format!("{report}: {n}"));
        }
        let usage = client
            .get_report_usage(pb::GetReportUsageRequest {
                report_id: report.clone(),
            })
            .await;
        match usage {
            Ok(u) => {
                let used = u.into_inner().budget.map_or(0, |b| b.cloud_calls_used);
                if n > used {
                    unbudgeted.push(format!("{report}: cloud saw {n}, ledger used {used}"));
                }
            }
            Err(s) => unbudgeted.push(format!("{report}: usage failed: {s:?}")),
        }
    }
    checks.check(over_cap.is_empty(), || {
        format!(
            "reports over the cap of {CAP} cloud requests: {}",
            over_cap.join(", ")
        )
    });
    checks.check(unbudgeted.is_empty(), || {
        format!(
            "cloud requests beyond the ledger's count: {}",
            unbudgeted.join(", ")
        )
    });
    let invalid_seen = seen.get(HOSTILE).copied().unwrap_or(0)
        + lock(&local.per_report).get(HOSTILE).copied().unwrap_or(0);
    checks.check(invalid_seen == 0, || {
        format!("{invalid_seen} invalid requests reached an upstream")
    });
    let unattributed =
        cloud.unattributed.load(Ordering::SeqCst) + local.unattributed.load(Ordering::SeqCst);
    checks.check(unattributed == 0, || {
        format!("{unattributed} upstream requests named no report")
    });
    let (cloud_max, at_cap, cloud_total) = cloud.cloud_max();
    checks.check(at_cap > 0, || {
        "no report reached the cap: the load did not test the budget".into()
    });
    checks.check(reserved >= cloud_total as f64, || {
        format!("{cloud_total} cloud requests but only {reserved} budget units reserved")
    });
    (cloud_max, at_cap, cloud_total)
}

/// The gateway's whole stderr: no panic, no forged `[Hybrid]` line (the forged text may only
/// appear escaped, inside a line), no control character, no API key.
fn check_output(checks: &mut Checks, lines: &[String]) {
    let panicked: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("panicked"))
        .map(String::as_str)
        .collect();
    checks.check(panicked.is_empty(), || {
        format!(
            "panics in the gateway's output:\n  {}",
            panicked[..panicked.len().min(5)].join("\n  ")
        )
    });
    let escaped_forgery = format!("\\n{FORGED}");
    let forged: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(FORGED) && !l.contains(&escaped_forgery))
        .collect();
    checks.check(forged.is_empty(), || {
        format!("a forged [Hybrid] line reached the log: {:?}", forged[0])
    });
    let controls = lines
        .iter()
        .filter(|l| l.chars().any(char::is_control))
        .count();
    checks.check(controls == 0, || {
        format!("{controls} log lines hold control characters")
    });
    checks.check(!lines.iter().any(|l| l.contains(KEY)), || {
        "the API key leaked into the logs".into()
    });
}

async fn soak(scenario: Scenario) -> Result<(), String> {
    let started = std::time::Instant::now();
    let seed = seed();
    let load = load_time();
    let cloud = Upstream::new(Wire::OpenAi, seed);
    let local = Upstream::new(Wire::Ollama, seed.rotate_left(17));
    let cloud_url = format!("http://{}/v1", serve_upstream(cloud.clone()).await);
    let local_url = format!("http://{}", serve_upstream(local.clone()).await);

    let mut redis = match scenario {
        Scenario::Memory => None,
        Scenario::Redis => Some(RedisServer::start_aof().await),
    };
    let redis_url = redis.as_ref().map(RedisServer::url);
    let mut env: Vec<(&str, &str)> = SETTINGS.to_vec();
    env.push(("OPENAI_BASE_URL", &cloud_url));
    env.push(("OLLAMA_HOST", &local_url));
    if let Some(url) = &redis_url {
        env.push(("VRA_LEDGER_URL", url));
    }
    let mut gw = Running::start(&env).await;
    let pid = gw.child.id().expect("gateway pid");
    let addr: SocketAddr = gw.addr.parse().expect("gateway address");
    let metrics_url = gw.metrics_url().await;

    // The load.
    let load_started = Instant::now();
    let stop_at = load_started + load;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client_task(addr, i, seed, stop_at)))
        .collect();
    let junk = tokio::spawn(junk_connections(addr, seed, stop_at));
    let outage = match redis.as_mut() {
        Some(redis) => Some(redis_outage(redis, load_started, load).await?),
        None => None,
    };
    let mut tally = Tally::default();
    for c in clients {
        tally.merge(c.await.map_err(|e| format!("client task: {e}"))?);
    }
    let (junk_opened, junk_errors) = junk.await.map_err(|e| format!("junk task: {e}"))?;
    let load_secs = load_started.elapsed().as_secs_f64();

    // The upstreams behave from now on; the gateway must recover by itself.
    cloud.calm.store(true, Ordering::SeqCst);
    local.calm.store(true, Ordering::SeqCst);
    let mut checks = Checks::default();
    checks.check(tally.failures == 0, || {
        format!(
            "{} calls ended outside the contract, e.g.:\n  {}",
            tally.failures,
            tally.examples.join("\n  ")
        )
    });
    checks.check(junk_errors.is_empty(), || junk_errors.join("; "));
    checks.check(matches!(gw.child.try_wait(), Ok(None)), || {
        "the gateway process died during the load".into()
    });

    // Drained: no call left in flight once the clients are gone.
    let mut in_flight = f64::NAN;
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(text) = metrics_text(&metrics_url).await {
                in_flight = metric_sum(&text, "vra_gateway_in_flight_requests");
                if in_flight == 0.0 {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    checks.check(drained.is_ok(), || {
        format!("{in_flight} calls still in flight 15 s after the load ended")
    });
    let metrics = drained.unwrap_or_default();
    let reserved = metric_sum(&metrics, "vra_gateway_budget_units_reserved_total");
    let panics = metric_sum(&metrics, "vra_gateway_panics_total");
    checks.check(panics == 0.0, || format!("{panics} request tasks panicked"));

    // Serving, and a normal call is served by the primary again (breaker closed, ledger back).
    let serving = tokio::time::timeout(Duration::from_secs(15), async {
        while !vra_gateway::server::check_health(&gw.addr)
            .await
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    checks.check(serving.is_ok(), || {
        "health never SERVING after the load".into()
    });
    let mut client = common::connect(addr).await;
    check_recovery(&mut checks, &mut client, &cloud).await;
    // The recovery calls reserved units and reached the cloud too: count the units after
    // them, as the cloud's requests are counted after them. (Counted before, a run in which
    // every reservation of the load reached the cloud came out one unit short.)
    let reserved = match metrics_text(&metrics_url).await {
        Ok(text) => metric_sum(&text, "vra_gateway_budget_units_reserved_total"),
        Err(_) => reserved,
    };

    let (cloud_max, at_cap, cloud_total) =
        check_budget(&mut checks, &mut client, &cloud, &local, reserved).await;

    let ledger_unavailable = tally
        .fallbacks
        .get("LEDGER_UNAVAILABLE")
        .copied()
        .unwrap_or(0);
    match scenario {
        Scenario::Memory => checks.check(ledger_unavailable == 0, || {
            format!("{ledger_unavailable} LEDGER_UNAVAILABLE answers with the memory ledger")
        }),
        Scenario::Redis => {
            checks.check(ledger_unavailable > 0, || {
                "no call was answered LEDGER_UNAVAILABLE while Redis was down".into()
            });
            if let Some(o) = &outage {
                checks.check(o.lost.is_empty(), || {
                    format!(
                        "budget counts lost across the Redis restart: {}",
                        o.lost.join(", ")
                    )
                });
            }
        }
    }

    // Memory.
    let peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(u64::MAX);
    let rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(u64::MAX);
    checks.check(peak_kb < RSS_LIMIT_MB * 1024, || {
        format!(
            "peak RSS {} MB over the bound of {RSS_LIMIT_MB} MB",
            peak_kb / 1024
        )
    });

    // Clean exit, clean output.
    checks.check(matches!(gw.child.try_wait(), Ok(None)), || {
        "the gateway process died after the load".into()
    });
    gw.sigterm();
    let stopping = Instant::now();
    let (code, lines) = gw.finish().await;
    let shutdown_secs = stopping.elapsed().as_secs_f64();
    checks.check(code == 0, || format!("exit code {code} after SIGTERM"));
    check_output(&mut checks, &lines);

    // The figures.
    let mut codes = tally.codes.clone();
    let cancelled = codes.remove("CANCELLED").unwrap_or(0);
    let mut statuses = summary_map(&codes);
    if cancelled > 0 {
        let _ = write!(
            statuses,
            ", CANCELLED {cancelled} ({} dropped by the client)",
            tally.dropped
        );
    }
    let mut summary = format!(
        "chaos[{}]: {} calls ({} streams) in {load_secs:.1} s, {CLIENTS} clients, {REPORTS} reports, seed {seed}; \
         statuses: {statuses}; OK fallbacks: {}; \
         cloud faults: {}; local faults: {}; \
         cloud requests max per report {cloud_max} (cap {CAP}; {at_cap} reports at the cap; {cloud_total} in all; {reserved} units reserved); \
         raw junk connections {junk_opened}, {HALF_OPEN_CONNECTIONS}x{HALF_OPEN_STREAMS} half-open streams held; max RSS {} MB (VmHWM; {} MB at the end)",
        scenario.name(),
        tally.calls,
        tally.streams,
        summary_map(&tally.fallbacks),
        fault_summary(&cloud),
        fault_summary(&local),
        peak_kb / 1024,
        rss_kb / 1024,
    );
    if let Some(o) = &outage {
        let _ = write!(
            summary,
            "; redis killed (SIGKILL) and restarted after {:.1} s down, {} budget counts kept across it, later frozen (SIGSTOP) for {:.1} s; {ledger_unavailable} OK answers LEDGER_UNAVAILABLE",
            o.down_for.as_secs_f64(),
            o.reports_checked,
            o.paused_for.as_secs_f64()
        );
    }
    let _ = write!(
        summary,
        "; SIGTERM to exit {code} in {shutdown_secs:.2} s; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    let mut report = summary.clone();
    for failure in &checks.0 {
        let _ = write!(report, "\nFAILED: {failure}");
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join(format!("chaos-{}.txt", scenario.name())));
    if let Some(path) = target {
        let _ = std::fs::write(path, report + "\n");
    }
    if checks.0.is_empty() {
        Ok(())
    } else {
        Err(checks.0.join("\n"))
    }
}
