//! The dollar cap under concurrency, as one scenario that runs against one in-memory gateway
//! (tests/cost.rs) and against three replicas sharing one Redis (tests/redis_ledger.rs).

use std::net::SocketAddr;
use std::time::Duration;

use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{self, CompilationPhase as P, FallbackReason as F, SectionType as S};

use super::{connect, reason, request, tier, usage};

/// The cap of the scenario: a few worst cases, far fewer than the calls.
pub const CAP_USD: f64 = 0.005;

/// gpt-4o's built-in price, in nano-dollars per token.
pub const GPT4O_IN_NANOS: u64 = 2_500;
pub const GPT4O_OUT_NANOS: u64 = 10_000;

/// What `usage` costs on gpt-4o, in nano-dollars (rounded up, as the gateway does).
pub fn gpt4o_nanos(usage: &pb::Usage) -> u64 {
    u64::from(usage.input_tokens) * GPT4O_IN_NANOS
        + u64::from(usage.output_tokens) * GPT4O_OUT_NANOS
}

/// The settings of a gateway under the scenario's cap.
pub fn capped_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MAX_CLOUD_COST_USD", "0.005"),
        ("MAX_CLOUD_CALLS", "1000"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
    ]
}

/// A REFINE call (primary) asking for at most 100 output tokens: its worst case is about
/// $0.0012, so a handful fit under the cap at once.
pub fn capped_call(report: &str) -> pb::GenerateRequest {
    let mut req = request(report, P::Refine, S::Analysis);
    req.options = Some(pb::GenerationOptions {
        max_tokens: Some(100),
        ..Default::default()
    });
    req
}

/// 50 concurrent calls spread over `gateways`, while the cloud upstream answers slowly (so
/// reservations overlap). Checks the guarantee — the report's settled cloud cost never exceeds
/// the cap — and exact accounting: the settled cost is the sum of the answered calls' costs,
/// no hold is left, every cloud request was a granted reservation, the rest fell back with
/// COST_LIMIT.
pub async fn fifty_concurrent_calls_never_exceed_the_cap(
    gateways: &[SocketAddr],
    cloud: &Sim,
    report: &str,
) {
    cloud.set_default(Step::Reply {
        text: "Polished text of the section, eleven words long, more or less.".into(),
        delay: Duration::from_millis(100),
        chunk_delay: Duration::ZERO,
    });
    let mut clients = Vec::new();
    for addr in gateways {
        clients.push(connect(*addr).await);
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = clients[i % clients.len()].clone();
        let req = capped_call(report);
        tasks.push(tokio::spawn(async move {
            client.generate(req).await.map(|r| r.into_inner())
        }));
    }
    let (mut answered_nanos, mut primary, mut cost_limited) = (0u64, 0usize, 0usize);
    for task in tasks {
        let resp = task.await.unwrap().expect("every call is answered");
        match (tier(&resp), reason(&resp)) {
            (pb::ProviderTier::Primary, F::Unspecified) => {
                primary += 1;
                let usage = resp.usage.expect("usage");
                let nanos = gpt4o_nanos(&usage);
                assert_eq!(resp.cost_usd, Some(nanos as f64 / 1e9), "the call's cost");
                answered_nanos += nanos;
            }
            (pb::ProviderTier::Secondary, F::CostLimit) => {
                cost_limited += 1;
                assert_eq!(resp.cost_usd, Some(0.0), "the local model is free");
            }
            other => panic!("unexpected route {other:?}"),
        }
    }
    assert!(primary >= 1, "at least one worst case fits under the cap");
    assert_eq!(primary + cost_limited, 50);
    assert!(cost_limited > 0, "the cap refused some calls");
    assert_eq!(
        cloud.requests(),
        primary,
        "every cloud request was reserved"
    );
    // A replica's read waits for its own records (a Redis ledger sends them after the
    // responses): once each has answered one, every record has landed.
    for addr in gateways {
        usage(*addr, report).await;
    }
    for addr in gateways {
        let usage = usage(*addr, report).await;
        let budget = usage.budget.expect("budget");
        let cost = usage.cost.expect("cost");
        assert!(
            budget.cloud_cost_used_usd <= CAP_USD,
            "settled {} > cap {CAP_USD}",
            budget.cloud_cost_used_usd
        );
        assert_eq!(budget.cloud_cost_used_usd, answered_nanos as f64 / 1e9);
        assert_eq!(cost.cloud_usd, budget.cloud_cost_used_usd);
        assert_eq!(
            budget.cloud_cost_reserved_usd, 0.0,
            "no hold outlives its call"
        );
        assert_eq!(budget.cloud_cost_limit_usd, Some(CAP_USD));
        // Refusals for lack of room refuse their call only; with the holds settled far below
        // their worst case, the report has room again.
        assert!(!budget.exhausted);
        assert_eq!(budget.cloud_calls_used as usize, primary);
    }
}
