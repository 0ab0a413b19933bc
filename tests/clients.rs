//! Budgets scoped to authenticated clients, over real gRPC with bearer tokens and the
//! in-memory ledger: two clients with the same report id have separate budgets and see only
//! their own usage; a client's `max_cloud_calls` replaces `MAX_CLOUD_CALLS`; its day quota is
//! exact under concurrency, spends no report unit when it refuses, and falls back with
//! `CLIENT_QUOTA` (or ends in RESOURCE_EXHAUSTED when the secondary is cloud tier too).
//! The same guarantees across replicas on one Redis are in tests/redis_ledger.rs.

mod common;

use common::clients::{TestClient, write_clients_file};
use common::{Harness, reason, request, tier};
use tonic::Code;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

const A: TestClient = TestClient::new("reports-python", "vra_test-token-of-client-a-5b0f1c");
const B: TestClient = TestClient::new("reports-node", "vra_test-token-of-client-b-9e2d47");

/// A gateway whose callers are `clients`.
async fn start(clients: &[TestClient], overrides: &[(&str, &str)]) -> Harness {
    let file = write_clients_file(clients);
    let mut settings = vec![("VRA_CLIENTS_FILE", file.to_str().unwrap())];
    settings.extend_from_slice(overrides);
    Harness::start(&settings).await
}

fn refine(report: &str) -> pb::GenerateRequest {
    request(report, P::Refine, S::Analysis)
}

async fn usage(h: &Harness, who: TestClient, report: &str) -> pb::GetReportUsageResponse {
    h.client()
        .await
        .get_report_usage(who.call(pb::GetReportUsageRequest {
            report_id: report.into(),
        }))
        .await
        .expect("usage")
        .into_inner()
}

async fn resolve(h: &Harness, who: TestClient, report: &str) -> pb::ResolveRouteResponse {
    h.client()
        .await
        .resolve_route(who.call(pb::ResolveRouteRequest {
            report_id: report.into(),
            section_type: S::Analysis as i32,
            phase: P::Refine as i32,
        }))
        .await
        .expect("resolve")
        .into_inner()
}

fn budget(u: &pb::GetReportUsageResponse) -> (u32, u32, bool) {
    let b = u.budget.expect("budget");
    (b.cloud_calls_used, b.cloud_calls_limit, b.exhausted)
}

#[tokio::test]
async fn two_clients_with_the_same_report_id_have_separate_budgets() {
    let a = A.max_cloud_calls(2);
    let h = start(&[a, B], &[("MAX_CLOUD_CALLS", "5")]).await;
    let mut client = h.client().await;
    let mut routes = Vec::new();
    for _ in 0..3 {
        let r = client.generate(a.call(refine("q3-report"))).await.unwrap();
        routes.push((tier(r.get_ref()), reason(r.get_ref())));
    }
    assert_eq!(
        routes,
        [
            (T::Primary, F::Unspecified),
            (T::Primary, F::Unspecified),
            (T::Secondary, F::CostLimit)
        ],
        "client A's own cap (max_cloud_calls = 2) replaces MAX_CLOUD_CALLS"
    );
    // B's report of the same id is another report, with the global cap.
    let r = client
        .generate(B.call(refine("q3-report")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Primary, F::Unspecified));
    let b = r.budget.unwrap();
    assert_eq!((b.cloud_calls_used, b.cloud_calls_limit), (1, 5));
    assert_eq!(h.cloud.requests(), 3);

    let ua = usage(&h, a, "q3-report").await;
    assert_eq!(budget(&ua), (2, 2, true));
    assert_eq!(
        (ua.primary_calls, ua.secondary_calls, ua.fallbacks),
        (2, 1, 1)
    );
    let ub = usage(&h, B, "q3-report").await;
    assert_eq!(budget(&ub), (1, 5, false));
    assert_eq!(
        (ub.primary_calls, ub.secondary_calls, ub.fallbacks),
        (1, 0, 0)
    );
    assert_eq!(ub.report_id, "q3-report");
    // Neither has a day quota, so none is reported.
    assert!(ua.client_quota.is_none() && ub.client_quota.is_none());
    // What B would do next is decided by B's report alone.
    let route = resolve(&h, B, "q3-report").await.route.unwrap();
    assert_eq!(route.tier, T::Primary as i32);
    let route = resolve(&h, a, "q3-report").await.route.unwrap();
    assert_eq!(route.fallback_reason, F::CostLimit as i32);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_quota_is_exact_under_50_concurrent_calls_then_falls_back_with_client_quota() {
    let a = A.per_day(20);
    let h = start(&[a, B], &[("MAX_CLOUD_CALLS", "3")]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        // Two calls per report: the day quota, not the report budget (3), is what runs out.
        let mut client = h.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .generate(a.call(refine(&format!("day-{}", i / 2))))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let (primary, quota) = common::tally(tasks, F::ClientQuota).await;
    assert_eq!((primary, quota), (20, 30));
    assert_eq!(
        h.cloud.requests(),
        20,
        "exactly the day quota reached the cloud"
    );

    // Both queries tell the client its day; a quota refusal spent no unit of a report.
    let spent = pb::ClientQuota {
        used: 20,
        limit: 20,
    };
    let fresh = usage(&h, a, "never-called").await;
    assert_eq!(fresh.client_quota, Some(spent));
    assert_eq!(budget(&fresh), (0, 3, false));
    let mut units = 0;
    for report in 0..25 {
        let u = usage(&h, a, &format!("day-{report}")).await;
        assert!(
            !u.budget.unwrap().exhausted,
            "no report was marked exhausted"
        );
        units += u.budget.unwrap().cloud_calls_used;
    }
    assert_eq!(units, 20, "report units taken = day units taken");
    let next = resolve(&h, a, "tomorrow-maybe").await;
    assert_eq!(next.client_quota, Some(spent));
    let route = next.route.unwrap();
    assert_eq!(
        (route.tier, route.fallback_reason),
        (T::Secondary as i32, F::ClientQuota as i32)
    );

    // Another client's day is its own.
    let r = h
        .client()
        .await
        .generate(B.call(refine("day-0")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&r), T::Primary);
    assert!(resolve(&h, B, "day-0").await.client_quota.is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn a_cloud_secondary_with_the_day_quota_spent_is_resource_exhausted() {
    let a = A.per_day(1);
    let h = start(
        &[a],
        &[
            ("SECONDARY_PROVIDER", "openai"),
            ("SECONDARY_MODEL", "gpt-4o-mini"),
        ],
    )
    .await;
    let mut client = h.client().await;
    let expand = |report: &str| request(report, P::Expand, S::Analysis);
    client.generate(a.call(expand("r1"))).await.unwrap();
    let err = client.generate(a.call(expand("r2"))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("quota") && err.message().contains("1/1"),
        "{}",
        err.message()
    );
    assert_eq!(h.cloud.requests(), 1);
    h.shutdown().await;
}
