//! End-to-end tests of endpoint pools over real gRPC: one
//! provider served by several simulated upstreams — balancing, outlier ejection, the
//! per-endpoint `max_in_flight` cap and its queue, and retries that move to another endpoint.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{KEY, Running, gateway_env, run_to_end, temp_dir};
use common::{Harness, reason, request, tier};
use tonic::Code;
use vra_gateway::config::Config;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

const WAIT: Duration = Duration::from_secs(5);

/// `common::BASE` with the harness's upstreams, `env` and the TOML file `toml`.
fn gateway_config(cloud: &Sim, local: &Sim, env: &[(&str, &str)], toml: &str) -> Config {
    let mut sources = common::sources(cloud, local, env);
    sources
        .load_toml(toml, Path::new("endpoints.toml"))
        .expect("test TOML is valid");
    Config::from_sources(&sources).expect("test configuration is valid")
}

/// A `[providers.NAME]` table of Ollama endpoints, local tier, with extra `settings` lines.
fn ollama_pool(name: &str, sims: &[&Sim], settings: &str) -> String {
    let urls: Vec<String> = sims
        .iter()
        .map(|s| format!("\"{}\"", s.ollama_base()))
        .collect();
    format!(
        "[providers.{name}]\nkind = \"ollama\"\ntier = \"local\"\nbase_urls = [{}]\n{settings}\n",
        urls.join(", ")
    )
}

/// Takes the only slot of `upstream` (a pool endpoint with `max_in_flight = 1`): a `phase`
/// call, on its own connection, that the upstream never answers. Returns once the upstream
/// has it; abort the handle to give the slot back.
async fn hold_the_slot(
    h: &Harness,
    upstream: &Sim,
    phase: P,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::GenerateResponse>, tonic::Status>> {
    upstream.push(Step::Hang);
    let mut holder = h.client().await;
    let hold =
        tokio::spawn(async move { holder.generate(request("hold", phase, S::Analysis)).await });
    assert!(
        upstream.wait_in_flight(1, WAIT).await,
        "the holder reached the upstream"
    );
    hold
}

/// A request carrying a gRPC deadline.
fn with_deadline(
    req: pb::GenerateRequest,
    timeout: Duration,
) -> tonic::Request<pb::GenerateRequest> {
    let mut req = tonic::Request::new(req);
    req.set_timeout(timeout);
    req
}

#[tokio::test]
async fn most_calls_go_to_the_less_loaded_endpoint() {
    let (cloud, fast, slow) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    slow.set_default(Step::Reply {
        text: "slow answer".into(),
        delay: Duration::from_millis(150),
        chunk_delay: Duration::ZERO,
    });
    let toml = ollama_pool("local", &[&fast, &slow], "");
    let config = gateway_config(&cloud, &fast, &[], &toml);
    let h = Harness::start_with(cloud, fast, config).await;

    const WORKERS: usize = 4;
    const CALLS: usize = 10;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut client = h.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS {
                let resp = client
                    .generate(request(&format!("lb-{w}-{i}"), P::Expand, S::Analysis))
                    .await
                    .expect("generate")
                    .into_inner();
                assert_eq!(tier(&resp), T::Secondary);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (h.local.requests(), slow.requests());
    assert_eq!(f + s, WORKERS * CALLS, "one request per call");
    // A random or round-robin choice would send about half of the calls to the slow one.
    assert!(
        s <= WORKERS * CALLS / 4,
        "the slow endpoint got {s} of {} calls (fast: {f})",
        WORKERS * CALLS
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_returns_after_its_probe() {
    let (cloud, local, good, bad) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    bad.set_default(Step::fail(503));
    let toml = ollama_pool(
        "gpu",
        &[&good, &bad],
        "eject_after_failures = 2\neject_ms = 300",
    );
    let config = gateway_config(&cloud, &local, &[("PRIMARY_PROVIDER", "gpu")], &toml);
    let h = Harness::start_with(cloud, local, config).await;
    let client = h.client.clone();
    let call = |report: String| {
        let mut client = client.clone();
        async move {
            let resp = client
                .generate(request(&report, P::Refine, S::Analysis))
                .await
                .expect("every call succeeds")
                .into_inner();
            assert_eq!(tier(&resp), T::Primary, "no fallback");
            assert_eq!(reason(&resp), F::Unspecified);
            resp
        }
    };

    // Until the bad endpoint has failed twice, a call that lands on it retries on the good one.
    let mut n = 0;
    while bad.requests() < 2 {
        n += 1;
        assert!(n < 200, "the bad endpoint is never picked");
        let resp = call(format!("eject-{n}")).await;
        assert!(resp.attempts <= 2, "a retry moves to the good endpoint");
    }
    // Ejected: everything goes to the good endpoint, at the first attempt.
    for i in 0..20 {
        let resp = call(format!("ejected-{i}")).await;
        assert_eq!(resp.attempts, 1);
    }
    assert_eq!(bad.requests(), 2, "an ejected endpoint gets nothing");

    // It recovers; after eject_ms one probe brings it back.
    bad.set_default(Step::reply("recovered"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut i = 0;
    while bad.requests() < 3 {
        i += 1;
        assert!(i < 200, "the probe is never sent");
        assert_eq!(call(format!("probe-{i}")).await.attempts, 1);
    }
    let before = bad.requests();
    for i in 0..40 {
        call(format!("back-{i}")).await;
    }
    assert!(bad.requests() > before, "the endpoint is back in the pool");
    assert_eq!(h.local.requests(), 0, "the secondary was never needed");
    h.shutdown().await;
}

#[tokio::test]
async fn max_in_flight_caps_every_endpoint() {
    let (cloud, a, b) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    for sim in [&a, &b] {
        sim.set_default(Step::Reply {
            text: "capped".into(),
            delay: Duration::from_millis(20),
            chunk_delay: Duration::ZERO,
        });
    }
    let toml = ollama_pool("local", &[&a, &b], "max_in_flight = 1");
    let config = gateway_config(&cloud, &a, &[], &toml);
    let h = Harness::start_with(cloud, a, config).await;

    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = h.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .generate(request(&format!("cap-{i}"), P::Expand, S::Analysis))
                .await
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap().expect("every queued call succeeds");
        assert_eq!(resp.into_inner().attempts, 1);
    }
    assert_eq!(h.local.requests() + b.requests(), 20);
    assert_eq!(h.local.peak_in_flight(), 1, "endpoint a");
    assert_eq!(b.peak_in_flight(), 1, "endpoint b");
    h.shutdown().await;
}

#[tokio::test]
async fn a_deadline_that_passes_in_the_queue_sends_nothing() {
    let (cloud, local) = (Sim::start().await.unwrap(), Sim::start().await.unwrap());
    let toml = ollama_pool("local", &[&local], "max_in_flight = 1");
    let config = gateway_config(&cloud, &local, &[], &toml);
    let h = Harness::start_with(cloud, local, config).await;
    let hold = hold_the_slot(&h, &h.local, P::Expand).await;

    let mut client = h.client.clone();
    let err = client
        .generate(with_deadline(
            request("queued", P::Expand, S::Analysis),
            Duration::from_millis(200),
        ))
        .await
        .expect_err("the slot never frees in time");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        h.local.requests(),
        1,
        "the queued call never reached the upstream"
    );

    // The holder goes away: its slot is given back, nothing leaks.
    hold.abort();
    assert!(h.local.wait_closed(1, WAIT).await);
    let resp = client
        .generate(with_deadline(
            request("after", P::Expand, S::Analysis),
            Duration::from_secs(5),
        ))
        .await
        .expect("the slot is free again")
        .into_inner();
    assert_eq!(resp.attempts, 1);
    assert_eq!(h.local.requests(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_exhausts_the_secondary_and_fails_the_primary_over() {
    // Secondary: RESOURCE_EXHAUSTED.
    let (cloud, local) = (Sim::start().await.unwrap(), Sim::start().await.unwrap());
    let toml = ollama_pool("local", &[&local], "max_in_flight = 1\nmax_queue = 0");
    let config = gateway_config(&cloud, &local, &[], &toml);
    let h = Harness::start_with(cloud, local, config).await;
    let hold = hold_the_slot(&h, &h.local, P::Expand).await;
    let err = h
        .client
        .clone()
        .generate(request("turned-away", P::Expand, S::Analysis))
        .await
        .expect_err("no room and no queue");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queued"), "{}", err.message());
    assert_eq!(h.local.requests(), 1, "nothing sent");
    hold.abort();
    h.shutdown().await;

    // Primary: falls back with PRIMARY_ERROR.
    let (cloud, local, gpu) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    let toml = ollama_pool("gpu", &[&gpu], "max_in_flight = 1\nmax_queue = 0");
    let config = gateway_config(&cloud, &local, &[("PRIMARY_PROVIDER", "gpu")], &toml);
    let h = Harness::start_with(cloud, local, config).await;
    let hold = hold_the_slot(&h, &gpu, P::Refine).await;
    let resp = h
        .client
        .clone()
        .generate(request("fell-back", P::Refine, S::Analysis))
        .await
        .expect("the secondary serves it")
        .into_inner();
    assert_eq!(tier(&resp), T::Secondary);
    assert_eq!(reason(&resp), F::PrimaryError);
    assert_eq!(gpu.requests(), 1, "nothing more sent to the full primary");
    assert_eq!(h.local.requests(), 1);
    hold.abort();
    h.shutdown().await;
}

#[tokio::test]
async fn a_retry_moves_to_the_other_endpoint_and_both_attempts_are_budgeted() {
    let (a, b, local) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    let urls = format!("{},{}", a.openai_base(), b.openai_base());
    let config = gateway_config(&a, &local, &[("OPENAI_BASE_URL", &urls)], "");
    let h = Harness::start_with(a, local, config).await;

    // One endpoint is busy with another report's call, so the first attempt goes to the
    // idle one (fewer in flight) and fails; the retry must move to the busy one.
    h.cloud.set_default(Step::Hang);
    b.set_default(Step::Hang);
    let mut holder = h.client().await;
    let hold = tokio::spawn(async move {
        holder
            .generate(request("other-report", P::Refine, S::Analysis))
            .await
    });
    let a_busy = tokio::select! {
        true = h.cloud.wait_in_flight(1, WAIT) => true,
        true = b.wait_in_flight(1, WAIT) => false,
    };
    let (busy, idle) = if a_busy {
        (&h.cloud, &b)
    } else {
        (&b, &h.cloud)
    };
    busy.set_default(Step::reply("from the busy endpoint"));
    idle.set_default(Step::reply("from the idle endpoint"));
    idle.push(Step::fail(503));

    let resp = h
        .client
        .clone()
        .generate(request("moved", P::Refine, S::Analysis))
        .await
        .expect("the retry succeeds")
        .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    assert_eq!(reason(&resp), F::Unspecified);
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.text, "from the busy endpoint", "the retry moved");
    assert_eq!(idle.requests(), 1, "the idle endpoint: the 503 only");
    assert_eq!(
        busy.requests(),
        2,
        "the busy endpoint: the other call and the retry"
    );
    assert_eq!(busy.recorded().pop().unwrap().model(), "gpt-4o");
    let budget = resp.budget.expect("budget");
    assert_eq!(budget.cloud_calls_used, 2, "both attempts reserved a unit");
    hold.abort();
    h.shutdown().await;
}

#[tokio::test]
async fn a_stream_holds_its_endpoint_until_it_ends() {
    let (cloud, local) = (Sim::start().await.unwrap(), Sim::start().await.unwrap());
    local.set_default(Step::Reply {
        text: "one two three four five six seven eight".into(),
        delay: Duration::ZERO,
        chunk_delay: Duration::from_millis(5),
    });
    let toml = ollama_pool("local", &[&local], "max_in_flight = 1");
    let config = gateway_config(&cloud, &local, &[], &toml);
    let h = Harness::start_with(cloud, local, config).await;

    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut client = h.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .generate_stream(pb::GenerateStreamRequest::from(request(
                    &format!("stream-{i}"),
                    P::Expand,
                    S::Analysis,
                )))
                .await
                .expect("the stream starts")
                .into_inner();
            let mut text = String::new();
            loop {
                let msg = stream.message().await.expect("no error").expect("a done");
                text.push_str(&msg.delta);
                if msg.done.is_some() {
                    return text;
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "one two three four five six seven eight");
    }
    assert_eq!(h.local.requests(), 6);
    assert_eq!(
        h.local.peak_in_flight(),
        1,
        "the slot is held until the stream's end, not its first delta"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_ejection_is_logged_and_counted_by_the_binary() {
    let (good, bad, local) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    bad.set_default(Step::fail(503));
    let urls = format!("{},{}", good.openai_base(), bad.openai_base());
    let local_url = local.ollama_base();
    let mut env = gateway_env(&urls, &local_url, &[]);
    env.retain(|(k, _)| {
        !matches!(
            *k,
            "VRA_METRICS_ADDR" | "VRA_RETRY_MAX_ATTEMPTS" | "MAX_CLOUD_CALLS"
        )
    });
    env.extend([
        ("VRA_METRICS_ADDR", "127.0.0.1:0"),
        ("VRA_RETRY_MAX_ATTEMPTS", "3"),
        ("VRA_RETRY_BASE_MS", "1"),
        ("MAX_CLOUD_CALLS", "1000"),
    ]);
    let mut gw = Running::start(&env).await;
    let metrics_url = gw.metrics_url().await;
    let mut client = common::connect(gw.addr.parse().unwrap()).await;
    let mut n = 0;
    while bad.requests() < 3 {
        n += 1;
        assert!(n < 300, "the bad endpoint is never picked");
        let resp = client
            .generate(request(&format!("bin-{n}"), P::Refine, S::Analysis))
            .await
            .expect("a retry on the good endpoint serves it")
            .into_inner();
        assert_eq!(tier(&resp), T::Primary);
    }
    let line = gw.wait_for("endpoint ejected").await;
    let endpoint = bad.addr().to_string();
    assert!(
        line.contains("openai") && line.contains(&endpoint),
        "{line}"
    );
    vra_gateway::install_crypto_provider();
    let body = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let needle = format!(
        "vra_gateway_endpoint_ejections_total{{provider=\"openai\",endpoint=\"{endpoint}\"}} 1"
    );
    assert!(body.contains(&needle), "missing {needle}\n{body}");
    assert!(body.contains("vra_gateway_queue_wait_seconds_count{provider=\"openai\"}"));
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    assert!(
        !lines.iter().any(|l| l.contains(KEY)),
        "the key never shows"
    );
}

#[tokio::test]
async fn duplicate_or_bad_endpoint_urls_exit_2_naming_the_setting() {
    let dir = temp_dir();
    for (var, value) in [
        ("OLLAMA_HOST", "http://gpu-a:11434,gpu-a:11434"),
        ("OPENAI_BASE_URL", "https://a.example/v1,not a url"),
    ] {
        let mut env = gateway_env("https://api.openai.com/v1", "http://127.0.0.1:11434", &[]);
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        let (code, _, stderr) = run_to_end(&dir, &["serve"], &env).await;
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test]
async fn the_secondary_is_usable_while_one_endpoint_is() {
    use std::sync::Arc;
    use vra_gateway::budget::memory::MemoryLedger;
    use vra_gateway::domain::{ChatMessage, Phase, Role, SectionType};
    use vra_gateway::gateway::{Gateway, GenerateInput};
    use vra_gateway::metrics::Metrics;
    use vra_gateway::providers::Tiers;
    use vra_gateway::resilience::Deadline;

    let (cloud, a, b) = (
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
        Sim::start().await.unwrap(),
    );
    for sim in [&a, &b] {
        sim.set_default(Step::fail(503));
    }
    let toml = ollama_pool("local", &[&a, &b], "eject_after_failures = 1");
    // The breaker stays out of it: only the pool decides here.
    let env = [
        ("VRA_CIRCUIT_FAILURES", "0"),
        ("VRA_RETRY_MAX_ATTEMPTS", "1"),
    ];
    let config = gateway_config(&cloud, &a, &env, &toml);
    let tiers = Tiers::build(&config.primary, &config.secondary, &[]).unwrap();
    let ledger = Arc::new(MemoryLedger::new(Duration::from_secs(60)));
    let gateway = Gateway::new(&config, tiers, ledger, Arc::new(Metrics::new()));
    let input = |report: &str| GenerateInput {
        report_id: report.into(),
        section_id: "1".into(),
        section_type: SectionType::Analysis,
        phase: Phase::Expand,
        messages: [ChatMessage::new(Role::User, "p")].into(),
        temperature: None,
        top_p: None,
        max_tokens: None,
        stop: Vec::new(),
        seed: None,
        pin: None,
        client: None,
        cache: Default::default(),
    };
    assert!(!gateway.secondary_unusable());
    gateway
        .generate(&input("h-1"), Deadline(None))
        .await
        .expect_err("503");
    assert_eq!(a.requests() + b.requests(), 1);
    assert!(
        !gateway.secondary_unusable(),
        "one endpoint ejected, the other usable: health stays SERVING"
    );
    gateway
        .generate(&input("h-2"), Deadline(None))
        .await
        .expect_err("503");
    assert_eq!((a.requests(), b.requests()), (1, 1), "the other endpoint");
    assert!(gateway.secondary_unusable(), "both ejected");
    let err = gateway
        .generate(&input("h-3"), Deadline(None))
        .await
        .expect_err("fails fast");
    assert!(err.to_string().contains("all endpoints ejected"), "{err}");
    assert_eq!(a.requests() + b.requests(), 2, "nothing sent");
}
