//! Client identity: who is calling, proven by a bearer token or a client certificate.
//!
//! - [`Clients`]: the entries of `VRA_CLIENTS_FILE`, looked up by the SHA-256 digest of a
//!   bearer token (the file stores digests only, and a digest lookup compares nothing that
//!   depends on the secret itself) or by id (a verified client certificate). The set is
//!   swapped atomically by [`Clients::reload`] on SIGHUP: a call holds the `Arc<Client>` it
//!   was admitted with, so a reload never disturbs a call in flight, and a file that does not
//!   parse keeps the clients already loaded.
//! - [`AuthLayer`]: the edge layer that admits a call (inserting its `Arc<Client>` into the
//!   request's extensions) or answers `UNAUTHENTICATED` itself, with one fixed message that
//!   never says which part was wrong. The health service needs no credentials.
//! - [`parse_bearer`]: the `authorization` header parser, strict and bounded.
//!
//! Nothing secret leaves this module: a token is hashed and dropped, never logged, never in
//! a status, never in an error (file errors name a file, a line and a field, not a value).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::{Either, Ready, ready};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::domain::{Client, Untrusted};
use crate::metrics::Metrics;
use crate::telemetry::Throttle;

/// What every token minted by `vra-gateway clients new-token` starts with, so a leaked one
/// is recognisable (by people and by secret scanners).
pub const TOKEN_PREFIX: &str = "vra_";
/// Random bytes in a minted token (hex-encoded after the prefix).
pub const TOKEN_BYTES: usize = 32;
/// Longest `authorization` value read; anything longer is malformed.
pub const MAX_AUTHORIZATION_BYTES: usize = 512;
/// The one message of every rejection: it never says which part was wrong.
pub const REJECTED_MESSAGE: &str = "missing or invalid credentials";
/// Calls under this path prefix need no credentials (probes must work without secrets).
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// A SHA-256 digest of a bearer token.
pub type TokenDigest = [u8; 32];

/// The SHA-256 digest of a token.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes exactly 64 hex digits (either case) into a digest.
fn digest_from_hex(text: &str) -> Option<TokenDigest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A fresh token: the prefix and [`TOKEN_BYTES`] bytes of the thread's CSPRNG (seeded from
/// the OS), hex-encoded.
pub fn new_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", to_hex(&bytes))
}

/// The `[[client]]` block for `id` and its token, ready to paste into the clients file.
pub fn client_block(id: &str, token: &str) -> String {
    format!(
        "[[client]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
        to_hex(&digest(token.as_bytes()))
    )
}

/// Why the clients file was rejected: `FILE:LINE: what` (or `FILE: what` when there is no
/// line, e.g. the file cannot be read). Never carries a value from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ClientsError {
    pub path: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ClientsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The file as written; values are checked after parsing, with their spans for line numbers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<Spanned<ClientEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    cloud_calls_per_day: Option<u32>,
    max_cloud_calls: Option<u32>,
    /// At least 1 (0 would refuse every call; leave it out for no limit).
    max_in_flight: Option<std::num::NonZeroU32>,
}

/// One parsed clients file: every client by id, and those with a token by its digest.
#[derive(Debug, Default)]
pub struct ClientSet {
    by_digest: HashMap<TokenDigest, Arc<Client>>,
    by_id: HashMap<String, Arc<Client>>,
}

impl ClientSet {
    /// Parses and validates a clients file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ClientSet, ClientsError> {
        let error = |offset: Option<usize>, message: String| ClientsError {
            path: path.to_path_buf(),
            line: offset.map(|o| line_of(text, o)),
            message,
        };
        let file: ClientsFile = toml::from_str(text).map_err(|e| {
            // The message only, not the error's Display: that quotes the offending line,
            // which could hold a token pasted by mistake.
            error(e.span().map(|s| s.start), redact(e.message()))
        })?;
        let mut set = ClientSet::default();
        for entry in file.client {
            let at = entry.span().start;
            let entry = entry.into_inner();
            let id_at = Some(entry.id.span().start);
            let id = entry.id.into_inner();
            if !Client::valid_id(&id) {
                return Err(error(
                    id_at,
                    "invalid client id: use 1 to 64 of A-Z a-z 0-9 . _ -".into(),
                ));
            }
            let digest = match entry.token_sha256 {
                Some(hex) => Some(digest_from_hex(hex.get_ref()).ok_or_else(|| {
                    error(
                        Some(hex.span().start),
                        "token_sha256 must be 64 hex digits (the SHA-256 of the token)".into(),
                    )
                })?),
                None => None,
            };
            let client = Arc::new(Client {
                id: id.clone(),
                cloud_calls_per_day: entry.cloud_calls_per_day,
                max_cloud_calls: entry.max_cloud_calls,
                max_in_flight: entry.max_in_flight.map(std::num::NonZeroU32::get),
            });
            match set.by_id.entry(id) {
                Entry::Occupied(e) => {
                    return Err(error(id_at, format!("duplicate client id `{}`", e.key())));
                }
                Entry::Vacant(e) => {
                    e.insert(client.clone());
                }
            }
            if let Some(digest) = digest
                && set.by_digest.insert(digest, client).is_some()
            {
                return Err(error(
                    Some(at),
                    "duplicate token_sha256: two clients share a token".into(),
                ));
            }
        }
        Ok(set)
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<ClientSet, ClientsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientsError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        ClientSet::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A parser message with any token-looking word cut to its prefix (serde quotes values in
/// "invalid type" messages), then escaped as outside text.
fn redact(message: &str) -> String {
    let cut: Vec<String> = message
        .split(' ')
        .map(|word| match word.find(TOKEN_PREFIX) {
            Some(i) => format!("{}{TOKEN_PREFIX}…", &word[..i]),
            None => word.to_string(),
        })
        .collect();
    Untrusted(&cut.join(" ")).to_string()
}

/// The registered clients, swapped whole on reload.
#[derive(Debug)]
pub struct Clients {
    /// The file re-read on reload (`None`: nothing to re-read).
    path: Option<PathBuf>,
    set: ArcSwap<ClientSet>,
    /// Whether a certificate needs an entry to identify a client (there is a clients file).
    /// Without one (mTLS only) the CA alone vouches for its certificates.
    entries_required: bool,
}

impl Clients {
    /// Loads the clients file (startup: an error here stops the gateway).
    pub fn load(path: &Path) -> Result<Clients, ClientsError> {
        let set = ClientSet::read(path)?;
        tracing::info!("loaded {} clients from {}", set.len(), path.display());
        Ok(Clients {
            path: Some(path.to_path_buf()),
            set: ArcSwap::from_pointee(set),
            entries_required: true,
        })
    }

    /// No clients file: no token is accepted; certificates are, without per-client limits.
    pub fn none() -> Clients {
        Clients {
            path: None,
            set: ArcSwap::from_pointee(ClientSet::default()),
            entries_required: false,
        }
    }

    /// A fixed set (tests, embedding).
    pub fn from_set(set: ClientSet) -> Clients {
        Clients {
            path: None,
            set: ArcSwap::from_pointee(set),
            entries_required: true,
        }
    }

    /// Re-reads the clients file (SIGHUP). On success the new set replaces the old one at once
    /// (calls already admitted keep their `Arc<Client>`); on failure the old set stays and the
    /// error (file and line, never a value) is logged and returned. Without a file, a no-op.
    pub fn reload(&self) -> Result<usize, ClientsError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        match ClientSet::read(path) {
            Ok(set) => {
                let n = set.len();
                self.set.store(Arc::new(set));
                tracing::info!("clients reloaded from {}: {n} clients", path.display());
                Ok(n)
            }
            Err(e) => {
                tracing::error!(
                    "clients not reloaded: {e}; keeping the {} clients loaded before",
                    self.set.load().len()
                );
                Err(e)
            }
        }
    }

    /// The client whose token has this SHA-256 digest.
    pub fn by_digest(&self, digest: &TokenDigest) -> Option<Arc<Client>> {
        self.set.load().by_digest.get(digest).cloned()
    }

    /// The client registered under `id` (a certificate's identity).
    pub fn by_id(&self, id: &str) -> Option<Arc<Client>> {
        self.set.load().by_id.get(id).cloned()
    }

    /// Whether a certificate needs an entry of its id to identify a client.
    pub fn entries_required(&self) -> bool {
        self.entries_required
    }

    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }
}

/// Why a call was turned away: the `reason` label of `vra_gateway_requests_rejected_total`
/// (never shown to the caller, who gets [`REJECTED_MESSAGE`] whatever the reason).
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

/// Logs at most one line per peer per period; remembers at most `max_peers` peers, and
/// beyond that (a scan from many addresses) lets one line through per period for all the
/// others together, so neither the log nor the memory grows with the scanner.
#[derive(Debug)]
pub struct PeerThrottle {
    period: Duration,
    max_peers: usize,
    last: Mutex<HashMap<Option<IpAddr>, Instant>>,
    overflow: Throttle,
}

impl PeerThrottle {
    pub fn new(period: Duration, max_peers: usize) -> Self {
        Self {
            period,
            max_peers,
            last: Mutex::new(HashMap::new()),
            overflow: Throttle::new(period),
        }
    }

    /// Whether to log a rejection of `peer` now.
    pub fn check(&self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if let Some(at) = last.get_mut(&peer) {
            if now.duration_since(*at) < self.period {
                return false;
            }
            *at = now;
            return true;
        }
        if last.len() >= self.max_peers {
            last.retain(|_, at| now.duration_since(*at) < self.period);
        }
        if last.len() >= self.max_peers {
            return self.overflow.check().is_some();
        }
        last.insert(peer, now);
        true
    }

    /// Peers remembered now (for tests).
    pub fn remembered(&self) -> usize {
        self.last.lock().map(|l| l.len()).unwrap_or(0)
    }
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
    pub fn authenticate<B>(&self, request: &http::Request<B>) -> Result<Arc<Client>, Rejection> {
        if self.mtls
            && let Some(id) = crate::tls::peer_client_id(request.extensions())
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
                }));
            }
        }
        let token = bearer_token(request.headers())?;
        self.clients
            .by_digest(&digest(token))
            .ok_or(Rejection::Unknown)
    }

    /// Counts a rejection and logs it, throttled per peer.
    fn rejected<B>(&self, request: &http::Request<B>, why: Rejection) {
        self.metrics.rejected(why.reason());
        let peer = peer_ip(request.extensions());
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
            match auth.authenticate(&request) {
                Ok(client) => {
                    request.extensions_mut().insert(client);
                }
                Err(why) => {
                    auth.rejected(&request, why);
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
    use super::*;

    const PATH: &str = "clients.toml";

    fn parse(text: &str) -> Result<ClientSet, ClientsError> {
        ClientSet::parse(text, Path::new(PATH))
    }

    fn hex_of(token: &str) -> String {
        to_hex(&digest(token.as_bytes()))
    }

    #[test]
    fn parses_clients_with_and_without_tokens() {
        let text = format!(
            "[[client]]\nid = \"reports-python\"\ntoken_sha256 = \"{}\"\ncloud_calls_per_day = 2000\nmax_cloud_calls = 10\nmax_in_flight = 8\n\n[[client]]\nid = \"cert.only\"\n",
            hex_of("vra_a").to_uppercase()
        );
        let set = parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        let clients = Clients::from_set(set);
        let a = clients.by_digest(&digest(b"vra_a")).unwrap();
        assert_eq!(
            *a,
            Client {
                id: "reports-python".into(),
                cloud_calls_per_day: Some(2000),
                max_cloud_calls: Some(10),
                max_in_flight: Some(8),
            }
        );
        assert!(clients.by_digest(&digest(b"vra_b")).is_none());
        assert_eq!(clients.by_id("cert.only").unwrap().max_cloud_calls, None);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_and_line_and_never_a_value() {
        let good = hex_of("t1");
        let cases = [
            (
                "[[client]]\nid = \"ok\"\n\n[[client]]\nid = \"bad id\"\n",
                5,
                "invalid client id",
            ),
            (
                "[[client]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n",
                3,
                "64 hex",
            ),
            (
                "[[client]]\nid = \"a\"\ntoken_sha256 = \"zz\"\ntoken = \"vra_secretvalue\"\n",
                4,
                "unknown field",
            ),
            (
                "[[client]]\nid = \"a\"\n[[client]]\nid = \"a\"\n",
                4,
                "duplicate client id",
            ),
            (
                "[[client]]\nid = \"a\"\nmax_cloud_calls = \"vra_secretvalue\"\n",
                3,
                "invalid type",
            ),
            ("[[client]]\nid = \"a\"\nid = \"b\"\n", 3, ""),
            ("[[client]\n", 1, ""),
            (
                "[[client]]\ncloud_calls_per_day = 5\n",
                1,
                "missing field `id`",
            ),
            ("[[client]]\nid = \"a\"\nmax_cloud_calls = -1\n", 3, ""),
            ("[[client]]\nid = \"a\"\nmax_in_flight = 0\n", 3, ""),
        ];
        for (text, line, what) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("{PATH}:{line}: ")),
                "{e}"
            );
            assert!(e.message.contains(what), "{text}: {e}");
            assert!(!e.to_string().contains("secretvalue"), "{e}");
        }
        let dup = format!(
            "[[client]]\nid = \"a\"\ntoken_sha256 = \"{good}\"\n[[client]]\nid = \"b\"\ntoken_sha256 = \"{good}\"\n"
        );
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("duplicate token_sha256"), "{e}");
        assert!(!e.to_string().contains(&good), "{e}");
    }

    #[test]
    fn reload_swaps_a_good_file_and_keeps_the_old_set_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("vra-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clients.toml");
        let entry = |id: &str, token: &str| {
            format!(
                "[[client]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
                hex_of(token)
            )
        };
        std::fs::write(&path, entry("a", "ta") + &entry("b", "tb")).unwrap();
        let clients = Clients::load(&path).unwrap();
        assert_eq!(clients.len(), 2);
        std::fs::write(&path, entry("b", "tb")).unwrap();
        assert_eq!(clients.reload(), Ok(1));
        assert!(clients.by_digest(&digest(b"ta")).is_none());
        std::fs::write(&path, "[[client]]\nid = \n").unwrap();
        let e = clients.reload().unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(clients.by_digest(&digest(b"tb")).is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(clients.reload().unwrap_err().line.is_none());
        assert_eq!(clients.len(), 1);
        assert_eq!(Clients::none().reload(), Ok(0));
        let _ = std::fs::remove_dir_all(&dir);
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

    #[test]
    fn minted_tokens_are_prefixed_random_and_match_their_block() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert!(parse_bearer(format!("Bearer {a}").as_bytes()).is_some());
        let set = parse(&client_block("x", &a)).unwrap();
        let clients = Clients::from_set(set);
        assert_eq!(clients.by_digest(&digest(a.as_bytes())).unwrap().id, "x");
    }

    #[test]
    fn the_peer_throttle_is_per_peer_and_bounded() {
        let t = PeerThrottle::new(Duration::from_secs(3600), 2);
        let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        assert!(t.check(ip(1)));
        assert!(!t.check(ip(1)));
        assert!(t.check(ip(2)));
        // Full: the others share one line per period.
        assert!(t.check(ip(3)));
        assert!(!t.check(ip(4)));
        assert!(!t.check(ip(3)));
        assert_eq!(t.remembered(), 2);
        let every_time = PeerThrottle::new(Duration::ZERO, 1);
        assert!(every_time.check(ip(1)));
        assert!(every_time.check(ip(2)));
        assert!(every_time.check(ip(1)));
        assert_eq!(every_time.remembered(), 1);
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
