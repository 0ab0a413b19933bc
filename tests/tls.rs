//! TLS end to end, with certificates made at run time (rcgen; no openssl CLI): the gRPC
//! listener over TLS and mTLS (in process and as the real binary, with a SIGHUP reload), the
//! client id a tower layer reads from a real TLS connection, and upstream HTTPS with
//! `VRA_UPSTREAM_CA_FILE`, redirects and the plaintext-cloud rule.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use common::process::{self, Running, gateway_env, run_to_end, temp_dir};
use common::{Replica, reason, request, tier};
use vra_gateway::config::TlsFiles;
use vra_gateway::demo::sim::Sim;
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::{CompilationPhase, FallbackReason, ProviderTier, SectionType};
use vra_gateway::tls::{self, ServerTls};

// ---------------------------------------------------------------------------------------
// Certificates

/// A test certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA cert").pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `sans` (DNS names or IPs) with subject CN `cn`, signed by this CA.
    fn leaf(&self, sans: &[&str], cn: &str) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The files of one test: a fresh directory, files written into it.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        Files(temp_dir())
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write test file");
        path.display().to_string()
    }

    /// Writes `leaf` as `server.crt` / `server.key`; returns their paths.
    fn server(&self, leaf: &Leaf) -> (String, String) {
        (
            self.write("server.crt", &leaf.cert),
            self.write("server.key", &leaf.key),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// A gRPC client of `addr` over TLS that trusts `ca` (and presents `identity`, if any).
async fn tls_client(
    addr: &str,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<GatewayServiceClient<Channel>, tonic::transport::Error> {
    Ok(GatewayServiceClient::new(
        tls_channel(addr, ca, identity).await?,
    ))
}

/// A channel to `addr` over TLS that trusts `ca` (and presents `identity`, if any).
async fn tls_channel(
    addr: &str,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// One Generate call over a fresh TLS connection; `Err` names where it failed (connect or
/// call). Under TLS 1.3 a refused client certificate may only show on the first call.
async fn generate_over_tls(addr: &str, ca: &Ca, identity: Option<&Leaf>) -> Result<(), String> {
    let mut client = tls_client(addr, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    client
        .generate(request(
            "tls-report",
            CompilationPhase::Draft,
            SectionType::Introduction,
        ))
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s:?}"))
}

/// One Generate call over plaintext HTTP/2.
async fn generate_plaintext(addr: &str) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    GatewayServiceClient::new(channel)
        .generate(request(
            "plain-report",
            CompilationPhase::Draft,
            SectionType::Introduction,
        ))
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s:?}"))
}

// ---------------------------------------------------------------------------------------
// The gRPC listener, in process

/// Two sims and an in-process gateway with `overrides`.
async fn gateway(overrides: &[(&str, &str)]) -> (Sim, Sim, Replica) {
    let cloud = Sim::start().await.expect("cloud sim");
    let local = Sim::start().await.expect("local sim");
    let config = common::config(&cloud, &local, overrides);
    let replica = Replica::start(config).await;
    (cloud, local, replica)
}

#[tokio::test]
async fn serves_grpc_over_tls_to_a_client_that_trusts_the_ca() {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let (cert, key) = files.server(&ca.leaf(&["localhost"], "gateway"));
    let (cloud, _local, gw) =
        gateway(&[("VRA_TLS_CERT_FILE", &cert), ("VRA_TLS_KEY_FILE", &key)]).await;
    let addr = gw.addr.to_string();

    // A client that connects and never says a word holds its handshake open for the 10 s
    // handshake timeout; handshakes run side by side, so it holds up no one else.
    let silent = TcpStream::connect(&addr).await.expect("tcp connect");
    tokio::time::timeout(Duration::from_secs(5), generate_over_tls(&addr, &ca, None))
        .await
        .expect("not held up by a silent connection's handshake")
        .expect("a client trusting the CA is served");
    drop(silent);
    assert_eq!(cloud.requests(), 1, "the call reached the upstream");

    let plain = generate_plaintext(&addr).await;
    assert!(plain.is_err(), "a plaintext client must fail: {plain:?}");
    let other = generate_over_tls(&addr, &Ca::new("other CA"), None).await;
    assert!(
        other.is_err(),
        "a client trusting another CA must fail: {other:?}"
    );
    assert_eq!(
        cloud.requests(),
        1,
        "neither failed client reached the upstream"
    );
    gw.shutdown().await;
}

/// One host cannot hold every handshake slot: past its share its new connections are closed
/// at once, while another address is still served.
#[tokio::test]
async fn one_address_gets_a_bounded_share_of_pending_handshakes() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::new("server CA");
    let files = Files::new();
    let (cert, key) = files.server(&ca.leaf(&["localhost"], "gateway"));
    let (cloud, _local, gw) =
        gateway(&[("VRA_TLS_CERT_FILE", &cert), ("VRA_TLS_KEY_FILE", &key)]).await;
    let addr = gw.addr;
    // The "attacker" speaks from 127.0.0.2 (all of 127/8 is loopback on Linux) and never
    // sends a ClientHello.
    let silent = || async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(addr).await.expect("tcp connect")
    };
    let mut held = Vec::new();
    for _ in 0..tls::MAX_PENDING_HANDSHAKES_PER_PEER {
        held.push(silent().await);
    }
    let mut extra = silent().await;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection past the share is closed at once, not after the handshake timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // The slots held are this address's only: another is served.
    generate_over_tls(&addr.to_string(), &ca, None)
        .await
        .expect("another address is served");
    assert_eq!(cloud.requests(), 1);
    drop(held);
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_accepts_only_client_certificates_of_the_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = files.server(&server_ca.leaf(&["localhost"], "gateway"));
    let client_ca_file = files.write("clients.pem", &client_ca.pem);
    let (cloud, _local, gw) = gateway(&[
        ("VRA_TLS_CERT_FILE", &cert),
        ("VRA_TLS_KEY_FILE", &key),
        ("VRA_TLS_CLIENT_CA_FILE", &client_ca_file),
    ])
    .await;
    let addr = gw.addr.to_string();

    let good = client_ca.leaf(&["report-builder.internal"], "report-builder");
    generate_over_tls(&addr, &server_ca, Some(&good))
        .await
        .expect("a certificate of the client CA is accepted");
    assert_eq!(cloud.requests(), 1);

    let none = generate_over_tls(&addr, &server_ca, None).await;
    assert!(
        none.is_err(),
        "no client certificate must be refused: {none:?}"
    );
    let rogue = Ca::new("rogue CA").leaf(&["report-builder.internal"], "report-builder");
    let wrong = generate_over_tls(&addr, &server_ca, Some(&rogue)).await;
    assert!(
        wrong.is_err(),
        "a certificate of another CA must be refused: {wrong:?}"
    );
    // A server certificate is not a client one: signed by the server CA, not the client CA.
    let server_leaf = server_ca.leaf(&["report-builder.internal"], "x");
    let crossed = generate_over_tls(&addr, &server_ca, Some(&server_leaf)).await;
    assert!(
        crossed.is_err(),
        "the server CA does not vouch for clients: {crossed:?}"
    );
    assert_eq!(
        cloud.requests(),
        1,
        "no refused client reached the upstream"
    );
    gw.shutdown().await;
}

/// mTLS is authentication: the certificate's DNS SAN is the client id, its `[[client]]` entry
/// (no token needed) supplies the limits, and its reports are its own. With a clients file, a
/// certificate without an entry is refused; a name that is not a valid client id never counts.
#[tokio::test]
async fn an_mtls_client_is_known_by_its_certificate_and_gets_its_own_limits() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = files.server(&server_ca.leaf(&["localhost"], "gateway"));
    let client_ca_file = files.write("clients.pem", &client_ca.pem);
    let clients = files.write(
        "clients.toml",
        "[[client]]\nid = \"builder-a.internal\"\nmax_cloud_calls = 1\n",
    );
    let (cloud, _local, gw) = gateway(&[
        ("VRA_TLS_CERT_FILE", &cert),
        ("VRA_TLS_KEY_FILE", &key),
        ("VRA_TLS_CLIENT_CA_FILE", &client_ca_file),
        ("VRA_CLIENTS_FILE", &clients),
        ("MAX_CLOUD_CALLS", "5"),
    ])
    .await;
    let addr = gw.addr.to_string();
    let refine = || request("shared-id", CompilationPhase::Refine, SectionType::Analysis);
    let a = client_ca.leaf(&["builder-a.internal"], "a");
    let b = client_ca.leaf(&["builder-b.internal"], "b");
    let mut client_a = tls_client(&addr, &server_ca, Some(&a)).await.unwrap();
    let mut client_b = tls_client(&addr, &server_ca, Some(&b)).await.unwrap();

    let routes: Vec<i32> = [
        client_a.generate(refine()).await.unwrap().into_inner(),
        client_a.generate(refine()).await.unwrap().into_inner(),
    ]
    .iter()
    .map(|r| r.route.as_ref().unwrap().fallback_reason)
    .collect();
    assert_eq!(
        routes,
        [
            FallbackReason::Unspecified as i32,
            FallbackReason::CostLimit as i32
        ],
        "builder-a's entry caps its reports at 1 cloud call"
    );
    // builder-b has no entry: with a clients file, a certificate of the CA is not enough
    // (else any certificate could name itself and spend without limits).
    let err = client_b.generate(refine()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(cloud.requests(), 1);
    gw.shutdown().await;

    // Without a clients file (mTLS only), the CA vouches alone: builder-b gets the global
    // limits and a report of its own, separate from builder-a's.
    let (cloud, _local, gw) = gateway(&[
        ("VRA_TLS_CERT_FILE", &cert),
        ("VRA_TLS_KEY_FILE", &key),
        ("VRA_TLS_CLIENT_CA_FILE", &client_ca_file),
        ("MAX_CLOUD_CALLS", "5"),
    ])
    .await;
    let addr = gw.addr.to_string();
    let mut client_a = tls_client(&addr, &server_ca, Some(&a)).await.unwrap();
    let mut client_b = tls_client(&addr, &server_ca, Some(&b)).await.unwrap();
    for _ in 0..2 {
        client_a.generate(refine()).await.unwrap();
    }
    let budget = client_b
        .generate(refine())
        .await
        .unwrap()
        .into_inner()
        .budget
        .unwrap();
    assert_eq!((budget.cloud_calls_used, budget.cloud_calls_limit), (1, 5));
    // A certificate whose name is not a valid client id identifies nobody.
    let odd = client_ca.leaf(&["builder/report:x"], "odd");
    let mut client_odd = tls_client(&addr, &server_ca, Some(&odd)).await.unwrap();
    let err = client_odd.generate(refine()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(cloud.requests(), 3);
    gw.shutdown().await;
}

/// What a tower layer stacked with `Server::builder().layer(..)` — where the auth layer
/// sits — reads with `tls::peer_client_id` on real connections from `tls::incoming`.
#[tokio::test]
async fn a_server_layer_sees_the_client_id_of_a_real_mtls_connection() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = files.server(&server_ca.leaf(&["localhost"], "gateway"));
    let tls_files = TlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_ca: Some(files.write("clients.pem", &client_ca.pem).into()),
    };
    let server_tls = Arc::new(ServerTls::load(&tls_files).expect("TLS files load"));

    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = {
        let seen = seen.clone();
        move |req: http::Request<tonic::body::Body>| {
            seen.lock()
                .expect("lock")
                .push(tls::peer_client_id(req.extensions()));
            req
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(record))
            .add_service(health)
            .serve_with_incoming_shutdown(
                tls::incoming(listener, server_tls, tls::Protocols::Grpc),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let health_check = |identity: Leaf| {
        let (addr, ca) = (addr.clone(), &server_ca);
        async move {
            let channel = tls_channel(&addr, ca, Some(&identity))
                .await
                .expect("connect");
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("health check over mTLS");
        }
    };
    health_check(client_ca.leaf(&["report-builder.internal", "second.internal"], "cn-1")).await;
    health_check(client_ca.leaf(&[], "billing")).await;
    health_check(client_ca.leaf(&["10.0.0.7"], "ip-only")).await;

    assert_eq!(
        *seen.lock().expect("lock"),
        vec![
            Some("report-builder.internal".to_string()),
            Some("billing".to_string()),
            Some("ip-only".to_string()),
        ]
    );
    let _ = stop.send(());
    server.await.expect("server task").expect("server ran");
}

// ---------------------------------------------------------------------------------------
// The real binary: reload and startup errors

/// How a reload is set off: a SIGHUP, or the files changing under the watcher.
#[derive(Clone, Copy, PartialEq)]
enum Trigger {
    Sighup,
    FileChange,
}

/// A certificate of another CA replaces the first (new connections get it), then a broken
/// certificate file: the reload fails naming the setting and keeps the second one. No key
/// material reaches the logs.
async fn reload_keeps_serving(trigger: Trigger) {
    let cloud = Sim::start().await.expect("cloud sim");
    let local = Sim::start().await.expect("local sim");
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let files = Files::new();
    let (cert, key) = files.server(&first.leaf(&["localhost"], "gateway"));
    // With SIGHUP alone, the files are not watched.
    let check_ms = if trigger == Trigger::Sighup {
        "0"
    } else {
        "100"
    };
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_TLS_CERT_FILE", &cert),
            ("VRA_TLS_KEY_FILE", &key),
            ("VRA_TLS_RELOAD_CHECK_MS", check_ms),
        ],
    );
    let mut gw = Running::start(&env).await;
    let addr = gw.addr.clone();
    generate_over_tls(&addr, &first, None)
        .await
        .expect("served with the first certificate");
    let reload = |gw: &Running| {
        if trigger == Trigger::Sighup {
            gw.sighup();
        }
    };

    files.server(&second.leaf(&["localhost"], "gateway"));
    reload(&gw);
    gw.wait_for("TLS certificate reloaded").await;
    generate_over_tls(&addr, &second, None)
        .await
        .expect("served with the reloaded certificate");
    let stale = generate_over_tls(&addr, &first, None).await;
    assert!(stale.is_err(), "the first certificate is gone: {stale:?}");

    files.write("server.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    reload(&gw);
    let line = gw.wait_for("TLS reload failed").await;
    assert!(line.contains("VRA_TLS_CERT_FILE"), "{line}");
    generate_over_tls(&addr, &second, None)
        .await
        .expect("still served with the second certificate");

    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let log = lines.join("\n");
    assert!(
        !log.contains("PRIVATE KEY"),
        "no key material in logs:\n{log}"
    );
    assert!(!log.contains(process::KEY), "no API key in logs");
}

/// cert-manager and the like rotate the files without a signal: a change is reloaded by
/// itself.
#[tokio::test]
async fn rotated_files_are_reloaded_without_a_signal_and_a_bad_one_keeps_the_old() {
    reload_keeps_serving(Trigger::FileChange).await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    reload_keeps_serving(Trigger::Sighup).await;
}

/// The container probe, `vra-gateway health`, reaches a gateway that serves mTLS with
/// `--tls-ca` and a client certificate; without them it fails.
#[tokio::test]
async fn the_health_command_speaks_tls_and_mtls() {
    let cloud = Sim::start().await.expect("cloud sim");
    let local = Sim::start().await.expect("local sim");
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (cert, key) = files.server(&server_ca.leaf(&["localhost"], "gateway"));
    let client_ca_file = files.write("clients-ca.pem", &client_ca.pem);
    let ca_file = files.write("ca.pem", &server_ca.pem);
    let probe = client_ca.leaf(&["probe.internal"], "probe");
    let probe_cert = files.write("probe.crt", &probe.cert);
    let probe_key = files.write("probe.key", &probe.key);
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_TLS_CERT_FILE", &cert),
            ("VRA_TLS_KEY_FILE", &key),
            ("VRA_TLS_CLIENT_CA_FILE", &client_ca_file),
        ],
    );
    let gw = Running::start(&env).await;
    let addr = gw.addr.clone();
    let health = |extra: &[&str]| {
        let mut args = vec!["health", "--addr", addr.as_str()];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_to_end(&temp_dir(), &refs, &[]).await
        }
    };
    let (code, stdout, stderr) = health(&[
        "--tls-ca",
        &ca_file,
        "--tls-cert",
        &probe_cert,
        "--tls-key",
        &probe_key,
    ])
    .await;
    assert_eq!((code, stdout.trim()), (0, "SERVING"), "{stderr}");
    let (code, _, _) = health(&["--tls-ca", &ca_file]).await;
    assert_eq!(code, 1, "no client certificate: refused by mTLS");
    let (code, _, _) = health(&[]).await;
    assert_eq!(code, 1, "plaintext: refused");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

/// Runs `serve` with `extra` on top of working upstream settings; returns (exit code, stderr).
async fn serve_to_end(extra: &[(&str, &str)]) -> (i32, String) {
    let mut env = gateway_env("http://127.0.0.1:9/v1", "http://127.0.0.1:9", &[]);
    env.extend_from_slice(extra);
    // Startup errors end the process at once; a gateway that started would run forever.
    let dir = temp_dir();
    let run = run_to_end(&dir, &["serve"], &env);
    let (code, _stdout, stderr) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the gateway exited instead of starting");
    (code, stderr)
}

#[tokio::test]
async fn tls_settings_that_cannot_work_exit_2_naming_the_setting() {
    let ca = Ca::new("CA");
    let files = Files::new();
    let (cert, key) = files.server(&ca.leaf(&["localhost"], "gateway"));
    let other_key = files.write("other.key", &ca.leaf(&["localhost"], "x").key);
    let missing = files.0.join("missing.crt").display().to_string();
    let garbage = files.write("garbage.pem", "hello, not PEM\n");
    // (settings, the setting the error names, what it says)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("VRA_TLS_CERT_FILE", &cert)],
            "VRA_TLS_CERT_FILE",
            "needs VRA_TLS_KEY_FILE too",
        ),
        (
            vec![("VRA_TLS_KEY_FILE", &key)],
            "VRA_TLS_KEY_FILE",
            "needs VRA_TLS_CERT_FILE too",
        ),
        (
            vec![("VRA_TLS_CERT_FILE", &missing), ("VRA_TLS_KEY_FILE", &key)],
            "VRA_TLS_CERT_FILE",
            "cannot read",
        ),
        (
            vec![("VRA_TLS_CERT_FILE", &garbage), ("VRA_TLS_KEY_FILE", &key)],
            "VRA_TLS_CERT_FILE",
            "no PEM certificate",
        ),
        (
            vec![("VRA_TLS_CERT_FILE", &cert), ("VRA_TLS_KEY_FILE", &garbage)],
            "VRA_TLS_KEY_FILE",
            "no PEM private key",
        ),
        (
            vec![
                ("VRA_TLS_CERT_FILE", &cert),
                ("VRA_TLS_KEY_FILE", &other_key),
            ],
            "VRA_TLS_KEY_FILE",
            "does not fit",
        ),
        (
            vec![
                ("VRA_TLS_CERT_FILE", &cert),
                ("VRA_TLS_KEY_FILE", &key),
                ("VRA_TLS_CLIENT_CA_FILE", &garbage),
            ],
            "VRA_TLS_CLIENT_CA_FILE",
            "no PEM certificate",
        ),
    ];
    for (extra, var, says) in cases {
        let (code, stderr) = serve_to_end(&extra).await;
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(var), "{extra:?} names {var}: {stderr}");
        assert!(stderr.contains(says), "{extra:?} says {says:?}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// Upstreams

/// An OpenAI-compatible upstream over HTTPS (its own CA) that counts requests.
struct HttpsUpstream {
    url: String,
    ca: Ca,
    requests: Arc<AtomicUsize>,
    /// Of `requests`, those that came over HTTP/2.
    http2_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HTTPS_TEXT: &str = "Answered over HTTPS by the fake upstream.";

/// TCP accepted and TLS-handshaken in `accept`, for `axum::serve`. A failed handshake (a
/// client that does not trust the certificate) is skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(stream) = self.acceptor.accept(tcp).await {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl HttpsUpstream {
    /// Offers HTTP/1.1 only by ALPN.
    async fn start() -> HttpsUpstream {
        HttpsUpstream::start_with_alpn(&[b"http/1.1"]).await
    }

    async fn start_with_alpn(alpn: &[&[u8]]) -> HttpsUpstream {
        let ca = Ca::new("upstream CA");
        // `upstream.test`: the name a test reaches it by through a forward proxy.
        let leaf = ca.leaf(&["127.0.0.1", "upstream.test"], "upstream");
        let files = Files::new();
        let config = tls::server_config(&TlsFiles {
            cert: files.write("up.crt", &leaf.cert).into(),
            key: files.write("up.key", &leaf.key).into(),
            client_ca: None,
        })
        .expect("upstream TLS config");
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let http2_requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let http2_counter = http2_requests.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |version: http::Version| {
                counter.fetch_add(1, Ordering::SeqCst);
                if version == http::Version::HTTP_2 {
                    http2_counter.fetch_add(1, Ordering::SeqCst);
                }
                async {
                    axum::Json(serde_json::json!({
                        "id": "chatcmpl-https",
                        "object": "chat.completion",
                        "model": "gpt-4o",
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": HTTPS_TEXT},
                            "finish_reason": "stop"
                        }],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
                    }))
                }
            }),
        );
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpsUpstream {
            url: format!("https://{addr}/v1"),
            ca,
            requests,
            http2_requests,
            task,
        }
    }
}

/// One REFINE call (the primary's phase) through an in-process gateway whose primary is
/// `openai_base_url`; returns the response.
async fn refine_via(
    openai_base_url: &str,
    extra: &[(&str, &str)],
) -> vra_gateway::pb::GenerateResponse {
    let local = Sim::start().await.expect("local sim");
    let mut sources = vra_gateway::config::Sources::default();
    for (k, v) in common::BASE.iter().chain(extra) {
        sources.env.insert(k.to_string(), v.to_string());
    }
    sources
        .env
        .insert("OPENAI_BASE_URL".into(), openai_base_url.into());
    sources
        .env
        .insert("OLLAMA_HOST".into(), local.ollama_base());
    let config = vra_gateway::config::Config::from_sources(&sources).expect("valid config");
    let gw = Replica::start(config).await;
    let mut client = common::connect(gw.addr).await;
    let resp = client
        .generate(request(
            "upstream-report",
            CompilationPhase::Refine,
            SectionType::Analysis,
        ))
        .await
        .expect("answered (by one tier or the other)")
        .into_inner();
    gw.shutdown().await;
    resp
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_works_only_with_the_upstream_ca_file() {
    let upstream = HttpsUpstream::start().await;

    let refused = refine_via(&upstream.url, &[]).await;
    assert_eq!(tier(&refused), ProviderTier::Secondary);
    assert_eq!(reason(&refused), FallbackReason::PrimaryError);
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        0,
        "an untrusted upstream gets no request"
    );

    let files = Files::new();
    let ca_file = files.write("upstream-ca.pem", &upstream.ca.pem);
    let trusted = refine_via(&upstream.url, &[("VRA_UPSTREAM_CA_FILE", &ca_file)]).await;
    assert_eq!(tier(&trusted), ProviderTier::Primary);
    assert_eq!(reason(&trusted), FallbackReason::Unspecified);
    assert_eq!(trusted.text, HTTPS_TEXT);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

/// HTTPS through a forward proxy: a `CONNECT` tunnel to the upstream with TLS end to end inside
/// it, verified against `VRA_UPSTREAM_CA_FILE` as usual; the proxy sees only the CONNECT line.
#[tokio::test]
async fn an_https_upstream_is_reached_through_the_https_proxy() {
    let upstream = HttpsUpstream::start().await;
    let proxy = common::connect_proxy::ConnectProxy::start().await;
    let files = Files::new();
    let ca_file = files.write("upstream-ca.pem", &upstream.ca.pem);
    let proxy_url = proxy.url(None);
    // By a name only the proxy can reach (a loopback upstream would be reached directly).
    let url = common::connect_proxy::via_test_host(&upstream.url, "upstream");
    let resp = refine_via(
        &url,
        &[
            ("VRA_UPSTREAM_CA_FILE", &ca_file),
            ("HTTPS_PROXY", &proxy_url),
        ],
    )
    .await;
    assert_eq!(tier(&resp), ProviderTier::Primary);
    assert_eq!(resp.text, HTTPS_TEXT);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    let target = url["https://".len()..].split('/').next().unwrap();
    let heads = proxy.heads();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n"))),
        "{heads:?}"
    );
}

/// An upstream that offers HTTP/2 by ALPN (as api.openai.com does) is spoken to over HTTP/2.
#[tokio::test]
async fn an_https_upstream_offering_h2_is_called_over_http2() {
    let upstream = HttpsUpstream::start_with_alpn(&[b"h2", b"http/1.1"]).await;
    let files = Files::new();
    let ca_file = files.write("upstream-ca.pem", &upstream.ca.pem);
    let resp = refine_via(&upstream.url, &[("VRA_UPSTREAM_CA_FILE", &ca_file)]).await;
    assert_eq!(tier(&resp), ProviderTier::Primary);
    assert_eq!(resp.text, HTTPS_TEXT);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.http2_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_upstream_ca_file_is_logged_and_a_bad_one_exits_2() {
    let ca = Ca::new("upstream CA");
    let files = Files::new();
    let good = files.write("two.pem", &format!("{}{}", ca.pem, Ca::new("second").pem));
    let cloud = Sim::start().await.expect("cloud sim");
    let local = Sim::start().await.expect("local sim");
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let mut gw = Running::start(&gateway_env(
        &cloud_url,
        &local_url,
        &[("VRA_UPSTREAM_CA_FILE", &good)],
    ))
    .await;
    let line = gw.wait_for("certificate(s) from").await;
    assert!(line.contains("loaded 2 certificate(s)"), "{line}");
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);

    let empty = files.write("empty.pem", "");
    let garbage = files.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    let not_x509 = files.write(
        "not-x509.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    let missing = files.0.join("missing.pem").display().to_string();
    for file in [&empty, &garbage, &not_x509, &missing] {
        let (code, stderr) = serve_to_end(&[("VRA_UPSTREAM_CA_FILE", file)]).await;
        assert_eq!(code, 2, "{file}: {stderr}");
        assert!(stderr.contains("VRA_UPSTREAM_CA_FILE"), "{file}: {stderr}");
        assert!(
            stderr.contains(file.as_str()),
            "the file is named: {stderr}"
        );
    }
}

/// A plain-HTTP upstream on loopback that answers every chat request with a 307 to `target`.
async fn redirector(target: &str) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let location = target.to_string();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let location = location.clone();
            async move {
                (
                    http::StatusCode::TEMPORARY_REDIRECT,
                    [(http::header::LOCATION, location)],
                )
                    .into_response()
            }
        }),
    );
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", tcp.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(tcp, app).await;
    });
    (url, hits, task)
}

#[tokio::test]
async fn a_redirect_from_the_upstream_is_not_followed() {
    let target = Sim::start().await.expect("redirect target");
    let (url, hits, task) = redirector(&format!("{}/chat/completions", target.openai_base())).await;
    let resp = refine_via(&url, &[]).await;
    assert_eq!(tier(&resp), ProviderTier::Secondary);
    assert_eq!(reason(&resp), FallbackReason::PrimaryError);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 3xx is not retried");
    assert_eq!(target.requests(), 0, "the redirect target receives nothing");
    task.abort();
}

#[tokio::test]
async fn plaintext_to_a_remote_cloud_provider_needs_the_explicit_opt_in() {
    let remote = [("OPENAI_BASE_URL", "http://10.1.2.3/v1")];
    let (code, stderr) = serve_to_end(&remote).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("OPENAI_BASE_URL"), "{stderr}");
    assert!(stderr.contains("VRA_ALLOW_PLAINTEXT_CLOUD"), "{stderr}");
    assert!(!stderr.contains(process::KEY), "{stderr}");

    // With the opt-in it starts (nothing is called at startup, so the address need not exist).
    let mut env = gateway_env("http://10.1.2.3/v1", "http://127.0.0.1:9", &[]);
    env.push(("VRA_ALLOW_PLAINTEXT_CLOUD", "true"));
    let gw = Running::start(&env).await;
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);

    // Loopback over http stays allowed without it (every sim-backed test relies on it too).
    let gw = Running::start(&gateway_env(
        "http://localhost:9/v1",
        "http://127.0.0.1:9",
        &[],
    ))
    .await;
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}
