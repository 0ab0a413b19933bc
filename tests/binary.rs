//! Tests that run the real `vra-gateway` binary: configuration errors and exit codes,
//! `--print-config`, the exact `[Hybrid]` log lines, secrets kept out of logs, and graceful
//! shutdown on SIGTERM.

mod common;

use std::time::Duration;

use common::clients::{TestClient, write_clients_file};
use common::process::{KEY, Running, gateway_env, run_to_end, temp_dir};
use common::request;
use tonic::Code;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{CompilationPhase as P, SectionType as S};

const PROMPT_MARKER: &str = "confidential-prompt-marker-7d1e";

#[tokio::test]
async fn invalid_configuration_exits_2_naming_the_variable() {
    let dir = temp_dir();
    let cases = [
        ("VRA_HYBRID_MODE", "perhaps"),
        ("MAX_CLOUD_CALLS", "-3"),
        ("MAX_CLOUD_CALLS", "lots"),
        ("PRIMARY_PROVIDER", "bard"),
        ("SECONDARY_PROVIDER", "gemini"),
        ("VRA_GATEWAY_ADDR", "not-an-address"),
        ("VRA_RETRY_MAX_ATTEMPTS", "0"),
        ("VRA_UPSTREAM_TIMEOUT_MS", "fast"),
        ("VRA_LOG_FORMAT", "yaml"),
        ("OPENAI_BASE_URL", "not a url"),
    ];
    for (var, value) in cases {
        let (code, _, stderr) = run_to_end(&dir, &["serve"], &[(var, value)]).await;
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[tokio::test]
async fn layered_sources_and_redacted_print_config() {
    let dir = temp_dir();
    std::fs::write(
        dir.join(".env"),
        "MAX_CLOUD_CALLS=7\nPRIMARY_MODEL=from-dotenv\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("gw.toml"),
        "max_cloud_calls = 9\nvra_hybrid_mode = true\nsecondary_model = \"from-file\"\n",
    )
    .unwrap();
    let env = [("OPENAI_API_KEY", KEY), ("PRIMARY_MODEL", "from-env")];
    let (code, stdout, stderr) = run_to_end(
        &dir,
        &["serve", "--print-config", "--config", "gw.toml"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("PRIMARY_MODEL=from-env    # env"),
        "{stdout}"
    );
    assert!(stdout.contains("MAX_CLOUD_CALLS=7    # .env"), "{stdout}");
    assert!(
        stdout.contains("VRA_HYBRID_MODE=true    # file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SECONDARY_MODEL=from-file    # file"),
        "{stdout}"
    );
    assert!(stdout.contains("OPENAI_API_KEY=<redacted>"), "{stdout}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));

    // VRA_GATEWAY_CONFIG names the file too; a bad value in it exits 2 naming the setting.
    let dir = temp_dir();
    std::fs::write(dir.join("bad.toml"), "max_cloud_calls = \"many\"\n").unwrap();
    let (code, _, stderr) =
        run_to_end(&dir, &["serve"], &[("VRA_GATEWAY_CONFIG", "bad.toml")]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("MAX_CLOUD_CALLS"), "{stderr}");
    let (code, _, stderr) = run_to_end(&dir, &["serve", "--config", "missing.toml"], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("VRA_GATEWAY_CONFIG") && stderr.contains("missing.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn help_documents_commands_and_settings() {
    let (code, stdout, _) = run_to_end(&temp_dir(), &["--help"], &[]).await;
    assert_eq!(code, 0);
    for needle in [
        "serve",
        "demo",
        "health",
        "VRA_HYBRID_MODE",
        "MAX_CLOUD_CALLS",
        "VRA_LEDGER_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}");
    }
}

#[tokio::test]
async fn hybrid_log_lines_are_exact_and_secrets_stay_out() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(&cloud_url, &local_url, &[("RUST_LOG", "trace")]);
    let mut gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let call = |report: &str, phase, section| {
        let mut req = request(report, phase, section);
        req.prompt = format!("{PROMPT_MARKER} write it");
        req
    };

    client
        .generate(call("rep-a", P::Refine, S::Analysis))
        .await
        .unwrap();
    let line = gw
        .wait_for("[Hybrid] Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o")
        .await;
    assert!(line.contains(" INFO "), "{line}");

    client
        .generate(call("rep-a", P::Abstract, S::Other))
        .await
        .unwrap();
    let line = gw
        .wait_for("[Hybrid] Event=FALLBACK | Reason=COST_LIMIT | Report=rep-a | Phase=ABSTRACT")
        .await;
    assert!(line.contains(" WARN "), "{line}");
    gw.wait_for(
        "[Hybrid] Phase=ABSTRACT | Section=1.3 | Provider=LOCAL | Model=llama3:8b | Report=rep-a",
    )
    .await;

    cloud.push(Step::fail(500));
    client
        .generate(call("rep-b", P::Refine, S::Analysis))
        .await
        .unwrap();
    let line = gw
        .wait_for(
            "[Hybrid] Phase=REFINE | Event=FALLBACK | From=PRIMARY | To=SECONDARY | Error=HTTP 500",
        )
        .await;
    assert!(line.contains(" WARN "), "{line}");

    cloud.push(Step::fail(503));
    local.push(Step::fail(500));
    let err = client
        .generate(call("rep-c", P::Draft, S::Introduction))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let line = gw
        .wait_for("[Hybrid] Phase=DRAFT | Event=FALLBACK_FAILED | Error=HTTP 503")
        .await;
    assert!(
        line.contains(" ERROR ") && line.contains("HTTP 500"),
        "{line}"
    );

    cloud.push(Step::StreamThenBreak {
        text: "one two three".into(),
        deltas: 1,
    });
    let mut stream = client
        .generate_stream(vra_gateway::pb::GenerateStreamRequest {
            report_id: "rep-d".into(),
            section_id: "4.2".into(),
            section_type: S::Analysis as i32,
            phase: P::Refine as i32,
            prompt: format!("{PROMPT_MARKER} stream it"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(_)) = stream.message().await {}
    let line = gw
        .wait_for("[Hybrid] Phase=REFINE | Event=STREAM_ABORTED | Provider=OPENAI | Error=")
        .await;
    assert!(
        line.contains(" ERROR ") && line.contains("Report=rep-d"),
        "{line}"
    );

    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let all = lines.join("\n");
    assert!(!all.contains(KEY), "the API key leaked into the logs");
    assert!(
        !all.contains(PROMPT_MARKER),
        "prompt text leaked into the logs"
    );
    assert!(
        !all.contains('\u{1b}'),
        "no ANSI colour codes when stderr is not a terminal"
    );
}

#[tokio::test]
async fn json_logs_carry_the_trace_id() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(&cloud_url, &local_url, &[("VRA_LOG_FORMAT", "json")]);
    let mut gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let mut req = tonic::Request::new(request("json-rep", P::Refine, S::Analysis));
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    // The caller's private context: vendor trace state and baggage (user and tenant ids).
    req.metadata_mut()
        .insert("tracestate", "vendor=tenant-acme".parse().unwrap());
    req.metadata_mut()
        .insert("baggage", "user.id=alice,tenant=acme".parse().unwrap());
    client.generate(req).await.unwrap();
    let line = gw.wait_for("[Hybrid] Phase=REFINE").await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["level"], "INFO");
    assert_eq!(
        json["message"],
        "[Hybrid] Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o | Report=json-rep"
    );
    assert_eq!(
        json["trace_id"], trace_id,
        "the caller's trace continues in the log line"
    );
    // Without OTLP export the gateway records no spans, yet still forwards the caller's trace.
    let forwarded = cloud.recorded()[0]
        .traceparent
        .clone()
        .expect("traceparent sent upstream");
    assert!(forwarded.contains(trace_id), "{forwarded}");
    let sent = &cloud.recorded()[0];
    assert_eq!(
        (&sent.tracestate, &sent.baggage),
        (&None, &None),
        "only traceparent leaves the network"
    );
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits_zero() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    cloud.push(Step::Reply {
        text: "finished during shutdown".into(),
        delay: Duration::from_millis(700),
        chunk_delay: Duration::ZERO,
    });
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let gw = Running::start(&gateway_env(&cloud_url, &local_url, &[])).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let call = tokio::spawn(async move {
        client
            .generate(request("drain", P::Refine, S::Analysis))
            .await
    });
    // SIGTERM only once the call is in flight: the upstream has received it (and delays its
    // answer by 700 ms).
    assert!(
        cloud.wait_requests(1, Duration::from_secs(10)).await,
        "the call reached the upstream"
    );
    gw.sigterm();
    let resp = call
        .await
        .unwrap()
        .expect("in-flight call finished")
        .into_inner();
    assert_eq!(resp.text, "finished during shutdown");
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("draining in-flight calls")));
}

/// A supervisor may send SIGTERM as soon as the gateway says it is listening: by then the
/// handler must be installed, or the default action kills the process (no drain, no span
/// flush). Before the fix about half of these SIGTERMs killed it; five tries catch that.
#[tokio::test]
async fn sigterm_right_after_listening_exits_zero() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    for _ in 0..5 {
        let gw = Running::start(&gateway_env(&cloud_url, &local_url, &[])).await;
        gw.sigterm();
        let (code, lines) = gw.finish().await;
        assert_eq!(code, 0, "{}", lines.join("\n"));
    }
}

/// `VRA_WORKER_THREADS` sizes the runtime: the start-up line reads the count off the running
/// runtime, so it shows one thread more than this machine's CPUs (never tokio's default) only
/// when the setting took effect.
#[tokio::test]
async fn worker_threads_setting_sizes_the_runtime() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = (cpus + 1).to_string();
    let env = gateway_env(&cloud_url, &local_url, &[("VRA_WORKER_THREADS", &wanted)]);
    let mut gw = Running::start(&env).await;
    let line = gw.wait_for("listening on").await;
    assert!(line.contains(&format!("workers={wanted})")), "{line}");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

/// `[Hybrid]` lines name the authenticated client, and a spent day quota is its own
/// fallback reason.
#[tokio::test]
async fn client_quota_fallbacks_are_logged_with_the_client() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let a = TestClient::new("reports-python", "vra_binary-test-token-2c81").per_day(1);
    let file = write_clients_file(&[a]);
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("VRA_CLIENTS_FILE", file.to_str().unwrap()),
            ("MAX_CLOUD_CALLS", "5"),
        ],
    );
    let mut gw = Running::start(&env).await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    client
        .generate(a.call(request("rep-q1", P::Refine, S::Analysis)))
        .await
        .unwrap();
    gw.wait_for("[Hybrid] Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o | Report=rep-q1 | Client=reports-python")
        .await;
    let r = client
        .generate(a.call(request("rep-q2", P::Refine, S::Analysis)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        common::reason(&r),
        vra_gateway::pb::FallbackReason::ClientQuota
    );
    let line = gw
        .wait_for("[Hybrid] Event=FALLBACK | Reason=CLIENT_QUOTA | Report=rep-q2 | Phase=REFINE | Section=1.3 | Client=reports-python")
        .await;
    assert!(line.contains(" WARN "), "{line}");
    assert_eq!(cloud.requests(), 1);
    gw.sigterm();
    let (code, _) = gw.finish().await;
    assert_eq!(code, 0);
}
