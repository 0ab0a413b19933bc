//! The W3C trace context: the caller's `traceparent` (and `tracestate`) continue the trace;
//! only `traceparent` goes to upstreams.

use http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceFlags};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
