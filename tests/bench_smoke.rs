//! Keeps the benchmark harness from rotting: runs `bash bench/run.sh --smoke` (release build,
//! every server, 1-second load scenarios, the report) and checks the report it writes.
//!
//! Opt-in, because it builds in release mode (minutes when cold) and loads the machine: set
//! `VRA_BENCH_SMOKE=1` (`.ci/run` does), or ask for ignored tests (`-- --ignored`). Otherwise
//! it is reported as ignored, with the reason — a libtest-mimic target (`harness = false`).

mod common;

use std::path::Path;
use std::process::Command;

use common::trials::{Gate, sync_trial};
use libtest_mimic::Arguments;

/// Sections the report must have (see `bench/loadgen/src/report.rs`).
const HEADERS: &[&str] = &[
    "# Benchmark results",
    "## Setup",
    "## Latency at one connection",
    "## Open loop at 1000 RPS",
    "## Added latency over direct",
    "## Max throughput",
    "## CPU per call",
    "## Budget contention: one hot report",
    "## Streaming: time to first token",
    "## Memory",
    "## Overload: 2x the upstream's capacity",
    "## Micro-benchmarks",
    "## Targets",
    "## Commands",
];

fn main() {
    let args = Arguments::from_args();
    let gate = if std::env::var("VRA_BENCH_SMOKE").as_deref() == Ok("1") {
        Gate::Open
    } else {
        Gate::Closed(
            "set VRA_BENCH_SMOKE=1 to run `bash bench/run.sh --smoke`: a release build, then 1-second load scenarios".into(),
        )
    };
    let trials = vec![sync_trial(&args, "bench_run_smoke", &gate, bench_run_smoke)];
    libtest_mimic::run(&args, trials).exit();
}

fn bench_run_smoke() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let results = root.join("target/bench-smoke/RESULTS.md");
    let _ = std::fs::remove_file(&results);
    let status = Command::new("bash")
        .args(["bench/run.sh", "--smoke"])
        .current_dir(root)
        .status()
        .expect("bash runs");
    assert!(status.success(), "bench/run.sh --smoke failed: {status}");

    let report = std::fs::read_to_string(&results).expect("the smoke run writes its RESULTS.md");
    for header in HEADERS {
        assert!(
            report.contains(header),
            "RESULTS.md lacks `{header}`:\n{report}"
        );
    }
    // Every load scenario that ran produced numbers: a failed run is listed as such.
    assert!(
        !report.contains("load generator failed"),
        "a scenario failed:\n{report}"
    );
    for row in [
        "| direct to upstream (floor) | not run",
        "| vra-gateway, memory ledger | not run",
        "| no limits | not run",
    ] {
        assert!(
            !report.contains(row),
            "missing measurement `{row}`:\n{report}"
        );
    }
}
