//! TLS of the gRPC listener (and mTLS client identities) and of upstream HTTPS.
//!
//! # The listener
//!
//! With `VRA_TLS_CERT_FILE` + `VRA_TLS_KEY_FILE`, [`ServerTls`] holds the rustls server
//! configuration (ring provider, ALPN `h2`; with `VRA_TLS_CLIENT_CA_FILE`, client certificates
//! required and verified against that bundle). [`incoming`] is the accept loop handed to
//! tonic's `serve_with_incoming_shutdown`: it accepts TCP, runs each handshake on its own task
//! (bounded in time and in number, so slow or silent clients cannot pin memory or hold up
//! the others) with the configuration current *at accept time*, and yields the finished
//! `tokio_rustls::server::TlsStream`s. SIGHUP calls [`ServerTls::reload`], which swaps the
//! configuration atomically; connections already open keep the one they started with. So
//! does a change of the files ([`ServerTls::watch`], every `VRA_TLS_RELOAD_CHECK_MS`), for
//! certificates rotated without a signal.
//!
//! # Client identities (mTLS)
//!
//! tonic's `Connected` impl for `TlsStream<TcpStream>` (feature `tls-connect-info`, part of
//! `tls-ring`) puts a [`TlsConnectInfo<TcpConnectInfo>`] with the peer's certificate chain
//! into the extensions of every request of the connection. tonic inserts it in the
//! per-connection service, *outside* the layers stacked with `Server::builder().layer(..)`,
//! so an edge layer sees it (tests/tls.rs proves it on a real connection).
//! [`peer_client_id`] reads it. (The plain `TcpIncoming` path inserts a bare
//! `TcpConnectInfo` instead: there `peer_client_id` is `None`.)
//!
//! # Upstreams
//!
//! [`upstream_roots`] loads `VRA_UPSTREAM_CA_FILE`: extra roots *added* to the system ones
//! for the providers' HTTPS (see `providers::http`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::Stream;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::{
    ConfigError, Setting, TLS_CERT_FILE, TLS_CLIENT_CA_FILE, TLS_KEY_FILE, TlsFiles,
    UPSTREAM_CA_FILE,
};
use crate::throttle::Throttle;

/// How long a client gets to finish its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at most. Past it the accept loop waits (new connections queue in
/// the kernel's backlog), so clients that open connections and never finish the handshake
/// hold at most this many sockets and rustls buffers, each for at most [`HANDSHAKE_TIMEOUT`].
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// TLS handshakes in progress at most from one IP address. Past it, that address's new
/// connections are closed at once, so one host cannot hold the global
/// [`MAX_PENDING_HANDSHAKES`] and starve everyone else.
pub const MAX_PENDING_HANDSHAKES_PER_PEER: usize = 32;

/// Finished connections waiting for the server to pick them up.
const ACCEPTED_QUEUE: usize = 64;

/// Failed handshakes are logged at debug; one a minute at most is also logged at warn, so a
/// scanner or a misconfigured client shows up without flooding the log.
const FAILURE_WARN_EVERY: Duration = Duration::from_secs(60);

/// After an accept error that is not about one connection (e.g. out of file descriptors),
/// how long the loop waits before accepting again instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

fn config_error(setting: Setting, message: String) -> ConfigError {
    ConfigError {
        var: setting.var.to_string(),
        message,
    }
}

/// The rustls provider of every TLS configuration here: ring, as for the upstream clients
/// (no aws-lc build), chosen explicitly rather than through the process default.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads the PEM certificates of `path` (the file named by `setting`). A missing or
/// unreadable file, a malformed PEM section or a file without any certificate is an error
/// naming the setting and the file.
fn load_certs(path: &Path, setting: Setting) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| config_error(setting, format!("cannot read {shown}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| config_error(setting, format!("{shown} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(
            setting,
            format!("{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(certs)
}

/// Reads the PEM private key (PKCS#8, PKCS#1 or SEC1) of `VRA_TLS_KEY_FILE`. Errors name
/// the file but never quote it: a malformed key file is still key material.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| config_error(TLS_KEY_FILE, format!("cannot read {shown}: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let what = match e {
            pem::Error::NoItemsFound => "holds no PEM private key",
            _ => "is not a valid PEM private key",
        };
        config_error(
            TLS_KEY_FILE,
            format!("{shown} {what} (PKCS#8, PKCS#1 or SEC1)"),
        )
    })
}

/// The certificates of `path` as trust anchors; each must parse as an X.509 certificate.
fn root_store(path: &Path, setting: Setting) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path, setting)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            config_error(
                setting,
                format!(
                    "certificate #{} of {} is not a usable CA certificate: {e}",
                    i + 1,
                    path.display()
                ),
            )
        })?;
    }
    Ok(roots)
}

/// Builds the listener's rustls configuration from its files: TLS 1.2 and 1.3, ALPN `h2`
/// (gRPC clients require it), and with a client CA, client certificates required.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, ConfigError> {
    let certs = load_certs(&files.cert, TLS_CERT_FILE)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(TLS_CERT_FILE, format!("TLS versions: {e}")))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = root_store(ca, TLS_CLIENT_CA_FILE)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| config_error(TLS_CLIENT_CA_FILE, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        config_error(
            TLS_KEY_FILE,
            format!(
                "the key of {} does not fit the certificate of {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The listener's TLS: its files and the configuration new connections get, replaced as a
/// whole on [`reload`](Self::reload).
pub struct ServerTls {
    files: TlsFiles,
    current: ArcSwap<Configs>,
    /// The files as the last load or reload found them (see [`ServerTls::watch`]).
    loaded: Mutex<Stamp>,
}

/// Each file's modification time and size (`None` for one that cannot be read).
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// Which protocols a listener speaks, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP door: HTTP/2 or HTTP/1.1 (what most OpenAI clients speak).
    Http,
}

/// One certificate's configuration for each kind of listener.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl Configs {
    fn load(files: &TlsFiles) -> Result<Configs, ConfigError> {
        let grpc = server_config(files)?;
        let mut http = grpc.clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Configs {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
        })
    }
}

impl ServerTls {
    /// Loads the files. An error here is a startup error (exit 2) naming the setting.
    pub fn load(files: &TlsFiles) -> Result<ServerTls, ConfigError> {
        let loaded = Mutex::new(stamp(files));
        let configs = Configs::load(files)?;
        Ok(ServerTls {
            files: files.clone(),
            current: ArcSwap::from_pointee(configs),
            loaded,
        })
    }

    /// The configuration a connection accepted now gets, on a listener speaking `protocols`.
    pub fn current(&self, protocols: Protocols) -> Arc<ServerConfig> {
        let configs = self.current.load();
        match protocols {
            Protocols::Grpc => configs.grpc.clone(),
            Protocols::Http => configs.http.clone(),
        }
    }

    /// Whether clients must present a certificate (mTLS).
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reloads the files when they change, checking their modification time and size every
    /// `every`, until the task is dropped: certificates rotated by cert-manager (which swaps a
    /// mounted Secret's files) and the like need no signal. A change is reloaded once it has
    /// held still for one period, so a certificate and key written one after the other are
    /// read as a pair; a reload that fails keeps the previous certificate until the files
    /// change again.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut settling: Option<Stamp> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = stamp(&self.files);
            if *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) == now {
                settling = None;
            } else if settling.as_ref() == Some(&now) {
                settling = None;
                tracing::info!("TLS files changed: reloading");
                let _ = self.reload();
            } else {
                settling = Some(now);
            }
        }
    }

    /// Re-reads the files (SIGHUP, or a change seen by [`watch`](Self::watch)). On success
    /// new connections get the new certificate (and client CA); on failure the old
    /// configuration stays. Both outcomes are logged, naming the files — never their content.
    pub fn reload(&self) -> Result<(), ConfigError> {
        // Taken before the files are read: a change while they are read is seen later.
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.files);
        match Configs::load(&self.files) {
            Ok(configs) => {
                self.current.store(Arc::new(configs));
                tracing::info!(
                    "TLS certificate reloaded from {} (key {})",
                    self.files.cert.display(),
                    self.files.key.display()
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS reload failed, keeping the previous certificate: {e}");
                Err(e)
            }
        }
    }
}

/// The modification time and size of each of `files` (`None` for one that cannot be read).
fn stamp(files: &TlsFiles) -> Stamp {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
    .collect()
}

/// The gRPC listener's connections over TLS, for `serve_with_incoming_shutdown`.
///
/// The accept loop runs on its own task and ends (closing the listening socket) once the
/// returned stream is dropped — which tonic does as soon as shutdown begins.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    protocols: Protocols,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, tls, protocols, tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|stream| (Ok(stream), rx))
    })
}

/// Accepts TCP connections and hands each to its own handshake task, while fewer than
/// [`MAX_PENDING_HANDSHAKES`] are in progress. Ends when the server drops the stream.
async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    protocols: Protocols,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let per_peer = Arc::new(PendingPerPeer::default());
    let failures = Arc::new(Throttle::new(FAILURE_WARN_EVERY));
    loop {
        let permit = tokio::select! {
            () = tx.closed() => return,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        // Without it, Nagle's algorithm adds ~40 ms stalls to small responses (as for the
        // plain listener, see server.rs).
        let Some(slot) = per_peer.clone().take(peer.ip()) else {
            // Dropping the socket closes it; the global permit goes back with it.
            handshake_failed(
                peer,
                &format!(
                    "{MAX_PENDING_HANDSHAKES_PER_PEER} handshakes from this address already in progress; connection closed"
                ),
                &failures,
            );
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY for {peer}: {e}");
        }
        tokio::spawn(handshake(
            tcp,
            peer,
            tls.current(protocols),
            tx.clone(),
            (permit, slot),
            failures.clone(),
        ));
    }
}

/// An accept error: one about a single connection (reset before it was accepted) is skipped;
/// any other (e.g. out of file descriptors) is logged and paused on, instead of spinning.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::debug!("accept: {e}");
        return;
    }
    tracing::warn!("accept failed: {e}; pausing {ACCEPT_ERROR_PAUSE:?}");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// One handshake, bounded by [`HANDSHAKE_TIMEOUT`]; the finished stream goes to the server.
/// The permit is held until the handshake ends, not for the connection's life.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
    permit: (OwnedSemaphorePermit, PeerSlot),
    failures: Arc<Throttle>,
) {
    let accepted =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await;
    drop(permit);
    match accepted {
        Ok(Ok(stream)) => {
            // Fails only when the server has stopped accepting: the connection is dropped.
            let _ = tx.send(stream).await;
        }
        Ok(Err(e)) => handshake_failed(peer, &e.to_string(), &failures),
        Err(_) => handshake_failed(
            peer,
            &format!("not finished within {HANDSHAKE_TIMEOUT:?}"),
            &failures,
        ),
    }
}

fn handshake_failed(peer: SocketAddr, why: &str, failures: &Throttle) {
    if let Some(held_back) = failures.check() {
        tracing::warn!(
            held_back,
            "TLS handshake from {peer} failed: {why} (more failures within {}s are logged at debug)",
            FAILURE_WARN_EVERY.as_secs()
        );
    } else {
        tracing::debug!("TLS handshake from {peer} failed: {why}");
    }
}

/// Handshakes in progress per IP address. Only addresses with a handshake in progress have an
/// entry, so the map holds at most [`MAX_PENDING_HANDSHAKES`] entries.
#[derive(Default)]
struct PendingPerPeer(Mutex<HashMap<IpAddr, usize>>);

impl PendingPerPeer {
    /// A slot for one more handshake from `ip`, or `None` when it has its share already.
    fn take(self: Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PENDING_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        drop(map);
        Some(PeerSlot { peers: self, ip })
    }
}

/// One handshake's share of its address; given back when dropped (handshake done, failed,
/// timed out, or its task cancelled).
struct PeerSlot {
    peers: Arc<PendingPerPeer>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The client id proven by a verified client certificate of this connection (mTLS): the
/// certificate's first DNS SAN, else its CN. `None` without a client certificate (plain
/// TCP, or TLS without `VRA_TLS_CLIENT_CA_FILE`).
///
/// Reads the [`TlsConnectInfo<TcpConnectInfo>`] that tonic puts in every request's
/// extensions for connections from [`incoming`]; it is there for any tower layer stacked
/// with `Server::builder().layer(..)`. A certificate found there was verified during the
/// handshake: this listener only asks for client certificates with a required verifier.
///
/// Only an id that is a valid client id (`[A-Za-z0-9._-]{1,64}`, as in the clients file) is
/// returned: certificate names are not checked for syntax by the verifier, and an id ends up in
/// ledger keys, log lines and metric labels.
pub fn peer_client_id(extensions: &http::Extensions) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    client_id(certs.first()?).filter(|id| crate::domain::Client::valid_id(id))
}

/// A certificate's client id: its first DNS SAN, else its subject CN; `None` when it has
/// neither (or does not parse).
pub fn client_id(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) if !dns.is_empty() => Some(dns.to_string()),
                _ => None,
            })
        });
    san.or_else(|| {
        cert.subject().iter_common_name().find_map(|cn| {
            cn.as_str()
                .ok()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
    })
}

/// The extra roots of `VRA_UPSTREAM_CA_FILE` for the providers' HTTPS clients (added to the
/// system roots, not replacing them); none without the setting. A file that cannot be read,
/// is not PEM, holds no certificate or a certificate that does not parse is a startup error.
pub fn upstream_roots(path: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    // Parsed as trust anchors first, so a bad certificate fails here, naming the setting.
    root_store(path, UPSTREAM_CA_FILE)?;
    let roots = load_certs(path, UPSTREAM_CA_FILE)?;
    tracing::info!(
        "{}: loaded {} certificate(s) from {}",
        UPSTREAM_CA_FILE.var,
        roots.len(),
        path.display()
    );
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    #[test]
    fn each_address_gets_a_bounded_share_of_handshakes_given_back_on_drop() {
        let peers = Arc::new(PendingPerPeer::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut slots: Vec<PeerSlot> = (0..MAX_PENDING_HANDSHAKES_PER_PEER)
            .map(|_| peers.clone().take(a).expect("within the share"))
            .collect();
        assert!(peers.clone().take(a).is_none(), "past the share");
        let other = peers
            .clone()
            .take(b)
            .expect("another address has its own share");
        slots.pop();
        assert!(
            peers.clone().take(a).is_some(),
            "a dropped slot is given back"
        );
        drop(slots);
        drop(other);
        assert!(
            peers.0.lock().unwrap().is_empty(),
            "no entry outlives its handshakes"
        );
    }

    fn cert(sans: &[&str], cn: Option<&str>) -> CertificateDer<'static> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn the_client_id_is_the_first_dns_san() {
        let c = cert(
            &["report-builder.internal", "other.internal"],
            Some("cn-name"),
        );
        assert_eq!(client_id(&c).as_deref(), Some("report-builder.internal"));
    }

    #[test]
    fn an_ip_san_is_skipped_for_the_dns_one() {
        let c = cert(&["10.0.0.1", "svc.internal"], Some("cn-name"));
        assert_eq!(client_id(&c).as_deref(), Some("svc.internal"));
    }

    #[test]
    fn without_a_dns_san_the_client_id_is_the_cn() {
        assert_eq!(
            client_id(&cert(&[], Some("billing"))).as_deref(),
            Some("billing")
        );
        assert_eq!(
            client_id(&cert(&["10.0.0.1"], Some("billing"))).as_deref(),
            Some("billing")
        );
    }

    #[test]
    fn without_san_or_cn_there_is_no_client_id() {
        assert_eq!(client_id(&cert(&[], None)), None);
        assert_eq!(
            client_id(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }

    #[test]
    fn no_connect_info_no_client_id() {
        assert_eq!(peer_client_id(&http::Extensions::new()), None);
        let mut plain = http::Extensions::new();
        plain.insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        });
        assert_eq!(peer_client_id(&plain), None);
    }
}
