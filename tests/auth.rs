//! Client identity end to end, against the real binary: bearer tokens checked at the edge
//! (UNAUTHENTICATED with one fixed message, never echoing a token, in a status or a log),
//! health without credentials, reflection with them, the rejection counter on /metrics,
//! SIGHUP reloads of the clients file (revocation, in-flight calls, a bad file keeps the old
//! clients), startup errors (exit 2 naming the file and line), secure by default, and
//! `clients new-token`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{KEY, Running, gateway_env, run_to_end, temp_dir};
use common::request;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::{self, CompilationPhase as P, SectionType as S};

const MESSAGE: &str = "missing or invalid credentials";
const ALICE: &str = "vra_alice-secret-token-3f1c9d2e";
const BOB: &str = "vra_bob-secret-token-77a0b4c1";
const WRONG: &str = "vra_not-a-client-token-5e8d";

fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entry(id: &str, token: &str) -> String {
    format!(
        "[[client]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
        sha256_hex(token)
    )
}

/// A clients file in a fresh directory.
fn clients_file(text: &str) -> PathBuf {
    let path = temp_dir().join("clients.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A request with `authorization: <value>` (none when `None`).
fn with_auth<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(value) = authorization {
        req.metadata_mut()
            .insert("authorization", value.parse().expect("ascii metadata"));
    }
    req
}

async fn generate(
    client: &mut GatewayServiceClient<Channel>,
    report: &str,
    authorization: Option<&str>,
) -> Result<pb::GenerateResponse, tonic::Status> {
    let req = request(report, P::Expand, S::Other);
    client
        .generate(with_auth(req, authorization))
        .await
        .map(tonic::Response::into_inner)
}

/// The call was turned away with the fixed message, which echoes nothing of the request.
fn assert_rejected<T: std::fmt::Debug>(result: Result<T, tonic::Status>, sent: &str) {
    let status = result.expect_err("rejected");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), MESSAGE);
    if !sent.is_empty() {
        assert!(!format!("{status:?}").contains(sent), "{status:?}");
    }
}

async fn reflection_list(
    addr: &str,
    authorization: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(with_auth(tokio_stream::iter(vec![req]), authorization))
        .await?
        .into_inner();
    let first = stream.message().await?.expect("one answer");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn health_serving(addr: &str) -> bool {
    vra_gateway::server::check_health(addr)
        .await
        .expect("health check without credentials")
}

async fn metrics_text(url: &str) -> String {
    vra_gateway::install_crypto_provider();
    reqwest::get(url)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// No secret in any log line; returns how many lines logged a rejection.
fn assert_no_secret(lines: &[String], secrets: &[&str]) -> usize {
    for line in lines {
        for secret in secrets.iter().chain([&KEY]) {
            assert!(!line.contains(secret), "secret in log: {line}");
        }
    }
    lines
        .iter()
        .filter(|l| l.contains("rejected a call"))
        .count()
}

#[tokio::test]
async fn tokens_are_checked_at_the_edge_health_is_open_and_rejections_are_counted() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let file = clients_file(&entry("alice", ALICE));
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_CLIENTS_FILE", path_str(&file)),
            ("VRA_METRICS_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "debug"),
        ],
    );
    let mut gw = Running::start(&env).await;
    gw.wait_for("loaded 1 clients from").await;
    let metrics_url = gw.metrics_url().await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;

    // Missing, malformed and unknown credentials: one answer, no upstream call.
    assert_rejected(generate(&mut client, "r", None).await, "");
    let stream = client
        .generate_stream(with_auth(
            pb::GenerateStreamRequest::from(request("r", P::Expand, S::Other)),
            None,
        ))
        .await;
    assert_rejected(stream.map(|_| ()), "");
    for malformed in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer  two-spaces"] {
        assert_rejected(generate(&mut client, "r", Some(malformed)).await, malformed);
    }
    let wrong = format!("Bearer {WRONG}");
    assert_rejected(generate(&mut client, "r", Some(&wrong)).await, WRONG);
    assert_eq!(local.requests() + cloud.requests(), 0);

    // A good token, with the scheme in any case.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let good = format!("{scheme} {ALICE}");
        let resp = generate(&mut client, "r", Some(&good))
            .await
            .expect("admitted");
        assert!(!resp.text.is_empty());
    }

    // Health needs no credentials; reflection does.
    assert!(health_serving(&gw.addr).await);
    assert_rejected(reflection_list(&gw.addr, None).await, "");
    let services = reflection_list(&gw.addr, Some(&format!("Bearer {ALICE}")))
        .await
        .expect("reflection with a token");
    assert!(
        services
            .iter()
            .any(|s| s == "vra.gateway.v1.GatewayService"),
        "{services:?}"
    );

    // Counted by reason on /metrics.
    let text = metrics_text(&metrics_url).await;
    for (reason, n) in [
        ("missing_credentials", 3),
        ("malformed_credentials", 3),
        ("invalid_credentials", 1),
    ] {
        let line = format!("vra_gateway_requests_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }

    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    // Seven rejections from one peer within a minute: one log line.
    assert_eq!(
        assert_no_secret(&lines, &[ALICE, WRONG]),
        1,
        "{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn sighup_revokes_a_client_without_dropping_calls_and_a_bad_file_keeps_the_old_set() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let file = clients_file(&(entry("alice", ALICE) + &entry("bob", BOB)));
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("VRA_CLIENTS_FILE", path_str(&file))],
    );
    let mut gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let (alice, bob) = (format!("Bearer {ALICE}"), format!("Bearer {BOB}"));
    generate(&mut client, "before", Some(&bob))
        .await
        .expect("bob");

    // Alice's call is held upstream while her entry is removed.
    local.push(Step::Reply {
        text: "held across the reload".into(),
        delay: Duration::from_secs(3),
        chunk_delay: Duration::ZERO,
    });
    let in_flight = {
        let mut client = client.clone();
        let alice = alice.clone();
        tokio::spawn(async move { generate(&mut client, "in-flight", Some(&alice)).await })
    };
    assert!(local.wait_requests(2, Duration::from_secs(10)).await);
    std::fs::write(&file, entry("bob", BOB)).unwrap();
    gw.sighup();
    gw.wait_for("clients reloaded from").await;
    assert!(
        !in_flight.is_finished(),
        "the held call must still be in flight at the reload"
    );
    assert_rejected(generate(&mut client, "after", Some(&alice)).await, ALICE);
    generate(&mut client, "after", Some(&bob))
        .await
        .expect("bob still admitted");
    let held = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(held.text, "held across the reload");

    // A file that does not parse: the old set stays, the error names the file and line.
    std::fs::write(&file, entry("bob", BOB) + "[[client]]\nid = \n").unwrap();
    gw.sighup();
    let error = gw.wait_for("clients not reloaded").await;
    assert!(error.contains(&format!("{}:5:", file.display())), "{error}");
    generate(&mut client, "bad-file", Some(&bob))
        .await
        .expect("bob kept");
    assert_rejected(generate(&mut client, "bad-file", Some(&alice)).await, ALICE);

    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert_no_secret(&lines, &[ALICE, BOB]);
}

#[tokio::test]
async fn an_invalid_clients_file_at_startup_exits_2_naming_the_file_and_line() {
    let cases = [
        (
            entry("ok", ALICE) + "\n[[client]]\nid = \"not valid\"\n",
            ":6:",
        ),
        (entry("a", ALICE) + &entry("b", ALICE), ":4:"),
        (entry("a", ALICE) + &format!("token = \"{BOB}\"\n"), ":4:"),
        ("[[client]\n".to_string(), ":1:"),
    ];
    for (text, line) in cases {
        let file = clients_file(&text);
        let (code, _, stderr) = run_to_end(
            &temp_dir(),
            &["serve"],
            &[("VRA_CLIENTS_FILE", path_str(&file))],
        )
        .await;
        assert_eq!(code, 2, "{text}: {stderr}");
        let at = format!("{}{line}", file.display());
        assert!(
            stderr.contains("VRA_CLIENTS_FILE") && stderr.contains(&at),
            "{text}: {stderr}"
        );
        assert!(!stderr.contains(BOB), "{stderr}");
    }
    let missing = temp_dir().join("absent.toml");
    let (code, _, stderr) = run_to_end(
        &temp_dir(),
        &["serve"],
        &[("VRA_CLIENTS_FILE", path_str(&missing))],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(path_str(&missing)), "{stderr}");
}

#[tokio::test]
async fn a_network_address_needs_authentication_or_the_explicit_opt_out() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let open = gateway_env(&cloud_url, &local_url, &[("VRA_GATEWAY_ADDR", "0.0.0.0:0")]);
    let (code, _, stderr) = run_to_end(&temp_dir(), &["serve"], &open).await;
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "VRA_CLIENTS_FILE",
        "VRA_TLS_CLIENT_CA_FILE",
        "VRA_ALLOW_UNAUTHENTICATED",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    let opted_out = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_GATEWAY_ADDR", "0.0.0.0:0"),
            ("VRA_ALLOW_UNAUTHENTICATED", "true"),
        ],
    );
    let gw = Running::start(&opted_out).await;
    let port = gw.addr.rsplit(':').next().unwrap().to_string();
    let mut client = common::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    generate(&mut client, "open", None)
        .await
        .expect("no credentials needed with the opt-out");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

#[tokio::test]
async fn new_token_prints_a_token_and_the_block_that_accepts_it() {
    let (code, stdout, stderr) =
        run_to_end(&temp_dir(), &["clients", "new-token", "--id", "x"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let mut lines = stdout.lines();
    let token = lines.next().expect("the token line").to_string();
    assert!(token.starts_with("vra_"), "{stdout}");
    assert!(token.len() >= 4 + 64, "{token}");
    let block: String = lines
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("id = \"x\""), "{stdout}");
    assert!(
        block.contains(&format!("token_sha256 = \"{}\"", sha256_hex(&token))),
        "{stdout}"
    );
    // Tokens are fresh each time.
    let (_, again, _) = run_to_end(&temp_dir(), &["clients", "new-token", "--id", "x"], &[]).await;
    assert_ne!(again.lines().next(), Some(token.as_str()));
    let (code, _, stderr) = run_to_end(
        &temp_dir(),
        &["clients", "new-token", "--id", "bad id"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");

    // A gateway with that block accepts the token.
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let file = clients_file(&block);
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("VRA_CLIENTS_FILE", path_str(&file))],
    );
    let gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    generate(&mut client, "minted", Some(&format!("Bearer {token}")))
        .await
        .expect("the minted token is accepted");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert_no_secret(&lines, &[&token]);
}
