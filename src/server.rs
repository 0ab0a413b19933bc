//! Wiring and lifecycle: build the gateway from a [`Config`], serve gRPC (gateway, health,
//! reflection) and `/metrics`, and shut down gracefully.
//!
//! Shutdown, as in mini-redis: [`run`] races the server against a shutdown future; once it
//! fires the listener stops accepting, health turns NOT_SERVING, in-flight calls get up to
//! `shutdown_grace` (30 s) to finish — the wait ends as soon as none is left, whatever idle
//! connections remain — and the caller flushes telemetry afterwards.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{AuthLayer, Authenticator, Clients};
use crate::budget;
use crate::budget::LedgerError;
use crate::config::{Config, ConfigError, LEDGER_URL};
use crate::edge;
use crate::front::Front;
use crate::gateway::Gateway;
use crate::metrics::{self, Metrics};
use crate::pb;
use crate::pb::gateway_service_server::GatewayServiceServer;
use crate::providers::Tiers;
use crate::service::GatewayService;
use crate::tls::{Protocols, ServerTls};

/// After the last call of a graceful shutdown, how long connections get to flush their
/// responses and close before the process exits anyway.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// How long a client has to answer a keepalive ping (`VRA_H2_KEEPALIVE_MS`).
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A startup failure that is not a configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Provider(#[from] crate::providers::BuildError),
    #[error("cannot create the budget ledger: {0}")]
    Ledger(#[from] budget::LedgerError),
    #[error("cannot create the response cache: {0}")]
    Cache(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A file named by the configuration (clients, certificates) is missing or invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl ServeError {
    /// The process exit code: 2 for configuration errors (as for invalid settings), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The sockets the gateway serves: gRPC, and the HTTP door when it is on.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// The gRPC listener's address (`127.0.0.1:0` bound: the port the system chose).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The HTTP door's address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds the listeners of `config`: `VRA_GATEWAY_ADDR`, and `VRA_HTTP_ADDR` when set.
pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
    let grpc = bind_addr(config.listen_addr).await?;
    let http = match config.http_addr {
        Some(addr) => Some(bind_addr(addr).await?),
        None => None,
    };
    Ok(Listeners { grpc, http })
}

async fn bind_addr(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Builds the gateway (providers, ledger, metrics) from a configuration.
pub fn build_gateway(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<Gateway>, ServeError> {
    let roots = crate::tls::upstream_roots(config.security.upstream_ca_file.as_deref())?;
    let tiers = Tiers::build(&config.primary, &config.secondary, &roots)?;
    let ledger = budget::build(&config.ledger)?;
    let cache = crate::cache::build(&config.cache, &config.ledger, metrics.clone())
        .map_err(ServeError::Cache)?;
    let gateway = Arc::new(Gateway::new(config, tiers, ledger, metrics.clone()).with_cache(cache));
    // Circuits and endpoint pools live in the gateway: their gauges are read at each scrape.
    let weak = Arc::downgrade(&gateway);
    metrics.on_scrape(move |m| {
        if let Some(gateway) = weak.upgrade() {
            gateway.report_health(m);
        }
    });
    Ok(gateway)
}

/// Serves until `shutdown` resolves, then drains in-flight calls (bounded by the grace period).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        http: http_listener,
    } = listeners;
    // SIGHUP re-reads what may change without a restart; installed before the listener is
    // announced, since SIGHUP's default action ends the process.
    let mut reload = reload_signal();
    let tls = load_tls(&config)?;
    let metrics = Arc::new(Metrics::new());
    let clients = load_clients(&config)?;
    let auth = clients.as_ref().map(|clients| {
        let mtls = config
            .security
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
        Arc::new(Authenticator::new(clients.clone(), mtls, metrics.clone()))
    });
    let gateway = build_gateway(&config, metrics.clone())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen_addr,
        source,
    })?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<GatewayServiceServer<GatewayService>>()
        .await;
    let health_task = tokio::spawn(watch_health(gateway.clone(), reporter.clone()));
    match gateway.ledger().check().await {
        Ok(warnings) => {
            for warning in warnings {
                tracing::warn!("budget ledger ({}): {warning}", gateway.ledger().backend());
            }
        }
        Err(LedgerError::Misconfigured(why)) => {
            return Err(ServeError::Config(ConfigError::new(LEDGER_URL.var, why)));
        }
        Err(e) => tracing::warn!(
            "budget ledger ({}) unreachable at startup: {e}; serving anyway — cloud calls fail safe to the secondary until it is back",
            gateway.ledger().backend()
        ),
    }

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Both doors share one front: one in-flight limit, one drain.
    let front = Arc::new(
        Front::new(gateway.clone(), metrics.clone(), config.max_prompt_bytes).with_limits(
            edge::Admission::new(config.limits.max_in_flight),
            config.limits.stream_max,
        ),
    );
    let calls = front.calls();
    let service = GatewayServiceServer::new(GatewayService::new(front.clone()))
        .max_decoding_message_size(front.max_request_bytes());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The OpenAI-compatible door: the same front, credentials and TLS as gRPC.
    let http_task = match http_listener {
        Some(listener) => {
            let bound = listener.local_addr().map_err(|source| ServeError::Bind {
                addr: config.http_addr.unwrap_or(config.listen_addr),
                source,
            })?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!("OpenAI-compatible HTTP door on {scheme}://{bound}/v1");
            let door = crate::http::HttpDoor::new(
                front.clone(),
                auth.clone(),
                [
                    (
                        config.primary.provider.name.clone(),
                        config.primary.model.clone(),
                    ),
                    (
                        config.secondary.provider.name.clone(),
                        config.secondary.model.clone(),
                    ),
                ],
            );
            Some(tokio::spawn(crate::http::serve(
                listener,
                tls.clone(),
                crate::http::router(door),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let metrics_task = match config.metrics_addr {
        Some(maddr) => metrics::bind(maddr).await.map(|l| {
            if let Ok(a) = l.local_addr() {
                tracing::info!("metrics on http://{a}/metrics");
            }
            tokio::spawn(metrics::serve(l, metrics.clone(), stopped(stop_rx.clone())))
        }),
        None => None,
    };

    tracing::info!(
        "vra-gateway listening on {addr} (hybrid={}, primary={}/{}, secondary={}/{}, max_cloud_calls={}, ledger={}, workers={})",
        config.hybrid_mode,
        config.primary.provider.name,
        config.primary.model,
        config.secondary.provider.name,
        config.secondary.model,
        config.max_cloud_calls,
        gateway.ledger().backend(),
        // Read off the runtime itself, so the line shows what VRA_WORKER_THREADS took effect as.
        tokio::runtime::Handle::current().metrics().num_workers(),
    );

    let router = tonic::transport::Server::builder()
        // tonic's default is unlimited streams per connection: one client could hold any
        // number of half-sent calls.
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams))
        // Pings find clients that vanished without closing (a dead host, a dropped NAT entry):
        // their connection is closed and their calls' guards released.
        .http2_keepalive_interval(config.limits.h2_keepalive)
        .http2_keepalive_timeout(Some(H2_KEEPALIVE_TIMEOUT))
        // The edge layers, outermost first (src/edge.rs).
        .layer(edge::DeadlineLayer)
        .layer(AuthLayer::new(auth))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service);
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            // Handshakes on our own accept loop (src/tls.rs), with the certificate current
            // at accept time: SIGHUP swaps it without a restart.
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, tls.clone(), Protocols::Grpc),
                stopped(stop_rx.clone()),
            )),
            // tonic ignores its own `tcp_nodelay` for a caller-supplied listener; without
            // it, Nagle's algorithm adds ~40 ms stalls to small responses (bench/RESULTS.md, F2).
            None => Box::pin(router.serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped(stop_rx.clone()),
            )),
        };
    tokio::pin!(server);

    // The TLS files are also reloaded when they change (rotation without a signal).
    let tls_watch = match (&tls, config.security.tls_reload_check) {
        (Some(tls), Some(every)) => Some(tokio::spawn(tls.clone().watch(every))),
        _ => None,
    };
    // Each reloadable part re-reads its files on SIGHUP; one that fails keeps what it had
    // (and logs why).
    let reload_task = tokio::spawn(async move {
        while reload.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            if let Some(clients) = &clients {
                // Logs the outcome itself (how many clients, or the file and line at fault).
                let _ = clients.reload();
            }
            if let Some(tls) = &tls {
                // Logs the outcome itself; a broken file keeps the previous certificate.
                let _ = tls.reload();
            }
        }
    });

    // When a shutdown was requested, the end of its grace period: the drain and the records
    // still on their way to the ledger share it.
    let mut shutdown_at = None;
    let result = tokio::select! {
        res = &mut server => res.map_err(ServeError::from),
        () = shutdown => {
            shutdown_at = Some(tokio::time::Instant::now() + config.shutdown_grace);
            tracing::info!("shutdown requested: no new connections; draining in-flight calls (up to {}s)", config.shutdown_grace.as_secs());
            health_task.abort();
            reporter.set_not_serving::<GatewayServiceServer<GatewayService>>().await;
            let _ = stop_tx.send(true);
            // Done when the server has closed every connection, or once no call has been in
            // flight for a moment (time for the last responses to be written): an idle — or
            // silent, half-open — connection must not hold up the exit.
            let drained = async {
                tokio::select! {
                    res = &mut server => res.map_err(ServeError::from),
                    () = calls.idle_for(SHUTDOWN_LINGER) => Ok(()),
                }
            };
            match tokio::time::timeout(config.shutdown_grace, drained).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::warn!("grace period over; dropping the calls still in flight");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    // Records sent after their responses (a Redis ledger) land before the process ends.
    let flush_by =
        shutdown_at.unwrap_or_else(|| tokio::time::Instant::now() + config.shutdown_grace);
    if tokio::time::timeout_at(flush_by, gateway.flush_records())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; call records still on their way to the ledger are lost");
    }
    reload_task.abort();
    if let Some(task) = http_task {
        // Its open requests were part of the drain; what is left are idle connections.
        let _ = tokio::time::timeout(SHUTDOWN_LINGER, task).await;
    }
    if let Some(task) = tls_watch {
        task.abort();
    }
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    tracing::info!("vra-gateway stopped");
    result
}

/// The clients when authentication is on (`None`: every call is admitted). A clients file
/// that cannot be read or parsed stops the startup (exit 2), naming the file and line.
fn load_clients(config: &Config) -> Result<Option<Arc<Clients>>, ServeError> {
    if !config.security.authenticates() {
        return Ok(None);
    }
    let clients = match &config.security.clients_file {
        Some(path) => Clients::load(path).map_err(|e| ConfigError {
            var: crate::config::CLIENTS_FILE.var.to_string(),
            message: e.to_string(),
        })?,
        None => Clients::none(),
    };
    Ok(Some(Arc::new(clients)))
}

/// Loads the listener's TLS files, when configured, and says how the listener is secured.
fn load_tls(config: &Config) -> Result<Option<Arc<ServerTls>>, ServeError> {
    let Some(files) = &config.security.tls else {
        return Ok(None);
    };
    let tls = ServerTls::load(files)?;
    match &files.client_ca {
        Some(ca) => tracing::info!(
            "gRPC over TLS (certificate {}); client certificates required, verified against {}",
            files.cert.display(),
            ca.display()
        ),
        None => tracing::info!("gRPC over TLS (certificate {})", files.cert.display()),
    }
    Ok(Some(Arc::new(tls)))
}

/// Keeps the health status honest: NOT_SERVING only when the ledger is unreachable *and* the
/// secondary is unusable — with a working secondary, calls are still answered (fail-safe).
async fn watch_health(gateway: Arc<Gateway>, reporter: HealthReporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = ServingStatus::Serving;
    loop {
        tick.tick().await;
        let ledger_down = gateway.ledger().ping().await.is_err();
        let status = if ledger_down && gateway.secondary_unusable() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        if status != last {
            tracing::warn!("health status now {status:?}");
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <GatewayServiceServer<GatewayService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            last = status;
        }
    }
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now, and returns a future that resolves on
/// the first of them. Call it inside the runtime before binding and announcing the listener:
/// until a handler is installed a signal gets its default action, which kills the process —
/// no drain, no span flush. (Registering lazily, on the future's first poll, left a window
/// after the "listening on" line in which a SIGTERM killed the gateway.)
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot handle {name} ({e}): it will end the process without a drain"
                );
                None
            }
        };
        let mut int = install(SignalKind::interrupt(), "SIGINT");
        let mut term = install(SignalKind::terminate(), "SIGTERM");
        async fn recv(s: Option<&mut Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = recv(int.as_mut()) => {},
                () = recv(term.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, as a stream of reload requests (never fires where there is no SIGHUP).
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A reload already pending covers this one too.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) =
                            tx.try_send(())
                        {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("cannot handle SIGHUP ({e}): no reload without a restart"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Asks the gRPC health service at `addr` (`host:port`) whether the server is SERVING.
pub async fn check_health(addr: &str) -> Result<bool, Box<dyn std::error::Error>> {
    check_health_with(addr, None).await
}

/// How a command (`health`, `usage`) reaches a gateway that serves TLS: the CA to trust, the
/// name to expect in its certificate, and a client certificate when it requires one (mTLS).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub domain: String,
    /// PEM certificate chain and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A channel to the gateway at `addr` (`host:port`), over TLS when `tls` is given; every
/// call on it times out after `timeout`.
pub async fn connect(
    addr: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, Box<dyn std::error::Error>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout);
    if let Some(tls) = tls {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .domain_name(tls.domain.clone());
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint.connect().await?)
}

/// [`check_health`], over TLS when `tls` is given.
pub async fn check_health_with(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<bool, Box<dyn std::error::Error>> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus as Status};
    let channel = connect(addr, tls, Duration::from_secs(2)).await?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(response.status == Status::Serving as i32)
}
