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
//!
//! # Layout
//!
//! - `init`: the subscriber (text or JSON lines on stderr, OTLP export), shutdown, panics;
//! - `hybrid`: the `[Hybrid]` lines;
//! - `spans`: the SERVER span of an RPC and the CLIENT span of an upstream attempt, and what
//!   is recorded on them;
//! - `propagation`: the W3C trace context in (from the caller) and out (to upstreams).

use std::sync::OnceLock;

mod hybrid;
mod init;
mod propagation;
mod spans;

pub use hybrid::*;
pub use init::*;
pub use propagation::*;
pub use spans::*;

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

/// The process's telemetry settings, set once by [`init`].
static SETTINGS: OnceLock<TelemetryConfig> = OnceLock::new();

fn settings() -> TelemetryConfig {
    SETTINGS.get().copied().unwrap_or(TelemetryConfig {
        log_format: LogFormat::Text,
        trace_content: false,
    })
}
