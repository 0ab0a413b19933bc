//! A fast fake upstream: fixed OpenAI Chat Completions answers (JSON, or SSE when the body
//! asks for `"stream":true`) and fixed Ollama `/api/chat` answers (NDJSON unless
//! `"stream":false`).
//!
//! Every answer is built once at startup and served as shared `Bytes`: a request costs one
//! body read and a substring check, so the upstream is as close to free as an HTTP server
//! gets and the benchmark measures what sits in front of it. (`demo::sim::Sim` records
//! every request for the tests' assertions and would grow without bound here.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use clap::Args;
use serde_json::json;

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Listen address (HOST:PORT); port 0 picks one and prints it.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Delay before every answer's headers (simulated queueing / first-token latency), ms.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Completion length in tokens (one word each; one SSE / NDJSON frame each when streamed).
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Delay between streamed tokens, ms; 0 sends the whole stream as one chunk.
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// Requests served at once at most (a model server's slots); later ones wait in FIFO order
    /// for a slot, which each holds for `--delay-ms`. 0 = unlimited. With both set, the
    /// upstream's capacity is `max_concurrency / delay` requests per second.
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: usize,
}

/// Every answer, pre-encoded.
struct Fixed {
    delay: Duration,
    /// `--max-concurrency` slots (tokio's semaphore is fair: FIFO).
    slots: Option<Arc<tokio::sync::Semaphore>>,
    token_delay: Duration,
    completion: Bytes,
    sse: Frames,
    ollama: Bytes,
    ndjson: Frames,
}

/// A stream answer: its frames, and all of them joined for the no-delay case.
struct Frames {
    each: Vec<Bytes>,
    whole: Bytes,
}

impl Frames {
    fn new(each: Vec<Vec<u8>>) -> Self {
        let whole = Bytes::from(each.concat());
        Self {
            each: each.into_iter().map(Bytes::from).collect(),
            whole,
        }
    }
}

const MODEL: &str = "bench-model";
const PROMPT_TOKENS: usize = 24;

impl Fixed {
    fn new(o: &Options) -> Self {
        let tokens = o.tokens.max(1);
        let word = "token ";
        let text = word.repeat(tokens);
        let completion = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens},
        });
        let sse_frame = |v: serde_json::Value| format!("data: {v}\n\n").into_bytes();
        let mut sse: Vec<Vec<u8>> = (0..tokens)
            .map(|_| {
                sse_frame(json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]}))
            })
            .collect();
        sse.push(sse_frame(
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ));
        sse.push(sse_frame(json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens}})));
        sse.push(b"data: [DONE]\n\n".to_vec());

        let ollama_done = json!({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
            "prompt_eval_count": PROMPT_TOKENS, "eval_count": tokens});
        let ollama = json!({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text}, "done": true, "done_reason": "stop",
            "prompt_eval_count": PROMPT_TOKENS, "eval_count": tokens});
        let mut ndjson: Vec<Vec<u8>> = (0..tokens)
            .map(|_| {
                format!(
                    "{}\n",
                    json!({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": word}, "done": false})
                )
                .into_bytes()
            })
            .collect();
        ndjson.push(format!("{ollama_done}\n").into_bytes());

        Self {
            delay: Duration::from_millis(o.delay_ms),
            slots: (o.max_concurrency > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(o.max_concurrency))),
            token_delay: Duration::from_millis(o.token_delay_ms),
            completion: Bytes::from(completion.to_string()),
            sse: Frames::new(sse),
            ollama: Bytes::from(ollama.to_string()),
            ndjson: Frames::new(ndjson),
        }
    }
}

/// Whether `body` contains `"stream":<value>` (compact or with one space, as clients write).
fn has_stream_flag(body: &[u8], value: bool) -> bool {
    let (compact, spaced): (&[u8], &[u8]) = if value {
        (b"\"stream\":true", b"\"stream\": true")
    } else {
        (b"\"stream\":false", b"\"stream\": false")
    };
    contains(body, compact) || contains(body, spaced)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn reply(content_type: &'static str, body: Body) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn stream_reply(fixed: &Arc<Fixed>, sse: bool) -> Response {
    let (content_type, frames) = if sse {
        ("text/event-stream", &fixed.sse)
    } else {
        ("application/x-ndjson", &fixed.ndjson)
    };
    if fixed.token_delay.is_zero() {
        return reply(content_type, Body::from(frames.whole.clone()));
    }
    let delay = fixed.token_delay;
    let fixed = fixed.clone();
    let body = futures_util::stream::unfold(0usize, move |i| {
        let fixed = fixed.clone();
        async move {
            let frames = if sse { &fixed.sse } else { &fixed.ndjson };
            let frame = frames.each.get(i)?.clone();
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, Infallible>(frame), i + 1))
        }
    });
    reply(content_type, Body::from_stream(body))
}

/// Waits for a slot (if limited), then for `--delay-ms` while holding it.
async fn serve_delay(fixed: &Fixed) {
    let _slot = match &fixed.slots {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    if !fixed.delay.is_zero() {
        tokio::time::sleep(fixed.delay).await;
    }
}

async fn chat(State(fixed): State<Arc<Fixed>>, body: Bytes) -> Response {
    serve_delay(&fixed).await;
    if has_stream_flag(&body, true) {
        stream_reply(&fixed, true)
    } else {
        reply("application/json", Body::from(fixed.completion.clone()))
    }
}

async fn ollama_chat(State(fixed): State<Arc<Fixed>>, body: Bytes) -> Response {
    serve_delay(&fixed).await;
    // Ollama streams unless told not to.
    if has_stream_flag(&body, false) {
        reply("application/json", Body::from(fixed.ollama.clone()))
    } else {
        stream_reply(&fixed, false)
    }
}

/// Serves until the process is killed (`bench/run.sh` sends SIGTERM).
pub async fn serve(options: Options) -> Result<(), String> {
    let fixed = Arc::new(Fixed::new(&options));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/api/chat", post(ollama_chat))
        .route("/health", get(|| async { (StatusCode::OK, "ok") }))
        .with_state(fixed);
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    println!("upstream listening on {local}");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("upstream server: {e}"))
}

/// Prints a currently free TCP port on 127.0.0.1 (for `bench/run.sh`).
pub fn free_port() -> Result<(), String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    println!("{port}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use vra_gateway::providers::StreamEvent;
    use vra_gateway::providers::ollama::NdjsonDecoder;
    use vra_gateway::providers::openai::SseDecoder;
    use vra_gateway::providers::stream::{LineBuffer, feed};

    fn opts() -> Options {
        Options {
            addr: "127.0.0.1:0".parse().unwrap(),
            delay_ms: 0,
            tokens: 3,
            token_delay_ms: 0,
            max_concurrency: 0,
        }
    }

    #[test]
    fn stream_flag_detection() {
        assert!(has_stream_flag(br#"{"model":"m","stream":true}"#, true));
        assert!(has_stream_flag(br#"{"model": "m", "stream": true}"#, true));
        assert!(!has_stream_flag(br#"{"model":"m","stream":false}"#, true));
        assert!(has_stream_flag(br#"{"stream":false}"#, false));
    }

    /// The fixed answers decode with the gateway's own decoders.
    #[test]
    fn answers_decode_with_the_gateway_decoders() {
        let f = Fixed::new(&opts());
        let c = vra_gateway::providers::openai::parse_response(&f.completion).unwrap();
        assert_eq!(c.text, "token token token ");
        for (whole, sse) in [(&f.sse.whole, true), (&f.ndjson.whole, false)] {
            let mut lines = LineBuffer::default();
            let mut out = VecDeque::new();
            if sse {
                feed(&mut lines, &mut SseDecoder::default(), whole, &mut out).unwrap();
            } else {
                feed(&mut lines, &mut NdjsonDecoder, whole, &mut out).unwrap();
            }
            assert_eq!(out.len(), 4, "{sse}");
            assert!(matches!(out.back(), Some(StreamEvent::Done { .. })));
        }
    }
}
