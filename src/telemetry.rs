//! Logs, traces and the `[Hybrid]` lines that tie them together.
//!
//! - Logs: `tracing` with a text or JSON formatter on stderr, level from `RUST_LOG`.
//! - Traces: the same `tracing` spans, bridged to OpenTelemetry and exported over OTLP (gRPC,
//!   or http/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT` is set. One
//!   SERVER span per RPC ([`server_span`]) with the route attributes, one CLIENT span per
//!   upstream HTTP attempt ([`attempt_span`]) following the GenAI semantic conventions.
//! - Context: W3C `traceparent`/`tracestate`/`baggage` are extracted from incoming gRPC
//!   metadata ([`extract_parent`]) and injected into every upstream request
//!   ([`inject_trace_context`]).
//! - `[Hybrid]` lines ([`hybrid`]) are the operator-facing story of each call; in JSON format
//!   they carry `trace_id` so logs and traces join.
//!
//! Prompt and completion text never reach spans unless `VRA_TRACE_CONTENT=true`.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};
use crate::gateway::{BudgetInfo, RouteInfo};
use crate::providers::{ChatRequest, Provider, ProviderError, TokenUsage};
use crate::routing::Tier;

/// Longest prompt/completion excerpt put in a span when content tracing is on.
const CONTENT_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Settings {
    json: bool,
    trace_content: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or(Settings {
        json: false,
        trace_content: false,
    })
}

/// Flushes and shuts down the trace exporter when dropped (graceful shutdown).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span, then stops the exporter.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether OTLP export is configured by the standard variables.
pub fn export_enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// Installs the global subscriber (logs + traces) and propagator. Call once, inside the
/// Tokio runtime. A second call (e.g. from tests) keeps the first subscriber.
pub fn init(config: &Config) -> TelemetryGuard {
    init_with_default(config, "info")
}

/// Like [`init`], with the log filter used when `RUST_LOG` is unset.
pub fn init_with_default(config: &Config, default_filter: &str) -> TelemetryGuard {
    // The http/protobuf exporter builds a reqwest client, which needs the TLS provider.
    crate::install_crypto_provider();
    let _ = SETTINGS.set(Settings {
        json: config.log_format == LogFormat::Json,
        trace_content: config.trace_content,
    });
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let mut builder = SdkTracerProvider::builder().with_resource(resource());
    let mut export_error = None;
    if export_enabled() {
        match span_exporter() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("vra-gateway");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(LineFormat)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    // Spans and their events go to OpenTelemetry at debug and above, whatever RUST_LOG says,
    // so retries show up as span events even when they are not logged.
    // The OpenTelemetry layer only runs when spans are exported: building spans for a
    // provider that drops them cost a quarter of the gateway's CPU (bench/RESULTS.md, F1).
    // Without it the caller's trace context is still forwarded (see `extract_parent`).
    let otel_layer = export_enabled().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new("vra_gateway=debug"))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if let Some(e) = export_error {
        tracing::error!("OTLP trace export disabled: {e}");
    }
    TelemetryGuard {
        provider: Some(provider),
    }
}

fn resource() -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty()) {
        builder.build()
    } else {
        builder.with_service_name("vra-gateway").build()
    }
}

fn span_exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::SpanExporter;
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    match protocol.trim() {
        "http/protobuf" => SpanExporter::builder().with_http().build(),
        "grpc" | "" => SpanExporter::builder().with_tonic().build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` not supported; accepted: grpc, http/protobuf"
            ));
        }
    }
    .map_err(|e| e.to_string())
}

/// The text log format: `<timestamp> <LEVEL> <message> <fields>`, one line per event. Unlike
/// the default format it leaves out the span context, whose many `vra.*`/`rpc.*` fields belong
/// in traces, not in every log line.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Severity of a `[Hybrid]` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hybrid {
    /// A call was served: INFO.
    Routed,
    /// A fallback to the secondary: WARN.
    Fallback,
    /// Every provider failed: ERROR.
    FallbackFailed,
    /// A stream broke after its first delta: ERROR.
    StreamAborted,
}

/// Writes one `[Hybrid]` line. In JSON format the line also carries `trace_id`; the text line
/// stays exactly the documented text.
pub fn hybrid(kind: Hybrid, line: fmt::Arguments<'_>) {
    let json = settings().json;
    let trace_id = if json { current_trace_id() } else { None };
    macro_rules! emit {
        ($level:expr) => {
            match trace_id {
                Some(id) => tracing::event!(target: "vra_gateway::hybrid", $level, trace_id = %id, "{}", line),
                None => tracing::event!(target: "vra_gateway::hybrid", $level, "{}", line),
            }
        };
    }
    match kind {
        Hybrid::Routed => emit!(Level::INFO),
        Hybrid::Fallback => emit!(Level::WARN),
        Hybrid::FallbackFailed | Hybrid::StreamAborted => emit!(Level::ERROR),
    }
}

/// The trace id of the current span, if it belongs to a valid trace.
pub fn current_trace_id() -> Option<String> {
    let cx = current_context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace context of the code running now: the current span's when spans are exported,
/// else the caller's context attached to the request's future (see [`extract_parent`]).
fn current_context() -> opentelemetry::Context {
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::current()
    }
}

/// Creates the SERVER span of one RPC (RPC semantic conventions plus `vra.*` attributes).
pub fn server_span(method: &'static str) -> Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format_args!("vra.gateway.v1.GatewayService/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = "vra.gateway.v1.GatewayService",
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        vra.report.id = Empty,
        vra.section.id = Empty,
        vra.phase = Empty,
        vra.section_type = Empty,
        vra.route.tier = Empty,
        vra.route.provider = Empty,
        vra.route.model = Empty,
        vra.route.rule = Empty,
        vra.fallback.reason = Empty,
        vra.budget.used = Empty,
        vra.budget.limit = Empty,
    )
}

/// Records the final route and budget on the current server span.
pub fn record_route(span: &Span, route: &RouteInfo, budget: &BudgetInfo) {
    span.record("vra.route.tier", route.tier.as_str());
    span.record("vra.route.provider", route.provider.as_str());
    span.record("vra.route.model", route.model.as_str());
    span.record("vra.route.rule", route.rule.id());
    if let Some(reason) = route.fallback {
        span.record("vra.fallback.reason", reason.as_str());
    }
    span.record("vra.budget.used", i64::from(budget.used));
    span.record("vra.budget.limit", i64::from(budget.limit));
}

/// Records the gRPC outcome on a server span.
pub fn record_status(span: &Span, code: tonic::Code, message: Option<&str>) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
        if let Some(m) = message {
            span.record("otel.status_description", m);
        }
    }
}

/// Creates the CLIENT span of one upstream HTTP attempt (GenAI semantic conventions).
pub fn attempt_span(provider: &dyn Provider, model: &str, tier: Tier, attempt: u32) -> Span {
    let config = provider.config();
    let (address, port) = provider.address();
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider.system(),
        gen_ai.request.model = model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        server.address = address,
        server.port = i64::from(port),
        http.response.status_code = Empty,
        error.type = Empty,
        vra.attempt = i64::from(attempt),
        vra.tier = tier.as_str(),
        vra.provider = config.name.as_str(),
        vra.cloud = config.is_cloud(),
    )
}

/// Marks an attempt span successful (the HTTP status, if any, is recorded by the provider).
pub fn attempt_ok(span: &Span) {
    span.record("otel.status_code", "OK");
}

/// Marks an attempt span failed with `error.type`.
pub fn attempt_failed(span: &Span, error: &ProviderError) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error.kind().as_str());
    if let Some(status) = error.status() {
        span.record("http.response.status_code", i64::from(status));
    }
}

/// Records the upstream's HTTP status on the current attempt span.
pub fn record_http_status(status: u16) {
    Span::current().record("http.response.status_code", i64::from(status));
}

/// Records what the upstream answered on an attempt span.
pub fn record_response(
    span: &Span,
    model: &str,
    usage: TokenUsage,
    finish_reason: &str,
    text: Option<&str>,
) {
    if !model.is_empty() {
        span.record("gen_ai.response.model", model);
    }
    span.record("gen_ai.usage.input_tokens", i64::from(usage.input));
    span.record("gen_ai.usage.output_tokens", i64::from(usage.output));
    span.record(
        "gen_ai.response.finish_reasons",
        format!("[\"{finish_reason}\"]").as_str(),
    );
    if let Some(text) = text
        && settings().trace_content
    {
        let messages = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": truncate(text)}]}]);
        span.record("gen_ai.output.messages", messages.to_string().as_str());
    }
}

/// Puts the (truncated) prompt on the attempt span — only when `VRA_TRACE_CONTENT=true`.
pub fn record_request(span: &Span, req: &ChatRequest) {
    if !settings().trace_content {
        return;
    }
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(serde_json::json!({"role": "system", "parts": [{"type": "text", "content": truncate(system)}]}));
    }
    messages.push(serde_json::json!({"role": "user", "parts": [{"type": "text", "content": truncate(&req.prompt)}]}));
    span.record(
        "gen_ai.input.messages",
        serde_json::Value::Array(messages).to_string().as_str(),
    );
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(CONTENT_LIMIT) {
        Some((idx, _)) => &text[..idx],
        None => text,
    }
}

struct HeaderCarrier<'a>(&'a HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Continues the caller's trace: makes the W3C context in `headers` the parent of `span`, and
/// returns it so the request's future can carry it (`opentelemetry::context::FutureExt`) — that
/// is what gets forwarded upstream when spans are not exported.
pub fn extract_parent(span: &Span, headers: &HeaderMap) -> opentelemetry::Context {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderCarrier(headers)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx.clone());
    }
    cx
}

/// Writes the current W3C trace context into outgoing request headers.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let cx = current_context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(headers))
        });
    }
}
