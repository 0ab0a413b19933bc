//! `vra-loadgen`: the load generator, fake upstream and report writer of the benchmark suite
//! (`bench/run.sh`, `bench/callgrind.sh`). A crate of its own, with its own dependencies.
//!
//! - `upstream`: a fast fake OpenAI-compatible (and Ollama) upstream with fixed answers, so
//!   the benchmark measures the gateway and not a simulator.
//! - `grpc` / `http`: drive `Generate`/`GenerateStream` over gRPC, or the same payload over
//!   plain HTTP, in open loop (fixed rate, latency from the intended send time, so no
//!   coordinated omission) or closed loop (fixed concurrency). HDR histograms; optional
//!   server CPU and RSS accounting from `/proc`.
//! - `count`: exactly N calls, for the instruction counts of `bench/callgrind.sh`.
//! - `ledger-mem`: memory per tracked report of the in-memory budget ledger.
//! - `report`: turns the JSON lines of a run into the Markdown tables of `RESULTS.md`.
//!
//! Traffic only ever goes to the address given on the command line; `bench/run.sh` only
//! passes 127.0.0.1 addresses. Every run is bounded by its duration and request timeout.

mod alloc;
mod count;
mod drive;
mod echo;
mod grpc;
mod http;
mod ledger_mem;
mod procstat;
mod report;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Debug, Parser)]
#[command(
    name = "vra-loadgen",
    about = "Load generator, fake upstream and report writer for the vra-gateway benchmarks.",
    // A later `--warmup 0` overrides an earlier `--warmup 2` (bench/run.sh passes defaults first).
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a fast fake OpenAI-compatible (/v1/chat/completions) and Ollama (/api/chat) upstream.
    Upstream(upstream::Options),
    /// Serve the gateway's gRPC service with fixed answers: the gRPC round-trip floor.
    GrpcEcho(echo::Options),
    /// Drive the gateway's Generate / GenerateStream over gRPC.
    Grpc {
        /// Gateway address, HOST:PORT.
        #[arg(long)]
        target: String,
        /// gRPC connections (HTTP/2) to spread calls over; 0 = one per 100 concurrent calls.
        #[arg(long, default_value_t = 0)]
        connections: usize,
        /// Use one report id for every call (budget contention on one ledger entry).
        #[arg(long)]
        hot_report: bool,
        /// Distinct report ids cycled through otherwise.
        #[arg(long, default_value_t = 100_000)]
        reports: u64,
        /// Compilation phase of every call: `refine` routes to the primary (cloud tier),
        /// `expand` to the secondary (local tier) when VRA_HYBRID_MODE is on.
        #[arg(long, value_enum, default_value_t = PhaseArg::Refine)]
        phase: PhaseArg,
        /// Bearer token sent with every call (a gateway with VRA_CLIENTS_FILE).
        #[arg(long)]
        token: Option<String>,
        /// A different prompt for every call (the call's number appended): with the gateway's
        /// response cache on, every call is a miss. The default, one prompt for all, makes
        /// every call after the first a hit.
        #[arg(long)]
        distinct_prompts: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Send the same chat payload as plain HTTP POSTs to an OpenAI-compatible endpoint.
    Http {
        /// Full URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
        #[arg(long)]
        target: String,
        /// Model name put in the payload (LiteLLM routes on it).
        #[arg(long, default_value = "gpt-4o")]
        model: String,
        /// Bearer token sent with every request (LiteLLM checks its master key).
        #[arg(long, default_value = "sk-bench")]
        api_key: String,
        /// Carry a report in `x-vra-*` headers, in this phase (the gateway's OpenAI door).
        #[arg(long, value_enum)]
        vra_phase: Option<PhaseArg>,
        /// With --vra-phase: one report id for every call.
        #[arg(long)]
        hot_report: bool,
        /// With --vra-phase: distinct report ids cycled otherwise.
        #[arg(long, default_value_t = 100_000)]
        reports: u64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Exactly N calls one after the other, then exit (the workload of bench/callgrind.sh).
    #[command(subcommand)]
    Count(count::Command),
    /// Measure memory per tracked report of the in-memory budget ledger.
    LedgerMem {
        /// Distinct report ids to reserve once each.
        #[arg(long, default_value_t = 1_000_000)]
        reports: usize,
        /// Append the JSON summary line to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Render the Markdown tables of a run from its JSON lines.
    Report(report::Options),
    /// Print a TCP port that is free on 127.0.0.1 right now (for bench/run.sh).
    FreePort,
}

/// Load shape shared by the `grpc` and `http` drivers.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// open: fixed arrival rate; closed: fixed number of calls in flight.
    #[arg(long, value_enum, default_value_t = ModeArg::Closed)]
    pub mode: ModeArg,
    /// Calls per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Calls in flight (closed loop).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up before it, seconds (same load).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Streaming calls; also measures time to first token.
    #[arg(long)]
    pub stream: bool,
    /// Per-call timeout in milliseconds; a timed-out call counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Open loop: most calls in flight; later ones wait (their wait counts as latency).
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Server process to account CPU and RSS for (with its descendants); repeatable.
    #[arg(long = "watch-pid")]
    pub watch_pids: Vec<u32>,
    /// Processes that belong to the benchmark but are not measured (the upstream, Redis):
    /// their CPU is not counted as interference from the rest of the machine. Repeatable.
    #[arg(long = "env-pid")]
    pub env_pids: Vec<u32>,
    /// Scenario label carried into the JSON summary (e.g. `c1/direct`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Append the JSON summary line to this file as well.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    Refine,
    Expand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Open,
    Closed,
}

impl LoadArgs {
    fn plan(&self) -> Result<drive::Plan, String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("--{name} must be a positive number of seconds"))
            }
        };
        let mode = match self.mode {
            ModeArg::Open if !(self.rate.is_finite() && self.rate > 0.0) => {
                return Err("--rate must be positive".into());
            }
            ModeArg::Open => drive::Mode::Open { rate: self.rate },
            ModeArg::Closed if self.concurrency == 0 => {
                return Err("--concurrency must be at least 1".into());
            }
            ModeArg::Closed => drive::Mode::Closed {
                concurrency: self.concurrency,
            },
        };
        let duration = positive("duration", self.duration)?;
        if let drive::Mode::Open { rate } = mode
            && rate * self.duration.max(self.warmup) > drive::MAX_SCHEDULED as f64
        {
            return Err(format!(
                "rate x duration exceeds {} calls; shorten the run",
                drive::MAX_SCHEDULED
            ));
        }
        Ok(drive::Plan {
            mode,
            duration,
            warmup: if self.warmup > 0.0 {
                positive("warmup", self.warmup)?
            } else {
                Duration::ZERO
            },
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            max_in_flight: self.max_in_flight.max(1),
        })
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vra_gateway::install_crypto_provider();
    let result = match cli.command {
        Command::Upstream(options) => runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(upstream::serve(options))),
        Command::GrpcEcho(options) => runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(echo::serve(options))),
        Command::Grpc {
            target,
            connections,
            hot_report,
            reports,
            phase,
            token,
            distinct_prompts,
            load,
        } => runtime().map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                let plan = load.plan()?;
                let concurrency = match plan.mode {
                    drive::Mode::Closed { concurrency } => concurrency,
                    drive::Mode::Open { .. } => 1,
                };
                let connections = if connections == 0 {
                    concurrency.div_ceil(100).max(1)
                } else {
                    connections
                };
                let t = grpc::GrpcTarget::connect(
                    &target,
                    connections,
                    load.stream,
                    hot_report,
                    reports.max(1),
                    match phase {
                        PhaseArg::Refine => vra_gateway::pb::CompilationPhase::Refine,
                        PhaseArg::Expand => vra_gateway::pb::CompilationPhase::Expand,
                    },
                )
                .await?
                .with_token(token.as_deref())?
                .with_distinct_prompts(distinct_prompts);
                let info = drive::Info {
                    proto: "grpc",
                    target,
                    connections: Some(connections),
                    hot_report,
                };
                drive::run_and_report(t, plan, &load, info).await
            })
        }),
        Command::Http {
            target,
            model,
            api_key,
            vra_phase,
            hot_report,
            reports,
            load,
        } => runtime().map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                let plan = load.plan()?;
                let report = vra_phase.map(|phase| http::Report {
                    phase: match phase {
                        PhaseArg::Refine => "REFINE",
                        PhaseArg::Expand => "EXPAND",
                    },
                    hot: hot_report,
                    reports,
                });
                let t = http::HttpTarget::new(&target, &model, &api_key, load.stream, report)?;
                let info = drive::Info {
                    proto: "http",
                    target,
                    connections: None,
                    hot_report,
                };
                drive::run_and_report(t, plan, &load, info).await
            })
        }),
        Command::Count(command) => runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(count::run(command))),
        Command::LedgerMem { reports, out } => ledger_mem::run(reports, out.as_deref()),
        Command::Report(options) => report::run(&options),
        Command::FreePort => upstream::free_port(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vra-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
