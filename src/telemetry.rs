//! Logs, traces and the `[Hybrid]` lines that tie them together.
//!
//! - Logs: `tracing` with a text or JSON formatter on stderr, level from `RUST_LOG`.
//! - Traces: the same `tracing` spans, bridged to OpenTelemetry and exported over OTLP (gRPC,
//!   or http/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT` is set. One
//!   SERVER span per RPC ([`server_span`]) with the route attributes, one CLIENT span per
//!   upstream HTTP attempt ([`attempt_span`]) following the GenAI semantic conventions.
//! - Context: the W3C `traceparent`/`tracestate` are extracted from incoming gRPC metadata
//!   ([`extract_parent`]); only `traceparent` is sent with every upstream request
//!   ([`inject_trace_context`]): the caller's `tracestate` and `baggage` never leave.
//! - `[Hybrid]` events ([`Hybrid`]) are the operator-facing story of each call; in JSON format
//!   they carry their parts as fields and `trace_id`, so logs and traces join.
//!
//! This module is fed plain values ([`crate::domain`]); it imports no pipeline code.
//!
//! Prompt and completion text never reach spans unless `VRA_TRACE_CONTENT=true`.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceFlags, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
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

use crate::domain::{
    BudgetInfo, FallbackReason, Nanos, ProviderError, RouteInfo, Tier, TokenUsage, Untrusted,
    UntrustedList,
};

/// Longest prompt/completion excerpt put in a span when content tracing is on.
const CONTENT_LIMIT: usize = 1024;

/// The process's telemetry settings, set once by [`init`].
static SETTINGS: OnceLock<TelemetryConfig> = OnceLock::new();

fn settings() -> TelemetryConfig {
    SETTINGS.get().copied().unwrap_or(TelemetryConfig {
        log_format: LogFormat::Text,
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

/// How log lines are written (`VRA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What the process's logs and spans show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `VRA_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `VRA_TRACE_CONTENT`: put (truncated) prompts and completions in spans.
    pub trace_content: bool,
}

/// Installs the global subscriber (logs + traces) and propagator. Call once, inside the
/// Tokio runtime. A second call (e.g. from tests) keeps the first subscriber.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    init_with_default(config, "info")
}

/// Like [`init`], with the log filter used when `RUST_LOG` is unset.
pub fn init_with_default(config: &TelemetryConfig, default_filter: &str) -> TelemetryGuard {
    // The http/protobuf exporter builds a reqwest client, which needs the TLS provider.
    crate::install_crypto_provider();
    let _ = SETTINGS.set(*config);
    // The caller's trace continues (`traceparent`, `tracestate`); its `baggage` is not read:
    // nothing here uses it, and a context that never holds it cannot leak it.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

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

/// One `[Hybrid]` event: the operator-facing story of a call, built in one place.
///
/// Text logs get the documented line (`[Hybrid] Phase=DRAFT | Section=1.3 | ...`); JSON logs
/// get the same line as `message` plus each part as its own field (`event`, `phase`,
/// `section`, `report_id`, `client`, `provider`, `model`, `reason`, `error`) and `trace_id`, so log
/// pipelines never parse the message. Ids reach here validated (no control characters, no
/// `|`); error text is shown through [`Untrusted`] (escaped, capped), so no event can forge a
/// second line.
#[derive(Debug, Clone, Copy)]
pub struct Hybrid<'a> {
    pub phase: &'a str,
    /// The section id (`-` when the caller sent none).
    pub section: &'a str,
    pub report_id: &'a str,
    /// The authenticated client (from configuration, never from the request), if any.
    pub client: Option<&'a str>,
}

impl<'a> Hybrid<'a> {
    pub fn new(phase: &'a str, section_id: &'a str, report_id: &'a str) -> Self {
        let section = if section_id.is_empty() {
            "-"
        } else {
            section_id
        };
        Self {
            phase,
            section,
            report_id,
            client: None,
        }
    }

    /// The same events, naming the authenticated client (text lines end in `| Client=ID`).
    pub fn client(self, client: Option<&'a str>) -> Self {
        Self { client, ..self }
    }

    /// INFO: the call was served by `provider` / `model`.
    pub fn routed(self, provider: &str, model: &str) {
        let p = Upper(provider);
        self.emit(
            Level::INFO,
            Parts {
                event: "ROUTED",
                provider: Some(provider),
                model: Some(model),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Section={} | Provider={p} | Model={model} | Report={}",
                self.phase, self.section, self.report_id
            ),
        );
    }

    /// WARN: the primary failed for good; the secondary takes over (`PRIMARY_ERROR`).
    pub fn fallback_on_error(self, primary: &str, error: &str) {
        let e = Untrusted(error);
        let error = &[error];
        self.emit(
            Level::WARN,
            Parts {
                event: "FALLBACK",
                provider: Some(primary),
                reason: Some("PRIMARY_ERROR"),
                error: Some(error),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FALLBACK | From=PRIMARY | To=SECONDARY | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// WARN: the primary was skipped for `reason` (`COST_LIMIT`, `CIRCUIT_OPEN`, ...).
    pub fn fallback(self, reason: FallbackReason) {
        let r = reason.as_str();
        self.emit(
            Level::WARN,
            Parts {
                event: "FALLBACK",
                reason: Some(r),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Event=FALLBACK | Reason={r} | Report={} | Phase={} | Section={}",
                self.report_id, self.phase, self.section
            ),
        );
    }

    /// ERROR: the call fell back and the secondary failed too; `errors` lists every provider's.
    pub fn fallback_failed(self, errors: &[&str]) {
        let e = UntrustedList(errors);
        self.emit(
            Level::ERROR,
            Parts {
                event: "FALLBACK_FAILED",
                error: Some(errors),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FALLBACK_FAILED | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// ERROR: the only provider the call could use (the secondary) failed.
    pub fn failed(self, provider: &str, errors: &[&str]) {
        let (p, e) = (Upper(provider), UntrustedList(errors));
        self.emit(
            Level::ERROR,
            Parts {
                event: "FAILED",
                provider: Some(provider),
                error: Some(errors),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FAILED | Provider={p} | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// INFO on target `vra_gateway::usage` (not a `[Hybrid]` line: the story of a route
    /// stays one line per decision): what an answered call used and cost. Text logs get
    /// `usage | Phase=… | Section=… | Provider=… | Model=… | Tokens=IN/OUT | Cost=$… |
    /// Report=…` (`~` marks estimated counts, `Cost=unknown` a model without a price); JSON
    /// logs get `input_tokens`, `output_tokens`, `estimated` and `cost_usd` (absent when
    /// unknown) as fields.
    pub fn usage(self, provider: &str, model: &str, usage: TokenUsage, cost_usd: Option<f64>) {
        let p = Upper(provider);
        let est = if usage.estimated { "~" } else { "" };
        let cost = UsdText(cost_usd);
        let client = ClientSuffix(self.client);
        let line = format_args!(
            "usage | Phase={} | Section={} | Provider={p} | Model={model} | Tokens={est}{}/{est}{} | Cost={cost} | Report={}{client}",
            self.phase, self.section, usage.input, usage.output, self.report_id
        );
        if settings().log_format == LogFormat::Text {
            tracing::info!(target: "vra_gateway::usage", "{}", line);
            return;
        }
        let trace_id = current_trace_id();
        tracing::info!(
            target: "vra_gateway::usage",
            event = "USAGE",
            phase = self.phase,
            section = self.section,
            report_id = self.report_id,
            client = self.client,
            provider,
            model,
            input_tokens = usage.input,
            output_tokens = usage.output,
            estimated = usage.estimated,
            cost_usd,
            trace_id = trace_id.as_deref(),
            "{}",
            line
        );
    }

    /// ERROR: a stream broke after its first delta.
    pub fn stream_aborted(self, provider: &str, model: &str, error: &str) {
        let (p, e) = (Upper(provider), Untrusted(error));
        let error = &[error];
        self.emit(
            Level::ERROR,
            Parts {
                event: "STREAM_ABORTED",
                provider: Some(provider),
                model: Some(model),
                error: Some(error),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=STREAM_ABORTED | Provider={p} | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    fn emit(self, level: Level, parts: Parts<'_>, line: fmt::Arguments<'_>) {
        let client = ClientSuffix(self.client);
        let line = format_args!("{line}{client}");
        if settings().log_format == LogFormat::Text {
            macro_rules! text {
                ($level:expr) => {
                    tracing::event!(target: "vra_gateway::hybrid", $level, "{}", line)
                };
            }
            match level {
                Level::INFO => text!(Level::INFO),
                Level::WARN => text!(Level::WARN),
                _ => text!(Level::ERROR),
            }
            return;
        }
        let trace_id = current_trace_id();
        let error = parts.error.map(|e| UntrustedList(e).to_string());
        macro_rules! json {
            ($level:expr) => {
                tracing::event!(
                    target: "vra_gateway::hybrid",
                    $level,
                    event = parts.event,
                    phase = self.phase,
                    section = self.section,
                    report_id = self.report_id,
                    client = self.client,
                    provider = parts.provider,
                    model = parts.model,
                    reason = parts.reason,
                    error = error.as_deref(),
                    trace_id = trace_id.as_deref(),
                    "{}",
                    line
                )
            };
        }
        match level {
            Level::INFO => json!(Level::INFO),
            Level::WARN => json!(Level::WARN),
            _ => json!(Level::ERROR),
        }
    }
}

/// The optional parts of a `[Hybrid]` event.
#[derive(Default)]
struct Parts<'a> {
    event: &'static str,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    reason: Option<&'static str>,
    /// Each provider's error, shown escaped and capped one by one.
    error: Option<&'a [&'a str]>,
}

/// A cost in usage lines: `$0.000123` (to the micro-dollar, or more digits when smaller),
/// or `unknown`.
struct UsdText(Option<f64>);

impl fmt::Display for UsdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unknown"),
            Some(usd) if usd == 0.0 || usd >= 0.000_001 => write!(f, "${usd:.6}"),
            Some(usd) => write!(f, "${usd:.9}"),
        }
    }
}

/// ` | Client=ID` after a `[Hybrid]` line of an authenticated call; nothing otherwise.
struct ClientSuffix<'a>(Option<&'a str>);

impl fmt::Display for ClientSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " | Client={id}"),
            None => Ok(()),
        }
    }
}

/// Displays a provider name in upper case (as `[Hybrid]` lines write it) without allocating.
struct Upper<'a>(&'a str);

impl fmt::Display for Upper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        self.0
            .chars()
            .try_for_each(|c| f.write_char(c.to_ascii_uppercase()))
    }
}

/// Routes panic reports through the log (so JSON logs stay JSON) instead of raw stderr. A
/// panic in a request task is a bug: the service answers the caller INTERNAL and counts it in
/// `vra_gateway_panics_total`; this line says where it happened.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            target: "vra_gateway::panic",
            "task panicked at {location}: {}",
            Untrusted(payload)
        );
    }));
}

/// Lets one log line through per period and counts the ones it held back, so a condition
/// every call hits (a ledger that is down or full) cannot flood the log.
#[derive(Debug)]
pub struct Throttle {
    origin: std::time::Instant,
    period_ms: u64,
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Self {
            origin: std::time::Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now; `n` lines were held back since the last one. `None`: hold it back.
    pub fn check(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs a panic caught in a request task of `method` (the caller gets INTERNAL).
pub fn caught_panic(method: &str, payload: &(dyn std::any::Any + Send)) {
    tracing::error!(
        method,
        panic = panic_message(payload),
        "request task panicked; the caller gets INTERNAL"
    );
}

/// The message of a panic payload, when it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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
        vra.client.id = Empty,
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
        vra.cost.usd = Empty,
        vra.usage.input_tokens = Empty,
        vra.usage.output_tokens = Empty,
        vra.usage.estimated = Empty,
    )
}

/// Records a call's usage and cost on the current server span (`vra.cost.usd` only when the
/// model has a price).
pub fn record_cost(span: &Span, usage: TokenUsage, cost: Option<Nanos>) {
    span.record("vra.usage.input_tokens", i64::from(usage.input));
    span.record("vra.usage.output_tokens", i64::from(usage.output));
    span.record("vra.usage.estimated", usage.estimated);
    if let Some(cost) = cost {
        span.record("vra.cost.usd", cost.usd());
    }
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

/// What an attempt span says about its upstream — plain values.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// `gen_ai.provider.name`: the wire format (`openai`, `ollama`).
    pub system: &'static str,
    /// The configured provider name.
    pub provider: &'a str,
    pub cloud: bool,
    pub address: &'a str,
    pub port: u16,
}

/// Creates the CLIENT span of one upstream HTTP attempt (GenAI semantic conventions).
pub fn attempt_span(upstream: Upstream<'_>, model: &str, tier: Tier, attempt: u32) -> Span {
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = upstream.system,
        gen_ai.request.model = model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        server.address = upstream.address,
        server.port = i64::from(upstream.port),
        http.response.status_code = Empty,
        error.type = Empty,
        vra.attempt = i64::from(attempt),
        vra.tier = tier.as_str(),
        vra.provider = upstream.provider,
        vra.cloud = upstream.cloud,
        vra.queue.wait_ms = Empty,
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
pub fn record_request(span: &Span, system: Option<&str>, prompt: &str) {
    if !settings().trace_content {
        return;
    }
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(serde_json::json!({"role": "system", "parts": [{"type": "text", "content": truncate(system)}]}));
    }
    messages.push(serde_json::json!({"role": "user", "parts": [{"type": "text", "content": truncate(prompt)}]}));
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

/// Writes the current trace's W3C `traceparent` into outgoing request headers — and nothing
/// else of the caller's context: its `tracestate` (vendor data) and `baggage` (user ids, tenant
/// data) stay inside the network, whoever the upstream is.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let cx = current_context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    // The W3C format, version 00, as the SDK's TraceContextPropagator writes it.
    let value = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        (sc.trace_flags() & TraceFlags::SAMPLED).to_u8()
    );
    if let Ok(value) = http::HeaderValue::from_str(&value) {
        headers.insert(http::header::HeaderName::from_static("traceparent"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        let every_time = Throttle::new(Duration::ZERO);
        assert_eq!(every_time.check(), Some(0));
        assert_eq!(every_time.check(), Some(0));
    }

    #[test]
    fn upper_case_provider_names_without_allocating() {
        assert_eq!(Upper("openai").to_string(), "OPENAI");
    }
}
