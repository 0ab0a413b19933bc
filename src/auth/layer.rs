//! The edge layer that admits a call with its client or answers `UNAUTHENTICATED` itself, and
//! the strict, bounded parser of the `authorization` header it reads.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};

use crate::domain::{Client, Untrusted};
use crate::metrics::Metrics;
use crate::throttle::PeerThrottle;

use super::clients::{Clients, digest};

/// Longest `authorization` value read; anything longer is malformed.
pub const MAX_AUTHORIZATION_BYTES: usize = 512;
/// The one message of every rejection: it never says which part was wrong.
pub const REJECTED_MESSAGE: &str = "missing or invalid credentials";
/// Calls under this path prefix need no credentials (probes must work without secrets).
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` header (and no client certificate).
    Missing,
    /// Not `Bearer <token>`, too long, not visible ASCII, or more than one header.
    Malformed,
    /// A well-formed token that no client has.
    Unknown,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing => "missing_credentials",
            Rejection::Malformed => "malformed_credentials",
            Rejection::Unknown => "invalid_credentials",
        }
    }
}

/// The token of an `authorization` value: `Bearer` (any case), exactly one space, then 1 or
/// more visible ASCII characters, at most [`MAX_AUTHORIZATION_BYTES`] in all. `None` for
/// anything else.
pub fn parse_bearer(value: &[u8]) -> Option<&[u8]> {
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let (scheme, token) = value.split_at_checked(b"bearer ".len())?;
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty() && token.iter().all(visible))
        .then_some(token)
}

/// The bearer token of a request's headers, or why there is none usable.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&[u8], Rejection> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = values.next().ok_or(Rejection::Missing)?;
    if values.next().is_some() {
        return Err(Rejection::Malformed);
    }
    parse_bearer(first.as_bytes()).ok_or(Rejection::Malformed)
}

/// Decides who a call is from. Shared by every connection's [`AuthService`].
pub struct Authenticator {
    clients: Arc<Clients>,
    /// Client certificates are verified (mTLS): a certificate identity is accepted.
    mtls: bool,
    metrics: Arc<Metrics>,
    log_throttle: PeerThrottle,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("clients", &self.clients.len())
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

/// Peers whose rejections are logged individually at most once a minute.
const MAX_THROTTLED_PEERS: usize = 1024;

impl Authenticator {
    pub fn new(clients: Arc<Clients>, mtls: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            clients,
            mtls,
            metrics,
            log_throttle: PeerThrottle::new(Duration::from_secs(60), MAX_THROTTLED_PEERS),
        }
    }

    /// The client of this request: its verified certificate's identity, else its bearer
    /// token's entry.
    ///
    /// With a clients file, a certificate identifies a client only if the file has an entry of
    /// that id (which supplies its limits): otherwise any certificate of the CA could spend
    /// without limits by naming itself, and removing an entry would lift a client's limits
    /// instead of revoking it. Without a clients file (mTLS only), the CA alone vouches and
    /// every certificate id gets the global limits.
    pub fn authenticate<B>(
        &self,
        request: &http::Request<B>,
        cert_client_id: Option<String>,
    ) -> Result<Arc<Client>, Rejection> {
        if self.mtls
            && let Some(id) = cert_client_id
        {
            if let Some(client) = self.clients.by_id(&id) {
                return Ok(client);
            }
            if !self.clients.entries_required() {
                return Ok(Arc::new(Client {
                    id,
                    cloud_calls_per_day: None,
                    max_cloud_calls: None,
                    max_in_flight: None,
                    admin: false,
                }));
            }
        }
        let token = bearer_token(request.headers())?;
        self.clients
            .by_digest(&digest(token))
            .ok_or(Rejection::Unknown)
    }

    /// [`authenticate`](Self::authenticate), counting and logging a rejection (throttled per
    /// peer): what a door does before it serves a call. `peer` is the caller's address and
    /// the client id of its verified certificate, as the door's transport knows them.
    pub fn check<B>(
        &self,
        request: &http::Request<B>,
        peer: Peer,
    ) -> Result<Arc<Client>, Rejection> {
        self.authenticate(request, peer.cert_client_id)
            .inspect_err(|why| self.rejected(request, peer.ip, *why))
    }

    /// Counts a rejection and logs it, throttled per peer.
    fn rejected<B>(&self, request: &http::Request<B>, peer: Option<IpAddr>, why: Rejection) {
        self.metrics.rejected(why.reason());
        if self.log_throttle.check(peer) {
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(
                "rejected a call from {peer} to {}: {} (UNAUTHENTICATED; this peer's next rejections are logged at most once a minute)",
                Untrusted(request.uri().path()),
                why.reason(),
            );
        }
    }
}

/// Who is calling, as a door's transport knows it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub ip: Option<IpAddr>,
    /// The client id of the peer's verified certificate (mTLS).
    pub cert_client_id: Option<String>,
}

/// The caller's IP address, over plain TCP or TLS (tonic puts a different connect info in the
/// extensions for each).
fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    tcp.and_then(TcpConnectInfo::remote_addr).map(|a| a.ip())
}

/// Edge layer 2: authentication. `None` (authentication off) passes every call through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub fn new(auth: Option<Arc<Authenticator>>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service of [`AuthLayer`]: admits a call with its `Arc<Client>` in the request's
/// extensions, or answers `UNAUTHENTICATED` without calling the inner service.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if let Some(auth) = &self.auth
            && !request.uri().path().starts_with(HEALTH_PREFIX)
        {
            let peer = Peer {
                ip: peer_ip(request.extensions()),
                cert_client_id: crate::tls::peer_client_id(request.extensions()),
            };
            match auth.check(&request, peer) {
                Ok(client) => {
                    request.extensions_mut().insert(client);
                }
                Err(_) => {
                    let status = tonic::Status::unauthenticated(REJECTED_MESSAGE);
                    return Either::Left(ready(Ok(status.into_http())));
                }
            }
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::{ClientSet, client_block};

    fn parse(text: &str) -> Result<ClientSet, crate::auth::ClientsError> {
        ClientSet::parse(text, std::path::Path::new("clients.toml"))
    }

    #[test]
    fn parses_the_bearer_scheme_strictly() {
        assert_eq!(parse_bearer(b"Bearer vra_abc"), Some(&b"vra_abc"[..]));
        assert_eq!(parse_bearer(b"bEaReR x"), Some(&b"x"[..]));
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer  two",
            b"Bearer a b",
            b"Basic dXNlcjpw",
            b"Bearerx abc",
            b"Bearer abc\t",
            b"Bearer \xc3\xa9",
            b" Bearer abc",
        ] {
            assert_eq!(parse_bearer(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES - 7));
        assert!(parse_bearer(long.as_bytes()).is_some());
        let longer = format!("{long}a");
        assert_eq!(parse_bearer(longer.as_bytes()), None);
    }

    #[test]
    fn one_authorization_header_only() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(Rejection::Missing));
        headers.append("authorization", "Bearer a".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok(&b"a"[..]));
        headers.append("authorization", "Bearer b".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(Rejection::Malformed));
    }

    /// What the inner service saw: the client id it was handed, if any.
    type Seen = Arc<Mutex<Vec<Option<String>>>>;

    fn layered(
        auth: Option<Arc<Authenticator>>,
        seen: Seen,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future: Send,
    > {
        tower::Layer::layer(
            &AuthLayer::new(auth),
            tower::service_fn(move |request: http::Request<()>| {
                let client = request.extensions().get::<Arc<Client>>();
                seen.lock().unwrap().push(client.map(|c| c.id.clone()));
                std::future::ready(Ok(http::Response::new("served".to_string())))
            }),
        )
    }

    fn call_with(path: &str, authorization: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test]
    async fn the_layer_admits_with_the_client_or_answers_unauthenticated_itself() {
        use tower::ServiceExt as _;
        let metrics = Arc::new(Metrics::new());
        let clients = Arc::new(Clients::from_set(
            parse(&client_block("a", "vra_tok")).unwrap(),
        ));
        let auth = Some(Arc::new(Authenticator::new(
            clients,
            false,
            metrics.clone(),
        )));
        let seen = Seen::default();
        let gen_path = "/vra.gateway.v1.GatewayService/Generate";

        let ok = layered(auth.clone(), seen.clone())
            .oneshot(call_with(gen_path, Some("Bearer vra_tok")))
            .await
            .unwrap();
        assert_eq!(ok.body(), "served");
        for bad in [None, Some("Bearer vra_other"), Some("Basic vra_tok")] {
            let no = layered(auth.clone(), seen.clone())
                .oneshot(call_with(gen_path, bad))
                .await
                .unwrap();
            assert_eq!(no.headers()["grpc-status"], "16");
            assert_eq!(
                no.headers()["grpc-message"],
                "missing%20or%20invalid%20credentials"
            );
            assert!(no.body().is_empty());
        }
        layered(auth.clone(), seen.clone())
            .oneshot(call_with("/grpc.health.v1.Health/Check", None))
            .await
            .unwrap();
        layered(None, seen.clone())
            .oneshot(call_with(gen_path, None))
            .await
            .unwrap();
        // Rejected calls never reached the inner service.
        assert_eq!(*seen.lock().unwrap(), [Some("a".to_string()), None, None]);
        let text = metrics.render();
        for reason in [
            "missing_credentials",
            "malformed_credentials",
            "invalid_credentials",
        ] {
            let line = format!("vra_gateway_requests_rejected_total{{reason=\"{reason}\"}} 1");
            assert!(text.contains(&line), "{text}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any bytes: no panic; a token is accepted only in the strict shape.
        #[test]
        fn bearer_parser_is_total(value in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Some(token) = parse_bearer(&value) {
                proptest::prop_assert!(value.len() <= MAX_AUTHORIZATION_BYTES);
                proptest::prop_assert!(value[..7].eq_ignore_ascii_case(b"bearer "));
                proptest::prop_assert!(!token.is_empty());
                proptest::prop_assert!(token.iter().all(|b| (0x21..=0x7e).contains(b)));
            }
        }

        /// Every well-shaped value parses back to its token, whatever the scheme's case.
        #[test]
        fn bearer_round_trips(token in "[!-~]{1,500}", upper in proptest::collection::vec(proptest::bool::ANY, 6)) {
            let scheme: String = "bearer".chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect();
            let value = format!("{scheme} {token}");
            proptest::prop_assert_eq!(parse_bearer(value.as_bytes()), Some(token.as_bytes()));
        }
    }
}
