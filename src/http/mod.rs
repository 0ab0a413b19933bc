//! The OpenAI-compatible HTTP door (`VRA_HTTP_ADDR`): any OpenAI client library, in any
//! language, calls the same pipeline the gRPC service calls — the routing matrix, the exact
//! per-report budget, the cost cap, quotas, fallback and the `[Hybrid]` lines — and the answer
//! says how it was routed.
//!
//! - `POST /v1/chat/completions`, unary and `stream: true` (SSE `chat.completion.chunk`s,
//!   then `data: [DONE]`); the report travels in `x-vra-*` headers or the body's `metadata`
//!   ([`request`]); the answer's `x-vra-*` headers say how it was routed ([`response`]).
//! - `GET /v1/models`: `vra-auto` (the matrix decides) and the configured tiers' models (a
//!   pinned model: its tier serves, the matrix aside).
//! - `GET /healthz`, without credentials.
//!
//! The door is axum over hyper (HTTP/1.1 and HTTP/2, also h2c), behind the listener's TLS when
//! `VRA_TLS_*` is set ([`crate::tls`], with `http/1.1` offered by ALPN too). A call passes, in
//! order: authentication (a bearer token of `VRA_CLIENTS_FILE`, or a verified client
//! certificate), the body limit, reading the request, the shared [`Front`] (shedding, counting,
//! the caller's deadline from `x-vra-timeout-ms`, the pipeline). Errors are OpenAI's shape
//! ([`error`]).

mod error;
pub mod request;
pub mod response;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt as _;
use opentelemetry::context::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, Span};

use crate::auth::Authenticator;
use crate::domain::Client;
use crate::front::{Front, record_input};
use crate::gateway::{GenerateInput, StreamItem};
use crate::resilience::Deadline;
use crate::service::validate;
use crate::telemetry;
use crate::tls::{Protocols, ServerTls};
pub use error::ApiError;
use request::{ChatCompletionRequest, ModelChoice, Read, Sources};
use response::{Chunks, RouteHeaders};

/// The door's shared state.
pub struct HttpDoor {
    front: Arc<Front>,
    auth: Option<Arc<Authenticator>>,
    /// The configured tiers' (provider, model), primary first.
    tiers: [(String, String); 2],
}

impl HttpDoor {
    pub fn new(
        front: Arc<Front>,
        auth: Option<Arc<Authenticator>>,
        tiers: [(String, String); 2],
    ) -> Arc<Self> {
        Arc::new(Self { front, auth, tiers })
    }
}

/// The door's routes: the two OpenAI endpoints behind authentication, `/healthz` without.
pub fn router(door: Arc<HttpDoor>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(door.clone(), authenticate))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(door)
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` resolves;
/// then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<Peer>();
    match tls {
        None => {
            let listener = PlainListener(listener);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let local = listener.local_addr()?;
            let incoming = Box::pin(crate::tls::incoming(listener, tls, Protocols::Http));
            axum::serve(TlsListener { incoming, local }, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Who is on the other end of a connection: its address and, over mTLS, the client id of its
/// verified certificate.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert_client_id: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The plain listener: TCP with `TCP_NODELAY` (as the gRPC listener).
pub struct PlainListener(TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Peer {
                        addr,
                        cert_client_id: None,
                    };
                    return (stream, peer);
                }
                Err(e) => {
                    tracing::warn!("HTTP door: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.0.local_addr()?,
            cert_client_id: None,
        })
    }
}

/// The TLS listener: the connections of [`crate::tls::incoming`], handshakes done.
pub struct TlsListener {
    incoming: std::pin::Pin<
        Box<dyn Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static>,
    >,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let (tcp, session) = stream.get_ref();
                    let Ok(addr) = tcp.peer_addr() else { continue };
                    let cert_client_id = session
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(crate::tls::client_id)
                        .filter(|id| Client::valid_id(id));
                    return (
                        stream,
                        Peer {
                            addr,
                            cert_client_id,
                        },
                    );
                }
                // The accept loop logs its own failures.
                Some(Err(_)) => continue,
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            cert_client_id: None,
        })
    }
}

/// Admits a request with its client, or answers 401 in OpenAI's shape.
async fn authenticate(
    State(door): State<Arc<HttpDoor>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &door.auth {
        let peer = match request.extensions().get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(p)) => crate::auth::Peer {
                ip: Some(p.addr.ip()),
                cert_client_id: p.cert_client_id.clone(),
            },
            None => crate::auth::Peer::default(),
        };
        match auth.check(&request, peer) {
            Ok(client) => {
                request.extensions_mut().insert(client);
            }
            Err(_) => return ApiError::Unauthorized.into_response(),
        }
    }
    next.run(request).await
}

async fn healthz() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn models(State(door): State<Arc<HttpDoor>>) -> Response {
    let tiers = door.tiers.each_ref().map(|(p, m)| (p.as_str(), m.as_str()));
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        response::models(&tiers),
    )
        .into_response()
}

/// The gateway's id of one call: the body's `id`, `x-request-id` and the span's `vra.call.id`.
fn call_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
async fn chat_completions(State(door): State<Arc<HttpDoor>>, request: Request) -> Response {
    let id = call_id();
    let span = telemetry::http_span("POST", "/v1/chat/completions");
    span.record("vra.call.id", id.as_str());
    let cx = telemetry::extract_parent(&span, request.headers());
    let mut response = async {
        match chat(&door, &id, request).await {
            Ok(response) => response,
            Err(e) => {
                let status = e.status();
                let response = e.into_response();
                telemetry::record_http_answer(&Span::current(), status.as_u16(), None);
                response
            }
        }
    }
    .instrument(span.clone())
    .with_context(cx)
    .await;
    if let Ok(value) = HeaderValue::try_from(id) {
        response.headers_mut().insert(response::REQUEST_ID, value);
    }
    response
}

/// The call: read it, admit it, run it, answer it.
async fn chat(door: &HttpDoor, id: &str, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client = parts.extensions.get::<Arc<Client>>().cloned();
    let span = Span::current();
    if let Some(c) = &client {
        span.record("vra.client.id", c.id.as_str());
    }
    let deadline = deadline(&parts.headers);
    let limit = door.front.max_request_bytes();
    let bytes = read_body(body, limit).await?;
    let body: ChatCompletionRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Body(e.to_string()))?;
    let read = request::read(&parts.headers, body).map_err(ApiError::Refused)?;
    let pin = match &read.model {
        ModelChoice::Auto => None,
        ModelChoice::Named(name) => Some(
            request::pinned_tier(name, &door.tiers[0].1, &door.tiers[1].1)
                .ok_or_else(|| ApiError::ModelNotFound(name.clone()))?,
        ),
    };
    if let Some(user) = &read.user {
        span.record("vra.user.hash", user_hash(user).as_str());
    }
    let method = if read.stream {
        "ChatCompletionsStream"
    } else {
        "ChatCompletions"
    };
    let sources = read.sources;
    let refused = |e| ApiError::Gateway(e, sources);
    let ticket = door
        .front
        .admit(method, client.as_deref())
        .map_err(refused)?;
    let Read {
        request: pipeline_request,
        stream,
        include_usage,
        ..
    } = read;
    let mut input = validate(pipeline_request, door.front.max_prompt_bytes()).map_err(refused)?;
    input = GenerateInput {
        pin,
        client,
        ..input
    };
    record_input(&span, &input);
    if !stream {
        let generated = door
            .front
            .generate(method, ticket, &input, deadline)
            .await
            .map_err(refused)?;
        telemetry::record_http_answer(&span, 200, None);
        let mut response = (
            [(http::header::CONTENT_TYPE, "application/json")],
            response::completion(id, unix_now(), &generated),
        )
            .into_response();
        RouteHeaders::of_call(&generated).write(response.headers_mut());
        return Ok(response);
    }
    let mut items = Box::pin(door.front.generate_stream(method, ticket, input, deadline));
    // Fallback happens before the first byte: until the route is final, a failure is an
    // ordinary error answer.
    let started = match items.next().await {
        Some(Ok(StreamItem::Started(started))) => started,
        Some(Err(e)) => return Err(refused(e)),
        Some(Ok(_)) | None => return Err(refused(crate::error::GatewayError::Internal)),
    };
    let chunks = Chunks {
        id: id.to_string(),
        created: unix_now(),
        model: started.route.model.clone(),
    };
    let first = chunks.start();
    let events = items.map(move |item| -> Result<Bytes, std::convert::Infallible> {
        Ok(match item {
            Ok(StreamItem::Delta(text)) => chunks.delta(&text),
            Ok(StreamItem::Done(generated)) => {
                telemetry::record_cost(&span, generated.usage, generated.cost);
                telemetry::record_http_answer(&span, 200, None);
                chunks.finish(&generated, include_usage)
            }
            Ok(StreamItem::Started(_)) => Bytes::new(),
            // After the first byte the status is sent: the stream ends with an `error` event,
            // never a silent cut.
            Err(e) => {
                let error = ApiError::Gateway(e, Sources::default());
                telemetry::record_http_answer(&span, error.status().as_u16(), None);
                Bytes::from(response::sse(&error.body()))
            }
        })
    });
    let body = futures_util::stream::once(std::future::ready(Ok(first))).chain(events);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    RouteHeaders::of_stream(&started).write(headers);
    Ok(response)
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::Body(format!("cannot read the body: {e}"))),
    }
}

/// The caller's deadline: `x-vra-timeout-ms` from now (none without it, or unreadable).
fn deadline(headers: &HeaderMap) -> Deadline {
    let ms = headers
        .get(request::TIMEOUT_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    Deadline::after(tokio::time::Instant::now(), ms.map(Duration::from_millis))
}

/// The caller's `user` as spans may show it: the first 16 hex digits of its SHA-256.
fn user_hash(user: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(user.as_bytes());
    crate::auth::to_hex(&digest[..8])
}
