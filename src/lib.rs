//! vra-gateway: a gRPC routing gateway for the LLM calls of report builders.
//!
//! Every call names a report, a section and a phase; the gateway picks the model tier from a
//! fixed routing matrix, enforces a per-report cloud budget, retries and falls back from the
//! primary (cloud) to the secondary (local) provider, and tells the story in `[Hybrid]` logs,
//! OpenTelemetry spans and Prometheus metrics.
//!
//! # Layout
//!
//! - [`domain`]: the plain types every layer shares — tiers, phases, rule ids, fallback
//!   reasons, route and budget info, token usage, provider errors — and [`domain::Untrusted`],
//!   how outside text reaches a log line. It imports nothing from the crate, so no layer needs
//!   to import the pipeline.
//! - [`routing`]: the matrix — a pure function from (phase, section type, hybrid mode) to a
//!   tier and a named rule. Change routing here.
//! - [`budget`]: the per-report cloud budget behind the [`budget::Ledger`] trait, with an
//!   in-memory and a Redis backend. Add a ledger backend here.
//! - [`cache`]: the response cache — the key (client + SHA-256 of the request as the answering
//!   model receives it), the stores behind [`cache::Store`], single flight. Add a store here.
//! - [`providers`]: upstream LLMs behind the [`providers::Provider`] trait: one HTTP provider
//!   ([`providers::http::HttpProvider`]: bounded bodies, `Retry-After`, error mapping) over a
//!   [`providers::wire::WireFormat`] (OpenAI-compatible, Ollama: JSON shapes and stream
//!   decoders), and [`providers::pool`], a provider's endpoints (`base_urls`):
//!   power-of-two-choices balancing, outlier ejection, per-endpoint `max_in_flight` with a FIFO
//!   queue. Add a wire format here (see [`providers::wire`]).
//! - [`cost`]: money and tokens — model prices (`[pricing]` over built-in list prices), a
//!   call's cost in exact nano-dollars, the worst case a call may cost (for the dollar cap),
//!   and token estimates for answers that arrive without usage.
//! - [`resilience`]: retry/backoff, deadlines and the circuit breaker (RAII permits).
//! - [`gateway`]: the pipeline — route, budget, call, retry, fall back, record: entry points
//!   in `gateway/mod.rs`, the tier loop in `tier.rs`, the cost hold guard in `hold.rs`, pricing
//!   and recording in `record.rs`, a stream after its first event in `stream.rs`.
//! - [`edge`]: what every call passes before a service — tower layers stacked once in
//!   [`server`] (the caller's deadline, stamped at arrival; then authentication). Add an edge
//!   layer here.
//! - [`auth`]: client identity — the clients file (bearer-token digests, per-client limits),
//!   reloaded on SIGHUP (`auth/clients.rs`), and the edge layer that admits a call with its
//!   `Arc<Client>` or answers UNAUTHENTICATED (`auth/layer.rs`).
//! - [`service`]: the tonic service — the RPCs (`service/mod.rs`), validation (`validate.rs`)
//!   and conversion (`convert.rs`) around the pipeline.
//! - [`http`]: the OpenAI-compatible HTTP door — the same pipeline for any OpenAI client.
//! - [`front`]: what both doors do around the pipeline (shedding, counting, deadlines,
//!   metrics). Add a door beside `service` and `http`, over the same front.
//! - [`error`]: the gateway error enum and its one mapping to `tonic::Status`.
//! - [`server`]: wiring, health, reflection, metrics endpoint, graceful shutdown.
//! - [`config`]: one typed configuration from env, `.env` and TOML, validated up front: the
//!   settings table, the sources, the parsers, the provider table and the security rules, each
//!   in its own file; every subsystem owns the type of its own settings and `config`
//!   assembles them. Add a setting here.
//! - [`telemetry`] and [`metrics`]: logs, `[Hybrid]` events, OTLP traces, Prometheus — fed
//!   plain values; [`throttle`]: the log throttles.
//! - [`remote`]: the CLI's side of the commands that call a running gateway (`usage`, `cache
//!   purge`).
//! - [`usage`]: a report's cost table (`vra-gateway usage REPORT_ID`, the demo's summary),
//!   rendered from the `GetReportUsage` answer.
//! - [`demo`]: not production code. `vra-gateway demo`, the gateway end to end against
//!   simulated upstreams, and [`demo::sim`], those upstreams (also the tests' and benchmarks'
//!   "remote LLM").

pub mod auth;
pub mod budget;
pub mod cache;
pub mod config;
pub mod cost;
pub mod demo;
pub mod domain;
pub mod edge;
pub mod error;
pub mod front;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod providers;
pub mod remote;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod usage;

/// Code generated from `proto/vra/gateway/v1/gateway.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("vra.gateway.v1");

    /// The encoded file descriptor set, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptor.bin"));

    /// The two request messages carry the same fields (the contract says so); one conversion
    /// each way serves the service, the demo and the tests.
    macro_rules! same_fields {
        ($from:ident => $to:ident) => {
            impl From<$from> for $to {
                fn from(r: $from) -> Self {
                    $to {
                        report_id: r.report_id,
                        section_id: r.section_id,
                        section_type: r.section_type,
                        phase: r.phase,
                        prompt: r.prompt,
                        system_prompt: r.system_prompt,
                        options: r.options,
                        messages: r.messages,
                    }
                }
            }
        };
    }
    same_fields!(GenerateStreamRequest => GenerateRequest);
    same_fields!(GenerateRequest => GenerateStreamRequest);

    /// An enum value's generated name without its type's prefix, as tables and logs print it:
    /// `short_name(FallbackReason::CostLimit.as_str_name(), "FALLBACK_REASON_")` is
    /// `COST_LIMIT`. `None` for the `_UNSPECIFIED` value.
    pub fn short_name(name: &'static str, prefix: &str) -> Option<&'static str> {
        name.strip_prefix(prefix).filter(|n| *n != "UNSPECIFIED")
    }
}

/// Installs rustls' ring crypto provider for outgoing TLS (OpenAI, `rediss://`). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
