//! Simulated upstreams: in-process HTTP servers speaking the real OpenAI Chat Completions,
//! Anthropic Messages and Ollama `/api/chat` wire formats (JSON, SSE, NDJSON) with canned
//! text.
//!
//! This is the one simulated backend of the product: `vra-gateway demo` runs against it
//! (and says so on screen), and the tests and benchmarks use it as the "remote LLM". The
//! gateway talks to it over real HTTP exactly as it talks to OpenAI or Ollama. Behaviour is
//! scriptable per request ([`Step`]), every request is counted and recorded, and streamed
//! bodies report when the client dropped them ([`Sim::wait_closed`]); tests wait for requests
//! with [`Sim::wait_requests`] instead of polling. Requests in flight (received, response not
//! yet finished) are counted with their peak ([`Sim::in_flight`], [`Sim::peak_in_flight`],
//! [`Sim::wait_in_flight`]).
//!
//! Routes: `POST /v1/chat/completions` (OpenAI; base URL [`Sim::openai_base`]; also Azure
//! OpenAI's `/openai/deployments/{deployment}/chat/completions`),
//! `POST /v1/messages` (Anthropic; base URL [`Sim::anthropic_base`]) and `POST /api/chat`
//! (Ollama; base URL [`Sim::ollama_base`]). The Anthropic shapes follow Anthropic's API
//! reference ("Messages", "Streaming Messages"): a `message` object with `text` content
//! blocks, and named SSE events from `message_start` to `message_stop`, the usage split between
//! `message_start` (input) and `message_delta` (output).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use tokio::sync::Notify;

/// What the simulated upstream does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer with `text` (streamed word by word when the request asks for a stream), after
    /// `delay`; streamed chunks are `chunk_delay` apart.
    Reply {
        text: String,
        delay: Duration,
        chunk_delay: Duration,
    },
    /// Answer with an error status (JSON error body), optionally with `Retry-After`.
    Fail {
        status: u16,
        retry_after: Option<String>,
    },
    /// A 200 whose body is not the expected JSON.
    Malformed,
    /// Stream `deltas` chunks of the text, then break the connection.
    StreamThenBreak { text: String, deltas: usize },
    /// Stream `deltas` chunks of the text, then go silent forever.
    StreamThenHang { text: String, deltas: usize },
    /// Stream the whole text but end the body without the terminal event.
    StreamWithoutEnd { text: String },
    /// Send exactly these body chunks with status 200.
    Raw {
        chunks: Vec<Vec<u8>>,
        chunk_delay: Duration,
    },
    /// Send these body chunks with status 200, then `filler` again and again, without end and
    /// without a `Content-Length`: a line or a body that never finishes. It is produced as the
    /// client reads, so the upstream never holds more than one filler.
    Endless {
        chunks: Vec<Vec<u8>>,
        filler: Vec<u8>,
    },
    /// Never answer.
    Hang,
    /// Answer with an error status and exactly this body (e.g. hostile error text).
    FailWith { status: u16, body: String },
}

impl Step {
    /// A plain successful reply.
    pub fn reply(text: impl Into<String>) -> Step {
        Step::Reply {
            text: text.into(),
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
        }
    }

    /// An error status without `Retry-After`.
    pub fn fail(status: u16) -> Step {
        Step::Fail {
            status,
            retry_after: None,
        }
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// The URL's query string, if any (Azure OpenAI's `api-version`).
    pub query: Option<String>,
    /// Azure OpenAI's key header (`api-key`).
    pub api_key_header: Option<String>,
    pub body: serde_json::Value,
    pub authorization: Option<String>,
    /// Anthropic's key header (`x-api-key`) and `anthropic-version`.
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    pub traceparent: Option<String>,
    /// The W3C `tracestate` and `baggage` headers, which the gateway must not forward.
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

impl Recorded {
    /// The `model` field of the request body.
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or_default()
    }
    /// Whether the request asked for a stream.
    pub fn streamed(&self) -> bool {
        self.body["stream"].as_bool().unwrap_or(false)
    }
}

struct State {
    script: Mutex<VecDeque<Step>>,
    default: Mutex<Step>,
    failures: Mutex<Option<FailEvery>>,
    keep_records: AtomicBool,
    recorded: Mutex<Vec<Recorded>>,
    requests: AtomicUsize,
    requests_notify: Notify,
    closed: AtomicUsize,
    closed_notify: Notify,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    in_flight_notify: Notify,
}

/// A running simulated upstream. Dropping it stops the server.
pub struct Sim {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default canned answer.
pub const DEFAULT_TEXT: &str =
    "Simulated text: the section's key points, written by a model that is not really there.";

impl Sim {
    /// Starts a simulated upstream on `127.0.0.1` with a free port.
    pub async fn start() -> std::io::Result<Sim> {
        Sim::start_on("127.0.0.1:0".parse().expect("static address")).await
    }

    /// Starts a simulated upstream on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Sim> {
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Step::reply(DEFAULT_TEXT)),
            failures: Mutex::new(None),
            keep_records: AtomicBool::new(true),
            recorded: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            requests_notify: Notify::new(),
            closed: AtomicUsize::new(0),
            closed_notify: Notify::new(),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            in_flight_notify: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/chat/completions", post(openai))
            // Azure OpenAI's deployment URLs.
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(openai),
            )
            .route("/api/chat", post(ollama))
            .route("/v1/messages", post(anthropic))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sim { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for an OpenAI-kind provider (`OPENAI_BASE_URL`).
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for an Anthropic-kind provider (`base_url` of a `kind = "anthropic"` table).
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL for an Ollama-kind provider (`OLLAMA_HOST`).
    pub fn ollama_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a behaviour for the next unscripted request.
    pub fn push(&self, step: Step) {
        lock(&self.state.script).push_back(step);
    }

    /// Queues `n` copies of a behaviour.
    pub fn push_n(&self, n: usize, step: Step) {
        let mut script = lock(&self.state.script);
        script.extend(std::iter::repeat_n(step, n));
    }

    /// What every request does once the script is used up.
    pub fn set_default(&self, step: Step) {
        *lock(&self.state.default) = step;
    }

    /// Once the script is used up, makes every `calls`-th call fail: after `calls - 1`
    /// answered requests, the next `attempts` requests get HTTP 500 — all the retries of one
    /// gateway call when calls arrive one at a time. `calls` = 1 fails everything.
    pub fn fail_every(&self, calls: NonZeroUsize, attempts: NonZeroUsize) {
        *lock(&self.state.failures) = Some(FailEvery {
            calls: calls.get(),
            attempts: attempts.get(),
            answered: 0,
            failing: 0,
        });
    }

    /// Stops keeping each request for [`Sim::recorded`], so a long-running sandbox
    /// (`demo --serve`) does not grow without bound. Counters still count.
    pub fn forget_requests(&self) {
        self.state.keep_records.store(false, Ordering::SeqCst);
        lock(&self.state.recorded).clear();
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were received (the handler has recorded the request
    /// and picked its [`Step`], before any reply delay); returns false on timeout.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let state = &self.state;
        wait_count(&state.requests, &state.requests_notify, n, timeout).await
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.state.recorded).clone()
    }

    /// Requests in flight now: received, their response not yet finished (or dropped).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are in flight at once; returns false on timeout.
    pub async fn wait_in_flight(&self, n: usize, timeout: Duration) -> bool {
        let state = &self.state;
        wait_count(&state.in_flight, &state.in_flight_notify, n, timeout).await
    }

    /// Response bodies finished or dropped so far.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` response bodies were closed (sent to the end or dropped by
    /// the client); returns false on timeout.
    pub async fn wait_closed(&self, n: usize, timeout: Duration) -> bool {
        let state = &self.state;
        wait_count(&state.closed, &state.closed_notify, n, timeout).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `count` reaches `n`, woken by `notify`; false on timeout.
async fn wait_count(count: &AtomicUsize, notify: &Notify, n: usize, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        loop {
            // Created before the check: `notify_waiters` reaches it from here on.
            let notified = notify.notified();
            if count.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    })
    .await
    .is_ok()
}

/// A request in flight until its response body is dropped — by completion or by the client
/// — when it is counted as closed.
struct CloseGuard(Arc<State>);

impl CloseGuard {
    fn new(state: Arc<State>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        state.in_flight_notify.notify_waiters();
        CloseGuard(state)
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.fetch_add(1, Ordering::SeqCst);
        self.0.closed_notify.notify_waiters();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    OpenAi,
    Ollama,
    Anthropic,
}

async fn openai(st: AxState<Arc<State>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    handle(st.0, Format::OpenAi, &uri, headers, body).await
}

async fn ollama(st: AxState<Arc<State>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    handle(st.0, Format::Ollama, &uri, headers, body).await
}

async fn anthropic(st: AxState<Arc<State>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    handle(st.0, Format::Anthropic, &uri, headers, body).await
}

async fn handle(
    state: Arc<State>,
    format: Format,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "request body is not JSON").into_response(),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let rec = Recorded {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        api_key_header: header("api-key"),
        body: json,
        authorization: header("authorization"),
        x_api_key: header("x-api-key"),
        anthropic_version: header("anthropic-version"),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        baggage: header("baggage"),
    };
    let model = rec.model().to_string();
    let stream = rec.streamed();
    let words = |v: &serde_json::Value| v.as_str().map_or(0, |c| c.split_whitespace().count());
    let prompt_words = rec.body["messages"]
        .as_array()
        .map(|m| m.iter().map(|x| words(&x["content"])).sum())
        .unwrap_or(0usize)
        + words(&rec.body["system"]);
    let guard = CloseGuard::new(state.clone());
    if state.keep_records.load(Ordering::SeqCst) {
        lock(&state.recorded).push(rec);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let scripted = lock(&state.script).pop_front();
    let step = scripted
        .or_else(|| lock(&state.failures).as_mut().and_then(FailEvery::next))
        .unwrap_or_else(|| lock(&state.default).clone());
    state.requests_notify.notify_waiters();
    let ctx = Ctx {
        format,
        model,
        prompt_tokens: prompt_words as u32,
    };
    respond(ctx, step, stream, guard).await
}

/// The state of [`Sim::fail_every`].
struct FailEvery {
    calls: usize,
    attempts: usize,
    /// Requests answered since the last failed call.
    answered: usize,
    /// Failures still to send for the current failed call.
    failing: usize,
}

impl FailEvery {
    /// The failure for this request, or `None` to answer it normally.
    fn next(&mut self) -> Option<Step> {
        if self.failing > 0 {
            self.failing -= 1;
            return Some(Step::fail(500));
        }
        if self.answered + 1 >= self.calls {
            self.answered = 0;
            self.failing = self.attempts - 1;
            return Some(Step::fail(500));
        }
        self.answered += 1;
        None
    }
}

struct Ctx {
    format: Format,
    model: String,
    prompt_tokens: u32,
}

async fn respond(ctx: Ctx, step: Step, stream: bool, guard: CloseGuard) -> Response {
    match step {
        Step::Reply {
            text,
            delay,
            chunk_delay,
        } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if stream {
                let frames = frames(&ctx, &text, usize::MAX, true);
                streamed(ctx.format, frames, chunk_delay, Ending::Close, guard)
            } else {
                drop(guard);
                json_reply(&ctx, &text)
            }
        }
        Step::Fail {
            status,
            retry_after,
        } => {
            drop(guard);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = match ctx.format {
                Format::OpenAi => {
                    serde_json::json!({"error": {"message": format!("simulated {status}"), "type": "server_error"}})
                }
                Format::Ollama => serde_json::json!({"error": format!("simulated {status}")}),
                Format::Anthropic => {
                    let kind = match status {
                        529 => "overloaded_error",
                        429 => "rate_limit_error",
                        400 => "invalid_request_error",
                        401 => "authentication_error",
                        _ => "api_error",
                    };
                    serde_json::json!({"type": "error", "error": {"type": kind, "message": format!("simulated {status}")}})
                }
            };
            let mut resp = (code, axum::Json(body)).into_response();
            if let Some(ra) = retry_after.and_then(|r| r.parse().ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, ra);
            }
            resp
        }
        Step::Malformed => {
            drop(guard);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"unexpected\": true",
            )
                .into_response()
        }
        Step::StreamThenBreak { text, deltas } => {
            let frames = frames(&ctx, &text, deltas, false);
            streamed(ctx.format, frames, Duration::ZERO, Ending::Break, guard)
        }
        Step::StreamThenHang { text, deltas } => {
            let frames = frames(&ctx, &text, deltas, false);
            streamed(ctx.format, frames, Duration::ZERO, Ending::Hang, guard)
        }
        Step::StreamWithoutEnd { text } => {
            let frames = frames(&ctx, &text, usize::MAX, false);
            streamed(ctx.format, frames, Duration::ZERO, Ending::Close, guard)
        }
        Step::Raw {
            chunks,
            chunk_delay,
        } => streamed(ctx.format, chunks, chunk_delay, Ending::Close, guard),
        Step::FailWith { status, body } => {
            drop(guard);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Step::Endless { chunks, filler } => {
            let filler = Bytes::from(filler);
            let body = futures_util::stream::iter(chunks.into_iter().map(Bytes::from))
                .chain(futures_util::stream::repeat(filler))
                .map(Ok::<_, std::io::Error>);
            body_response(ctx.format, body, guard)
        }
        Step::Hang => {
            let _guard = guard;
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
    }
}

fn json_reply(ctx: &Ctx, text: &str) -> Response {
    let completion = text.split_whitespace().count() as u32;
    let body = match ctx.format {
        Format::OpenAi => serde_json::json!({
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "created": 0,
            "model": ctx.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": completion, "total_tokens": ctx.prompt_tokens + completion},
        }),
        Format::Ollama => serde_json::json!({
            "model": ctx.model,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text},
            "done": true,
            "done_reason": "stop",
            "prompt_eval_count": ctx.prompt_tokens,
            "eval_count": completion,
        }),
        Format::Anthropic => serde_json::json!({
            "id": "msg_sim",
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": ctx.prompt_tokens, "output_tokens": completion},
        }),
    };
    axum::Json(body).into_response()
}

/// Splits `text` into chunks that keep their whitespace, so concatenation restores it.
pub fn split_words(text: &str, words_per_chunk: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut words = 0;
    for (i, ch) in text.char_indices() {
        cur.push(ch);
        let next_is_word_start = ch.is_whitespace()
            && text[i + ch.len_utf8()..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace());
        if next_is_word_start {
            words += 1;
            if words >= words_per_chunk {
                out.push(std::mem::take(&mut cur));
                words = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Wire frames of a streamed answer: up to `max_deltas` text chunks, then (if `end`) the
/// terminal frames.
fn frames(ctx: &Ctx, text: &str, max_deltas: usize, end: bool) -> Vec<Vec<u8>> {
    let pieces = split_words(text, 1);
    let completion = pieces.len() as u32;
    let mut out: Vec<Vec<u8>> = Vec::new();
    if ctx.format == Format::Anthropic {
        out.push(frame(ctx.format, &serde_json::json!({"type": "message_start", "message": {
            "id": "msg_sim", "type": "message", "role": "assistant", "content": [], "model": ctx.model,
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": ctx.prompt_tokens, "output_tokens": 1}}})));
        out.push(frame(
            ctx.format,
            &serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ));
        out.push(frame(ctx.format, &serde_json::json!({"type": "ping"})));
    }
    for piece in pieces.iter().take(max_deltas) {
        let v = match ctx.format {
            Format::OpenAi => {
                serde_json::json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": ctx.model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
            }
            Format::Ollama => {
                serde_json::json!({"model": ctx.model, "message": {"role": "assistant", "content": piece}, "done": false})
            }
            Format::Anthropic => {
                serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            }
        };
        out.push(frame(ctx.format, &v));
    }
    if end {
        match ctx.format {
            Format::OpenAi => {
                out.push(frame(ctx.format, &serde_json::json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": ctx.model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
                out.push(frame(ctx.format, &serde_json::json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": ctx.model,
                    "choices": [], "usage": {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": completion, "total_tokens": ctx.prompt_tokens + completion}})));
                out.push(b"data: [DONE]\n\n".to_vec());
            }
            Format::Ollama => out.push(frame(ctx.format, &serde_json::json!({"model": ctx.model, "message": {"role": "assistant", "content": ""},
                "done": true, "done_reason": "stop", "prompt_eval_count": ctx.prompt_tokens, "eval_count": completion}))),
            Format::Anthropic => {
                out.push(frame(ctx.format, &serde_json::json!({"type": "content_block_stop", "index": 0})));
                out.push(frame(ctx.format, &serde_json::json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": completion}})));
                out.push(frame(ctx.format, &serde_json::json!({"type": "message_stop"})));
            }
        }
    }
    out
}

fn frame(format: Format, v: &serde_json::Value) -> Vec<u8> {
    match format {
        Format::OpenAi => format!("data: {v}\n\n").into_bytes(),
        Format::Ollama => format!("{v}\n").into_bytes(),
        Format::Anthropic => sse_event(v),
    }
}

/// One Anthropic SSE event: named by its data's `type`.
pub fn sse_event(v: &serde_json::Value) -> Vec<u8> {
    format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap_or("message")
    )
    .into_bytes()
}

#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Close,
    Break,
    Hang,
}

fn streamed(
    format: Format,
    frames: Vec<Vec<u8>>,
    delay: Duration,
    ending: Ending,
    guard: CloseGuard,
) -> Response {
    let body =
        futures_util::stream::iter(frames.into_iter().map(Some).chain(std::iter::once(None)))
            .then(move |f| async move {
                if !delay.is_zero() && f.is_some() {
                    tokio::time::sleep(delay).await;
                }
                if f.is_none() && ending == Ending::Break {
                    // Let the frames already written reach the client before the break.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                f
            })
            .flat_map(move |f| {
                let item: Option<Result<Bytes, std::io::Error>> = match (f, &ending) {
                    (Some(bytes), _) => Some(Ok(Bytes::from(bytes))),
                    (None, Ending::Close) => None,
                    (None, Ending::Break) => {
                        Some(Err(std::io::Error::other("simulated connection break")))
                    }
                    (None, Ending::Hang) => return futures_util::stream::pending().left_stream(),
                };
                futures_util::stream::iter(item).right_stream()
            });
    body_response(format, body, guard)
}

/// A 200 streaming `body` with the format's content type. The guard lives as long as the body:
/// dropped at its end or when the client goes away.
fn body_response(
    format: Format,
    body: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    guard: CloseGuard,
) -> Response {
    let content_type = match format {
        Format::OpenAi | Format::Anthropic => "text/event-stream",
        Format::Ollama => "application/x-ndjson",
    };
    let body = body.map(move |item| {
        let _ = &guard;
        item
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_whitespace() {
        let text = "Grüße  aus\nder Welt 🌍 ";
        let parts = split_words(text, 1);
        assert_eq!(parts.concat(), text);
        assert!(parts.len() >= 4);
        assert_eq!(split_words("one", 1), vec!["one"]);
    }

    /// The pattern of `fail_every(3, 2)`: two answered requests, then both attempts of one
    /// call fail, and again; `fail_every(1, _)` fails everything.
    #[test]
    fn fail_every_fails_all_attempts_of_every_nth_call() {
        let pattern = |calls, attempts, n| {
            let mut f = FailEvery {
                calls,
                attempts,
                answered: 0,
                failing: 0,
            };
            (0..n).map(|_| f.next().is_some()).collect::<Vec<_>>()
        };
        let (ok, fail) = (false, true);
        assert_eq!(pattern(3, 2, 8), [ok, ok, fail, fail, ok, ok, fail, fail]);
        assert_eq!(pattern(1, 3, 4), [fail; 4]);
    }
}
