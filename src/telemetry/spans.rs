//! The spans of a call: one SERVER span per RPC with the route, budget and cost attributes,
//! one CLIENT span per upstream attempt following the GenAI semantic conventions. Prompt and
//! completion text reach them only with `VRA_TRACE_CONTENT=true`.

use tracing::{Span, field::Empty};

use crate::domain::{BudgetInfo, ChatMessage, Nanos, ProviderError, RouteInfo, Tier, TokenUsage};

use super::settings;

/// Longest prompt/completion excerpt put in a span when content tracing is on.
const CONTENT_LIMIT: usize = 1024;

/// A SERVER span of one call, whichever door it came through: the door's own attributes
/// (`$door`), then the `vra.*` attributes every call records — one list, so both doors' spans
/// carry the same ones.
macro_rules! call_span {
    ($name:literal, $($door:tt)*) => {
        tracing::info_span!(
            $name,
            otel.kind = "server",
            otel.status_code = Empty,
            otel.status_description = Empty,
            $($door)*
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
            vra.cache.status = Empty,
            vra.budget.used = Empty,
            vra.budget.limit = Empty,
            vra.cost.usd = Empty,
            vra.usage.input_tokens = Empty,
            vra.usage.output_tokens = Empty,
            vra.usage.estimated = Empty,
        )
    };
}

/// Creates the SERVER span of one RPC (RPC semantic conventions plus `vra.*` attributes).
pub fn server_span(method: &'static str) -> Span {
    call_span!(
        "rpc",
        otel.name = %format_args!("vra.gateway.v1.GatewayService/{method}"),
        rpc.system = "grpc",
        rpc.service = "vra.gateway.v1.GatewayService",
        rpc.method = method,
        rpc.grpc.status_code = Empty,
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

/// Creates the SERVER span of one request to the HTTP door (HTTP semantic conventions plus the
/// same `vra.*` attributes as an RPC's span, and the call's id). `route` is the matched route,
/// e.g. `/v1/chat/completions`.
pub fn http_span(method: &'static str, route: &'static str) -> Span {
    call_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        vra.call.id = Empty,
        vra.user.hash = Empty,
    )
}

/// Records the HTTP door's answer on its span (a 5xx marks the span as failed, as the HTTP
/// conventions say for a server).
pub fn record_http_answer(span: &Span, status: u16, message: Option<&str>) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
        if let Some(m) = message {
            span.record("otel.status_description", m);
        }
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

/// Puts the (truncated) conversation on the attempt span — only when `VRA_TRACE_CONTENT=true`.
pub fn record_request(span: &Span, messages: &[ChatMessage]) {
    if !settings().trace_content {
        return;
    }
    let messages: Vec<_> = messages
        .iter()
        .map(|m| serde_json::json!({"role": m.role.as_str(), "parts": [{"type": "text", "content": truncate(&m.content)}]}))
        .collect();
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
