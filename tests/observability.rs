//! Observability end to end: the real binary exports OTLP spans to an in-process collector (a
//! tonic server for the published OTLP TraceService), and serves Prometheus metrics.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{KEY, Running, gateway_env, metrics_on};
use common::request;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use tokio_stream::wrappers::TcpListenerStream;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{self, CompilationPhase as P, SectionType as S};

const PROMPT_MARKER: &str = "secret-prompt-text-5b2c";

/// Collects every exported span.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (String, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), collector)
}

fn value_str(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_str(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn server_span<'a>(spans: &'a [Span], report: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Server as i32
                && attrs(&s.attributes)
                    .get("vra.report.id")
                    .map(String::as_str)
                    == Some(report)
        })
        .unwrap_or_else(|| panic!("no server span for {report}"))
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    let mut c: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect();
    c.sort_by_key(|s| s.start_time_unix_nano);
    c
}

#[tokio::test]
async fn spans_follow_rpc_and_genai_conventions() {
    let (endpoint, collector) = start_collector().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "vra-gateway-under-test"),
            ("VRA_RETRY_MAX_ATTEMPTS", "2"),
            ("MAX_CLOUD_CALLS", "2"),
        ],
    );
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let call = |report: &str, phase, section| {
        let mut r = request(report, phase, section);
        r.prompt = format!("{PROMPT_MARKER} please");
        r
    };

    // 1. A routed call continuing the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(call("t-routed", P::Refine, S::Analysis));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    req.metadata_mut()
        .insert("tracestate", "vendor=tenant-acme".parse().unwrap());
    req.metadata_mut()
        .insert("baggage", "user.id=alice".parse().unwrap());
    client.generate(req).await.unwrap();
    // 2. A PRIMARY_ERROR fallback: two failed attempts, then the secondary.
    cloud.push_n(2, Step::fail(500));
    client
        .generate(call("t-primary-error", P::Draft, S::Introduction))
        .await
        .unwrap();
    // 3. A COST_LIMIT fallback: the two failed attempts spent that report's budget of 2.
    let resp = client
        .generate(call("t-primary-error", P::Abstract, S::Other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.route.unwrap().fallback_reason,
        pb::FallbackReason::CostLimit as i32
    );

    gw.sigterm();
    let (code, _) = gw.finish().await;
    assert_eq!(code, 0);
    // Spans are flushed on graceful shutdown: everything is at the collector now.
    let spans = collector.0.lock().unwrap().clone();

    // -- the routed call
    let server = server_span(&spans, "t-routed");
    assert_eq!(server.name, "vra.gateway.v1.GatewayService/Generate");
    assert_eq!(
        hex(&server.trace_id),
        caller_trace,
        "the caller's trace continues"
    );
    assert_eq!(
        hex(&server.parent_span_id),
        caller_span,
        "the caller's span is the parent"
    );
    let a = attrs(&server.attributes);
    for (k, v) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "vra.gateway.v1.GatewayService"),
        ("rpc.method", "Generate"),
        ("rpc.grpc.status_code", "0"),
        ("vra.section.id", "1.3"),
        ("vra.phase", "REFINE"),
        ("vra.section_type", "ANALYSIS"),
        ("vra.route.tier", "PRIMARY"),
        ("vra.route.provider", "openai"),
        ("vra.route.model", "gpt-4o"),
        ("vra.route.rule", "refine-primary"),
        ("vra.budget.used", "1"),
        ("vra.budget.limit", "2"),
    ] {
        assert_eq!(
            a.get(k).map(String::as_str),
            Some(v),
            "server span attribute {k}: {a:?}"
        );
    }
    assert!(!a.contains_key("vra.fallback.reason"));
    let attempts = children(&spans, server);
    let summary: Vec<_> = spans
        .iter()
        .map(|s| (s.name.clone(), hex(&s.span_id), hex(&s.parent_span_id)))
        .collect();
    assert_eq!(attempts.len(), 1, "{summary:#?}");
    let attempt = attempts[0];
    assert_eq!(
        (attempt.name.as_str(), attempt.kind),
        ("chat gpt-4o", SpanKind::Client as i32)
    );
    let a = attrs(&attempt.attributes);
    let port = cloud.addr().port().to_string();
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.model", "gpt-4o"),
        ("gen_ai.response.finish_reasons", "[\"stop\"]"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("http.response.status_code", "200"),
        ("vra.attempt", "1"),
        ("vra.tier", "PRIMARY"),
    ] {
        assert_eq!(
            a.get(k).map(String::as_str),
            Some(v),
            "attempt span attribute {k}: {a:?}"
        );
    }
    assert!(a["gen_ai.usage.input_tokens"].parse::<u32>().unwrap() > 0);
    assert!(a["gen_ai.usage.output_tokens"].parse::<u32>().unwrap() > 0);
    // The upstream received a traceparent of the same trace, naming the attempt span.
    let tp = cloud.recorded()[0]
        .traceparent
        .clone()
        .expect("traceparent sent upstream");
    assert_eq!(
        tp,
        format!("00-{caller_trace}-{}-01", hex(&attempt.span_id))
    );
    // ... and nothing else of the caller's context: not its tracestate, not its baggage.
    let sent = &cloud.recorded()[0];
    assert_eq!((&sent.tracestate, &sent.baggage), (&None, &None));

    // -- the PRIMARY_ERROR fallback
    let server = server_span(&spans, "t-primary-error");
    let a = attrs(&server.attributes);
    assert_eq!(
        a.get("vra.fallback.reason").map(String::as_str),
        Some("PRIMARY_ERROR")
    );
    assert_eq!(
        a.get("vra.route.tier").map(String::as_str),
        Some("SECONDARY")
    );
    let attempts = children(&spans, server);
    let names: Vec<_> = attempts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["chat gpt-4o", "chat gpt-4o", "chat llama3:8b"]);
    for (i, failed) in attempts[..2].iter().enumerate() {
        let a = attrs(&failed.attributes);
        assert_eq!(a.get("error.type").map(String::as_str), Some("500"));
        assert_eq!(
            a.get("http.response.status_code").map(String::as_str),
            Some("500")
        );
        assert_eq!(
            a.get("vra.attempt").map(String::as_str),
            Some((i + 1).to_string().as_str())
        );
    }
    let a = attrs(&attempts[2].attributes);
    assert_eq!(
        a.get("gen_ai.provider.name").map(String::as_str),
        Some("ollama")
    );
    assert!(!a.contains_key("error.type"));
    let events: Vec<_> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains("Event=FALLBACK | From=PRIMARY")),
        "fallback event on the server span: {events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("retrying")),
        "retry event on the server span: {events:?}"
    );

    // -- the COST_LIMIT fallback (the abstract of t-primary-error, whose budget is spent)
    let cost = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .find(|s| attrs(&s.attributes).get("vra.phase").map(String::as_str) == Some("ABSTRACT"))
        .expect("abstract span");
    let a = attrs(&cost.attributes);
    assert_eq!(
        a.get("vra.fallback.reason").map(String::as_str),
        Some("COST_LIMIT")
    );
    assert_eq!(
        a.get("vra.route.rule").map(String::as_str),
        Some("abstract-always-primary")
    );
    assert_eq!(a.get("vra.budget.used").map(String::as_str), Some("2"));
    let attempts = children(&spans, cost);
    assert_eq!(
        attempts.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["chat llama3:8b"]
    );
    assert!(
        cost.events
            .iter()
            .any(|e| e.name.contains("Reason=COST_LIMIT"))
    );

    // -- nothing private in any exported attribute or event
    for span in &spans {
        let mut texts: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| value_str(&kv.value))
            .collect();
        for e in &span.events {
            texts.push(e.name.clone());
            texts.extend(e.attributes.iter().map(|kv| value_str(&kv.value)));
        }
        for t in texts {
            assert!(
                !t.contains(PROMPT_MARKER),
                "prompt text in span {}: {t}",
                span.name
            );
            assert!(!t.contains(KEY), "API key in span {}", span.name);
        }
    }
}

#[tokio::test]
async fn prompts_reach_spans_only_when_opted_in() {
    let (endpoint, collector) = start_collector().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("VRA_TRACE_CONTENT", "true"),
        ],
    );
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let mut r = request("content", P::Refine, S::Analysis);
    r.prompt = format!("{PROMPT_MARKER} please");
    client.generate(r).await.unwrap();
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
    let spans = collector.0.lock().unwrap().clone();
    let attempt = spans
        .iter()
        .find(|s| s.name == "chat gpt-4o")
        .expect("attempt span");
    let a = attrs(&attempt.attributes);
    assert!(a["gen_ai.input.messages"].contains(PROMPT_MARKER));
    assert!(a["gen_ai.output.messages"].contains("Simulated text"));
}

#[tokio::test]
async fn http_protobuf_export_works_too() {
    use axum::body::Bytes;
    use prost::Message;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf body");
                let mut spans = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    let gw = Running::start(&env).await;
    common::connect(gw.addr.parse().unwrap())
        .await
        .generate(request("over-http", P::Expand, S::Other))
        .await
        .unwrap();
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
    let spans = spans.lock().unwrap().clone();
    let server = server_span(&spans, "over-http");
    let names: Vec<_> = children(&spans, server)
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["chat llama3:8b"]);
}

#[tokio::test]
async fn an_unreachable_collector_never_fails_a_call() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{dead}");
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("MAX_CLOUD_CALLS", "100"),
        ],
    );
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    for i in 0..20 {
        let mut req = tonic::Request::new(request(&format!("nc-{i}"), P::Refine, S::Analysis));
        req.set_timeout(Duration::from_secs(2));
        client
            .generate(req)
            .await
            .expect("served although the collector is down");
    }
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}

#[tokio::test]
async fn metrics_move_with_calls() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let mut env = gateway_env(&cloud_url, &local_url, &[]);
    metrics_on(&mut env);
    let mut gw = Running::start(&env).await;
    let url = gw.metrics_url().await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    client
        .generate(request("metrics-report-7q", P::Refine, S::Analysis))
        .await
        .unwrap();
    client
        .generate(request("metrics-report-7q", P::Refine, S::Analysis))
        .await
        .unwrap(); // COST_LIMIT (limit 1)
    client
        .generate(request("metrics-report-7q", P::Expand, S::Analysis))
        .await
        .unwrap();
    vra_gateway::install_crypto_provider();
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for needle in [
        "vra_gateway_requests_total{method=\"Generate\",phase=\"REFINE\",tier=\"PRIMARY\",provider=\"openai\",outcome=\"ok\"} 1",
        "vra_gateway_requests_total{method=\"Generate\",phase=\"REFINE\",tier=\"SECONDARY\",provider=\"local\",outcome=\"ok\"} 1",
        "vra_gateway_fallbacks_total{reason=\"COST_LIMIT\"} 1",
        "vra_gateway_cost_limit_reports_total 1",
        "vra_gateway_budget_units_reserved_total{provider=\"openai\"} 1",
        "vra_gateway_upstream_attempt_duration_seconds_count{provider=\"local\",model=\"llama3:8b\",outcome=\"ok\"} 2",
        "vra_gateway_in_flight_requests{method=\"Generate\"} 0",
    ] {
        assert!(body.contains(needle), "missing {needle}\n{body}");
    }
    assert!(body.contains("vra_gateway_tokens_total{provider=\"openai\",type=\"output\"}"));
    assert!(
        !body.contains("metrics-report-7q"),
        "no report ids in labels"
    );
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}

/// The response cache tells its story: `vra.cache.status` on the call's span, the
/// `[Hybrid] Event=CACHE_HIT` line, and the cache metrics (a hit counts no upstream tokens).
#[tokio::test]
async fn a_cache_hit_is_in_the_span_the_log_and_the_metrics() {
    let (endpoint, collector) = start_collector().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let mut env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("VRA_CACHE", "memory"),
        ],
    );
    metrics_on(&mut env);
    let mut gw = Running::start(&env).await;
    let url = gw.metrics_url().await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    for report in ["cache-story-1", "cache-story-2"] {
        client
            .generate(request(report, P::Refine, S::Analysis))
            .await
            .unwrap();
    }
    vra_gateway::install_crypto_provider();
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for needle in [
        "vra_gateway_cache_requests_total{status=\"miss\"} 1",
        "vra_gateway_cache_requests_total{status=\"hit\"} 1",
        "vra_gateway_cache_evictions_total 0",
        "vra_gateway_budget_units_reserved_total{provider=\"openai\"} 1",
    ] {
        assert!(body.contains(needle), "missing {needle}\n{body}");
    }
    let bytes: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("vra_gateway_cache_bytes ")?.parse().ok())
        .expect("the cache's size");
    assert!(bytes > 0.0, "{body}");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let lines = lines.join("\n");
    assert!(
        lines.contains(
            "[Hybrid] Event=CACHE_HIT | Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o | Report=cache-story-2"
        ),
        "{lines}"
    );
    let spans = collector.0.lock().unwrap().clone();
    for (report, status) in [("cache-story-1", "MISS"), ("cache-story-2", "HIT")] {
        let a = attrs(&server_span(&spans, report).attributes);
        assert_eq!(a.get("vra.cache.status").map(String::as_str), Some(status));
    }
    let attempted = |report: &str| {
        let server = server_span(&spans, report);
        spans
            .iter()
            .any(|s| s.trace_id == server.trace_id && s.name.starts_with("chat "))
    };
    assert!(attempted("cache-story-1"), "a miss's upstream attempt");
    assert!(
        !attempted("cache-story-2"),
        "a hit makes no upstream attempt"
    );
}

/// The series the dashboard and the alerts read beyond call counts: end-to-end duration and time
/// to first token, each tier's circuit, each provider's endpoints, a client's day quota, and
/// the process's own resources.
#[tokio::test]
async fn health_gauges_latency_and_process_series_are_exported() {
    use common::clients::{TestClient, write_clients_file};
    let client = TestClient::new("acme", "vra_acme_token_for_the_metrics_test_01").per_day(10);
    let file = write_clients_file(&[client]);
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let file = file.to_str().unwrap().to_string();
    let mut env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_CIRCUIT_FAILURES", "1"),
            ("VRA_CIRCUIT_OPEN_MS", "600000"),
            ("MAX_CLOUD_CALLS", "5"),
            ("VRA_CLIENTS_FILE", file.as_str()),
        ],
    );
    metrics_on(&mut env);
    let mut gw = Running::start(&env).await;
    let url = gw.metrics_url().await;
    let mut c = common::connect(gw.addr.parse().unwrap()).await;
    // Two cloud calls of the client (2 of its 10 a day); then the primary fails once, which
    // opens its circuit (VRA_CIRCUIT_FAILURES=1), and the call falls back.
    for _ in 0..2 {
        c.generate(client.call(request("gauges", P::Refine, S::Analysis)))
            .await
            .unwrap();
    }
    cloud.push(Step::fail(500));
    c.generate(client.call(request("gauges-2", P::Refine, S::Analysis)))
        .await
        .unwrap();
    let stream = c
        .generate_stream(client.call(pb::GenerateStreamRequest {
            report_id: "gauges-3".into(),
            phase: P::Expand as i32,
            section_type: S::Analysis as i32,
            prompt: "Stream it.".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let (_, done, error) = common::collect_stream(stream).await;
    assert!(done.is_some() && error.is_none());
    vra_gateway::install_crypto_provider();
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for needle in [
        "vra_gateway_request_duration_seconds_count{method=\"Generate\",outcome=\"ok\"} 3",
        "vra_gateway_request_duration_seconds_count{method=\"GenerateStream\",outcome=\"ok\"} 1",
        "vra_gateway_time_to_first_token_seconds_count{method=\"GenerateStream\"} 1",
        "vra_gateway_circuit_open{provider=\"openai\",tier=\"PRIMARY\"} 1",
        "vra_gateway_circuit_open{provider=\"local\",tier=\"SECONDARY\"} 0",
        "vra_gateway_endpoints{provider=\"local\",state=\"healthy\"} 1",
        "vra_gateway_endpoints{provider=\"local\",state=\"ejected\"} 0",
        "vra_gateway_client_day_quota_used{client=\"acme\"} 3",
        "vra_gateway_client_day_quota_limit{client=\"acme\"} 10",
        "vra_gateway_routes_total{rule=\"refine-primary\",tier=\"PRIMARY\"} 2",
        "vra_gateway_routes_total{rule=\"refine-primary\",tier=\"SECONDARY\"} 1",
        "vra_gateway_routes_total{rule=\"expand-secondary\",tier=\"SECONDARY\"} 1",
        "vra_gateway_ledger_duration_seconds_count{op=\"reserve\"} 3",
    ] {
        assert!(body.contains(needle), "missing {needle}\n{body}");
    }
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}\n{body}"))
    };
    assert!(value("vra_gateway_client_cost_usd_total{client=\"acme\"} ") > 0.0);
    assert!(value("process_resident_memory_bytes ") > 1e6);
    assert!(value("process_cpu_seconds_total ") > 0.0);
    assert!(value("process_open_fds ") > 3.0);
    assert!(value("process_start_time_seconds ") > 1.7e9);
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}
