//! The `vra-gateway` binary: parse the command line, load the configuration, run.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vra_gateway::config::{Config, SETTINGS, Sources};
use vra_gateway::domain::Client;
use vra_gateway::{auth, demo, server, telemetry};

/// mimalloc instead of the system allocator: a unary call makes a few hundred small
/// allocations, and glibc's malloc and free were about 15 % of its instructions (see
/// `bench/callgrind.sh`); mimalloc's thread-local free lists make them a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration errors (and command-line usage errors, as clap does).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "vra-gateway",
    version,
    about = "gRPC routing gateway for LLM calls: routing matrix, per-report cloud budget, retries and fallback.",
    after_help = settings_help()
)]
struct Cli {
    /// TOML configuration file (same keys as the variables below, any case; plus [providers.NAME]).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway server (the default).
    Serve {
        /// Print the effective configuration (secrets redacted) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Check a running gateway's gRPC health service; exit 0 when SERVING (for container probes).
    Health {
        /// Address to check; defaults to VRA_GATEWAY_ADDR (0.0.0.0 is checked on 127.0.0.1).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Print a report's cost table: calls, tokens and cost per phase and answering tier, the
    /// totals, the all-cloud equivalent and what hybrid routing saved.
    Usage {
        /// The report id.
        report_id: String,
        /// The gateway's address; defaults to VRA_GATEWAY_ADDR (0.0.0.0 is asked on 127.0.0.1).
        #[arg(long, value_name = "HOST:PORT")]
        target: Option<String>,
        /// Bearer token of a gateway with VRA_CLIENTS_FILE (default: VRA_TOKEN); the report is
        /// looked up among that client's reports.
        #[arg(long, value_name = "TOKEN", env = "VRA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Run the gateway against simulated upstreams and print how a sample report was routed;
    /// with --serve, keep serving them as a keyless sandbox for clients.
    Demo {
        /// Use a real OpenAI-compatible endpoint instead of the simulated one.
        #[arg(long, value_name = "URL", conflicts_with = "serve")]
        openai_base_url: Option<String>,
        /// Use a real Ollama instead of the simulated one.
        #[arg(long, value_name = "URL", conflicts_with = "serve")]
        ollama_host: Option<String>,
        /// max_tokens of every call of the sample report (keeps a run against real servers
        /// to seconds per call).
        #[arg(long, value_name = "N", default_value_t = demo::DEMO_MAX_TOKENS, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "serve")]
        max_tokens: u32,
        /// Sandbox: serve the real gateway with the simulated upstreams on VRA_GATEWAY_ADDR
        /// (default 127.0.0.1:50051) until Ctrl-C or SIGTERM, instead of running the sample
        /// report. Other settings (MAX_CLOUD_CALLS, VRA_CLIENTS_FILE, VRA_TLS_*) come from the
        /// environment as for `serve`.
        #[arg(long)]
        serve: bool,
        /// With --serve: every N-th call to the primary fails all its retries (HTTP 500) and
        /// falls back with PRIMARY_ERROR (exact when calls arrive one at a time).
        #[arg(long, value_name = "N", requires = "serve")]
        fail_primary_every: Option<NonZeroUsize>,
        /// With --serve: every simulated answer waits this long before its first byte (to see
        /// deadlines, shedding and queues at work by hand).
        #[arg(long, value_name = "MS", requires = "serve")]
        upstream_delay_ms: Option<u64>,
    },
    /// Manage the clients of VRA_CLIENTS_FILE.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Manage a running gateway's response cache (VRA_CACHE).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Drop cached answers (e.g. after a model upgrade): one client's, or every answer. Calls
    /// the gateway's PurgeCache RPC; with VRA_CLIENTS_FILE, the token must be an admin client's
    /// (admin = true). With VRA_CACHE=redis one call purges what every replica shares.
    Purge {
        /// Only this client's answers (default: every answer).
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// The gateway's address; defaults to VRA_GATEWAY_ADDR (0.0.0.0 is asked on 127.0.0.1).
        #[arg(long, value_name = "HOST:PORT")]
        target: Option<String>,
        /// Bearer token of an admin client (default: VRA_TOKEN).
        #[arg(long, value_name = "TOKEN", env = "VRA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
}

/// How a command reaches a gateway that serves TLS.
#[derive(Debug, Args)]
struct ClientTlsArgs {
    /// The gateway serves TLS: trust this PEM CA bundle.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name to expect in the gateway's certificate (with --tls-ca).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls_ca"
    )]
    tls_domain: String,
    /// A client certificate (PEM chain) for a gateway that requires one (mTLS).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Mint a bearer token for a client and print its [[client]] block.
    #[command(after_help = "Output (stdout), for humans and scripts alike:\n  \
                      line 1: the token (`vra_` + 64 hex digits), shown only this once;\n  \
                      line 2: a `#` comment;\n  \
                      then the [[client]] block (id, token_sha256 = the token's hex SHA-256) to paste\n  \
                      into VRA_CLIENTS_FILE (add cloud_calls_per_day / max_cloud_calls for limits), then\n  \
                      send the gateway SIGHUP.\n\
                      Exit codes: 0 printed, 2 invalid --id.")]
    NewToken {
        /// The client's id: 1 to 64 of A-Z a-z 0-9 . _ -
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

fn settings_help() -> String {
    let mut help = String::from("Configuration (process env > .env > --config TOML > default):\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() { "-" } else { s.default };
        help.push_str(&format!(
            "  {:<28} {}\n  {:<28} default: {default}\n",
            s.var, s.help, ""
        ));
    }
    help.push_str(
        "\nTracing: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL (grpc|http/protobuf), OTEL_SERVICE_NAME,\n\
         OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES. Logs: RUST_LOG (default info).\n\
         Exit codes: 0 clean shutdown, 1 runtime failure, 2 invalid configuration.",
    );
    help
}

/// The runtime of the client commands and `demo`: one worker per CPU.
/// Runs a client command's `future` on a runtime of its own; the exit code when none starts.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, ExitCode> {
    runtime()
        .map(|rt| rt.block_on(future))
        .map_err(|e| fail(&format!("cannot start the runtime: {e}"), 1))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A multi-threaded runtime with `worker_threads` workers (`None`: one per CPU the process may
/// use, tokio's default, which also honours `TOKIO_WORKER_THREADS`).
fn runtime_with(worker_threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n.get());
    }
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        print_config: false,
    }) {
        Command::Serve { print_config } => serve(cli.config, print_config),
        Command::Health { addr, tls } => {
            let tls = match client_tls(tls) {
                Ok(tls) => tls,
                Err(e) => return fail(&e, EXIT_CONFIG),
            };
            health(addr, tls.as_ref())
        }
        Command::Usage {
            report_id,
            target,
            token,
            tls,
        } => {
            let tls = match client_tls(tls) {
                Ok(tls) => tls,
                Err(e) => return fail(&e, EXIT_CONFIG),
            };
            usage(&report_id, target, token, tls.as_ref())
        }
        Command::Clients {
            command: ClientsCommand::NewToken { id },
        } => new_token(&id),
        Command::Cache {
            command:
                CacheCommand::Purge {
                    client,
                    target,
                    token,
                    tls,
                },
        } => {
            let tls = match client_tls(tls) {
                Ok(tls) => tls,
                Err(e) => return fail(&e, EXIT_CONFIG),
            };
            purge_cache(client, target, token, tls.as_ref())
        }
        Command::Demo {
            openai_base_url,
            ollama_host,
            serve,
            fail_primary_every,
            upstream_delay_ms,
            max_tokens,
        } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
            };
            if serve {
                let options = demo::ServeOptions {
                    fail_primary_every,
                    upstream_delay: std::time::Duration::from_millis(
                        upstream_delay_ms.unwrap_or(0),
                    ),
                };
                return match rt.block_on(demo::serve(options)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e.to_string(), e.exit_code()),
                };
            }
            let options = demo::DemoOptions {
                openai_base_url,
                ollama_host,
                max_tokens,
            };
            match rt.block_on(demo::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("demo failed: {e}"), 1),
            }
        }
    }
}

fn serve(config_path: Option<PathBuf>, print_config: bool) -> ExitCode {
    let loaded = Sources::from_process(config_path.as_deref())
        .and_then(|sources| Config::from_sources(&sources).map(|c| (c, sources)));
    let (config, sources) = match loaded {
        Ok(v) => v,
        Err(e) => return fail(&e.to_string(), EXIT_CONFIG),
    };
    if print_config {
        print!("{}", config.render(&sources));
        return ExitCode::SUCCESS;
    }
    let rt = match runtime_with(config.worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
    };
    let result = rt.block_on(async {
        let mut guard = telemetry::init(&config.telemetry);
        telemetry::log_panics();
        // Handlers first: a SIGTERM once the listener is announced must drain, not kill.
        let shutdown = server::shutdown_signal();
        let listeners = server::bind(&config).await?;
        let result = server::run(config, listeners, shutdown).await;
        guard.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string(), e.exit_code()),
    }
}

/// Reads the PEM files of `--tls-*`.
fn client_tls(args: ClientTlsArgs) -> Result<Option<server::ClientTls>, String> {
    let ClientTlsArgs {
        tls_ca: ca,
        tls_domain: domain,
        tls_cert,
        tls_key,
    } = args;
    let identity = tls_cert.zip(tls_key);
    let Some(ca) = ca else { return Ok(None) };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let identity = match identity {
        Some((cert, key)) => Some((read(&cert)?, read(&key)?)),
        None => None,
    };
    Ok(Some(server::ClientTls {
        ca_pem: read(&ca)?,
        domain,
        identity,
    }))
}

/// The gateway to talk to: `addr`, else VRA_GATEWAY_ADDR, else the default; a wildcard
/// listen address is reached on loopback.
fn gateway_addr(addr: Option<String>) -> String {
    addr.or_else(|| {
        std::env::var("VRA_GATEWAY_ADDR")
            .ok()
            .filter(|a| !a.is_empty())
    })
    .unwrap_or_else(|| "127.0.0.1:50051".into())
    .replace("0.0.0.0", "127.0.0.1")
    .replace("[::]", "[::1]")
}

/// Prints a report's cost table (`usage`).
fn usage(
    report_id: &str,
    target: Option<String>,
    token: Option<String>,
    tls: Option<&server::ClientTls>,
) -> ExitCode {
    let addr = gateway_addr(target);
    let token = token.filter(|t| !t.is_empty());
    match block_on(vra_gateway::remote::report_usage(
        &addr,
        tls,
        token.as_deref(),
        report_id,
    )) {
        Err(code) => code,
        Ok(Ok(usage)) => {
            print!("{}", vra_gateway::usage::render(&usage, None));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&format!("usage of report from {addr} failed: {e}"), 1),
    }
}

/// Drops cached answers through the gateway's PurgeCache RPC (`cache purge`).
fn purge_cache(
    client: Option<String>,
    target: Option<String>,
    token: Option<String>,
    tls: Option<&server::ClientTls>,
) -> ExitCode {
    let addr = gateway_addr(target);
    let token = token.filter(|t| !t.is_empty());
    let purged = block_on(vra_gateway::remote::purge_cache(
        &addr,
        tls,
        token.as_deref(),
        client.clone(),
    ));
    match purged {
        Err(code) => code,
        Ok(Ok(n)) => {
            let whose = client.map_or_else(|| "every client".into(), |c| format!("client {c}"));
            println!("purged {n} cached answers of {whose}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&format!("cache purge on {addr} failed: {e}"), 1),
    }
}

fn health(addr: Option<String>, tls: Option<&server::ClientTls>) -> ExitCode {
    let addr = gateway_addr(addr);
    match block_on(server::check_health_with(&addr, tls)) {
        Err(code) => code,
        Ok(Ok(true)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(false)) => fail("NOT_SERVING", 1),
        Ok(Err(e)) => fail(&format!("health check of {addr} failed: {e}"), 1),
    }
}

/// Prints a fresh token and the clients-file block that accepts it (format in `--help`).
fn new_token(id: &str) -> ExitCode {
    if !Client::valid_id(id) {
        return fail(
            "--id: a client id is 1 to 64 of A-Z a-z 0-9 . _ -",
            EXIT_CONFIG,
        );
    }
    let token = auth::new_token();
    print!(
        "{token}\n# the token above is shown only once; paste this block into VRA_CLIENTS_FILE:\n{}",
        auth::client_block(id, &token)
    );
    ExitCode::SUCCESS
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("vra-gateway: {message}");
    ExitCode::from(code)
}
