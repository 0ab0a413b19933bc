//! Cloud providers beyond the built-ins, against in-process servers speaking their wire formats
//! (`vra_gateway::demo::sim`).
//!
//! Claude as the primary (`kind = "anthropic"`, `POST /v1/messages`; shapes from Anthropic's
//! API reference, "Messages" and "Streaming Messages": docs.anthropic.com/en/api/messages,
//! docs.anthropic.com/en/docs/build-with-claude/streaming): the request (`x-api-key`,
//! `anthropic-version`, `max_tokens` always, the system prompt at the top level, alternating
//! turns), unary and streamed answers with their usage (split between `message_start` and
//! `message_delta` in a stream), a 529 `overloaded_error` retried, an SSE `error` event before
//! and after the first delta, Claude's list prices, and the dollar cap sending a call to the
//! local model.
//!
//! An Azure-style OpenAI provider: a deployment URL, the key in an `api-key` header from
//! `headers_env`, `api-version` from `query`, and no `Authorization` header.

mod common;

use std::time::Duration;

use common::{Harness, reason, request, tier};
use tonic::Code;
use vra_gateway::config::Config;
use vra_gateway::demo::sim::{Sim, Step, sse_event};
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

const KEY: &str = "sk-ant-test-key-7f3a";
const MODEL: &str = "claude-sonnet-4-6";

/// A gateway whose primary is `[providers.claude]` (kind anthropic) on `claude`'s simulated
/// server, the secondary the simulated Ollama `local`, and `settings` on top.
async fn start(settings: &[(&str, &str)]) -> Harness {
    let claude = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let mut env = vec![
        ("PRIMARY_PROVIDER", "claude"),
        ("ANTHROPIC_API_KEY", KEY),
        ("VRA_MAX_OUTPUT_TOKENS", "1024"),
    ];
    env.extend_from_slice(settings);
    let mut sources = common::sources(&claude, &local, &env);
    let toml = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\ntier = \"cloud\"\nmodel = \"{MODEL}\"\n",
        claude.anthropic_base()
    );
    sources
        .load_toml(&toml, std::path::Path::new("claude.toml"))
        .unwrap();
    let config = Config::from_sources(&sources).expect("a valid configuration");
    Harness::start_with(claude, local, config).await
}

/// What Claude's list price ($3 / $15 per million tokens) makes of `usage`, in USD.
fn sonnet_usd(usage: &pb::Usage) -> f64 {
    let nanos = u64::from(usage.input_tokens) * 3_000 + u64::from(usage.output_tokens) * 15_000;
    nanos as f64 / 1e9
}

#[tokio::test]
async fn claude_answers_with_its_wire_format_usage_and_price() {
    let h = start(&[]).await;
    let mut req = request("claude-unary", P::Refine, S::Analysis);
    req.messages = vec![
        pb::ChatMessage {
            role: pb::ChatRole::System as i32,
            content: "Be terse.".into(),
        },
        pb::ChatMessage {
            role: pb::ChatRole::User as i32,
            content: "First part.".into(),
        },
        pb::ChatMessage {
            role: pb::ChatRole::User as i32,
            content: "Second part.".into(),
        },
    ];
    req.prompt.clear();
    req.system_prompt.clear();
    let resp = h.client().await.generate(req).await.unwrap().into_inner();
    assert_eq!((tier(&resp), reason(&resp)), (T::Primary, F::Unspecified));
    assert_eq!(resp.text, vra_gateway::demo::sim::DEFAULT_TEXT);
    assert_eq!(resp.route.as_ref().unwrap().model, MODEL);
    assert_eq!(resp.finish_reason, "stop");

    let sent = &h.cloud.recorded()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.x_api_key.as_deref(), Some(KEY));
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(
        sent.authorization, None,
        "the key travels in x-api-key only"
    );
    assert_eq!(
        sent.body,
        serde_json::json!({
            "model": MODEL,
            "max_tokens": 1024,
            "system": "Be terse.",
            "messages": [{"role": "user", "content": "First part.\n\nSecond part."}],
        }),
        "max_tokens always, the system prompt at the top, one user turn"
    );

    let usage = resp.usage.unwrap();
    // The simulated server counts words: 2 + 2 in the turns, 2 in the system prompt.
    assert_eq!(usage.input_tokens, 6);
    assert!(usage.output_tokens > 0 && !usage.estimated);
    assert_eq!(resp.cost_usd, Some(sonnet_usd(&usage)));
    let report = common::usage(h.addr, "claude-unary").await;
    assert_eq!(report.cost.unwrap().cloud_usd, sonnet_usd(&usage));
    h.shutdown().await;
}

#[tokio::test]
async fn a_claude_stream_carries_deltas_and_its_split_usage() {
    let h = start(&[]).await;
    let (deltas, done, err) = stream_of(&h, "claude-stream").await;
    assert!(err.is_none(), "{err:?}");
    assert!(deltas.len() > 1, "one delta per text_delta event");
    assert_eq!(deltas.concat(), vra_gateway::demo::sim::DEFAULT_TEXT);
    let done = done.expect("the final message");
    let usage = done.usage.unwrap();
    assert!(
        !usage.estimated,
        "usage from message_start and message_delta"
    );
    assert_eq!(usage.output_tokens as usize, deltas.len());
    assert!(usage.input_tokens > 0);
    assert_eq!(done.cost_usd, Some(sonnet_usd(&usage)));
    assert!(h.cloud.recorded()[0].streamed());
    h.shutdown().await;
}

#[tokio::test]
async fn an_overloaded_claude_is_retried_and_answers() {
    let h = start(&[]).await;
    h.cloud.push(Step::fail(529));
    let resp = h
        .client()
        .await
        .generate(request("claude-529", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    assert_eq!(resp.attempts, 2, "529 overloaded_error is transient");
    assert_eq!(h.local.requests(), 0);
    h.shutdown().await;
}

/// The frames of a stream that ends with an SSE `error` event of `kind` after `deltas` text
/// deltas.
fn error_mid_stream(deltas: usize, kind: &str) -> Step {
    let mut chunks = vec![
        sse_event(
            &serde_json::json!({"type": "message_start", "message": {"id": "msg_x",
            "type": "message", "role": "assistant", "content": [], "model": MODEL,
            "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ),
        sse_event(
            &serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for i in 0..deltas {
        chunks.push(sse_event(
            &serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!("part{i} ")}}),
        ));
    }
    chunks.push(sse_event(&serde_json::json!({"type": "error",
        "error": {"type": kind, "message": "Overloaded"}})));
    Step::Raw {
        chunks,
        chunk_delay: Duration::ZERO,
    }
}

/// Streams `request` to the end: the deltas, the final message, the terminal error.
async fn stream_of(
    h: &Harness,
    report: &str,
) -> (
    Vec<String>,
    Option<pb::GenerateResponse>,
    Option<tonic::Status>,
) {
    let stream = h
        .client()
        .await
        .generate_stream(pb::GenerateStreamRequest::from(request(
            report,
            P::Refine,
            S::Analysis,
        )))
        .await
        .unwrap()
        .into_inner();
    common::collect_stream(stream).await
}

#[tokio::test]
async fn an_error_event_before_the_first_delta_is_retried_and_after_it_aborts() {
    let h = start(&[]).await;
    // overloaded_error before any text: transient (a 529), so Claude is asked again.
    h.cloud.push(error_mid_stream(0, "overloaded_error"));
    let (deltas, done, err) = stream_of(&h, "claude-error-early").await;
    assert!(err.is_none(), "{err:?}");
    let done = done.unwrap();
    assert_eq!(
        (done.route.as_ref().unwrap().tier, done.attempts),
        (T::Primary as i32, 2)
    );
    assert_eq!(deltas.concat(), vra_gateway::demo::sim::DEFAULT_TEXT);

    // A final kind before any text: no second attempt, the local model answers.
    h.cloud.push(error_mid_stream(0, "invalid_request_error"));
    let (_, done, err) = stream_of(&h, "claude-error-final").await;
    assert!(err.is_none(), "{err:?}");
    let route = done.unwrap().route.unwrap();
    assert_eq!(
        (route.tier, route.fallback_reason),
        (T::Secondary as i32, F::PrimaryError as i32)
    );

    // After text went out: the stream ends with an error, no second model spliced in.
    let local_before = h.local.requests();
    h.cloud.push(error_mid_stream(2, "overloaded_error"));
    let (deltas, done, err) = stream_of(&h, "claude-error-late").await;
    assert_eq!(deltas, ["part0 ", "part1 "]);
    assert!(done.is_none());
    let err = err.expect("the stream ends with an error");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert_eq!(h.local.requests(), local_before);
    h.shutdown().await;
}

#[tokio::test]
async fn the_dollar_cap_on_claude_sends_the_call_to_the_local_model() {
    // Claude's worst case at 1,024 output tokens is $0.015 and more: a $0.01 cap has no room.
    let h = start(&[("MAX_CLOUD_COST_USD", "0.01")]).await;
    let resp = h
        .client()
        .await
        .generate(request("claude-capped", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&resp), reason(&resp)), (T::Secondary, F::CostLimit));
    assert_eq!(h.cloud.requests(), 0, "nothing sent to Claude");
    let budget = resp.budget.unwrap();
    assert_eq!(budget.cloud_cost_limit_usd, Some(0.01));
    assert_eq!(budget.cloud_cost_used_usd, 0.0);
    h.shutdown().await;
}

#[tokio::test]
async fn an_azure_style_provider_sends_its_secret_header_and_query() {
    const AZURE_KEY: &str = "az-key-0c41";
    let azure = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let mut sources = common::sources(
        &azure,
        &local,
        &[
            ("PRIMARY_PROVIDER", "azure"),
            ("AZURE_OPENAI_KEY", AZURE_KEY),
        ],
    );
    let toml = format!(
        "[providers.azure]\nkind = \"openai\"\nbase_url = \"http://{}/openai/deployments/gpt-4o\"\ntier = \"cloud\"\nheaders_env = {{ \"api-key\" = \"AZURE_OPENAI_KEY\" }}\nquery = {{ \"api-version\" = \"2024-10-21\" }}\n",
        azure.addr()
    );
    sources
        .load_toml(&toml, std::path::Path::new("azure.toml"))
        .unwrap();
    let h = Harness::start_with(azure, local, Config::from_sources(&sources).unwrap()).await;
    let resp = h
        .client()
        .await
        .generate(request("azure", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&resp), reason(&resp)), (T::Primary, F::Unspecified));
    let sent = &h.cloud.recorded()[0];
    assert_eq!(sent.path, "/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.api_key_header.as_deref(), Some(AZURE_KEY));
    assert_eq!(
        sent.authorization, None,
        "no bearer token besides the api-key"
    );
    h.shutdown().await;
}
