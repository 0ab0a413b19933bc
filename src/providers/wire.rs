//! The seam between the one HTTP provider ([`super::http::HttpProvider`]) and an API's dialect.
//!
//! A [`WireFormat`] says how a [`ChatRequest`] is written for one API (its path, its JSON body,
//! the headers that carry the key), how a unary answer is read, how a streamed answer is decoded
//! line by line, and where an error body keeps its message. Everything else — the pooled HTTP
//! client, timeouts, bounded bodies, `Retry-After`, trace context, the mapping of statuses and
//! transport failures into [`ProviderError`] — is the HTTP provider's, the same for every
//! format.
//!
//! # Adding a wire format
//!
//! One new file in `src/providers/` with the API's JSON shapes, a unit struct implementing
//! [`WireFormat`] and, for streaming, a [`Decoder`] beside them; then its registration: a
//! [`ProviderKind`](super::ProviderKind) variant (the `kind = "…"` of a
//! `[providers.NAME]` table) and one arm in [`super::build`].

use http::HeaderName;

use super::BodyLimits;
use super::stream::Decoder;
use super::{ChatRequest, Completion, ProviderError};

/// One API's dialect of a chat completion.
pub trait WireFormat: Send + Sync + 'static {
    /// The `gen_ai.provider.name` of spans (`openai`, `ollama`).
    const SYSTEM: &'static str;
    /// The chat endpoint's path, appended to the provider's base URL.
    const PATH: &'static str;
    /// The `Accept` header of a streaming request.
    const STREAM_ACCEPT: &'static str;

    /// The line-level decoder of a streamed answer.
    type Decoder: Decoder;

    /// The JSON body of `req`, streamed or not.
    fn body(&self, req: &ChatRequest, stream: bool) -> serde_json::Result<Vec<u8>>;

    /// Reads a unary answer: the text, the model that answered, the usage, the finish reason.
    /// A body that does not have the format's shape is [`ProviderError::Malformed`].
    fn parse(&self, body: &[u8]) -> Result<Completion, ProviderError>;

    /// A decoder for one stream; `limits.line_bytes` also caps what one event may accumulate.
    fn decoder(&self, limits: BodyLimits) -> Self::Decoder;

    /// The headers that carry the API key: `Authorization: Bearer KEY` unless the API says
    /// otherwise. Sent with every request and marked sensitive.
    fn auth_headers(&self, key: &str) -> Vec<(HeaderName, String)> {
        vec![(http::header::AUTHORIZATION, format!("Bearer {key}"))]
    }

    /// The message of an error body (a non-2xx answer), `None` when it has none in this
    /// format's shape (the body's start is shown then). The default reads `error.message`
    /// (OpenAI and the APIs that copy it) or a string `error` (Ollama).
    fn error_message(body: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        match (&v["error"]["message"], &v["error"]) {
            (serde_json::Value::String(m), _) | (_, serde_json::Value::String(m)) => {
                Some(m.clone())
            }
            _ => None,
        }
    }
}
