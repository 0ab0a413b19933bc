//! HTTP plumbing shared by the providers: one pooled client per provider, the request/response
//! cycle of a completion or a stream, trace-context injection, and the mapping of transport
//! failures and error statuses into [`ProviderError`]. Each provider only supplies its wire
//! format: the request body, the response parser and the stream decoder.
//!
//! # Bounded bodies
//!
//! An upstream decides how much it sends; the gateway decides how much it keeps. No body is
//! read whole without a limit ([`BodyLimits`], from `VRA_MAX_RESPONSE_BYTES` and
//! `VRA_MAX_STREAM_LINE_BYTES`):
//!
//! - a unary answer is read chunk by chunk and fails with [`ProviderError::TooLarge`] as soon
//!   as it would pass `response_bytes` — at once when its `Content-Length` says so; the rest
//!   is not read and the connection is dropped;
//! - an error body (non-2xx) is read up to `response_bytes` and no further; the excerpt comes
//!   from what was read, and the error stays the status;
//! - a stream is unbounded in length (long generations are fine) but bounded per line, see
//!   [`super::stream`].

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use futures_util::StreamExt;
use http::HeaderMap;
use http::header::ACCEPT;
use reqwest::{RequestBuilder, Response};
use serde::Serialize;

use super::stream::{Decoder, decode};
use super::{BuildError, Completion, EventStream, ProviderError};
use crate::config::{BodyLimits, ProviderConfig, Secret};

/// What [`ProviderError::TooLarge`] names when a unary answer is past its limit.
pub const TOO_LARGE_BODY: &str = "response body";

/// One provider endpoint: its pooled client, URL, per-attempt timeout, key and body limits.
pub(crate) struct Endpoint {
    client: reqwest::Client,
    /// Parsed once: reqwest would parse a string URL again on every request.
    url: reqwest::Url,
    host: String,
    port: u16,
    timeout: Duration,
    api_key: Option<Secret>,
    limits: BodyLimits,
}

impl Endpoint {
    pub(crate) fn new(
        config: &ProviderConfig,
        path: &str,
        extra_roots: &[reqwest::Certificate],
    ) -> Result<Self, BuildError> {
        let url = reqwest::Url::parse(&join(&config.base_url, path)).map_err(|e| BuildError {
            name: config.name.clone(),
            message: format!("invalid base URL: {e}"),
        })?;
        Ok(Self {
            host: url.host_str().unwrap_or_default().to_string(),
            port: url.port_or_known_default().unwrap_or(0),
            client: client(config, extra_roots)?,
            url,
            timeout: config.timeout,
            api_key: config.api_key.clone(),
            limits: config.limits,
        })
    }

    /// The upstream's host and port (`server.address`, `server.port`).
    pub(crate) fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// One non-streaming request: send `body`, parse the answer with `parse`, record it on the
    /// current (attempt) span.
    pub(crate) async fn complete(
        &self,
        body: &impl Serialize,
        parse: fn(&[u8]) -> Result<Completion, ProviderError>,
    ) -> Result<Completion, ProviderError> {
        let builder = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(body);
        let response = send(builder, self.api_key.as_ref(), self.limits).await?;
        let bytes = read_body(response, self.limits.response_bytes).await?;
        let completion = parse(&bytes)?;
        crate::telemetry::record_response(
            &tracing::Span::current(),
            &completion.model,
            completion.usage,
            &completion.finish_reason,
            Some(&completion.text),
        );
        Ok(completion)
    }

    /// One streaming request. The time to response headers is bounded by the attempt timeout;
    /// after that only the idle timeout applies, so long generations are not cut. Each line is
    /// bounded by `VRA_MAX_STREAM_LINE_BYTES`.
    pub(crate) async fn stream(
        &self,
        body: &impl Serialize,
        accept: &'static str,
        decoder: impl Decoder,
        idle: Duration,
    ) -> Result<EventStream, ProviderError> {
        let builder = self
            .client
            .post(self.url.clone())
            .header(ACCEPT, accept)
            .json(body);
        let response = tokio::time::timeout(
            self.timeout,
            send(builder, self.api_key.as_ref(), self.limits),
        )
        .await
        .map_err(|_| ProviderError::Timeout)??;
        Ok(decode(
            response.bytes_stream().boxed(),
            decoder,
            idle,
            self.limits.line_bytes,
        ))
    }
}

/// How much of an error body is read at most (within `VRA_MAX_RESPONSE_BYTES`): enough for
/// any real error JSON, and it bounds what parsing it can cost.
const ERROR_BODY_PREFIX: usize = 64 << 10;

/// Longest upstream error excerpt kept in an error message.
const ERROR_EXCERPT: usize = 200;

/// A pooled client with the provider's connect timeout. The per-attempt timeout is set per
/// request, because a stream must not be cut by a total-time limit (it has an idle timeout).
///
/// HTTPS trusts the system roots plus `extra_roots` (`VRA_UPSTREAM_CA_FILE`). Redirects are
/// not followed: an LLM API that answers 3xx is misconfigured (or intercepted), not a new
/// destination for the prompt and the API key; the 3xx becomes a [`ProviderError::Status`].
fn client(
    config: &ProviderConfig,
    extra_roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, BuildError> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(extra_roots.iter().cloned())
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BuildError {
            name: config.name.clone(),
            message: e.to_string(),
        })
}

/// Sends a request with the current trace context and the provider's bearer key; returns the
/// response only when its status is a success. An error body is read up to the response limit.
async fn send(
    builder: RequestBuilder,
    api_key: Option<&Secret>,
    limits: BodyLimits,
) -> Result<Response, ProviderError> {
    let mut headers = HeaderMap::new();
    crate::telemetry::inject_trace_context(&mut headers);
    let mut builder = builder.headers(headers);
    if let Some(key) = api_key {
        builder = builder.bearer_auth(key.expose());
    }
    let response = builder.send().await.map_err(map_reqwest)?;
    let status = response.status();
    crate::telemetry::record_http_status(status.as_u16());
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let code = status.as_u16();
    // 401/403 bodies may quote (part of) the key: never keep them.
    let message = if matches!(code, 401 | 403) {
        String::new()
    } else if status.is_redirection() {
        redirect_message(response.headers(), api_key)
    } else {
        // Only an excerpt is kept, so only the start of the body is read.
        let body = read_prefix(response, limits.response_bytes.min(ERROR_BODY_PREFIX)).await;
        error_excerpt(&body, api_key)
    };
    Err(ProviderError::Status {
        status: code,
        retry_after,
        message,
    })
}

/// Reads a whole body of at most `limit` bytes, chunk by chunk. A body that says (by its
/// `Content-Length`) or turns out to be longer fails with [`ProviderError::TooLarge`] before
/// more than `limit` bytes are buffered; the rest is not read, and dropping the response
/// closes the connection.
async fn read_body(mut response: Response, limit: usize) -> Result<Bytes, ProviderError> {
    let too_large = || ProviderError::TooLarge {
        what: TOO_LARGE_BODY,
        limit,
    };
    match response.content_length() {
        Some(n) if n > limit as u64 => return Err(too_large()),
        // HTTP framing holds the body to its announced length: read it in one piece.
        Some(_) => return response.bytes().await.map_err(map_reqwest),
        None => {}
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(map_reqwest)? {
        if chunk.len() > limit - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads at most the first `limit` bytes of a body — an error body, whose excerpt is all that
/// is kept — and stops there. A transport error ends the read with what arrived before it.
async fn read_prefix(mut response: Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    body
}

/// What a 3xx error says: that the redirect was not followed, and where it pointed (the
/// `Location`, scrubbed and cut like an error excerpt).
fn redirect_message(headers: &HeaderMap, api_key: Option<&Secret>) -> String {
    let location = headers
        .get(http::header::LOCATION)
        .map(|v| error_excerpt(v.as_bytes(), api_key))
        .filter(|l| !l.is_empty());
    match location {
        Some(l) => format!("redirect to `{l}` not followed; check the provider's base URL"),
        None => "redirect not followed; check the provider's base URL".to_string(),
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds (digits only) or an HTTP
/// date, relative to `now`. Anything else — fractions, exponents, signs, garbage — is `None`
/// and the caller falls back to its normal backoff. Never panics: a delay too large for a
/// `u64` saturates (the retry policy caps it at `VRA_RETRY_MAX_BACKOFF_MS` anyway).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim_matches([' ', '\t']);
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Maps a reqwest failure to a typed error, without the URL.
pub(crate) fn map_reqwest(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() {
        ProviderError::Connect(root_cause(&e))
    } else {
        ProviderError::Transport(root_cause(&e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The `error.message` (OpenAI) or `error` (Ollama) field of an error body, else its start;
/// the key scrubbed out first, then cut to [`ERROR_EXCERPT`] characters (so no part of a key
/// that straddles the cut survives).
fn error_excerpt(body: &[u8], key: Option<&Secret>) -> String {
    let text = scrub(&error_message(body), key);
    let text = text.trim();
    match text.char_indices().nth(ERROR_EXCERPT) {
        Some((idx, _)) => format!("{}…", &text[..idx]),
        None => text.to_string(),
    }
}

fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match (&v["error"]["message"], &v["error"]) {
            (serde_json::Value::String(m), _) => m.clone(),
            (_, serde_json::Value::String(m)) => m.clone(),
            _ => String::from_utf8_lossy(body).into_owned(),
        },
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

fn scrub(text: &str, key: Option<&Secret>) -> String {
    match key {
        Some(k) if !k.expose().is_empty() => text.replace(k.expose(), "<redacted>"),
        _ => text.to_string(),
    }
}

/// Appends `path` to a base URL that has no trailing slash.
fn join(base: &str, path: &str) -> String {
    format!("{base}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_prefer_the_error_message() {
        assert_eq!(
            error_excerpt(br#"{"error":{"message":"rate limited","type":"x"}}"#, None),
            "rate limited"
        );
        assert_eq!(
            error_excerpt(br#"{"error":"model not found"}"#, None),
            "model not found"
        );
        assert_eq!(error_excerpt(b"oops", None), "oops");
        let long = "x".repeat(500);
        assert_eq!(
            error_excerpt(long.as_bytes(), None).chars().count(),
            ERROR_EXCERPT + 1
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(3)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for junk in [
            "soon", "-1", "+1", "1e20", "1.5", "NaN", "inf", "", " ", "0x10", "１",
        ] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Any header value: no panic, and a delay is either the digits' value or a date's.
        #[test]
        fn retry_after_never_panics(value in "\\PC{0,40}", secs in 0u64..u64::MAX) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let _ = parse_retry_after(&value, now);
            proptest::prop_assert_eq!(
                parse_retry_after(&secs.to_string(), now),
                Some(Duration::from_secs(secs))
            );
        }
    }

    /// Bodies from the simulated upstream, read with a plain client.
    async fn respond(sim: &crate::demo::sim::Sim) -> Response {
        crate::install_crypto_provider();
        reqwest::Client::new()
            .post(format!("{}/chat/completions", sim.openai_base()))
            .json(&serde_json::json!({"model": "m"}))
            .send()
            .await
            .expect("the sim answers")
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_and_no_further() {
        use crate::demo::sim::{Sim, Step};
        let sim = Sim::start().await.unwrap();
        let too_large = ProviderError::TooLarge {
            what: TOO_LARGE_BODY,
            limit: 2048,
        };
        // Announced too large by Content-Length: refused before the body is read.
        sim.push(Step::reply("x".repeat(4096)));
        let r = respond(&sim).await;
        assert!(r.content_length().is_some_and(|n| n > 2048));
        assert_eq!(read_body(r, 2048).await.unwrap_err(), too_large);
        // No Content-Length and no end: cut once more than the limit would be buffered.
        let endless = Step::Endless {
            chunks: vec![b"{\"choices\":[".to_vec()],
            filler: vec![b' '; 1000],
        };
        sim.push(endless.clone());
        let r = respond(&sim).await;
        assert_eq!(r.content_length(), None);
        assert_eq!(read_body(r, 2048).await.unwrap_err(), too_large);
        // Exactly the limit, in chunks: read whole.
        sim.push(Step::Raw {
            chunks: vec![vec![b'x'; 1024], vec![b'y'; 1024]],
            chunk_delay: Duration::ZERO,
        });
        let body = read_body(respond(&sim).await, 2048).await.unwrap();
        assert_eq!((body.len(), body[0], body[2047]), (2048, b'x', b'y'));
        // An error body: its first `limit` bytes, without an error.
        sim.push(endless);
        let body = read_prefix(respond(&sim).await, 2048).await;
        assert_eq!(body.len(), 2048);
        assert!(body.starts_with(b"{\"choices\":["));
        assert!(
            sim.wait_closed(4, Duration::from_secs(5)).await,
            "the endless bodies were dropped, not read on"
        );
    }

    #[test]
    fn a_key_straddling_the_excerpt_cut_is_scrubbed_first() {
        let key = Secret::new("sk-live-0123456789abcdef");
        let body = format!(
            r#"{{"error":"{}{}"}}"#,
            "x".repeat(ERROR_EXCERPT - 5),
            key.expose()
        );
        let excerpt = error_excerpt(body.as_bytes(), Some(&key));
        assert!(!excerpt.contains("sk-li"), "{excerpt}");
    }

    #[test]
    fn a_redirect_is_a_final_error_naming_where_it_pointed() {
        let key = Secret::new("sk-123");
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("https://elsewhere.example/v1?k=sk-123"),
        );
        let message = redirect_message(&headers, Some(&key));
        assert!(
            message.contains("https://elsewhere.example/v1?k=<redacted>"),
            "{message}"
        );
        assert!(message.contains("not followed"), "{message}");
        assert_eq!(
            redirect_message(&HeaderMap::new(), None),
            "redirect not followed; check the provider's base URL"
        );
        let err = ProviderError::Status {
            status: 307,
            retry_after: None,
            message,
        };
        assert!(!err.is_retryable());
        assert!(err.is_provider_fault());
    }

    #[test]
    fn scrub_removes_the_key() {
        let key = Secret::new("sk-123");
        assert_eq!(
            scrub("bad key sk-123 given", Some(&key)),
            "bad key <redacted> given"
        );
    }
}
