//! End-to-end tests of the body limits: an upstream that sends too much — a unary answer past
//! `VRA_MAX_RESPONSE_BYTES`, a stream line past `VRA_MAX_STREAM_LINE_BYTES`, a line that never
//! ends — fails that attempt with "larger than N bytes" instead of growing the gateway's
//! memory: the call falls back before the first delta and aborts after it, and the upstream
//! connection is dropped rather than read on.

mod common;

use std::time::Duration;

use common::{Harness, reason, request, tier};
use tonic::{Code, Status};
use vra_gateway::demo::sim::Step;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

const LOCAL_TEXT: &str = "Local model text — llama writes plainly.";

/// Small limits (the smallest the configuration accepts are 1024 bytes).
async fn start() -> Harness {
    let h = Harness::start(&[
        ("VRA_MAX_RESPONSE_BYTES", "2048"),
        ("VRA_MAX_STREAM_LINE_BYTES", "1024"),
    ])
    .await;
    h.local.set_default(Step::reply(LOCAL_TEXT));
    h
}

/// A 200 whose body starts with `head` and then never ends, one kilobyte of `x` after another.
fn endless(head: &str) -> Step {
    Step::Endless {
        chunks: vec![head.as_bytes().to_vec()],
        filler: vec![b'x'; 1000],
    }
}

/// An OpenAI answer whose message text never ends.
const OPENAI_OPEN_ANSWER: &str = r#"{"choices":[{"message":{"content":""#;
/// An Ollama answer whose message text never ends.
const OLLAMA_OPEN_ANSWER: &str = r#"{"message":{"content":""#;
/// An SSE event whose delta never ends.
const SSE_OPEN_DELTA: &str = r#"data: {"choices":[{"delta":{"content":""#;
/// An NDJSON line whose delta never ends.
const NDJSON_OPEN_DELTA: &str = r#"{"message":{"content":""#;

fn stream_request(report: &str, phase: P) -> pb::GenerateStreamRequest {
    request(report, phase, S::Analysis).into()
}

/// Reads a whole stream: the deltas, the final message, and the terminal error if any.
async fn collect(
    mut stream: tonic::Streaming<pb::GenerateStreamResponse>,
) -> (Vec<String>, Option<pb::GenerateResponse>, Option<Status>) {
    let mut deltas = Vec::new();
    let mut done = None;
    loop {
        match stream.message().await {
            Ok(Some(msg)) => match msg.done {
                Some(d) => done = Some(d),
                None => deltas.push(msg.delta),
            },
            Ok(None) => return (deltas, done, None),
            Err(status) => return (deltas, done, Some(status)),
        }
    }
}

async fn stream(
    h: &Harness,
    report: &str,
    phase: P,
) -> tonic::Streaming<pb::GenerateStreamResponse> {
    h.client
        .clone()
        .generate_stream(stream_request(report, phase))
        .await
        .expect("stream opens")
        .into_inner()
}

#[tokio::test]
async fn an_oversized_unary_answer_falls_back_without_a_retry() {
    let h = start().await;
    // One announced too large by its Content-Length, one that never ends.
    h.cloud.push(Step::reply("x".repeat(4096)));
    h.cloud.push(endless(OPENAI_OPEN_ANSWER));
    for report in ["big", "endless"] {
        let r = h
            .client
            .clone()
            .generate(request(report, P::Refine, S::Analysis))
            .await
            .expect("the secondary answers")
            .into_inner();
        assert_eq!((tier(&r), reason(&r)), (T::Secondary, F::PrimaryError));
        assert_eq!(r.text, LOCAL_TEXT);
        assert_eq!(r.attempts, 2, "a body too large is not retried");
    }
    assert_eq!((h.cloud.requests(), h.local.requests()), (2, 2));
    assert!(
        h.cloud.wait_closed(2, Duration::from_secs(5)).await,
        "the endless body was dropped, not read to its end"
    );
}

#[tokio::test]
async fn oversized_answers_from_both_tiers_name_the_limit() {
    let h = start().await;
    h.cloud.set_default(endless(OPENAI_OPEN_ANSWER));
    h.local.set_default(endless(OLLAMA_OPEN_ANSWER));
    let err = h
        .client
        .clone()
        .generate(request("both", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    for tier in ["PRIMARY openai", "SECONDARY local"] {
        let expected = format!("{tier}: response body larger than 2048 bytes");
        assert!(err.message().contains(&expected), "{}", err.message());
    }
    assert_eq!((h.cloud.requests(), h.local.requests()), (1, 1));
}

#[tokio::test]
async fn a_first_stream_line_past_the_limit_falls_back_before_any_delta() {
    let h = start().await;
    // A line that never ends, and an event of short `data:` lines that never ends.
    h.cloud.push(endless(SSE_OPEN_DELTA));
    h.cloud.push(Step::Endless {
        chunks: vec![],
        filler: format!("data: {}\n", "x".repeat(100)).into_bytes(),
    });
    for report in ["long-line", "long-event"] {
        let (deltas, done, err) = collect(stream(&h, report, P::Refine).await).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(deltas.concat(), LOCAL_TEXT, "only the secondary's text");
        let done = done.expect("final message");
        let route = done.route.unwrap();
        assert_eq!(
            (route.tier, route.fallback_reason),
            (T::Secondary as i32, F::PrimaryError as i32)
        );
        assert_eq!(done.attempts, 2, "a line too long is not retried");
    }
    assert_eq!(h.cloud.requests(), 2);
    assert!(h.cloud.wait_closed(2, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_endless_line_after_the_first_delta_aborts_the_stream() {
    let h = start().await;
    let sse = Step::Endless {
        chunks: vec![
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n".to_vec(),
            SSE_OPEN_DELTA.as_bytes().to_vec(),
        ],
        filler: vec![b'x'; 1000],
    };
    let ndjson = Step::Endless {
        chunks: vec![
            b"{\"message\":{\"content\":\"Hello\"},\"done\":false}\n".to_vec(),
            NDJSON_OPEN_DELTA.as_bytes().to_vec(),
        ],
        filler: vec![b'x'; 1000],
    };
    h.cloud.push(sse);
    h.local.push(ndjson);
    // REFINE goes to the cloud (SSE), EXPAND to the local model (NDJSON).
    for (phase, sim) in [(P::Refine, &h.cloud), (P::Expand, &h.local)] {
        let (deltas, done, err) = collect(stream(&h, "abort", phase).await).await;
        assert_eq!(deltas, ["Hello"]);
        assert!(done.is_none());
        let err = err.expect("the stream ends with an error");
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        assert!(
            err.message().contains("stream line larger than 1024 bytes"),
            "{}",
            err.message()
        );
        assert_eq!(sim.requests(), 1, "no retry after the first delta");
        assert!(
            sim.wait_closed(1, Duration::from_secs(5)).await,
            "the upstream stream was dropped"
        );
    }
    assert_eq!(h.cloud.requests() + h.local.requests(), 2, "no fallback");
}

#[tokio::test]
async fn a_stream_past_the_line_limit_from_the_secondary_is_unavailable() {
    let h = start().await;
    h.local.push(endless(NDJSON_OPEN_DELTA));
    let (deltas, done, err) = collect(stream(&h, "local-line", P::Expand).await).await;
    assert!(deltas.is_empty() && done.is_none());
    let err = err.expect("no provider left");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("SECONDARY local: stream line larger than 1024 bytes"),
        "{}",
        err.message()
    );
    assert_eq!((h.cloud.requests(), h.local.requests()), (0, 1));
}
