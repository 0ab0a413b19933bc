//! End-to-end tests of `GenerateStream`: OpenAI SSE and Ollama NDJSON upstreams, fallback
//! before the first delta only, aborts after it, cancellation, idle timeout, missing terminal
//! events and budget accounting.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, collect_stream, request};
use tonic::Code;
use vra_gateway::demo::sim::Step;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

const CLOUD_TEXT: &str = "Cloud wrote this: Grüße aus der Wolke ☁️, with care and   odd  spacing.";
const LOCAL_TEXT: &str = "Local model text — llama writes plainly.";

fn stream_request(report: &str, phase: P, section: S) -> pb::GenerateStreamRequest {
    request(report, phase, section).into()
}

async fn start() -> Harness {
    let h = Harness::start(&[]).await;
    h.cloud.set_default(Step::reply(CLOUD_TEXT));
    h.local.set_default(Step::reply(LOCAL_TEXT));
    h
}

#[tokio::test]
async fn streamed_text_equals_unary_text_for_both_wire_formats() {
    let h = start().await;
    let mut c = h.client.clone();
    for (phase, text, provider) in [
        (P::Refine, CLOUD_TEXT, "openai"),
        (P::Expand, LOCAL_TEXT, "local"),
    ] {
        let unary = c
            .generate(request("same", phase, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        let stream = c
            .generate_stream(stream_request("same", phase, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        let (deltas, done, err) = collect_stream(stream).await;
        assert!(err.is_none(), "{err:?}");
        assert!(
            deltas.len() > 3,
            "{provider}: streamed in pieces, got {deltas:?}"
        );
        assert_eq!(deltas.concat(), unary.text, "{provider}");
        assert_eq!(unary.text, text);
        let done = done.expect("final message");
        assert!(done.text.is_empty());
        assert_eq!(done.finish_reason, "stop");
        let usage = done.usage.unwrap();
        assert_eq!(
            usage,
            unary.usage.unwrap(),
            "{provider}: same usage as unary"
        );
        assert!(usage.output_tokens > 0);
        let route = done.route.unwrap();
        assert_eq!(
            (route.provider.as_str(), route.fallback_reason),
            (provider, F::Unspecified as i32)
        );
        assert_eq!(done.attempts, 1);
    }
    let sent = h.cloud.recorded().pop().unwrap();
    assert!(sent.streamed());
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    let sent = h.local.recorded().pop().unwrap();
    assert_eq!(sent.body["stream"], true);
}

#[tokio::test]
async fn chunk_boundaries_inside_characters_and_done_marker() {
    let h = start().await;
    let body = concat!(
        "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Grüße\"}}]}\n\n",
        ": keep-alive comment\n\n",
        "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\" 🌍\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    let cut1 = body.windows(2).position(|w| w == "ü".as_bytes()).unwrap() + 1;
    let cut2 = body.windows(4).position(|w| w == "🌍".as_bytes()).unwrap() + 2;
    let cut3 = body.windows(6).position(|w| w == b"[DONE]").unwrap() + 3;
    let chunks = vec![
        body[..cut1].to_vec(),
        body[cut1..cut2].to_vec(),
        body[cut2..cut3].to_vec(),
        body[cut3..].to_vec(),
    ];
    h.cloud.push(Step::Raw {
        chunks,
        chunk_delay: Duration::from_millis(20),
    });
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("chunks", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(deltas.concat(), "Grüße 🌍");
    let usage = done.unwrap().usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (4, 2));
}

#[tokio::test]
async fn primary_failing_before_the_first_delta_falls_back() {
    let h = start().await;
    h.cloud.push_n(3, Step::fail(503));
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("fb", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(deltas.concat(), LOCAL_TEXT, "only the secondary's text");
    let done = done.unwrap();
    let route = done.route.unwrap();
    assert_eq!(
        (route.tier, route.fallback_reason),
        (T::Secondary as i32, F::PrimaryError as i32)
    );
    assert_eq!(done.attempts, 4);
    assert_eq!(
        done.budget.unwrap().cloud_calls_used,
        3,
        "each upstream request counts once"
    );
}

#[tokio::test]
async fn a_stream_that_dies_before_its_first_delta_is_retried() {
    let h = start().await;
    h.cloud.push(Step::Raw {
        chunks: vec![b": just a comment\n\n".to_vec()],
        chunk_delay: Duration::ZERO,
    });
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("retry", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(deltas.concat(), CLOUD_TEXT);
    assert_eq!(done.unwrap().attempts, 2);
}

#[tokio::test]
async fn errors_after_the_first_delta_abort_without_fallback() {
    let h = start().await;
    h.cloud.push(Step::StreamThenBreak {
        text: CLOUD_TEXT.into(),
        deltas: 2,
    });
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("abort", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert_eq!(deltas.len(), 2);
    assert!(CLOUD_TEXT.starts_with(&deltas.concat()));
    assert!(done.is_none());
    let err = err.expect("the stream ends with an error");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert_eq!(
        h.local.requests(),
        0,
        "no text from a second model is spliced in"
    );
    assert_eq!(h.cloud.requests(), 1, "no retry after the first delta");
}

#[tokio::test]
async fn a_stream_without_terminal_event_is_an_error() {
    let h = start().await;
    h.cloud.push(Step::StreamWithoutEnd {
        text: CLOUD_TEXT.into(),
    });
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("cut", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert_eq!(deltas.concat(), CLOUD_TEXT);
    assert!(done.is_none(), "not a silent success");
    assert_eq!(err.expect("error").code(), Code::Unavailable);

    h.local.push(Step::StreamWithoutEnd {
        text: LOCAL_TEXT.into(),
    });
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("cut", P::Expand, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (_, done, err) = collect_stream(stream).await;
    assert!(done.is_none());
    assert_eq!(err.expect("error").code(), Code::Unavailable);
}

#[tokio::test]
async fn a_silent_upstream_is_cut_by_the_idle_timeout() {
    let h = Harness::start(&[("VRA_STREAM_IDLE_TIMEOUT_MS", "200")]).await;
    h.cloud.push(Step::StreamThenHang {
        text: CLOUD_TEXT.into(),
        deltas: 1,
    });
    let started = Instant::now();
    let stream = h
        .client
        .clone()
        .generate_stream(stream_request("idle", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let (deltas, _, err) = collect_stream(stream).await;
    assert_eq!(deltas.len(), 1);
    let err = err.expect("cut by the idle timeout");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("idle"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        h.cloud.wait_closed(1, Duration::from_secs(1)).await,
        "the upstream connection was dropped"
    );
}

#[tokio::test]
async fn client_cancel_drops_the_upstream_and_spends_nothing_more() {
    let h = start().await;
    h.cloud.push(Step::StreamThenHang {
        text: CLOUD_TEXT.into(),
        deltas: 1,
    });
    let mut stream = h
        .client
        .clone()
        .generate_stream(stream_request("cancel", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.delta.is_empty());
    drop(stream);
    assert!(
        h.cloud.wait_closed(1, Duration::from_secs(1)).await,
        "upstream connection closed within 1 s"
    );
    let usage = h
        .client
        .clone()
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "cancel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.budget.unwrap().cloud_calls_used, 1);
    assert_eq!(h.cloud.requests(), 1);
}

#[tokio::test]
async fn deadline_ends_the_stream_and_the_upstream_request() {
    let h = start().await;
    h.cloud.push(Step::StreamThenHang {
        text: CLOUD_TEXT.into(),
        deltas: 1,
    });
    let mut req = tonic::Request::new(stream_request("deadline", P::Refine, S::Analysis));
    req.set_timeout(Duration::from_millis(400));
    let stream = h
        .client
        .clone()
        .generate_stream(req)
        .await
        .unwrap()
        .into_inner();
    let (deltas, done, err) = collect_stream(stream).await;
    assert_eq!(deltas.len(), 1);
    assert!(done.is_none());
    assert_eq!(err.expect("deadline").code(), Code::DeadlineExceeded);
    assert!(h.cloud.wait_closed(1, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn streams_respect_the_budget_and_validation() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "1")]).await;
    let mut c = h.client.clone();
    let (_, done, _) = collect_stream(
        c.generate_stream(stream_request("sb", P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(done.unwrap().route.unwrap().tier, T::Primary as i32);
    let (_, done, _) = collect_stream(
        c.generate_stream(stream_request("sb", P::Abstract, S::Other))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let route = done.unwrap().route.unwrap();
    assert_eq!(
        (route.tier, route.fallback_reason),
        (T::Secondary as i32, F::CostLimit as i32)
    );
    assert_eq!(h.cloud.requests(), 1);

    let mut bad = stream_request("sb", P::Refine, S::Analysis);
    bad.prompt.clear();
    let err = c.generate_stream(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("prompt"));
}
