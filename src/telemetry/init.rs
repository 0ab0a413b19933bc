//! The process's subscriber: log lines (text or JSON) on stderr, spans exported over OTLP
//! when configured, flushed at shutdown; and panics, reported through the log.

use std::fmt;
use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::domain::Untrusted;

use super::{LogFormat, SETTINGS, TelemetryConfig};

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
