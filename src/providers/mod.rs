//! Upstream LLM providers behind one [`Provider`] trait.
//!
//! A provider turns a [`ChatRequest`] into exactly **one** HTTP request in its wire format and
//! maps the answer (or failure) into [`Completion`] / [`ProviderError`]. Retries, budget and
//! fallback live above it, in [`crate::gateway`], so that every upstream request can be counted
//! and budgeted.
//!
//! - [`http`]: the one HTTP provider, [`http::HttpProvider`], over a [`wire::WireFormat`]:
//!   client, timeouts, bounded bodies, error mapping.
//! - [`wire`]: what a wire format supplies. Adding one is a new file here plus its
//!   registration (a [`ProviderKind`] and an arm in [`build`]), see [`wire`].
//! - [`openai`]: OpenAI-compatible Chat Completions (OpenAI, vLLM, llama.cpp server, ...),
//!   its JSON shapes and its SSE decoder.
//! - [`ollama`]: Ollama's native `/api/chat`, its JSON shapes and its NDJSON decoder.
//! - [`stream`]: incremental line decoding of a streamed body, shared by every format.
//! - [`pool`]: endpoint pools — one provider over several base URLs, with balancing,
//!   outlier ejection, a per-endpoint concurrency cap and a FIFO queue. The gateway leases an
//!   endpoint per attempt.

pub mod anthropic;
pub mod http;
pub mod ollama;
pub mod openai;
pub mod pool;
pub mod sse;
pub mod stream;
pub mod wire;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;

use serde::Deserialize;

use crate::domain::{ChatMessage, Secret, Tier};
pub use crate::domain::{ProviderError, TokenUsage};
use anthropic::Anthropic;
use http::HttpProvider;
use http::ProxyConfig;
use ollama::Ollama;
use openai::OpenAi;
use pool::Pool;
use pool::PoolConfig;

/// What the gateway asks of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// The conversation, shared by every attempt of a call.
    pub messages: Arc<[ChatMessage]>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
}

impl ChatRequest {
    /// The chat messages as the OpenAI and Ollama wire formats write them.
    pub fn messages(&self) -> Vec<Message<'_>> {
        self.messages
            .iter()
            .map(|m| Message {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect()
    }
}

/// A chat message as both wire formats (OpenAI and Ollama) write it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// A finished (non-streamed) generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// The model the upstream says answered.
    pub model: String,
    pub usage: TokenUsage,
    pub finish_reason: String,
}

/// One event of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A non-empty piece of text.
    Delta(String),
    /// The terminal event: no more text follows.
    Done {
        model: String,
        usage: TokenUsage,
        finish_reason: String,
    },
}

/// A streamed generation: deltas, then exactly one `Done`, or an error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// One upstream. Each call is a single HTTP request.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's configuration (name, kind, tier, base URL).
    fn config(&self) -> &ProviderConfig;

    /// Sends one non-streaming request.
    async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError>;

    /// Sends one streaming request; the returned stream yields deltas then `Done`. Errors that
    /// happen before the response headers arrive are returned directly.
    async fn stream(
        &self,
        req: &ChatRequest,
        idle_timeout: Duration,
    ) -> Result<EventStream, ProviderError>;

    /// The upstream's host and port, for span attributes.
    fn address(&self) -> (&str, u16);

    /// The `gen_ai.provider.name` of its wire format (`openai`, `ollama`).
    fn system(&self) -> &'static str;
}

/// Error building a provider's HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("cannot build HTTP client for provider `{name}`: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// Builds the provider for one configuration, with its own pooled HTTP client; its HTTPS
/// trusts the system roots plus `extra_roots` (`VRA_UPSTREAM_CA_FILE`).
pub fn build(
    config: &ProviderConfig,
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Arc<dyn Provider>, BuildError> {
    Ok(match config.kind {
        ProviderKind::Openai => Arc::new(HttpProvider::new(OpenAi, config.clone(), extra_roots)?),
        ProviderKind::Ollama => Arc::new(HttpProvider::new(Ollama, config.clone(), extra_roots)?),
        ProviderKind::Anthropic => Arc::new(HttpProvider::new(
            Anthropic {
                default_max_tokens: config.max_output_tokens,
            },
            config.clone(),
            extra_roots,
        )?),
    })
}

/// The two tiers' providers (each an endpoint pool), each with the model sent to it.
#[derive(Clone)]
pub struct Tiers {
    pub primary: Arc<Pool>,
    pub primary_model: String,
    pub secondary: Arc<Pool>,
    pub secondary_model: String,
}

impl Tiers {
    /// A tier's pool and the model it sends to.
    pub fn of(&self, tier: Tier) -> (&Arc<Pool>, &str) {
        match tier {
            Tier::Primary => (&self.primary, &self.primary_model),
            Tier::Secondary => (&self.secondary, &self.secondary_model),
        }
    }

    /// Builds both tiers; a provider used by both tiers shares one pool (its endpoints'
    /// clients, load, health and queue). `extra_roots` are added to the system roots of every
    /// provider's HTTPS.
    pub fn build(
        primary: &Endpoint,
        secondary: &Endpoint,
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<Tiers, BuildError> {
        let mut built: BTreeMap<String, Arc<Pool>> = BTreeMap::new();
        let mut get = |cfg: &ProviderConfig| -> Result<Arc<Pool>, BuildError> {
            if let Some(p) = built.get(&cfg.name) {
                return Ok(p.clone());
            }
            let p = Pool::build(cfg, |one| build(one, extra_roots))?;
            built.insert(cfg.name.clone(), p.clone());
            Ok(p)
        };
        Ok(Tiers {
            primary: get(&primary.provider)?,
            primary_model: primary.model.clone(),
            secondary: get(&secondary.provider)?,
            secondary_model: secondary.model.clone(),
        })
    }
}

// --- configuration: what a provider is built from (assembled by `crate::config`) ---

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions (`POST {base}/chat/completions`).
    Openai,
    /// Ollama (`POST {host}/api/chat`).
    Ollama,
    /// Anthropic Messages (`POST {base}/v1/messages`): Claude.
    Anthropic,
}

/// Whether a provider's requests cost cloud money (and so count toward the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostTier {
    Cloud,
    Local,
}

/// One named upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Lower-case name, e.g. `openai`, `local`.
    pub name: String,
    pub kind: ProviderKind,
    /// The first of `base_urls` (the one URL of a single-endpoint provider).
    pub base_url: String,
    /// Every endpoint of the provider, distinct, at least one (`base_urls`, or a
    /// comma-separated `OPENAI_BASE_URL` / `OLLAMA_HOST`).
    pub base_urls: Vec<String>,
    pub api_key: Option<Secret>,
    pub tier: CostTier,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub limits: BodyLimits,
    /// How requests are spread over `base_urls` (see [`crate::providers::pool`]).
    pub pool: PoolConfig,
    /// The forward proxies of upstream connections (the same for every provider).
    pub proxy: ProxyConfig,
    /// The model asked for when the tier's model setting is not set (`model` of a
    /// `[providers.NAME]` table).
    pub default_model: Option<String>,
    /// `max_tokens` of a request without one, where the API requires it (Anthropic):
    /// `VRA_MAX_OUTPUT_TOKENS`.
    pub max_output_tokens: u32,
    /// Secret headers sent with every request (`headers_env`), by lower-case name; valid
    /// header names and values (checked by the configuration).
    pub headers: Vec<(String, Secret)>,
    /// Query parameters added to every request's URL (`query`).
    pub query: Vec<(String, String)>,
}

/// How much of an upstream's answer is read at most: past a limit the request fails with
/// [`crate::domain::ProviderError::TooLarge`] instead of growing memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A unary response body or an error body (`VRA_MAX_RESPONSE_BYTES`).
    pub response_bytes: usize,
    /// One SSE / NDJSON line of a stream (`VRA_MAX_STREAM_LINE_BYTES`).
    pub line_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            response_bytes: 8 << 20,
            line_bytes: 1 << 20,
        }
    }
}

impl ProviderConfig {
    pub fn is_cloud(&self) -> bool {
        self.tier == CostTier::Cloud
    }
}

/// A tier's provider and the model sent to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub provider: ProviderConfig,
    pub model: String,
}
