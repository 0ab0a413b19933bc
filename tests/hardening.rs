//! Hostile clients and hostile upstreams, end to end: each test here reproduces a defect that
//! once panicked a request task, pinned the circuit breaker open or forged a log line, and
//! pins the fixed behaviour.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::process::{Running, gateway_env};
use common::{Harness, reason, request, tier};
use tonic::Code;
use tonic::metadata::MetadataValue;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::domain::ProviderError;
use vra_gateway::front::Front;
use vra_gateway::gateway::Gateway;
use vra_gateway::metrics::Metrics;
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::gateway_service_server::GatewayServiceServer;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};
use vra_gateway::providers::ProviderConfig;
use vra_gateway::providers::pool::Pool;
use vra_gateway::providers::{ChatRequest, Completion, EventStream, Provider, Tiers};
use vra_gateway::service::GatewayService;

fn fail_with_retry_after(value: &str) -> Step {
    Step::Fail {
        status: 429,
        retry_after: Some(value.into()),
    }
}

/// `Retry-After: 1e20` (and twenty nines) panicked the request task. Now anything
/// but digits or an HTTP date is ignored (normal backoff) and every delay is capped.
#[tokio::test]
async fn hostile_retry_after_values_are_survived_unary_and_streamed() {
    let h = Harness::start(&[("VRA_RETRY_MAX_BACKOFF_MS", "20")]).await;
    let mut c = h.client.clone();
    for (i, value) in ["1e20", "99999999999999999999", "-1", "NaN", "3600"]
        .into_iter()
        .enumerate()
    {
        h.cloud.push(fail_with_retry_after(value));
        let started = Instant::now();
        let r = c
            .generate(request(&format!("ra-{i}"), P::Refine, S::Analysis))
            .await
            .unwrap_or_else(|s| panic!("Retry-After {value:?}: {s:?}"))
            .into_inner();
        assert_eq!((tier(&r), r.attempts), (T::Primary, 2), "{value:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "Retry-After {value:?} waited {:?}, past the 20 ms cap",
            started.elapsed()
        );

        h.cloud.push(fail_with_retry_after(value));
        let mut stream = c
            .generate_stream(pb::GenerateStreamRequest::from(request(
                &format!("ra-stream-{i}"),
                P::Refine,
                S::Analysis,
            )))
            .await
            .unwrap()
            .into_inner();
        let mut done = None;
        while let Some(msg) = stream.message().await.expect("no error status") {
            if msg.done.is_some() {
                done = msg.done;
            }
        }
        let done = done.expect("the stream ends with its done message");
        assert_eq!(done.attempts, 2, "{value:?}");
    }
    assert_eq!(h.cloud.requests(), 20);
}

/// `grpc-timeout: 99999999999999999H` overflowed the deadline arithmetic. A value
/// outside the spec (more than 8 digits, unknown unit, no digits) is treated as no deadline,
/// as tonic's own timeout layer treats it; a valid huge one (8 digits of hours) also works.
#[tokio::test]
async fn malformed_and_huge_grpc_timeouts_are_survived() {
    let h = Harness::start(&[]).await;
    let mut c = h.client.clone();
    for value in [
        "99999999999999999H",
        "99999999H",
        "1x",
        "H",
        "-5S",
        "5.5S",
        "0xffS",
    ] {
        let mut req = tonic::Request::new(request("gt", P::Expand, S::Other));
        req.metadata_mut()
            .insert("grpc-timeout", MetadataValue::from_static(value));
        let r = c
            .generate(req)
            .await
            .unwrap_or_else(|s| panic!("grpc-timeout {value:?}: {s:?}"))
            .into_inner();
        assert_eq!(tier(&r), T::Secondary, "{value:?}");
    }
}

/// A half-open probe whose caller gave up pinned the circuit open until restart.
/// The probe permit is a guard: an abandoned probe gives no verdict and frees the probe slot,
/// so the next call probes and the healed primary is used again within one open period.
#[tokio::test]
async fn an_abandoned_probe_does_not_pin_the_circuit_open() {
    let open_ms = 300;
    let h = Harness::start(&[
        ("VRA_CIRCUIT_FAILURES", "1"),
        ("VRA_CIRCUIT_OPEN_MS", "300"),
        ("VRA_RETRY_MAX_ATTEMPTS", "1"),
    ])
    .await;
    let mut c = h.client.clone();
    let call = |id: &str| request(id, P::Refine, S::Analysis);

    h.cloud.push(Step::fail(500));
    let r = c.generate(call("cb-1")).await.unwrap().into_inner();
    assert_eq!(reason(&r), F::PrimaryError, "one failure opens the circuit");
    let r = c.generate(call("cb-2")).await.unwrap().into_inner();
    assert_eq!(reason(&r), F::CircuitOpen);

    // Wait out the open period (the scenario itself, not synchronisation).
    tokio::time::sleep(Duration::from_millis(open_ms + 50)).await;

    // The probe: the primary hangs and the caller's deadline passes.
    h.cloud.set_default(Step::Hang);
    let mut req = tonic::Request::new(call("cb-probe-deadline"));
    req.set_timeout(Duration::from_millis(200));
    let err = c.generate(req).await.expect_err("deadline");
    // The gateway answers DEADLINE_EXCEEDED a little early; on a busy machine the client's own
    // timer (tonic: CANCELLED "Timeout expired") may still win. Either way the caller gave up.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(
        h.cloud.wait_closed(2, Duration::from_secs(5)).await,
        "the probe's upstream request was dropped"
    );

    // Heal the primary: the next primary call is served by it.
    h.cloud.set_default(Step::reply("healed"));
    let r = c.generate(call("cb-after")).await.unwrap().into_inner();
    assert_eq!(
        (tier(&r), reason(&r), r.text.as_str()),
        (T::Primary, F::Unspecified, "healed")
    );
}

/// The cancel variant: the client drops the call itself (no deadline).
#[tokio::test]
async fn a_cancelled_probe_does_not_pin_the_circuit_open() {
    let h = Harness::start(&[
        ("VRA_CIRCUIT_FAILURES", "1"),
        ("VRA_CIRCUIT_OPEN_MS", "300"),
        ("VRA_RETRY_MAX_ATTEMPTS", "1"),
    ])
    .await;
    let mut c = h.client.clone();
    h.cloud.push(Step::fail(500));
    let r = c
        .generate(request("cc-1", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&r), F::PrimaryError);
    tokio::time::sleep(Duration::from_millis(350)).await;

    h.cloud.set_default(Step::Hang);
    let probe = {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.generate(request("cc-probe", P::Refine, S::Analysis))
                .await
        })
    };
    // Cancel once the probe reached the primary.
    assert!(
        h.cloud.wait_requests(2, Duration::from_secs(5)).await,
        "the probe reached the primary"
    );
    probe.abort();
    assert!(
        h.cloud.wait_closed(2, Duration::from_secs(5)).await,
        "the gateway dropped the cancelled call's upstream request"
    );

    h.cloud.set_default(Step::reply("healed"));
    let r = c
        .generate(request("cc-after", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Primary, F::Unspecified));
}

/// Ids with a newline were written verbatim, forging a second `[Hybrid]` line. Ids
/// now reject control characters and `|`, naming the field without echoing the value.
#[tokio::test]
async fn ids_that_could_forge_a_log_line_are_rejected_without_echo() {
    let h = Harness::start(&[]).await;
    let mut c = h.client.clone();
    let forged = "x\n[Hybrid] Event=FALLBACK | Reason=COST_LIMIT";
    let cases: [(&str, pb::GenerateRequest); 5] = [
        ("report_id", request(forged, P::Draft, S::Other)),
        ("report_id", request("tab\there", P::Draft, S::Other)),
        ("report_id", request("pipe|here", P::Draft, S::Other)),
        ("report_id", request("c1\u{85}here", P::Draft, S::Other)),
        (
            "section_id",
            pb::GenerateRequest {
                section_id: "1.3\r\nEvil".into(),
                ..request("fine", P::Draft, S::Other)
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.generate(req).await.expect_err("rejected");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
        for echoed in ["Hybrid", "here", "Evil"] {
            assert!(!err.message().contains(echoed), "{}", err.message());
        }
    }
    // The other RPCs that take a report id apply the same rule.
    let err = c
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: forged.into(),
        })
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .resolve_route(pb::ResolveRouteRequest {
            report_id: forged.into(),
            section_type: 0,
            phase: P::Draft as i32,
        })
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(h.cloud.requests() + h.local.requests(), 0);
    // Non-ASCII text that is not a control character is fine.
    c.generate(request("Bericht für Q3 — 2026", P::Draft, S::Other))
        .await
        .expect("unicode ids are welcome");
}

const HOSTILE_BODY: &str = r#"{"error":{"message":"bad\n[Hybrid] Event=FALLBACK | Reason=COST_LIMIT | Report=forged\r\u001b[31m"}}"#;

/// The upstream side: error text from an upstream reaches logs and statuses with
/// its control characters escaped, capped, on one line.
#[tokio::test]
async fn upstream_error_text_cannot_forge_log_lines_or_statuses() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let long = format!(
        r#"{{"error":"{}\nsecond line"}}"#,
        "x".repeat(4000).replace('x', "\\u0007x")
    );
    cloud.set_default(Step::FailWith {
        status: 400,
        body: HOSTILE_BODY.into(),
    });
    local.set_default(Step::FailWith {
        status: 400,
        body: long,
    });
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(&cloud_url, &local_url, &[]);
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let err = client
        .generate(request("hostile-upstream", P::Refine, S::Analysis))
        .await
        .expect_err("both providers fail");
    assert_eq!(err.code(), Code::Unavailable);
    let message = err.message();
    assert!(
        !message.chars().any(char::is_control),
        "no control characters in the status: {message:?}"
    );
    assert!(
        message.contains(r"bad\n[Hybrid] Event=FALLBACK"),
        "{message}"
    );
    assert!(
        message.len() < 2 * 1024,
        "upstream excerpts are capped ({} bytes)",
        message.len()
    );
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let hybrid: Vec<&String> = lines.iter().filter(|l| l.contains("[Hybrid]")).collect();
    assert_eq!(
        hybrid.len(),
        2,
        "one FALLBACK and one FALLBACK_FAILED line: {hybrid:#?}"
    );
    for line in &hybrid {
        assert!(
            line.contains("Report=hostile-upstream"),
            "every [Hybrid] line is the gateway's own: {line}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("[Hybrid]") || l.contains("Report=forged |")),
        "no forged line"
    );
}

/// With `VRA_LOG_FORMAT=json`, every `[Hybrid]` event carries its parts as fields.
#[tokio::test]
async fn json_hybrid_events_carry_their_parts_as_fields() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    cloud.push(Step::FailWith {
        status: 400,
        body: HOSTILE_BODY.into(),
    });
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("VRA_LOG_FORMAT", "json"), ("MAX_CLOUD_CALLS", "5")],
    );
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    client
        .generate(request("json-report", P::Refine, S::Analysis))
        .await
        .unwrap();
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "vra_gateway::hybrid")
        .collect();
    assert_eq!(events.len(), 2, "{lines:#?}");
    let fields = |event: &serde_json::Value, expected: &[(&str, &str)]| {
        for (field, value) in expected {
            assert_eq!(event[field], *value, "{field} of {event}");
        }
    };
    let fallback = &events[0];
    fields(
        fallback,
        &[
            ("event", "FALLBACK"),
            ("reason", "PRIMARY_ERROR"),
            ("provider", "openai"),
            ("phase", "REFINE"),
            ("section", "1.3"),
            ("report_id", "json-report"),
        ],
    );
    assert!(
        fallback["error"]
            .as_str()
            .unwrap()
            .contains(r"HTTP 400: bad\n[Hybrid]"),
        "{fallback}"
    );
    let routed = &events[1];
    fields(
        routed,
        &[
            ("event", "ROUTED"),
            ("provider", "local"),
            ("model", "llama3:8b"),
            ("report_id", "json-report"),
        ],
    );
    assert!(
        routed["message"]
            .as_str()
            .unwrap()
            .starts_with("[Hybrid] Phase=REFINE")
    );
}

/// The in-memory ledger is capped: a new report past `VRA_LEDGER_MAX_REPORTS` fails safe
/// (served locally, `LEDGER_UNAVAILABLE`); known reports keep their budget.
#[tokio::test]
async fn a_full_ledger_fails_safe_for_new_reports_only() {
    let h = Harness::start(&[("VRA_LEDGER_MAX_REPORTS", "2"), ("MAX_CLOUD_CALLS", "5")]).await;
    let mut c = h.client.clone();
    for id in ["known-1", "known-2"] {
        let r = c
            .generate(request(id, P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tier(&r), T::Primary);
    }
    let r = c
        .generate(request("one-too-many", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Secondary, F::LedgerUnavailable));
    let r = c
        .generate(request("known-1", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&r), r.budget.unwrap().cloud_calls_used),
        (T::Primary, 2)
    );
    assert_eq!(
        h.cloud.requests(),
        3,
        "nothing unbudgeted reached the cloud"
    );
    // ResolveRoute predicts the same: a new report would fail safe, a known one would not.
    for (id, expected) in [
        ("yet-another", F::LedgerUnavailable),
        ("known-2", F::Unspecified),
    ] {
        let route = c
            .resolve_route(pb::ResolveRouteRequest {
                report_id: id.into(),
                section_type: S::Analysis as i32,
                phase: P::Refine as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .route
            .unwrap();
        assert_eq!(route.fallback_reason, expected as i32, "{id}");
    }
}

/// A provider with a bug: it panics. Only possible through a code defect, so the test plugs
/// one in; what it pins is that the caller still gets a status and the panic is counted.
struct Panicking(ProviderConfig);

#[async_trait]
impl Provider for Panicking {
    fn config(&self) -> &ProviderConfig {
        &self.0
    }
    async fn complete(&self, _: &ChatRequest) -> Result<Completion, ProviderError> {
        panic!("simulated bug in a provider")
    }
    async fn stream(&self, _: &ChatRequest, _: Duration) -> Result<EventStream, ProviderError> {
        panic!("simulated bug in a provider")
    }
    fn address(&self) -> (&str, u16) {
        ("bug.invalid", 1)
    }
    fn system(&self) -> &'static str {
        "panicking"
    }
}

#[tokio::test]
async fn a_panicking_task_answers_internal_and_is_counted() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let config = common::config(&cloud, &local, &[]);
    let tiers = Tiers {
        primary: Pool::new(
            config.primary.provider.clone(),
            vec![Arc::new(Panicking(config.primary.provider.clone()))],
        ),
        primary_model: config.primary.model.clone(),
        secondary: Pool::new(
            config.secondary.provider.clone(),
            vec![Arc::new(Panicking(config.secondary.provider.clone()))],
        ),
        secondary_model: config.secondary.model.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(vra_gateway::budget::memory::MemoryLedger::new(
        Duration::from_secs(60),
    ));
    let gateway = Arc::new(Gateway::new(&config, tiers, ledger, metrics.clone()));
    let front = Arc::new(Front::new(gateway, metrics.clone(), 1024));
    let service = GatewayServiceServer::new(GatewayService::new(front));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client: GatewayServiceClient<_> = common::connect(addr).await;

    let err = client
        .generate(request("bug", P::Refine, S::Analysis))
        .await
        .expect_err("a panic is an error");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "internal error", "no panic text leaks");

    let mut stream = client
        .generate_stream(pb::GenerateStreamRequest::from(request(
            "bug",
            P::Refine,
            S::Analysis,
        )))
        .await
        .expect("the stream starts")
        .into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(msg)) => assert!(msg.done.is_none(), "no done after a panic"),
            Ok(None) => panic!("the stream ended OK without its done message"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::Internal);

    let text = metrics.render();
    for method in ["Generate", "GenerateStream"] {
        let needle = format!("vra_gateway_panics_total{{method=\"{method}\"}} 1");
        assert!(text.contains(&needle), "{needle}\n{text}");
    }
    // The server survived both.
    let err = client
        .generate(request("bug", P::Refine, S::Analysis))
        .await
        .expect_err("still a bug, still answered");
    assert_eq!(err.code(), Code::Internal);
}

/// Shutdown waits for calls, not for connections: a silent client connection (here one that
/// never even finishes the HTTP/2 handshake) must not hold SIGTERM up for the 30 s grace.
#[tokio::test]
async fn an_idle_connection_does_not_delay_shutdown() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let gw = Running::start(&gateway_env(&cloud_url, &local_url, &[])).await;
    let _silent = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
    let mut preface_only = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut preface_only, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A served call first, so the server is certainly past accepting those connections.
    common::connect(gw.addr.parse().unwrap())
        .await
        .generate(request("idle-conn", P::Expand, S::Other))
        .await
        .unwrap();
    let started = Instant::now();
    gw.sigterm();
    let (code, _) = gw.finish().await;
    assert_eq!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit took {:?}: shutdown waited for idle connections",
        started.elapsed()
    );
}

/// A call whose request body never finishes arriving, with a 300 ms deadline: the edge answers
/// DEADLINE_EXCEEDED (with its `vra-error` kind) before tonic's own timeout layer would answer
/// CANCELLED "Timeout expired" — what the SDK suites saw for a large prompt and a tiny deadline.
#[tokio::test]
async fn a_body_still_arriving_at_the_deadline_gets_deadline_exceeded() {
    let h = Harness::start(&[("VRA_HYBRID_MODE", "true")]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // A unary method, sent as a client stream that never yields its message nor ends.
    let mut req = tonic::Request::new(tokio_stream::pending::<vra_gateway::pb::GenerateRequest>());
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = grpc
        .client_streaming::<_, _, vra_gateway::pb::GenerateResponse, _>(
            req,
            http::uri::PathAndQuery::from_static("/vra.gateway.v1.GatewayService/Generate"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("the body never arrives");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        err.metadata().get("vra-error").unwrap(),
        "deadline_exceeded"
    );
    // At the gateway's deadline (the caller's, less its margin), not much later.
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway keeps serving.
    let mut client = h.client().await;
    client
        .generate(request("after-deadline", P::Draft, S::Methodology))
        .await
        .expect("served");
    h.shutdown().await;
}
