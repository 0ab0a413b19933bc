//! The one HTTP provider, [`HttpProvider`], over a [`WireFormat`]: one pooled client per
//! endpoint, the request/response cycle of a completion or a stream, trace-context injection,
//! and the mapping of transport failures and error statuses into [`ProviderError`]. A wire
//! format only supplies its dialect: the path, the request body, the key's headers, the
//! response parser, the stream decoder and where an error body keeps its message.
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::stream::{Decoder, decode};
use super::wire::WireFormat;
use super::{
    BodyLimits, BuildError, ChatRequest, Completion, EventStream, Provider, ProviderConfig,
    ProviderError,
};
use crate::domain::Secret;

/// A provider endpoint speaking wire format `W`: every provider kind is one of these.
pub struct HttpProvider<W> {
    config: ProviderConfig,
    wire: W,
    endpoint: Endpoint,
}

impl<W: WireFormat> HttpProvider<W> {
    /// The provider of `config`'s first base URL (a pool makes one per URL); its HTTPS trusts
    /// the system roots plus `extra_roots` (`VRA_UPSTREAM_CA_FILE`).
    pub fn new(
        wire: W,
        config: ProviderConfig,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, BuildError> {
        Ok(Self {
            endpoint: Endpoint::new(&config, &wire, extra_roots)?,
            wire,
            config,
        })
    }

    /// The request body of `req` in `W`'s format.
    fn body(&self, req: &ChatRequest, stream: bool) -> Result<Vec<u8>, ProviderError> {
        self.wire
            .body(req, stream)
            .map_err(|e| ProviderError::Transport(format!("cannot encode the request: {e}")))
    }
}

#[async_trait]
impl<W: WireFormat> Provider for HttpProvider<W> {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn address(&self) -> (&str, u16) {
        self.endpoint.address()
    }

    fn system(&self) -> &'static str {
        W::SYSTEM
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let body = self.body(req, false)?;
        self.endpoint.complete(body, |b| self.wire.parse(b)).await
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        idle: Duration,
    ) -> Result<EventStream, ProviderError> {
        let body = self.body(req, true)?;
        let decoder = self.wire.decoder(self.config.limits);
        self.endpoint
            .stream(body, W::STREAM_ACCEPT, decoder, idle)
            .await
    }
}

/// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (each also read in lower case, as
/// curl does): the forward proxy an upstream connection goes through, as an HTTP `CONNECT`
/// tunnel. Proxy URLs are normalised to `http://host:port` (with `user:pass@` when given) and
/// may carry credentials, hence secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    pub https: Option<Secret>,
    pub http: Option<Secret>,
    pub all: Option<Secret>,
    /// The `NO_PROXY` list, as given.
    pub no: String,
}

/// What [`ProviderError::TooLarge`] names when a unary answer is past its limit.
pub const TOO_LARGE_BODY: &str = "response body";

/// The pooled HTTP/1.1 and HTTP/2 (by ALPN) client of one endpoint: hyper-util's, with
/// rustls. reqwest wraps the same client in layers the gateway does not use (redirects, proxies,
/// cookies) and parses the URL twice per request; this hop is the gateway's hot path.
type HttpClient = Client<ConnectTimeout<HttpsConnector<TcpConnector>>, Full<Bytes>>;

/// What TLS runs over: a TCP connection to the upstream, or a `CONNECT` tunnel through a
/// forward proxy to it. Boxed, so both are one client type; that costs a box per new
/// connection, not per request.
type TcpConnector = tower::util::BoxCloneSyncService<http::Uri, TokioIo<TcpStream>, BoxError>;

type Response = http::Response<Incoming>;

/// One provider endpoint: its pooled client, URL, per-attempt timeout, key and body limits.
struct Endpoint {
    client: HttpClient,
    /// Parsed once, cloned per request (a cheap, shared copy).
    uri: http::Uri,
    host: String,
    port: u16,
    timeout: Duration,
    /// The key and the secret headers' values: scrubbed from every error text.
    secrets: Vec<Secret>,
    /// The headers carrying the key (`Authorization: Bearer <key>`, or the format's own),
    /// made once and marked sensitive (kept out of any header dump).
    auth: Vec<(HeaderName, HeaderValue)>,
    limits: BodyLimits,
    /// The wire format's [`WireFormat::error_message`].
    error_message: fn(&[u8]) -> Option<String>,
}

impl Endpoint {
    fn new<W: WireFormat>(
        config: &ProviderConfig,
        wire: &W,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, BuildError> {
        let invalid = |message: String| BuildError {
            name: config.name.clone(),
            message,
        };
        let mut url = reqwest::Url::parse(&join(&config.base_url, W::PATH))
            .map_err(|e| invalid(format!("invalid base URL: {e}")))?;
        if !config.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(config.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        let uri = url
            .as_str()
            .parse::<http::Uri>()
            .map_err(|e| invalid(format!("invalid base URL: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(0);
        let proxy = proxy_for(&config.proxy, &uri);
        if let Some(proxy) = &proxy {
            // Hosts and ports only: a base URL or a proxy URL may carry credentials.
            tracing::info!(
                "provider `{}`: {host}:{port} through the proxy {}:{}",
                config.name,
                proxy.uri().host().unwrap_or_default(),
                proxy.uri().port_u16().unwrap_or(80),
            );
        }
        // The headers carrying the key, then the provider's secret headers (`headers_env`):
        // all marked sensitive.
        let sensitive = |value: &str, what: &str| {
            let mut value = HeaderValue::try_from(value)
                .map_err(|_| invalid(format!("{what} is not a valid header value")))?;
            value.set_sensitive(true);
            Ok::<_, BuildError>(value)
        };
        let mut auth = Vec::new();
        if let Some(key) = &config.api_key {
            for (name, value) in wire.auth_headers(key.expose()) {
                auth.push((name, sensitive(&value, "the API key")?));
            }
        }
        for (name, value) in &config.headers {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|_| invalid(format!("`{name}` is not a valid header name")))?;
            let what = format!("the value of `{name}`");
            auth.push((header, sensitive(value.expose(), &what)?));
        }
        let secrets = config
            .api_key
            .iter()
            .chain(config.headers.iter().map(|(_, v)| v))
            .cloned()
            .collect();
        Ok(Self {
            host,
            port,
            client: client(&config.name, config.connect_timeout, extra_roots, proxy)?,
            uri,
            timeout: config.timeout,
            secrets,
            auth,
            limits: config.limits,
            error_message: W::error_message,
        })
    }

    /// The upstream's host and port (`server.address`, `server.port`).
    fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// A JSON POST of `body` with the key and the current trace context.
    fn request(&self, body: Vec<u8>, accept: &'static str) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        for (name, value) in &self.auth {
            headers.insert(name, value.clone());
        }
        crate::telemetry::inject_trace_context(headers);
        request
    }

    /// One non-streaming request: send `body`, parse the answer with `parse`, record it on the
    /// current (attempt) span. The attempt timeout covers the whole exchange.
    async fn complete(
        &self,
        body: Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<Completion, ProviderError>,
    ) -> Result<Completion, ProviderError> {
        let request = self.request(body, "application/json");
        let exchange = async {
            let response = self.send(request).await?;
            read_body(response, self.limits.response_bytes).await
        };
        let bytes = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ProviderError::Timeout)??;
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
    async fn stream(
        &self,
        body: Vec<u8>,
        accept: &'static str,
        decoder: impl Decoder,
        idle: Duration,
    ) -> Result<EventStream, ProviderError> {
        let request = self.request(body, accept);
        let response = tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| ProviderError::Timeout)??;
        let body = response
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map_err(map_body_error));
        Ok(decode(body, decoder, idle, self.limits.line_bytes))
    }
}

/// How much of an error body is read at most (within `VRA_MAX_RESPONSE_BYTES`): enough for
/// any real error JSON, and it bounds what parsing it can cost.
const ERROR_BODY_PREFIX: usize = 64 << 10;

/// Longest upstream error excerpt kept in an error message.
const ERROR_EXCERPT: usize = 200;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled client with the provider's connect timeout and `TCP_NODELAY`. The per-attempt
/// timeout is applied per request, because a stream must not be cut by a total-time limit (it
/// has an idle timeout).
///
/// HTTPS trusts the system roots (rustls-platform-verifier) plus `extra_roots`
/// (`VRA_UPSTREAM_CA_FILE`), and offers HTTP/2 and HTTP/1.1 by ALPN. Redirects are not
/// followed: an LLM API that answers 3xx is misconfigured (or intercepted), not a new
/// destination for the prompt and the API key; the 3xx becomes a [`ProviderError::Status`].
/// With a `proxy`, connections are `CONNECT` tunnels through it (TLS end to end inside). The
/// connect timeout bounds the whole connection set-up — DNS, TCP connect (each address its
/// share, as `HttpConnector` splits it), the proxy's `CONNECT`, the TLS handshake
/// ([`ConnectTimeout`]).
fn client(
    name: &str,
    connect_timeout: Duration,
    extra_roots: &[CertificateDer<'static>],
    proxy: Option<Intercept>,
) -> Result<HttpClient, BuildError> {
    let failed = |message: String| BuildError {
        name: name.to_string(),
        message,
    };
    crate::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        )
    }
    .map_err(|e| failed(format!("cannot load the TLS roots: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // Split across a host's addresses, so one that drops packets leaves time for the next.
    http.set_connect_timeout(Some(connect_timeout));
    let tcp = match proxy {
        None => TcpConnector::new(http.map_err(BoxError::from)),
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            TcpConnector::new(tunnel.map_err(BoxError::from))
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(ConnectTimeout {
            inner: https,
            timeout: connect_timeout,
        }))
}

/// The forward proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, minus `NO_PROXY`) of the
/// upstream at `uri`, if any; the config has validated the proxy URLs. A loopback upstream
/// (`localhost`, `127.0.0.0/8`, `::1`) is always reached directly, as Go's HTTP client does:
/// a proxy's loopback is another machine's, and an Ollama beside the gateway should not start
/// failing because a cluster-wide `HTTP_PROXY` appeared.
fn proxy_for(config: &ProxyConfig, uri: &http::Uri) -> Option<Intercept> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    let value = |v: &Option<Secret>| v.as_ref().map_or("", |s| s.expose()).to_string();
    Matcher::builder()
        .https(value(&config.https))
        .http(value(&config.http))
        .all(value(&config.all))
        .no(config.no.as_str())
        .build()
        .intercept(uri)
}

/// A connector whose connections must be set up — DNS, TCP connect and TLS handshake — within
/// `timeout` (`VRA_CONNECT_TIMEOUT_MS`). `HttpConnector`'s own timeout covers the TCP connect
/// only, so an upstream that accepts and then never answers the TLS handshake would hold the
/// attempt until its (much longer) attempt timeout. A timeout fails as `io::ErrorKind::TimedOut`,
/// which [`map_client_error`] maps to [`ProviderError::Timeout`]. The future is boxed (the pool
/// needs an `Unpin` one); that is once per new connection, not per request.
#[derive(Clone)]
struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<http::Uri> for ConnectTimeout<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connection set-up (DNS, TCP, proxy CONNECT, TLS) took more than {} ms",
                        timeout.as_millis()
                    ),
                )
                .into()),
            }
        })
    }
}

impl Endpoint {
    /// Sends a request; returns the response only when its status is a success. An error body is
    /// read up to the response limit.
    async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<Response, ProviderError> {
        let secrets = self.secrets.as_slice();
        let response = self
            .client
            .request(request)
            .await
            .map_err(map_client_error)?;
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
            redirect_message(response.headers(), secrets)
        } else {
            // Only an excerpt is kept, so only the start of the body is read.
            let body =
                read_prefix(response, self.limits.response_bytes.min(ERROR_BODY_PREFIX)).await;
            error_excerpt(&body, secrets, self.error_message)
        };
        Err(ProviderError::Status {
            status: code,
            retry_after,
            message,
        })
    }
}

/// Reads a whole body of at most `limit` bytes, frame by frame. A body that says (by its
/// `Content-Length`) or turns out to be longer fails with [`ProviderError::TooLarge`] before
/// more than `limit` bytes are buffered; the rest is not read, and dropping the response
/// closes the connection. A body of one frame is returned without a copy.
async fn read_body(response: Response, limit: usize) -> Result<Bytes, ProviderError> {
    let too_large = || ProviderError::TooLarge {
        what: TOO_LARGE_BODY,
        limit,
    };
    let mut body = response.into_body();
    if body.size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.map_err(map_body_error)?.into_data() else {
            continue; // trailers
        };
        if chunk.len() > limit - len {
            return Err(too_large());
        }
        len += chunk.len();
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// Reads at most the first `limit` bytes of a body — an error body, whose excerpt is all that
/// is kept — and stops there. A transport error ends the read with what arrived before it.
async fn read_prefix(response: Response, limit: usize) -> Vec<u8> {
    let mut body = response.into_body();
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        if let Ok(chunk) = frame.into_data() {
            let room = limit - prefix.len();
            prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    prefix
}

/// What a 3xx error says: that the redirect was not followed, and where it pointed (the
/// `Location`, scrubbed and cut like an error excerpt).
fn redirect_message(headers: &HeaderMap, secrets: &[Secret]) -> String {
    let location = headers
        .get(http::header::LOCATION)
        .map(|v| excerpt(&String::from_utf8_lossy(v.as_bytes()), secrets))
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

/// Maps a failed exchange to a typed error, without the URL. A connect timeout is a
/// [`ProviderError::Timeout`] (like the attempt's own), any other failure to connect a
/// [`ProviderError::Connect`] (nothing was sent), anything later a [`ProviderError::Transport`].
fn map_client_error(e: hyper_util::client::legacy::Error) -> ProviderError {
    if e.is_connect() {
        if caused_by_timeout(&e) {
            ProviderError::Timeout
        } else {
            ProviderError::Connect(root_cause(&e))
        }
    } else {
        ProviderError::Transport(root_cause(&e))
    }
}

/// Maps a failure while reading a response body.
fn map_body_error(e: hyper::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Transport(root_cause(&e))
    }
}

fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The message of an error body as the wire format finds it (`message_of`), else the body's
/// start, as an [`excerpt`].
fn error_excerpt(
    body: &[u8],
    secrets: &[Secret],
    message_of: fn(&[u8]) -> Option<String>,
) -> String {
    let text = message_of(body).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    excerpt(&text, secrets)
}

/// `text` with the secrets scrubbed out first, then cut to [`ERROR_EXCERPT`] characters (so no
/// part of a secret that straddles the cut survives).
fn excerpt(text: &str, secrets: &[Secret]) -> String {
    let text = scrub(text, secrets);
    let text = text.trim();
    match text.char_indices().nth(ERROR_EXCERPT) {
        Some((idx, _)) => format!("{}…", &text[..idx]),
        None => text.to_string(),
    }
}

fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| !s.expose().is_empty()) {
        text = text.replace(secret.expose(), "<redacted>");
    }
    text
}

/// Appends `path` to a base URL that has no trailing slash.
fn join(base: &str, path: &str) -> String {
    format!("{base}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::OpenAi;

    /// An excerpt of an error body as an OpenAI-format endpoint reads it.
    fn openai_excerpt(body: &[u8], key: Option<&Secret>) -> String {
        error_excerpt(
            body,
            key.map(std::slice::from_ref).unwrap_or_default(),
            <OpenAi as WireFormat>::error_message,
        )
    }

    #[test]
    fn excerpts_prefer_the_error_message() {
        assert_eq!(
            openai_excerpt(br#"{"error":{"message":"rate limited","type":"x"}}"#, None),
            "rate limited"
        );
        assert_eq!(
            openai_excerpt(br#"{"error":"model not found"}"#, None),
            "model not found"
        );
        assert_eq!(openai_excerpt(b"oops", None), "oops");
        let long = "x".repeat(500);
        assert_eq!(
            openai_excerpt(long.as_bytes(), None).chars().count(),
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

    /// An upstream that completes the TCP handshake (the kernel does, from the listen backlog)
    /// and then never answers the TLS ClientHello: the connect timeout ends the attempt, as a
    /// timeout, long before the 60 s attempt timeout. With only the TCP connect bounded, the
    /// outer 20 s bound fails this test.
    #[tokio::test]
    async fn a_stalled_tls_handshake_is_cut_by_the_connect_timeout() {
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = stalled.local_addr().unwrap().port();
        let config = ProviderConfig {
            name: "openai".into(),
            kind: crate::providers::ProviderKind::Openai,
            base_url: format!("https://127.0.0.1:{port}/v1"),
            base_urls: vec![format!("https://127.0.0.1:{port}/v1")],
            api_key: None,
            tier: crate::providers::CostTier::Cloud,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_millis(200),
            limits: BodyLimits::default(),
            pool: Default::default(),
            proxy: Default::default(),
            default_model: None,
            max_output_tokens: 4096,
            headers: Vec::new(),
            query: Vec::new(),
        };
        let endpoint = Endpoint::new(&config, &OpenAi, &[]).unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            endpoint.complete(br#"{"model":"m"}"#.to_vec(), |_| unreachable!()),
        )
        .await
        .expect("the connect timeout, not the attempt timeout, ends the attempt");
        assert!(matches!(result, Err(ProviderError::Timeout)), "{result:?}");
        drop(stalled);
    }

    /// Bodies from the simulated upstream, read with the providers' client.
    async fn respond(sim: &crate::demo::sim::Sim) -> Response {
        let client = client("test", Duration::from_secs(5), &[], None).expect("a client");
        let uri: http::Uri = format!("{}/chat/completions", sim.openai_base())
            .parse()
            .unwrap();
        let request = http::Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap();
        client.request(request).await.expect("the sim answers")
    }

    fn content_length(r: &Response) -> Option<u64> {
        r.body().size_hint().exact()
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
        assert!(content_length(&r).is_some_and(|n| n > 2048));
        assert_eq!(read_body(r, 2048).await.unwrap_err(), too_large);
        // No Content-Length and no end: cut once more than the limit would be buffered.
        let endless = Step::Endless {
            chunks: vec![b"{\"choices\":[".to_vec()],
            filler: vec![b' '; 1000],
        };
        sim.push(endless.clone());
        let r = respond(&sim).await;
        assert_eq!(content_length(&r), None);
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
        let excerpt = openai_excerpt(body.as_bytes(), Some(&key));
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
        let message = redirect_message(&headers, std::slice::from_ref(&key));
        assert!(
            message.contains("https://elsewhere.example/v1?k=<redacted>"),
            "{message}"
        );
        assert!(message.contains("not followed"), "{message}");
        assert_eq!(
            redirect_message(&HeaderMap::new(), &[]),
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
            scrub("bad key sk-123 given", std::slice::from_ref(&key)),
            "bad key <redacted> given"
        );
        // Every secret: the key and the provider's secret headers.
        assert_eq!(
            scrub("sk-123 then az-9", &[key, Secret::new("az-9")]),
            "<redacted> then <redacted>"
        );
    }
}
