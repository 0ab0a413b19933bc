//! The gateway against a real LLM server, not a simulation: llama-cpp-python's OpenAI-compatible
//! server with Gemma 3 270M (`.ci/llm-setup.sh` installs both, cached outside the clone). Both
//! tiers point at it with the OpenAI dialect: the primary is the built-in `openai` provider
//! (cloud tier, model `gpt-4o`, priced by the built-in table), the secondary a `[providers.llama]`
//! table of kind `openai`, tier `local`. The server accepts any model name.
//!
//! What a simulation cannot show: the server's real SSE framing (`: ping` comments, no usage in
//! streams), real `finish_reason`s, real token counts — and that cost accounting, usage
//! estimates and the budget hold up against them.
//!
//! Opt-in (a libtest-mimic target, `harness = false`): without `VRA_REAL_LLM=1` every test is
//! reported as *ignored* with the reason. With it, a missing `VRA_LLM_PYTHON` / `VRA_LLM_MODEL`
//! or a server that does not start fails them. Run:
//!
//! ```sh
//! eval "$(bash .ci/llm-setup.sh | sed 's/^/export /')"
//! VRA_REAL_LLM=1 cargo test --test real_llm
//! ```
//!
//! The base model rambles: every call sets `max_tokens` ≤ 32 and the tests assert structure
//! (tiers, reasons, non-empty text, usage, cost), never the text itself. One server serves the
//! whole binary and answers one request at a time, so the tests run one after another.

mod common;

use std::path::Path;
use std::time::Duration;

use common::llm_server::{self, LlmServer};
use common::process::{KEY, Running, temp_dir};
use common::trials::{Runtime, async_trial};
use common::{Replica, connect, reason, request, tier, usage};
use libtest_mimic::Arguments;
use vra_gateway::config::{Config, Sources};
use vra_gateway::cost::{self, BUILTIN_PRICES};
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

/// Tokens each call may generate: small, so calls take about a second on two cores.
const MAX_TOKENS: u32 = 16;
/// A bound on any one call (the model loads once; a call is seconds even on a busy machine).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const SECONDARY: &str = "llama";
const SECONDARY_MODEL: &str = "gemma-3-270m";

fn main() {
    let args = Arguments::from_args();
    let gate = llm_server::gate();
    let trials = vec![
        async_trial(
            &args,
            "unary_calls_on_both_tiers_report_real_usage_and_cost",
            &gate,
            Runtime::CurrentThread,
            unary_calls_on_both_tiers_report_real_usage_and_cost,
        ),
        async_trial(
            &args,
            "streamed_calls_estimate_usage_and_still_cost",
            &gate,
            Runtime::CurrentThread,
            streamed_calls_estimate_usage_and_still_cost,
        ),
        async_trial(
            &args,
            "report_usage_has_cost_phases_and_savings",
            &gate,
            Runtime::CurrentThread,
            report_usage_has_cost_phases_and_savings,
        ),
        async_trial(
            &args,
            "a_dead_primary_falls_back_to_the_real_secondary",
            &gate,
            Runtime::CurrentThread,
            a_dead_primary_falls_back_to_the_real_secondary,
        ),
        async_trial(
            &args,
            "the_call_budget_sends_the_second_primary_call_local",
            &gate,
            Runtime::CurrentThread,
            the_call_budget_sends_the_second_primary_call_local,
        ),
        async_trial(
            &args,
            "a_cost_cap_without_room_makes_no_cloud_request",
            &gate,
            Runtime::CurrentThread,
            a_cost_cap_without_room_makes_no_cloud_request,
        ),
        async_trial(
            &args,
            "the_binary_serves_both_tiers_from_a_config_file",
            &gate,
            Runtime::CurrentThread,
            the_binary_serves_both_tiers_from_a_config_file,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    llm_server::stop_shared();
    conclusion.exit();
}

/// The gateway's configuration: `common::BASE`, both tiers on `server`, then `env`.
fn gateway_config(server: &LlmServer, primary_base: &str, env: &[(&str, &str)]) -> Config {
    let mut sources = Sources::default();
    for (k, v) in common::BASE {
        sources.env.insert(k.to_string(), v.to_string());
    }
    for (k, v) in [
        ("OPENAI_BASE_URL", primary_base),
        ("PRIMARY_MODEL", "gpt-4o"),
        ("SECONDARY_PROVIDER", SECONDARY),
        ("SECONDARY_MODEL", SECONDARY_MODEL),
        ("VRA_UPSTREAM_TIMEOUT_MS", "60000"),
        ("VRA_STREAM_IDLE_TIMEOUT_MS", "60000"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    {
        sources.env.insert(k.to_string(), v.to_string());
    }
    let toml = format!(
        "[providers.{SECONDARY}]\nkind = \"openai\"\ntier = \"local\"\nbase_url = \"{}\"\n",
        server.openai_base()
    );
    sources
        .load_toml(&toml, Path::new("real_llm.toml"))
        .expect("test TOML is valid");
    Config::from_sources(&sources).expect("test configuration is valid")
}

/// The shared server (started by the first test) and a gateway on it configured with `env`;
/// the primary on `primary_base` when given.
async fn start(primary_base: Option<&str>, env: &[(&str, &str)]) -> (&'static LlmServer, Replica) {
    let server = llm_server::shared();
    server.assert_alive();
    let base = primary_base.map_or_else(|| server.openai_base(), str::to_string);
    let gateway = Replica::start(gateway_config(server, &base, env)).await;
    (server, gateway)
}

/// A request for `report` with `max_tokens` = [`MAX_TOKENS`].
fn llm_request(report: &str, phase: P, section: S) -> pb::GenerateRequest {
    let mut req = request(report, phase, section);
    req.options = Some(pb::GenerationOptions {
        max_tokens: Some(MAX_TOKENS),
        ..Default::default()
    });
    req
}

async fn generate(addr: std::net::SocketAddr, req: pb::GenerateRequest) -> pb::GenerateResponse {
    let mut client = connect(addr).await;
    tokio::time::timeout(CALL_TIMEOUT, client.generate(req))
        .await
        .expect("the call answers in time")
        .expect("generate")
        .into_inner()
}

/// A whole stream: its deltas (each non-empty) and its final message.
async fn generate_stream(
    addr: std::net::SocketAddr,
    req: pb::GenerateRequest,
) -> (Vec<String>, pb::GenerateResponse) {
    let mut client = connect(addr).await;
    tokio::time::timeout(CALL_TIMEOUT, async move {
        let mut stream = client
            .generate_stream(pb::GenerateStreamRequest::from(req))
            .await
            .expect("generate_stream")
            .into_inner();
        let mut deltas = Vec::new();
        let mut done = None;
        while let Some(msg) = stream.message().await.expect("the stream ends cleanly") {
            assert!(done.is_none(), "nothing after the final message");
            match msg.done {
                Some(d) => {
                    assert!(msg.delta.is_empty(), "the final message carries no delta");
                    done = Some(d);
                }
                None => {
                    assert!(!msg.delta.is_empty(), "every delta is non-empty");
                    deltas.push(msg.delta);
                }
            }
        }
        (deltas, done.expect("a final message"))
    })
    .await
    .expect("the stream ends in time")
}

fn gpt4o() -> cost::Price {
    BUILTIN_PRICES
        .iter()
        .find(|(name, _)| *name == "gpt-4o")
        .expect("gpt-4o has a built-in price")
        .1
}

/// The finish reason is the server's: "length" when the answer used all of `max_tokens`
/// (counted by the server), else "stop".
fn assert_finish(resp: &pb::GenerateResponse) {
    let usage = resp.usage.as_ref().expect("usage");
    if usage.estimated {
        assert!(
            ["length", "stop"].contains(&resp.finish_reason.as_str()),
            "finish_reason {:?}",
            resp.finish_reason
        );
    } else if usage.output_tokens >= MAX_TOKENS {
        assert_eq!(resp.finish_reason, "length", "{resp:?}");
    } else {
        assert_eq!(resp.finish_reason, "stop", "{resp:?}");
    }
}

fn assert_route(resp: &pb::GenerateResponse, expected: T, why: F) {
    let route = resp.route.as_ref().expect("route");
    assert_eq!((tier(resp), reason(resp)), (expected, why), "{route:?}");
    match expected {
        T::Primary => {
            assert_eq!(
                (route.provider.as_str(), route.model.as_str()),
                ("openai", "gpt-4o")
            );
            assert!(route.cloud, "the primary is cloud tier");
        }
        _ => {
            assert_eq!(
                (route.provider.as_str(), route.model.as_str()),
                (SECONDARY, SECONDARY_MODEL)
            );
            assert!(!route.cloud, "the secondary is local tier");
        }
    }
}

/// Unary: the server's own usage (not estimated), its finish reason, and a cost that is exactly
/// those tokens at gpt-4o's price on the cloud tier, 0 on the local one.
async fn unary_calls_on_both_tiers_report_real_usage_and_cost() {
    let (server, gw) = start(None, &[]).await;
    let _turn = server.exclusive().await;

    let cloud = generate(gw.addr, llm_request("unary", P::Refine, S::Analysis)).await;
    assert_route(&cloud, T::Primary, F::Unspecified);
    assert!(!cloud.text.is_empty(), "the model wrote something");
    assert_eq!(cloud.attempts, 1);
    let u = cloud.usage.expect("usage");
    assert!(
        !u.estimated,
        "a unary answer carries the server's usage: {u:?}"
    );
    assert!(u.input_tokens > 0 && u.output_tokens > 0, "{u:?}");
    assert!(
        u.output_tokens <= MAX_TOKENS,
        "max_tokens is passed through: {u:?}"
    );
    assert_finish(&cloud);
    let expected = gpt4o()
        .cost_of(u64::from(u.input_tokens), u64::from(u.output_tokens))
        .usd();
    let cost = cloud.cost_usd.expect("gpt-4o has a price");
    assert!(cost > 0.0, "{cost}");
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost}, expected {expected}"
    );
    let budget = cloud.budget.expect("budget");
    assert_eq!(budget.cloud_calls_used, 1);
    assert!(
        (budget.cloud_cost_used_usd - cost).abs() < 1e-9,
        "{budget:?}"
    );

    let local = generate(gw.addr, llm_request("unary", P::Expand, S::Analysis)).await;
    assert_route(&local, T::Secondary, F::Unspecified);
    assert!(!local.text.is_empty(), "the model wrote something");
    let u = local.usage.expect("usage");
    assert!(!u.estimated, "{u:?}");
    assert!(u.input_tokens > 0 && u.output_tokens > 0, "{u:?}");
    assert_finish(&local);
    assert_eq!(
        local.cost_usd,
        Some(0.0),
        "a local model without a price is free"
    );
    assert_eq!(local.budget.expect("budget").cloud_calls_used, 1);

    server.assert_alive();
    gw.shutdown().await;
}

/// Streams: the server sends no usage, so the gateway estimates it (marked, never 0 tokens)
/// and still prices the cloud call.
async fn streamed_calls_estimate_usage_and_still_cost() {
    let (server, gw) = start(None, &[]).await;
    let _turn = server.exclusive().await;

    let (deltas, done) =
        generate_stream(gw.addr, llm_request("stream", P::Refine, S::Analysis)).await;
    assert!(
        !deltas.is_empty() && !deltas.concat().is_empty(),
        "text streamed"
    );
    assert!(done.text.is_empty(), "the final message carries no text");
    assert_route(&done, T::Primary, F::Unspecified);
    assert_finish(&done);
    let u = done.usage.expect("usage");
    assert!(u.estimated, "the server streams without usage: {u:?}");
    assert!(
        u.input_tokens > 0 && u.output_tokens > 0,
        "never 0 tokens: {u:?}"
    );
    let cost = done.cost_usd.expect("gpt-4o has a price");
    assert!(cost > 0.0, "{cost}");
    let expected = gpt4o()
        .cost_of(u64::from(u.input_tokens), u64::from(u.output_tokens))
        .usd();
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost}, expected {expected}"
    );

    let (deltas, done) =
        generate_stream(gw.addr, llm_request("stream", P::Expand, S::Analysis)).await;
    assert!(!deltas.is_empty(), "text streamed");
    assert_route(&done, T::Secondary, F::Unspecified);
    assert_finish(&done);
    let u = done.usage.expect("usage");
    assert!(
        u.estimated && u.input_tokens > 0 && u.output_tokens > 0,
        "{u:?}"
    );
    assert_eq!(done.cost_usd, Some(0.0));

    let report = usage(gw.addr, "stream").await;
    let cloud = report.cloud_usage.expect("cloud usage");
    assert!(cloud.estimated && cloud.output_tokens > 0, "{cloud:?}");

    server.assert_alive();
    gw.shutdown().await;
}

/// GetReportUsage after a DRAFT on each tier and a REFINE: the cloud cost, the
/// all-cloud counterfactual and the savings, and one phase cell per (phase, tier).
async fn report_usage_has_cost_phases_and_savings() {
    let (server, gw) = start(None, &[]).await;
    let _turn = server.exclusive().await;

    let mut cloud_cost = 0.0;
    for (phase, section, expected) in [
        (P::Draft, S::Analysis, T::Primary),
        (P::Draft, S::Methodology, T::Secondary),
        (P::Refine, S::Analysis, T::Primary),
    ] {
        let resp = generate(gw.addr, llm_request("report", phase, section)).await;
        assert_route(&resp, expected, F::Unspecified);
        cloud_cost += resp.cost_usd.expect("priced");
    }

    let report = usage(gw.addr, "report").await;
    assert_eq!((report.primary_calls, report.secondary_calls), (2, 1));
    let c = report.cost.expect("cost");
    assert!(c.cloud_usd > 0.0, "{c:?}");
    assert!(
        (c.cloud_usd - cloud_cost).abs() < 1e-9,
        "{c:?} vs {cloud_cost}"
    );
    assert_eq!(c.local_usd, 0.0);
    assert!((c.total_usd - c.cloud_usd).abs() < 1e-12, "{c:?}");
    let all_cloud = c.all_cloud_usd.expect("gpt-4o has a price");
    assert!(
        all_cloud > c.total_usd,
        "the local call would have cost money: {c:?}"
    );
    let savings = c.savings_usd.expect("savings");
    assert!(
        savings > 0.0 && (savings - (all_cloud - c.total_usd)).abs() < 1e-9,
        "{c:?}"
    );
    assert_eq!(c.unpriced_calls, 0);
    let budget = report.budget.expect("budget");
    assert!(
        (budget.cloud_cost_used_usd - c.cloud_usd).abs() < 1e-9,
        "{budget:?}"
    );

    let mut cells: Vec<(i32, i32, u32)> = report
        .phases
        .iter()
        .map(|p| (p.phase, p.tier, p.calls))
        .collect();
    cells.sort();
    let mut expected = vec![
        (P::Draft as i32, T::Primary as i32, 1),
        (P::Draft as i32, T::Secondary as i32, 1),
        (P::Refine as i32, T::Primary as i32, 1),
    ];
    expected.sort();
    assert_eq!(cells, expected, "{:?}", report.phases);
    for p in &report.phases {
        let u = p.usage.as_ref().expect("phase usage");
        assert!(u.input_tokens > 0 && u.output_tokens > 0, "{p:?}");
        if p.tier == T::Primary as i32 {
            assert!(p.cost_usd > 0.0, "{p:?}");
        } else {
            assert_eq!(p.cost_usd, 0.0, "{p:?}");
        }
    }

    server.assert_alive();
    gw.shutdown().await;
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The primary on a closed port: retried, then PRIMARY_ERROR, answered by the real secondary.
async fn a_dead_primary_falls_back_to_the_real_secondary() {
    let dead = format!("http://127.0.0.1:{}/v1", dead_port());
    let (server, gw) = start(Some(&dead), &[]).await;
    let _turn = server.exclusive().await;

    let resp = generate(gw.addr, llm_request("dead", P::Refine, S::Analysis)).await;
    assert_route(&resp, T::Secondary, F::PrimaryError);
    assert!(!resp.text.is_empty());
    assert!(
        resp.attempts > 1,
        "the primary was tried: {} attempts",
        resp.attempts
    );
    let u = resp.usage.expect("usage");
    assert!(!u.estimated && u.output_tokens > 0, "{u:?}");
    assert_finish(&resp);
    assert_eq!(resp.cost_usd, Some(0.0), "only the local model answered");

    server.assert_alive();
    gw.shutdown().await;
}

/// MAX_CLOUD_CALLS=1: the first primary call uses the budget, the second goes local
/// (COST_LIMIT) — answered by the real secondary.
async fn the_call_budget_sends_the_second_primary_call_local() {
    let (server, gw) = start(None, &[("MAX_CLOUD_CALLS", "1")]).await;
    let _turn = server.exclusive().await;

    let first = generate(gw.addr, llm_request("calls", P::Refine, S::Analysis)).await;
    assert_route(&first, T::Primary, F::Unspecified);
    let budget = first.budget.expect("budget");
    assert_eq!((budget.cloud_calls_used, budget.cloud_calls_limit), (1, 1));
    assert!(budget.exhausted);

    let second = generate(gw.addr, llm_request("calls", P::Refine, S::Analysis)).await;
    assert_route(&second, T::Secondary, F::CostLimit);
    assert!(!second.text.is_empty());
    assert_eq!(second.attempts, 1, "no cloud request, one local one");
    assert_eq!(second.budget.expect("budget").cloud_calls_used, 1);

    server.assert_alive();
    gw.shutdown().await;
}

/// MAX_CLOUD_COST_USD just above one call's worst case: the first call fits and costs less
/// than its worst case, but more than 0 — so the same call again does not fit, and goes local
/// (COST_LIMIT) without any cloud request.
async fn a_cost_cap_without_room_makes_no_cloud_request() {
    let req = llm_request("dollars", P::Refine, S::Analysis);
    let worst = gpt4o().cost_of(
        cost::input_tokens_bound([req.system_prompt.as_str(), req.prompt.as_str()]),
        u64::from(MAX_TOKENS),
    );
    // One micro-dollar of room above the worst case: less than any real call costs.
    let cap = worst.usd() + 1e-6;
    let cap_text = format!("{cap:.9}");
    let (server, gw) = start(None, &[("MAX_CLOUD_COST_USD", cap_text.as_str())]).await;
    let _turn = server.exclusive().await;

    let first = generate(gw.addr, req.clone()).await;
    assert_route(&first, T::Primary, F::Unspecified);
    let spent = first.cost_usd.expect("priced");
    assert!(
        spent > 1e-6 && spent <= worst.usd(),
        "spent {spent}, worst {}",
        worst.usd()
    );
    let budget = first.budget.expect("budget");
    let limit = budget.cloud_cost_limit_usd.expect("a cost cap");
    assert!((limit - cap).abs() < 1e-12, "{budget:?}");

    let second = generate(gw.addr, req).await;
    assert_route(&second, T::Secondary, F::CostLimit);
    assert!(!second.text.is_empty());
    assert_eq!(second.attempts, 1, "no cloud request, one local one");
    let budget = second.budget.expect("budget");
    assert_eq!(
        budget.cloud_calls_used, 1,
        "the refused call made no cloud request"
    );
    // A cost refusal refuses this call only: the report is not marked exhausted.
    assert!(!budget.exhausted, "{budget:?}");
    assert!(
        (budget.cloud_cost_used_usd - spent).abs() < 1e-9,
        "{budget:?}"
    );
    assert_eq!(budget.cloud_cost_reserved_usd, 0.0);

    let report = usage(gw.addr, "dollars").await;
    let c = report.cost.expect("cost");
    assert!((c.cloud_usd - spent).abs() < 1e-9, "{c:?}");
    assert!(c.cloud_usd <= cap, "settled cost never exceeds the cap");

    server.assert_alive();
    gw.shutdown().await;
}

/// The real binary, configured like a deployment: a TOML file (`--config`) names the llama.cpp
/// server as the local secondary, the process environment points the primary at it too. A
/// unary call on the primary and a stream on the secondary, the `[Hybrid]` lines, the key kept
/// out of the logs, and a clean exit on SIGTERM.
async fn the_binary_serves_both_tiers_from_a_config_file() {
    let server = llm_server::shared();
    server.assert_alive();
    let dir = temp_dir();
    let file = dir.join("gateway.toml");
    let toml = format!(
        "vra_hybrid_mode = true\nsecondary_provider = \"{SECONDARY}\"\nsecondary_model = \"{SECONDARY_MODEL}\"\n\n[providers.{SECONDARY}]\nkind = \"openai\"\ntier = \"local\"\nbase_url = \"{}\"\n",
        server.openai_base()
    );
    std::fs::write(&file, toml).expect("write the TOML file");
    let base = server.openai_base();
    let env = [
        ("VRA_GATEWAY_ADDR", "127.0.0.1:0"),
        ("VRA_METRICS_ADDR", ""),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", KEY),
    ];
    let file = file.to_str().expect("UTF-8 path");
    let mut gw = Running::start_with_args(&["--config", file], &env).await;
    let addr = gw.addr.parse().expect("address");
    let _turn = server.exclusive().await;

    let resp = generate(addr, llm_request("binary", P::Refine, S::Analysis)).await;
    assert_route(&resp, T::Primary, F::Unspecified);
    assert!(!resp.text.is_empty());
    assert!(resp.cost_usd.is_some_and(|c| c > 0.0), "{resp:?}");
    gw.wait_for("[Hybrid] Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o")
        .await;

    let (deltas, done) = generate_stream(addr, llm_request("binary", P::Expand, S::Analysis)).await;
    assert!(!deltas.is_empty());
    assert_route(&done, T::Secondary, F::Unspecified);
    assert!(
        done.usage
            .is_some_and(|u| u.estimated && u.output_tokens > 0)
    );
    let line = gw.wait_for("[Hybrid] Phase=EXPAND").await;
    assert!(line.contains(SECONDARY_MODEL), "{line}");

    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "clean exit on SIGTERM:\n{}", lines.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains(KEY)),
        "the API key must not be logged"
    );
    server.assert_alive();
    let _ = std::fs::remove_dir_all(&dir);
}
