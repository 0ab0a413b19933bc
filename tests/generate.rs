//! End-to-end tests of `Generate`, `ResolveRoute` and `GetReportUsage` over real gRPC, against
//! simulated upstreams that speak the OpenAI and Ollama wire formats.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, PHASES, SECTIONS, reason, request, rule, tier};
use tonic::Code;
use vra_gateway::demo::sim::Step;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

/// The documented matrix, written out independently of `vra_gateway::routing`.
fn expected(hybrid: bool, phase: P, section: S) -> (T, &'static str) {
    match (hybrid, phase, section) {
        (_, P::Abstract, _) => (T::Primary, "abstract-always-primary"),
        (false, _, _) => (T::Primary, "hybrid-off"),
        (true, P::Refine, _) => (T::Primary, "refine-primary"),
        (true, P::Expand, _) => (T::Secondary, "expand-secondary"),
        (true, P::Draft, S::Introduction | S::Conclusion | S::Analysis) => {
            (T::Primary, "draft-reasoning-primary")
        }
        (true, P::Draft, S::Methodology | S::Implementation) => {
            (T::Secondary, "draft-template-secondary")
        }
        (true, P::Draft, _) => (T::Primary, "draft-default-primary"),
        (_, P::Unspecified, _) => unreachable!("not a valid phase"),
    }
}

#[tokio::test]
async fn routing_matrix_end_to_end() {
    for hybrid in [true, false] {
        let h = Harness::start(&[("VRA_HYBRID_MODE", if hybrid { "true" } else { "false" })]).await;
        let mut client = h.client.clone();
        let (mut cloud_calls, mut local_calls) = (0, 0);
        for phase in PHASES {
            for section in SECTIONS {
                let report = format!("matrix-{hybrid}-{phase:?}-{section:?}");
                let resp = client
                    .generate(request(&report, phase, section))
                    .await
                    .expect("generate")
                    .into_inner();
                let (want_tier, want_rule) = expected(hybrid, phase, section);
                let ctx = format!("hybrid={hybrid} {phase:?} {section:?}");
                assert_eq!(tier(&resp), want_tier, "{ctx}");
                assert_eq!(rule(&resp), want_rule, "{ctx}");
                assert_eq!(reason(&resp), F::Unspecified, "{ctx}");
                let route = resp.route.as_ref().unwrap();
                match want_tier {
                    T::Primary => {
                        cloud_calls += 1;
                        assert_eq!(
                            (route.provider.as_str(), route.model.as_str(), route.cloud),
                            ("openai", "gpt-4o", true),
                            "{ctx}"
                        );
                        let last = h.cloud.recorded().pop().expect("cloud saw the call");
                        assert_eq!(
                            (last.path.as_str(), last.model()),
                            ("/v1/chat/completions", "gpt-4o"),
                            "{ctx}"
                        );
                        assert_eq!(resp.budget.unwrap().cloud_calls_used, 1, "{ctx}");
                    }
                    _ => {
                        local_calls += 1;
                        assert_eq!(
                            (route.provider.as_str(), route.model.as_str(), route.cloud),
                            ("local", "llama3:8b", false),
                            "{ctx}"
                        );
                        let last = h.local.recorded().pop().expect("local saw the call");
                        assert_eq!(
                            (last.path.as_str(), last.model()),
                            ("/api/chat", "llama3:8b"),
                            "{ctx}"
                        );
                        assert_eq!(last.body["stream"], false);
                        assert_eq!(resp.budget.unwrap().cloud_calls_used, 0, "{ctx}");
                    }
                }
                assert_eq!(h.cloud.requests(), cloud_calls, "{ctx}");
                assert_eq!(h.local.requests(), local_calls, "{ctx}");
                assert_eq!(resp.attempts, 1);
                assert!(!resp.text.is_empty());
            }
        }
        h.shutdown().await;
    }
}

#[tokio::test]
async fn local_primary_serves_everything_without_budget() {
    let h = Harness::start(&[("PRIMARY_PROVIDER", "LOCAL"), ("MAX_CLOUD_CALLS", "0")]).await;
    let mut client = h.client.clone();
    for phase in PHASES {
        for section in SECTIONS {
            let resp = client
                .generate(request("local-report", phase, section))
                .await
                .expect("generate")
                .into_inner();
            let route = resp.route.unwrap();
            assert!(!route.cloud, "{phase:?} {section:?}");
            assert_eq!(route.provider, "local");
            assert_eq!(
                route.fallback_reason,
                F::Unspecified as i32,
                "MAX_CLOUD_CALLS=0 must not matter"
            );
            if phase == P::Abstract {
                assert_eq!(
                    (route.tier, route.rule.as_str()),
                    (T::Primary as i32, "abstract-always-primary")
                );
                assert_eq!(
                    route.model, "gpt-4o",
                    "the primary's model goes to the local provider"
                );
            }
        }
    }
    assert_eq!(h.cloud.requests(), 0);
    assert_eq!(h.local.requests(), 28);
    let usage = client
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "local-report".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.budget.unwrap().cloud_calls_used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_budget_under_fifty_concurrent_calls() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "15")]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = if i % 2 == 0 {
            h.client.clone()
        } else {
            h.client().await
        };
        tasks.push(tokio::spawn(async move {
            client
                .generate(request("hot-report", P::Refine, S::Analysis))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut primary = 0;
    let mut cost_limited = 0;
    for t in tasks {
        let resp = t.await.unwrap().expect("every call is answered");
        match (tier(&resp), reason(&resp)) {
            (T::Primary, F::Unspecified) => primary += 1,
            (T::Secondary, F::CostLimit) => cost_limited += 1,
            other => panic!("unexpected route {other:?}"),
        }
    }
    assert_eq!(
        h.cloud.requests(),
        15,
        "the cloud upstream saw exactly the budget"
    );
    assert_eq!((primary, cost_limited), (15, 35));
    assert_eq!(h.local.requests(), 35);
    let usage = h
        .client
        .clone()
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "hot-report".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let budget = usage.budget.unwrap();
    assert_eq!(
        (
            budget.cloud_calls_used,
            budget.cloud_calls_limit,
            budget.exhausted
        ),
        (15, 15, true)
    );
    assert_eq!(
        (usage.primary_calls, usage.secondary_calls, usage.fallbacks),
        (15, 35, 35)
    );
}

#[tokio::test]
async fn cost_limit_pins_the_report_to_the_secondary() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "1")]).await;
    let mut c = h.client.clone();
    let first = c
        .generate(request("pinned", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&first), reason(&first)), (T::Primary, F::Unspecified));
    assert!(
        first.budget.unwrap().exhausted,
        "the only unit is used: nothing is left"
    );
    for (phase, section) in [
        (P::Refine, S::Analysis),
        (P::Draft, S::Introduction),
        (P::Abstract, S::Other),
        (P::Refine, S::Other),
    ] {
        let resp = c
            .generate(request("pinned", phase, section))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (tier(&resp), reason(&resp)),
            (T::Secondary, F::CostLimit),
            "{phase:?}"
        );
        assert_eq!(resp.route.as_ref().unwrap().provider, "local");
        let budget = resp.budget.unwrap();
        assert_eq!((budget.cloud_calls_used, budget.exhausted), (1, true));
    }
    // EXPAND was never a cloud call: no fallback reason.
    let expand = c
        .generate(request("pinned", P::Expand, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&expand), F::Unspecified);
    // Another report has its own budget.
    let other = c
        .generate(request("fresh", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&other), T::Primary);
    assert_eq!(h.cloud.requests(), 2);
}

#[tokio::test]
async fn zero_budget_never_calls_the_cloud() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "0")]).await;
    let mut c = h.client.clone();
    for phase in [P::Abstract, P::Refine, P::Draft] {
        let resp = c
            .generate(request("zero", phase, S::Introduction))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((tier(&resp), reason(&resp)), (T::Secondary, F::CostLimit));
    }
    assert_eq!(h.cloud.requests(), 0);
}

#[tokio::test]
async fn resolve_route_is_a_dry_run() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "1")]).await;
    let mut c = h.client.clone();
    let resolve = |phase: P, section: S| pb::ResolveRouteRequest {
        report_id: "dry".into(),
        section_type: section as i32,
        phase: phase as i32,
    };
    for _ in 0..5 {
        let r = c
            .resolve_route(resolve(P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        let route = r.route.unwrap();
        assert_eq!(
            (route.tier, route.rule.as_str(), route.cloud),
            (T::Primary as i32, "refine-primary", true)
        );
        assert_eq!(r.budget.unwrap().cloud_calls_used, 0);
    }
    let r = c
        .resolve_route(resolve(P::Draft, S::Methodology))
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    assert_eq!(
        (r.tier, r.rule.as_str(), r.provider.as_str()),
        (T::Secondary as i32, "draft-template-secondary", "local")
    );
    assert_eq!(
        h.cloud.requests() + h.local.requests(),
        0,
        "no upstream call"
    );

    c.generate(request("dry", P::Refine, S::Analysis))
        .await
        .unwrap();
    // The budget is now spent: the dry run says what Generate would do now.
    let r = c
        .resolve_route(resolve(P::Abstract, S::Other))
        .await
        .unwrap()
        .into_inner();
    let route = r.route.unwrap();
    assert_eq!(
        (route.tier, route.fallback_reason),
        (T::Secondary as i32, F::CostLimit as i32)
    );
    assert_eq!(route.rule, "abstract-always-primary");
    assert_eq!(r.budget.unwrap().cloud_calls_used, 1);
    assert_eq!(h.cloud.requests(), 1);
}

#[tokio::test]
async fn report_usage_counts_calls_fallbacks_and_tokens() {
    let h = Harness::start(&[("MAX_CLOUD_CALLS", "2")]).await;
    let mut c = h.client.clone();
    let unknown = c
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "nobody".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.report_id, "nobody");
    let b = unknown.budget.unwrap();
    assert_eq!(
        (b.cloud_calls_used, b.cloud_calls_limit, b.exhausted),
        (0, 2, false)
    );
    assert_eq!(
        (
            unknown.primary_calls,
            unknown.secondary_calls,
            unknown.fallbacks
        ),
        (0, 0, 0)
    );

    let mut cloud_out = 0;
    let mut local_out = 0;
    for (phase, section) in [
        (P::Refine, S::Analysis),
        (P::Expand, S::Analysis),
        (P::Refine, S::Other),
        (P::Refine, S::Conclusion),
    ] {
        let r = c
            .generate(request("counted", phase, section))
            .await
            .unwrap()
            .into_inner();
        let out = r.usage.unwrap().output_tokens;
        assert!(out > 0);
        if r.route.unwrap().cloud {
            cloud_out += out;
        } else {
            local_out += out;
        }
    }
    let u = c
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "counted".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((u.primary_calls, u.secondary_calls, u.fallbacks), (2, 2, 1));
    assert_eq!(u.cloud_usage.unwrap().output_tokens, cloud_out);
    assert_eq!(u.local_usage.unwrap().output_tokens, local_out);
    assert!(u.cloud_usage.unwrap().input_tokens > 0 && u.local_usage.unwrap().input_tokens > 0);
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let h = Harness::start(&[]).await;
    h.cloud.push(Step::fail(503));
    h.cloud.push(Step::Fail {
        status: 408,
        retry_after: None,
    });
    let r = h
        .client
        .clone()
        .generate(request("retry-ok", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.attempts),
        (T::Primary, F::Unspecified, 3)
    );
    assert_eq!(h.cloud.requests(), 3);
    assert_eq!(
        r.budget.unwrap().cloud_calls_used,
        3,
        "every cloud HTTP request counts, retries included"
    );
}

#[tokio::test]
async fn persistent_5xx_falls_back_to_the_secondary() {
    let h = Harness::start(&[]).await;
    h.cloud.set_default(Step::fail(500));
    let r = h
        .client
        .clone()
        .generate(request("r5xx", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Secondary, F::PrimaryError));
    assert_eq!(r.attempts, 4, "three primary attempts, then the secondary");
    assert_eq!((h.cloud.requests(), h.local.requests()), (3, 1));
    assert_eq!(r.budget.unwrap().cloud_calls_used, 3);
}

#[tokio::test]
async fn connect_errors_fall_back_too() {
    // A cloud upstream that is not listening at all.
    let cloud = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let local = vra_gateway::demo::sim::Sim::start().await.unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_url = format!("http://{dead}/v1");
    let config = common::config(&cloud, &local, &[("OPENAI_BASE_URL", dead_url.as_str())]);
    let h = Harness::start_with(cloud, local, config).await;
    let r = h
        .client
        .clone()
        .generate(request("dead", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.attempts),
        (T::Secondary, F::PrimaryError, 4)
    );
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_the_cap() {
    let h = Harness::start(&[("VRA_RETRY_MAX_BACKOFF_MS", "4000")]).await;
    h.cloud.push(Step::Fail {
        status: 429,
        retry_after: Some("1".into()),
    });
    let started = Instant::now();
    let r = h
        .client
        .clone()
        .generate(request("ra", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!((tier(&r), r.attempts), (T::Primary, 2));
}

/// A huge `Retry-After` waits no longer than `VRA_RETRY_MAX_BACKOFF_MS`; values past `u64`
/// (which used to panic the request task) and non-integers (ignored: the normal backoff, also
/// capped) included.
#[tokio::test]
async fn retry_after_is_capped_by_the_max_backoff() {
    const CAP: Duration = Duration::from_millis(50);
    // The cap plus the call's own work, with room for a loaded CI machine — and far below
    // any of the waits asked for (an hour and more).
    const BOUND: Duration = Duration::from_secs(1);
    let cap_ms = CAP.as_millis().to_string();
    for retry_after in ["3600", "1e20", "99999999999999999999"] {
        let h = Harness::start(&[("VRA_RETRY_MAX_BACKOFF_MS", cap_ms.as_str())]).await;
        h.cloud.push(Step::Fail {
            status: 429,
            retry_after: Some(retry_after.into()),
        });
        let started = Instant::now();
        let r = h
            .client
            .clone()
            .generate(request("ra-cap", P::Refine, S::Analysis))
            .await
            .unwrap_or_else(|e| panic!("Retry-After: {retry_after}: {e}"))
            .into_inner();
        let elapsed = started.elapsed();
        assert!(
            elapsed < BOUND,
            "Retry-After: {retry_after} with a {CAP:?} cap took {elapsed:?}"
        );
        assert_eq!(
            (tier(&r), reason(&r), r.attempts),
            (T::Primary, F::Unspecified, 2),
            "Retry-After: {retry_after}: the second attempt succeeded"
        );
        assert_eq!(
            h.cloud.requests(),
            2,
            "Retry-After: {retry_after}: the upstream saw the retry"
        );
        h.shutdown().await;
    }
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let h = Harness::start(&[]).await;
    h.cloud.push(Step::fail(400));
    let r = h
        .client
        .clone()
        .generate(request("r400", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.attempts),
        (T::Secondary, F::PrimaryError, 2)
    );
    assert_eq!(h.cloud.requests(), 1);
}

#[tokio::test]
async fn malformed_upstream_body_triggers_fallback() {
    let h = Harness::start(&[]).await;
    h.cloud.push(Step::Malformed);
    let r = h
        .client
        .clone()
        .generate(request("bad-body", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Secondary, F::PrimaryError));
    assert!(!r.text.is_empty());
}

#[tokio::test]
async fn both_failing_is_unavailable_naming_both_errors() {
    let h = Harness::start(&[]).await;
    h.cloud.set_default(Step::fail(502));
    h.local.set_default(Step::fail(500));
    let err = h
        .client
        .clone()
        .generate(request("dead-end", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("PRIMARY openai: HTTP 502"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("SECONDARY local: HTTP 500"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("sk-test-secret"));
    assert_eq!((h.cloud.requests(), h.local.requests()), (3, 3));
}

#[tokio::test]
async fn failing_secondary_without_fallback_is_unavailable() {
    let h = Harness::start(&[]).await;
    h.local.set_default(Step::fail(503));
    let err = h
        .client
        .clone()
        .generate(request("local-down", P::Expand, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("SECONDARY local: HTTP 503"));
    assert_eq!(
        h.cloud.requests(),
        0,
        "the secondary never falls back to the cloud"
    );
}

#[tokio::test]
async fn cloud_secondary_with_spent_budget_is_resource_exhausted() {
    let h = Harness::start(&[
        ("SECONDARY_PROVIDER", "openai"),
        ("SECONDARY_MODEL", "gpt-4o-mini"),
        ("MAX_CLOUD_CALLS", "1"),
    ])
    .await;
    let mut c = h.client.clone();
    let r = c
        .generate(request("cloudy", P::Expand, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    let route = r.route.clone().unwrap();
    assert_eq!(
        (tier(&r), route.model.as_str(), route.cloud),
        (T::Secondary, "gpt-4o-mini", true)
    );
    let err = c
        .generate(request("cloudy", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    let err = c
        .generate(request("cloudy", P::Expand, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(h.cloud.requests(), 1);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let h = Harness::start(&[("VRA_MAX_PROMPT_BYTES", "1024")]).await;
    let mut c = h.client.clone();
    let base = || request("valid", P::Draft, S::Introduction);
    let cases: Vec<(&str, pb::GenerateRequest)> = vec![
        (
            "report_id",
            pb::GenerateRequest {
                report_id: String::new(),
                ..base()
            },
        ),
        (
            "report_id",
            pb::GenerateRequest {
                report_id: "r".repeat(257),
                ..base()
            },
        ),
        (
            "phase",
            pb::GenerateRequest {
                phase: P::Unspecified as i32,
                ..base()
            },
        ),
        (
            "prompt",
            pb::GenerateRequest {
                prompt: String::new(),
                ..base()
            },
        ),
        (
            "prompt",
            pb::GenerateRequest {
                prompt: "p".repeat(1025),
                ..base()
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.generate(req).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = c
        .resolve_route(pb::ResolveRouteRequest {
            report_id: "r".into(),
            section_type: 0,
            phase: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("phase"));
    let err = c
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("report_id"));
    assert_eq!(
        h.cloud.requests() + h.local.requests(),
        0,
        "nothing invalid reaches an upstream"
    );
}

#[tokio::test]
async fn oversized_prompt_reaches_validation_not_the_transport_limit() {
    // 5 MiB is above tonic's default 4 MiB decode limit and above the 1 MiB default prompt limit.
    let h = Harness::start(&[]).await;
    let req = pb::GenerateRequest {
        prompt: "x".repeat(5 << 20),
        ..request("big", P::Draft, S::Introduction)
    };
    let err = h.client.clone().generate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("VRA_MAX_PROMPT_BYTES"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn deadline_bounds_the_call_and_drops_the_upstream_request() {
    let h = Harness::start(&[]).await;
    h.cloud.set_default(Step::Hang);
    let mut req = tonic::Request::new(request("slow", P::Refine, S::Analysis));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = h.client.clone().generate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        h.cloud.wait_closed(1, Duration::from_secs(2)).await,
        "the upstream request was dropped"
    );
}

#[tokio::test]
async fn retries_never_sleep_past_the_deadline() {
    let h = Harness::start(&[("VRA_RETRY_MAX_BACKOFF_MS", "10000")]).await;
    h.cloud.push(Step::Fail {
        status: 503,
        retry_after: Some("10".into()),
    });
    let mut req = tonic::Request::new(request("ra-deadline", P::Refine, S::Analysis));
    req.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    // The 10 s Retry-After cannot fit in 2 s: the primary gives up at once and the secondary answers.
    let r = h.client.clone().generate(req).await.unwrap().into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.attempts),
        (T::Secondary, F::PrimaryError, 2)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn api_key_is_sent_upstream_but_never_returned() {
    let h = Harness::start(&[]).await;
    h.cloud.set_default(Step::fail(401));
    h.local.set_default(Step::fail(500));
    let err = h
        .client
        .clone()
        .generate(request("auth", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    let sent = h.cloud.recorded();
    assert_eq!(sent.len(), 1, "401 is not retried");
    assert_eq!(
        sent[0].authorization.as_deref(),
        Some("Bearer sk-test-secret-key-0123456789")
    );
    assert!(
        h.local.recorded().iter().all(|r| r.authorization.is_none()),
        "the key goes only to its provider"
    );
    assert!(!err.message().contains("sk-test"), "{}", err.message());
}

#[tokio::test]
async fn options_and_system_prompt_reach_the_upstream_in_its_format() {
    let h = Harness::start(&[]).await;
    let mut c = h.client.clone();
    let options = pb::GenerationOptions {
        temperature: Some(0.25),
        max_tokens: Some(77),
        stop: vec!["END".into()],
        top_p: Some(0.5),
        seed: Some(42),
        ..Default::default()
    };
    let mut req = request("opts", P::Refine, S::Analysis);
    req.options = Some(options.clone());
    c.generate(req).await.unwrap();
    let cloud = h.cloud.recorded().pop().unwrap().body;
    assert_eq!(
        cloud["messages"][0],
        serde_json::json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(cloud["messages"][1]["role"], "user");
    assert_eq!(
        (cloud["temperature"].as_f64(), cloud["max_tokens"].as_u64()),
        (Some(0.25), Some(77))
    );
    assert_eq!(cloud["stop"], serde_json::json!(["END"]));
    assert_eq!(
        (cloud["top_p"].as_f64(), cloud["seed"].as_i64()),
        (Some(0.5), Some(42))
    );

    let mut req = request("opts", P::Expand, S::Analysis);
    req.options = Some(options);
    c.generate(req).await.unwrap();
    let local = h.local.recorded().pop().unwrap().body;
    assert_eq!(local["options"]["num_predict"], 77);
    assert_eq!(local["options"]["stop"], serde_json::json!(["END"]));
    assert_eq!(
        (
            local["options"]["top_p"].as_f64(),
            local["options"]["seed"].as_i64()
        ),
        (Some(0.5), Some(42))
    );
    assert_eq!(local["stream"], false);
}

#[tokio::test]
async fn a_conversation_reaches_each_upstream_turn_by_turn() {
    use pb::ChatRole as R;
    let h = Harness::start(&[]).await;
    let mut c = h.client.clone();
    let turn = |role: R, content: &str| pb::ChatMessage {
        role: role as i32,
        content: content.into(),
    };
    let conversation = vec![
        turn(R::System, "You are terse."),
        turn(R::User, "Draft the analysis."),
        turn(R::Assistant, "1. Data 2. Findings"),
        turn(R::User, "Now refine it."),
    ];
    let expected = serde_json::json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Draft the analysis."},
        {"role": "assistant", "content": "1. Data 2. Findings"},
        {"role": "user", "content": "Now refine it."}
    ]);
    for (phase, upstream) in [(P::Refine, &h.cloud), (P::Expand, &h.local)] {
        let req = pb::GenerateRequest {
            prompt: String::new(),
            system_prompt: String::new(),
            messages: conversation.clone(),
            ..request("conv", phase, S::Analysis)
        };
        c.generate(req).await.unwrap();
        assert_eq!(
            upstream.recorded().pop().unwrap().body["messages"],
            expected
        );
    }
    // The stream takes the same conversation.
    let req = pb::GenerateStreamRequest {
        prompt: String::new(),
        system_prompt: String::new(),
        messages: conversation.clone(),
        ..request("conv", P::Expand, S::Analysis).into()
    };
    let mut stream = c.generate_stream(req).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(h.local.recorded().pop().unwrap().body["messages"], expected);

    // Prompt and messages together are ambiguous; a conversation needs a user turn.
    let sent = h.cloud.recorded().len();
    for bad in [
        pb::GenerateRequest {
            messages: conversation.clone(),
            ..request("conv", P::Refine, S::Analysis)
        },
        pb::GenerateRequest {
            prompt: String::new(),
            system_prompt: String::new(),
            messages: vec![turn(R::System, "You are terse.")],
            ..request("conv", P::Refine, S::Analysis)
        },
    ] {
        let err = c.generate(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    assert_eq!(h.cloud.recorded().len(), sent, "refused calls send nothing");
}

#[tokio::test]
async fn open_circuit_skips_the_primary_without_spending_budget() {
    let h = Harness::start(&[
        ("VRA_CIRCUIT_FAILURES", "2"),
        ("VRA_RETRY_MAX_ATTEMPTS", "1"),
    ])
    .await;
    h.cloud.set_default(Step::fail(500));
    let mut c = h.client.clone();
    for i in 0..2 {
        let r = c
            .generate(request(&format!("cb-{i}"), P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reason(&r), F::PrimaryError);
    }
    let r = c
        .generate(request("cb-open", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.attempts),
        (T::Secondary, F::CircuitOpen, 1)
    );
    assert_eq!(r.budget.unwrap().cloud_calls_used, 0);
    assert_eq!(h.cloud.requests(), 2);
    let resolved = c
        .resolve_route(pb::ResolveRouteRequest {
            report_id: "x".into(),
            section_type: 0,
            phase: P::Abstract as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resolved.route.unwrap().fallback_reason,
        F::CircuitOpen as i32
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let h = Harness::start(&[]).await;
    assert!(
        vra_gateway::server::check_health(&h.addr.to_string())
            .await
            .unwrap()
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"vra.gateway.v1.GatewayService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_calls() {
    let h = Harness::start(&[]).await;
    h.cloud.push(Step::Reply {
        text: "late but complete".into(),
        delay: Duration::from_millis(500),
        chunk_delay: Duration::ZERO,
    });
    let mut c = h.client.clone();
    let call =
        tokio::spawn(async move { c.generate(request("drain", P::Refine, S::Analysis)).await });
    // Wait until the upstream has the request, then ask the server to stop.
    while h.cloud.requests() == 0 {
        tokio::task::yield_now().await;
    }
    h.shutdown().await;
    let resp = call
        .await
        .unwrap()
        .expect("in-flight call completed")
        .into_inner();
    assert_eq!(resp.text, "late but complete");
}
