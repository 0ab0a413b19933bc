//! `vra-gateway demo`: the real gateway, end to end, against SIMULATED upstreams.
//!
//! Starts two in-process HTTP servers that speak the real OpenAI and Ollama wire formats with
//! canned text ([`crate::demo::sim`]), starts the real gateway on a free port, and drives
//! a sample report through a real gRPC client: five sections × DRAFT/EXPAND/REFINE, then the
//! ABSTRACT, with hybrid mode on, a budget of 6 cloud calls and one injected burst of primary
//! 500s. The table it prints makes the routing matrix, the PRIMARY_ERROR fallback and the
//! COST_LIMIT fallback visible; one section is streamed token by token.
//!
//! `--openai-base-url` / `--ollama-host` point the demo at real backends instead.
//!
//! `demo --serve` ([`serve`]) is the keyless sandbox: the same simulated upstreams and the real
//! gateway on `VRA_GATEWAY_ADDR`, serving until Ctrl-C or SIGTERM, for the SDKs in `clients/`,
//! their tests and the examples. `--fail-primary-every N` makes fallbacks visible.
//!
//! Nothing here is a production code path: [`sim`] is the one simulated backend of the
//! product, used by this demo, the tests and the benchmarks as the "remote LLM".

pub mod sim;

use std::io::Write;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::config::{Config, Sources};
use crate::demo::sim::{Sim, Step};
use crate::pb::gateway_service_client::GatewayServiceClient;
use crate::pb::{self, CompilationPhase, SectionType};
use crate::server;

/// Where the demo's upstreams are.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    pub openai_base_url: Option<String>,
    pub ollama_host: Option<String>,
    /// `max_tokens` of every call: a run against real servers takes seconds per call.
    pub max_tokens: u32,
}

/// The default of `demo --max-tokens`.
pub const DEMO_MAX_TOKENS: u32 = 256;

/// The demo's budget: small, so the COST_LIMIT fallback shows within one report.
pub const DEMO_MAX_CLOUD_CALLS: u32 = 6;

const SECTIONS: [(&str, &str, SectionType); 5] = [
    ("1", "Introduction", SectionType::Introduction),
    ("2", "Methodology", SectionType::Methodology),
    ("3", "Analysis", SectionType::Analysis),
    ("4", "Implementation", SectionType::Implementation),
    ("5", "Conclusion", SectionType::Conclusion),
];

/// The settings every simulated run forces: hybrid mode, the two simulated (or given)
/// upstreams and short retry pauses, on top of the operator's environment (OTEL_*, RUST_LOG,
/// keys, and for `--serve` the listen address, budget, clients file and TLS).
fn simulated_sources(
    cloud_url: &str,
    local_url: &str,
) -> Result<Sources, crate::config::ConfigError> {
    let mut sources = Sources::from_process(None)?;
    for (k, v) in [
        ("VRA_HYBRID_MODE", "true"),
        ("PRIMARY_PROVIDER", "openai"),
        ("SECONDARY_PROVIDER", "local"),
        ("OPENAI_BASE_URL", cloud_url),
        ("OLLAMA_HOST", local_url),
        ("VRA_RETRY_BASE_MS", "100"),
        ("VRA_RETRY_MAX_BACKOFF_MS", "400"),
    ] {
        sources.env.insert(k.to_string(), v.to_string());
    }
    sources
        .env
        .entry("PRIMARY_MODEL".into())
        .or_insert_with(|| "gpt-4o".into());
    Ok(sources)
}

/// Builds the demo's configuration: [`simulated_sources`] plus the demo's own budget, a free
/// port, no metrics listener and the in-memory ledger.
pub fn demo_config(
    cloud_url: &str,
    local_url: &str,
) -> Result<(Config, Sources), crate::config::ConfigError> {
    let mut sources = simulated_sources(cloud_url, local_url)?;
    for (k, v) in [
        ("VRA_GATEWAY_ADDR", "127.0.0.1:0"),
        ("VRA_METRICS_ADDR", ""),
        ("VRA_LEDGER_URL", ""),
    ] {
        sources.env.insert(k.to_string(), v.to_string());
    }
    sources
        .env
        .insert("MAX_CLOUD_CALLS".into(), DEMO_MAX_CLOUD_CALLS.to_string());
    Ok((Config::from_sources(&sources)?, sources))
}

/// Builds the sandbox's configuration (`demo --serve`): [`simulated_sources`]; the listen
/// address, budget, ledger, clients file and TLS come from the environment like for `serve`
/// (default 127.0.0.1:50051, 15 cloud calls per report), except that the metrics listener is
/// off unless `VRA_METRICS_ADDR` is set, and the OpenAI-compatible door opens on a free
/// loopback port unless `VRA_HTTP_ADDR` is set, so several sandboxes can run side by side.
pub fn serve_config(
    cloud_url: &str,
    local_url: &str,
) -> Result<(Config, Sources), crate::config::ConfigError> {
    let mut sources = simulated_sources(cloud_url, local_url)?;
    for (var, sandbox_default) in [("VRA_METRICS_ADDR", ""), ("VRA_HTTP_ADDR", "127.0.0.1:0")] {
        if sources.lookup(var).is_none() {
            sources.env.insert(var.into(), sandbox_default.into());
        }
    }
    Ok((Config::from_sources(&sources)?, sources))
}

/// Options of `demo --serve`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Every N-th call to the primary fails all its retries (HTTP 500), so it falls back with
    /// PRIMARY_ERROR.
    pub fail_primary_every: Option<NonZeroUsize>,
    /// Every simulated answer waits this long before its first byte.
    pub upstream_delay: Duration,
}

/// Why the sandbox stopped.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("cannot start a simulated upstream: {0}")]
    Upstream(#[from] std::io::Error),
}

impl SandboxError {
    /// 2 for configuration errors, as for `serve`; else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            SandboxError::Config(_) => 2,
            SandboxError::Serve(e) => e.exit_code(),
            SandboxError::Upstream(_) => 1,
        }
    }
}

/// `vra-gateway demo --serve`: the simulated upstreams and the real gateway on
/// `VRA_GATEWAY_ADDR`, until Ctrl-C or SIGTERM. The SDKs' tests and examples run against it.
pub async fn serve(options: ServeOptions) -> Result<(), SandboxError> {
    let cloud = Sim::start().await?;
    let local = Sim::start().await?;
    for sim in [&cloud, &local] {
        sim.forget_requests();
        if !options.upstream_delay.is_zero() {
            sim.set_default(Step::Reply {
                text: sim::DEFAULT_TEXT.into(),
                delay: options.upstream_delay,
                chunk_delay: Duration::ZERO,
            });
        }
    }
    let (config, _) = serve_config(&cloud.openai_base(), &local.ollama_base())?;
    if let Some(every) = options.fail_primary_every {
        let attempts =
            NonZeroUsize::new(config.retry.max_attempts as usize).unwrap_or(NonZeroUsize::MIN);
        cloud.fail_every(every, attempts);
    }
    let mut guard =
        crate::telemetry::init_with_default(&config.telemetry, "warn,vra_gateway::hybrid=info");
    crate::telemetry::log_panics();
    // Handlers first: a SIGTERM once the address is printed must drain, not kill.
    let shutdown = server::shutdown_signal();
    let listeners = server::bind(&config).await?;
    let addr = listeners.grpc_addr().map_err(SandboxError::Upstream)?;
    print_sandbox_banner(
        &config,
        addr,
        listeners.http_addr(),
        &options,
        [cloud.addr(), local.addr()],
    )?;
    let result = server::run(config, listeners, shutdown).await;
    guard.shutdown();
    drop((cloud, local));
    result?;
    println!("sandbox stopped");
    Ok(())
}

/// The two banner lines of the demo and the sandbox that say the upstreams are simulated.
fn write_simulated(out: &mut impl Write, config: &Config) -> std::io::Result<()> {
    writeln!(
        out,
        "  upstreams are SIMULATED: in-process servers speaking the real OpenAI (cloud, {}) and",
        config.primary.model
    )?;
    writeln!(
        out,
        "  Ollama (local, {}) wire formats with canned text. Real HTTP, real gRPC, real gateway.",
        config.secondary.model
    )
}

fn print_sandbox_banner(
    config: &Config,
    addr: std::net::SocketAddr,
    door: Option<std::net::SocketAddr>,
    options: &ServeOptions,
    [cloud, local]: [std::net::SocketAddr; 2],
) -> std::io::Result<()> {
    let security = &config.security;
    let tls = security.tls.is_some();
    let mut out = std::io::stdout().lock();
    writeln!(out, "vra-gateway sandbox (demo --serve), no keys needed")?;
    write_simulated(&mut out, config)?;
    writeln!(
        out,
        "  simulated cloud upstream: http://{cloud} (OpenAI /v1/chat/completions, Anthropic /v1/messages); local: http://{local} (Ollama /api/chat)"
    )?;
    writeln!(
        out,
        "  hybrid mode on, MAX_CLOUD_CALLS={} per report, {} attempts per provider",
        config.max_cloud_calls, config.retry.max_attempts
    )?;
    if let Some(n) = options.fail_primary_every {
        writeln!(
            out,
            "  one primary call in every {n} fails all its attempts (HTTP 500) and falls back: PRIMARY_ERROR"
        )?;
    }
    if !options.upstream_delay.is_zero() {
        writeln!(
            out,
            "  every simulated answer waits {} ms before its first byte",
            options.upstream_delay.as_millis()
        )?;
    }
    let auth = match (
        &security.clients_file,
        security.tls.as_ref().and_then(|t| t.client_ca.as_ref()),
    ) {
        (Some(file), _) => format!("bearer tokens of {}", file.display()),
        (None, Some(_)) => "client certificates (mTLS)".to_string(),
        (None, None) => "none".to_string(),
    };
    writeln!(
        out,
        "  transport: {}, credentials: {auth}",
        if tls { "TLS" } else { "plaintext" }
    )?;
    writeln!(out)?;
    writeln!(out, "gateway listening on {addr}")?;
    writeln!(
        out,
        "  try:  python -m vra_gateway compile examples/outline.yaml --out report.md --target {addr}"
    )?;
    writeln!(
        out,
        "        node examples/node/compile-report.mjs --target {addr}   (see README, 'Clients')"
    )?;
    if let Some(door) = door {
        let scheme = if tls { "https" } else { "http" };
        let key = if security.clients_file.is_some() {
            "YOUR_TOKEN"
        } else {
            "unused"
        };
        writeln!(out)?;
        writeln!(out, "OpenAI-compatible door on {scheme}://{door}/v1")?;
        writeln!(
            out,
            "  curl {scheme}://{door}/v1/chat/completions -H 'authorization: Bearer {key}' -H 'content-type: application/json' \\"
        )?;
        writeln!(
            out,
            "    -H 'x-vra-report-id: q3' -H 'x-vra-phase: DRAFT' -H 'x-vra-section-type: INTRODUCTION' \\"
        )?;
        writeln!(
            out,
            "    -d '{{\"model\": \"vra-auto\", \"messages\": [{{\"role\": \"user\", \"content\": \"Draft the introduction.\"}}]}}'"
        )?;
        writeln!(out, "  python (pip install openai):")?;
        writeln!(
            out,
            "    from openai import OpenAI; client = OpenAI(base_url=\"{scheme}://{door}/v1\", api_key=\"{key}\")"
        )?;
        writeln!(
            out,
            "    r = client.chat.completions.create(model=\"vra-auto\", messages=[{{\"role\": \"user\", \"content\": \"Draft the introduction.\"}}], extra_headers={{\"x-vra-report-id\": \"q3\", \"x-vra-phase\": \"DRAFT\"}})"
        )?;
        writeln!(
            out,
            "    print(r.choices[0].message.content, r.model)   # response headers x-vra-*: how it was routed"
        )?;
    }
    writeln!(out, "  stop: Ctrl-C or SIGTERM")?;
    out.flush()
}

fn phase_name(p: CompilationPhase) -> &'static str {
    pb::short_name(p.as_str_name(), "COMPILATION_PHASE_").unwrap_or("-")
}

fn tier_name(t: i32) -> &'static str {
    pb::ProviderTier::try_from(t)
        .ok()
        .and_then(|t| pb::short_name(t.as_str_name(), "PROVIDER_TIER_"))
        .unwrap_or("-")
}

fn reason_name(r: i32) -> &'static str {
    pb::FallbackReason::try_from(r)
        .ok()
        .and_then(|r| pb::short_name(r.as_str_name(), "FALLBACK_REASON_"))
        .unwrap_or("-")
}

/// Runs the demo; returns an error message on failure.
pub async fn run(options: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let max_tokens = options.max_tokens;
    let simulated = options.openai_base_url.is_none() || options.ollama_host.is_none();
    let cloud_sim = match options.openai_base_url {
        None => Some(Sim::start().await?),
        Some(_) => None,
    };
    let local_sim = match options.ollama_host {
        None => Some(Sim::start().await?),
        Some(_) => None,
    };
    if let Some(local) = &local_sim {
        // A visible token-by-token pace for the streamed section.
        local.set_default(Step::Reply {
            text: crate::demo::sim::DEFAULT_TEXT.into(),
            delay: Duration::ZERO,
            chunk_delay: Duration::from_millis(35),
        });
    }
    let cloud_url = options
        .openai_base_url
        .clone()
        .or_else(|| cloud_sim.as_ref().map(Sim::openai_base))
        .unwrap_or_default();
    let local_url = options
        .ollama_host
        .clone()
        .or_else(|| local_sim.as_ref().map(Sim::ollama_base))
        .unwrap_or_default();
    let (config, _) = demo_config(&cloud_url, &local_url)?;
    let mut guard =
        crate::telemetry::init_with_default(&config.telemetry, "warn,vra_gateway::hybrid=info");

    let mut out = std::io::stdout().lock();
    writeln!(out, "vra-gateway demo")?;
    if simulated {
        write_simulated(&mut out, &config)?;
    } else {
        writeln!(
            out,
            "  upstreams: OpenAI-compatible at {cloud_url}, Ollama at {local_url}"
        )?;
    }
    writeln!(
        out,
        "  hybrid mode on, MAX_CLOUD_CALLS={DEMO_MAX_CLOUD_CALLS} per report, retries 3 per provider"
    )?;
    writeln!(out)?;
    drop(out);

    let listeners = server::bind(&config).await?;
    let addr = listeners.grpc_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::run(config.clone(), listeners, async {
        let _ = stop_rx.await;
    }));
    let mut client = GatewayServiceClient::connect(format!("http://{addr}")).await?;

    let report_id = format!("demo-report-{}", std::process::id());
    let options = pb::GenerationOptions {
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (id, title, section_type) in SECTIONS {
        for phase in [
            CompilationPhase::Draft,
            CompilationPhase::Expand,
            CompilationPhase::Refine,
        ] {
            if id == "2"
                && phase == CompilationPhase::Refine
                && let Some(cloud) = &cloud_sim
            {
                // One burst of primary 500s: every retry fails, so the call falls back.
                cloud.push_n(3, Step::fail(500));
            }
            let request = pb::GenerateRequest {
                report_id: report_id.clone(),
                section_id: id.into(),
                section_type: section_type as i32,
                phase: phase as i32,
                prompt: format!(
                    "{} the '{title}' section of a technical report.",
                    phase_name(phase)
                ),
                system_prompt: "You write precise technical prose.".into(),
                options: Some(options.clone()),
                ..Default::default()
            };
            if id == "1" && phase == CompilationPhase::Expand {
                rows.push(stream_section(&mut client, request, title).await?);
            } else {
                let resp = client.generate(request).await?.into_inner();
                rows.push(row(id, title, phase, &resp));
            }
        }
    }
    let resp = client
        .generate(pb::GenerateRequest {
            report_id: report_id.clone(),
            section_id: "abstract".into(),
            section_type: SectionType::Other as i32,
            phase: CompilationPhase::Abstract as i32,
            prompt: "Write the abstract of the report.".into(),
            options: Some(options.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    rows.push(row("-", "Abstract", CompilationPhase::Abstract, &resp));

    let usage = client
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: report_id.clone(),
        })
        .await?
        .into_inner();
    print_table(&rows, &usage)?;
    println!(
        "\n{}",
        crate::usage::render(&usage, Some(&config.primary.model))
    );

    let _ = stop_tx.send(());
    let _ = server_task.await;
    guard.shutdown();
    println!(
        "\nDone in {:.1}s. The [Hybrid] lines above (stderr) are the gateway's own logs.",
        started.elapsed().as_secs_f64()
    );
    if crate::telemetry::export_enabled() {
        println!(
            "Spans were exported over OTLP: open Jaeger and search for service `vra-gateway`."
        );
    }
    Ok(())
}

struct Row {
    section: String,
    phase: &'static str,
    tier: &'static str,
    provider: String,
    model: String,
    rule: String,
    fallback: &'static str,
    attempts: u32,
}

fn row(id: &str, title: &str, phase: CompilationPhase, resp: &pb::GenerateResponse) -> Row {
    let route = resp.route.clone().unwrap_or_default();
    Row {
        section: if id == "-" {
            title.to_string()
        } else {
            format!("{id} {title}")
        },
        phase: phase_name(phase),
        tier: tier_name(route.tier),
        provider: route.provider,
        model: route.model,
        rule: route.rule,
        fallback: reason_name(route.fallback_reason),
        attempts: resp.attempts,
    }
}

async fn stream_section(
    client: &mut GatewayServiceClient<tonic::transport::Channel>,
    request: pb::GenerateRequest,
    title: &str,
) -> Result<Row, Box<dyn std::error::Error>> {
    let phase = CompilationPhase::try_from(request.phase).unwrap_or_default();
    let stream_req = pb::GenerateStreamRequest::from(request.clone());
    let mut stream = client.generate_stream(stream_req).await?.into_inner();
    let mut done = None;
    let mut first = true;
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if !msg.delta.is_empty() {
            if first {
                // The header goes out with the first token, after the gateway's routing line.
                print!(
                    "streaming section {} {title} / {}: ",
                    request.section_id,
                    phase_name(phase)
                );
                first = false;
            }
            print!("{}", msg.delta);
            std::io::stdout().flush()?;
        }
        if msg.done.is_some() {
            done = msg.done;
        }
    }
    println!("\n");
    let done = done.ok_or("stream ended without its final message")?;
    let mut r = row(&request.section_id, title, phase, &done);
    r.phase = "EXPAND*";
    Ok(r)
}

fn print_table(rows: &[Row], usage: &pb::GetReportUsageResponse) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n{:<18} {:<9} {:<10} {:<8} {:<10} {:<25} {:<14} attempts",
        "section", "phase", "tier", "provider", "model", "rule", "fallback"
    )?;
    writeln!(out, "{}", "-".repeat(106))?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<9} {:<10} {:<8} {:<10} {:<25} {:<14} {}",
            r.section, r.phase, r.tier, r.provider, r.model, r.rule, r.fallback, r.attempts
        )?;
    }
    let budget = usage.budget.unwrap_or_default();
    let cloud = usage.cloud_usage.unwrap_or_default();
    let local = usage.local_usage.unwrap_or_default();
    writeln!(out, "(* streamed token by token)\n")?;
    writeln!(out, "report {}:", usage.report_id)?;
    writeln!(
        out,
        "  cloud calls used {}/{}{}  (every HTTP request to the cloud counts, retries included)",
        budget.cloud_calls_used,
        budget.cloud_calls_limit,
        if budget.exhausted {
            " — exhausted"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  answered by primary {} / secondary {}, fallbacks {}",
        usage.primary_calls, usage.secondary_calls, usage.fallbacks
    )?;
    writeln!(
        out,
        "  tokens: cloud {} in / {} out, local {} in / {} out",
        cloud.input_tokens, cloud.output_tokens, local.input_tokens, local.output_tokens
    )?;
    writeln!(out, "\nHow to read it:")?;
    writeln!(
        out,
        "  rule      the routing-matrix row that chose the tier (see README, 'Routing')"
    )?;
    writeln!(
        out,
        "  PRIMARY_ERROR  the primary kept failing (simulated HTTP 500 on every retry), the secondary answered"
    )?;
    writeln!(
        out,
        "  COST_LIMIT     the report's cloud budget is spent: from then on, everything goes local"
    )?;
    Ok(())
}
