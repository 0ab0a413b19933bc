//! Every token counted and priced, over real gRPC against the simulated upstreams:
//! each call's cost, the report's cost, all-cloud equivalent, savings and per-phase breakdown,
//! unpriced models reported as unknown (never 0), usage estimated and marked when an upstream
//! reports none, and the exact dollar cap (`MAX_CLOUD_COST_USD`) with its holds. The same cap
//! across three replicas on one Redis is in tests/redis_ledger.rs.

mod common;

use std::time::Duration;

use common::cost::{self, gpt4o_nanos};
use common::process::{Running, gateway_env, run_to_end, temp_dir};
use common::{Harness, reason, request, tier, usage};
use vra_gateway::demo::sim::Step;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

fn phase_cell(u: &pb::GetReportUsageResponse, phase: P, tier: T) -> Option<pb::PhaseUsage> {
    u.phases
        .iter()
        .find(|c| c.phase == phase as i32 && c.tier == tier as i32)
        .copied()
}

/// A report of three calls — a cloud DRAFT, a local EXPAND, a cloud REFINE — costs exactly its
/// cloud tokens at gpt-4o's price; the all-cloud equivalent prices the local call's tokens at
/// gpt-4o too, and the savings are the difference.
#[tokio::test]
async fn calls_and_reports_are_priced_with_savings_and_a_phase_breakdown() {
    let h = Harness::start(&[]).await;
    let mut client = h.client().await;
    let mut cloud_nanos = 0;
    let mut local_tokens_nanos = 0;
    for (phase, section, want) in [
        (P::Draft, S::Introduction, T::Primary),
        (P::Expand, S::Introduction, T::Secondary),
        (P::Refine, S::Introduction, T::Primary),
    ] {
        let resp = client
            .generate(request("priced", phase, section))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tier(&resp), want);
        let usage = resp.usage.unwrap();
        assert!(!usage.estimated, "the simulated upstream reports usage");
        assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
        match want {
            T::Primary => {
                assert_eq!(resp.cost_usd, Some(gpt4o_nanos(&usage) as f64 / 1e9));
                cloud_nanos += gpt4o_nanos(&usage);
            }
            _ => {
                assert_eq!(
                    resp.cost_usd,
                    Some(0.0),
                    "a local model without a price is free"
                );
                local_tokens_nanos += gpt4o_nanos(&usage);
            }
        }
        let budget = resp.budget.unwrap();
        assert_eq!(budget.cloud_cost_used_usd, cloud_nanos as f64 / 1e9);
        assert_eq!(
            budget.cloud_cost_limit_usd, None,
            "no dollar cap configured"
        );
    }
    let u = usage(h.addr, "priced").await;
    let cost = u.cost.unwrap();
    assert_eq!(cost.cloud_usd, cloud_nanos as f64 / 1e9);
    assert_eq!(cost.local_usd, 0.0);
    assert_eq!(cost.total_usd, cost.cloud_usd);
    let all_cloud = (cloud_nanos + local_tokens_nanos) as f64 / 1e9;
    assert_eq!(cost.all_cloud_usd, Some(all_cloud));
    assert_eq!(cost.savings_usd, Some(all_cloud - cost.total_usd));
    assert!(cost.savings_usd.unwrap() > 0.0);
    assert_eq!(cost.unpriced_calls, 0);
    assert_eq!(u.phases.len(), 3, "{:?}", u.phases);
    let draft = phase_cell(&u, P::Draft, T::Primary).expect("DRAFT on the primary");
    assert_eq!(draft.calls, 1);
    assert!(draft.cost_usd > 0.0);
    let expand = phase_cell(&u, P::Expand, T::Secondary).expect("EXPAND on the secondary");
    assert_eq!((expand.calls, expand.cost_usd), (1, 0.0));
    assert!(expand.usage.unwrap().output_tokens > 0);
    assert!(phase_cell(&u, P::Expand, T::Primary).is_none());
    h.shutdown().await;
}

/// `[pricing."llama3:8b"]` gives the local model an amortised price: local calls then cost
/// something, and the savings shrink by exactly that.
#[tokio::test]
async fn a_configured_local_price_is_charged() {
    let cloud = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let local = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let mut sources = common::sources(&cloud, &local, &[]);
    sources
        .load_toml(
            "[pricing.\"llama3:8b\"]\ninput_per_mtok = 0.10\noutput_per_mtok = 0.20\n",
            std::path::Path::new("prices.toml"),
        )
        .unwrap();
    let config = vra_gateway::config::Config::from_sources(&sources).unwrap();
    let h = Harness::start_with(cloud, local, config).await;
    let resp = h
        .client()
        .await
        .generate(request("amortised", P::Expand, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let usage = resp.usage.unwrap();
    let nanos = u64::from(usage.input_tokens) * 100 + u64::from(usage.output_tokens) * 200;
    assert_eq!(resp.cost_usd, Some(nanos as f64 / 1e9));
    let cost = usage_cost(&h, "amortised").await;
    assert_eq!(cost.local_usd, nanos as f64 / 1e9);
    assert_eq!(
        cost.savings_usd,
        Some((gpt4o_nanos(&usage) - nanos) as f64 / 1e9)
    );
    h.shutdown().await;
}

async fn usage_cost(h: &Harness, report: &str) -> pb::ReportCost {
    usage(h.addr, report).await.cost.unwrap()
}

/// A cloud model with no price anywhere: its calls' cost is unknown (absent), never 0; the
/// report counts them as unpriced and has no all-cloud equivalent.
#[tokio::test]
async fn an_unpriced_cloud_model_has_unknown_cost() {
    let h = Harness::start(&[("PRIMARY_MODEL", "frontier-x")]).await;
    let resp = h
        .client()
        .await
        .generate(request("unpriced", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    assert_eq!(resp.cost_usd, None);
    let cost = usage_cost(&h, "unpriced").await;
    assert_eq!(cost.unpriced_calls, 1);
    assert_eq!((cost.all_cloud_usd, cost.savings_usd), (None, None));
    assert_eq!(cost.cloud_usd, 0.0, "the sums hold priced calls only");
    h.shutdown().await;
}

/// An OpenAI-style stream without a usage chunk (as llama.cpp's server sends it) and a unary
/// answer without `usage`: the tokens are estimated, marked, and never zero.
#[tokio::test]
async fn usage_the_upstream_does_not_report_is_estimated_and_marked() {
    let h = Harness::start(&[]).await;
    let sse = |content: &str| {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
        )
        .into_bytes()
    };
    h.cloud.push(Step::Raw {
        chunks: vec![
            b": ping\n\n".to_vec(),
            sse("Streamed "),
            sse("without "),
            sse("usage."),
            b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"
                .to_vec(),
            b"data: [DONE]\n\n".to_vec(),
        ],
        chunk_delay: Duration::ZERO,
    });
    let mut stream = h
        .client()
        .await
        .generate_stream(pb::GenerateStreamRequest::from(request(
            "estimated",
            P::Refine,
            S::Analysis,
        )))
        .await
        .unwrap()
        .into_inner();
    let mut done = None;
    while let Some(msg) = tokio_stream::StreamExt::next(&mut stream).await {
        let msg = msg.unwrap();
        if msg.done.is_some() {
            done = msg.done;
        }
    }
    let done = done.expect("final message");
    assert_eq!(done.finish_reason, "length");
    let streamed = done.usage.unwrap();
    assert!(streamed.estimated);
    // Three chunks, 23 bytes: max(3, ceil(23 / 4)) = 6 output tokens; the input is estimated
    // from the prompt and system prompt.
    assert_eq!(streamed.output_tokens, 6);
    assert!(streamed.input_tokens > 0);
    assert_eq!(done.cost_usd, Some(gpt4o_nanos(&streamed) as f64 / 1e9));

    // A unary answer without `usage`.
    h.cloud.push(Step::Raw {
        chunks: vec![
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Twelve bytes"},"finish_reason":"stop"}]}"#
                .to_vec(),
        ],
        chunk_delay: Duration::ZERO,
    });
    let resp = h
        .client()
        .await
        .generate(request("estimated", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let unary = resp.usage.unwrap();
    assert!(unary.estimated);
    assert_eq!(unary.output_tokens, 3);
    let u = usage(h.addr, "estimated").await;
    let cloud = u.cloud_usage.unwrap();
    assert!(
        cloud.estimated,
        "the report says some counts were estimated"
    );
    assert_eq!(cloud.output_tokens, 6 + 3);
    let refine = phase_cell(&u, P::Refine, T::Primary).unwrap();
    assert!(refine.usage.unwrap().estimated);
    h.shutdown().await;
}

/// The guarantee, in one process: 50 concurrent calls under a $0.005 cap never settle more
/// than the cap, and every unit of accounting adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dollar_cap_holds_under_fifty_concurrent_calls() {
    let h = Harness::start(&cost::capped_settings()).await;
    cost::fifty_concurrent_calls_never_exceed_the_cap(&[h.addr], &h.cloud, "capped").await;
    h.shutdown().await;
}

/// A call whose worst case alone exceeds the cap never reaches the cloud: COST_LIMIT at once.
/// Without `max_tokens`, the gateway bounds the answer by `VRA_MAX_OUTPUT_TOKENS` and sends
/// that as `max_tokens`.
#[tokio::test]
async fn a_worst_case_above_the_cap_falls_back_without_a_cloud_request() {
    let h = Harness::start(&[("MAX_CLOUD_COST_USD", "0.001")]).await;
    // No max_tokens: the default ceiling of 4096 output tokens alone costs $0.04096.
    let resp = h
        .client()
        .await
        .generate(request("tiny-cap", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&resp), reason(&resp)), (T::Secondary, F::CostLimit));
    assert_eq!(h.cloud.requests(), 0);
    let budget = resp.budget.unwrap();
    assert_eq!(budget.cloud_cost_limit_usd, Some(0.001));
    assert!(
        !budget.exhausted,
        "this call did not fit; a smaller one may"
    );

    // With a small ceiling the call fits, and the ceiling is what the upstream is sent.
    let h2 = Harness::start(&[
        ("MAX_CLOUD_COST_USD", "0.001"),
        ("VRA_MAX_OUTPUT_TOKENS", "32"),
    ])
    .await;
    let resp = h2
        .client()
        .await
        .generate(request("small-ceiling", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&resp), reason(&resp)), (T::Primary, F::Unspecified));
    assert_eq!(h2.cloud.recorded()[0].body["max_tokens"], 32);
    // A local call is never capped nor given a ceiling.
    h2.client()
        .await
        .generate(request("small-ceiling", P::Expand, S::Analysis))
        .await
        .unwrap();
    let sent = &h2.local.recorded()[0].body;
    assert!(sent.pointer("/options/num_predict").is_none(), "{sent}");
    h.shutdown().await;
    h2.shutdown().await;
}

/// A cloud call dropped mid-way (the caller's deadline passed while the upstream was still
/// answering) is charged its whole hold — the upstream may bill it — and leaves no hold behind.
#[tokio::test]
async fn a_dropped_call_is_charged_its_hold_and_leaves_none() {
    let h = Harness::start(&[("MAX_CLOUD_COST_USD", "1.0")]).await;
    h.cloud.push(Step::Hang);
    let mut req = tonic::Request::new(cost::capped_call("dropped"));
    req.set_timeout(Duration::from_millis(300));
    let err = h.client().await.generate(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    // The charge is settled by the hold's guard in the background: wait for it (bounded).
    let mut budget = pb::Budget::default();
    for _ in 0..100 {
        budget = usage(h.addr, "dropped").await.budget.unwrap();
        if budget.cloud_cost_reserved_usd == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(budget.cloud_cost_reserved_usd, 0.0, "the hold was released");
    assert!(
        budget.cloud_cost_used_usd > 0.0,
        "and charged in full: {budget:?}"
    );
    h.shutdown().await;
}

/// `vra-gateway usage REPORT_ID --target` prints the report's table; the startup log warns
/// about a cloud model without a price; a dollar cap with one exits 2 naming the setting.
#[tokio::test]
async fn the_usage_command_prints_the_table_and_unpriced_models_are_named() {
    let cloud = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let local = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let mut gw = Running::start(&gateway_env(&cloud_url, &local_url, &[])).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    for (phase, section) in [(P::Draft, S::Introduction), (P::Expand, S::Introduction)] {
        client
            .generate(request("cli-report", phase, section))
            .await
            .unwrap();
    }
    let (code, stdout, stderr) = run_to_end(
        &temp_dir(),
        &["usage", "cli-report", "--target", &gw.addr],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("report cli-report: cost by phase and answering tier"),
        "{stdout}"
    );
    assert!(stdout.contains("DRAFT     PRIMARY        1"), "{stdout}");
    assert!(stdout.contains("EXPAND    SECONDARY      1"), "{stdout}");
    assert!(stdout.contains("saved by hybrid routing: $"), "{stdout}");
    assert!(stdout.contains("budget: cloud calls 1/1"), "{stdout}");
    // The usage line of each answered call is logged with its cost.
    let line = gw.wait_for("usage | Phase=DRAFT").await;
    assert!(
        line.contains("Model=gpt-4o") && line.contains("Cost=$0.0"),
        "{line}"
    );
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);

    let unpriced = gateway_env(&cloud_url, &local_url, &[("PRIMARY_MODEL", "frontier-x")]);
    let mut gw = Running::start(&unpriced).await;
    let warning = gw.wait_for("has no price").await;
    assert!(warning.contains("frontier-x"), "{warning}");
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);

    let capped = gateway_env(
        &cloud_url,
        &local_url,
        &[("PRIMARY_MODEL", "frontier-x"), ("MAX_CLOUD_COST_USD", "1")],
    );
    let (code, _, stderr) = run_to_end(&temp_dir(), &["serve"], &capped).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("MAX_CLOUD_COST_USD") && stderr.contains("frontier-x"),
        "{stderr}"
    );
}

/// Under a cap, a failed attempt is charged its whole worst case when the upstream may have
/// done (and billed) the work — here a 200 whose body is unreadable — and nothing when it
/// answered with an error status; `abandoned_usd` shows the charge, inside `cloud_usd`.
#[tokio::test]
async fn failed_attempts_are_charged_only_when_they_may_have_been_billed() {
    let h = Harness::start(&[("MAX_CLOUD_COST_USD", "1.0")]).await;
    let mut client = h.client().await;

    // An HTTP 500, then an answer: the 500 costs nothing.
    h.cloud.push(Step::fail(500));
    let resp = client
        .generate(cost::capped_call("status"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&resp), resp.attempts), (T::Primary, 2));
    let c = usage_cost(&h, "status").await;
    assert_eq!(c.abandoned_usd, 0.0);
    assert_eq!(c.cloud_usd, resp.cost_usd.unwrap());

    // A malformed 200 (not retried: the secondary answers): the cloud attempt is charged its
    // worst case.
    h.cloud.push(Step::Malformed);
    let resp = client
        .generate(cost::capped_call("malformed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&resp), reason(&resp), resp.attempts),
        (T::Secondary, F::PrimaryError, 2)
    );
    let worst = worst_case_nanos(&cost::capped_call("malformed"));
    let c = usage_cost(&h, "malformed").await;
    assert_eq!(c.abandoned_usd, worst as f64 / 1e9);
    assert_eq!(c.cloud_usd, worst as f64 / 1e9);
    let budget = usage(h.addr, "malformed").await.budget.unwrap();
    assert_eq!(budget.cloud_cost_reserved_usd, 0.0);
    h.shutdown().await;
}

/// The gateway's worst case for `req` on gpt-4o: one token per byte of its messages plus the
/// chat template's tokens, and its `max_tokens`.
fn worst_case_nanos(req: &pb::GenerateRequest) -> u64 {
    let input =
        vra_gateway::cost::input_tokens_bound([req.system_prompt.as_str(), req.prompt.as_str()]);
    let output = u64::from(req.options.as_ref().unwrap().max_tokens.unwrap());
    input * cost::GPT4O_IN_NANOS + output * cost::GPT4O_OUT_NANOS
}
