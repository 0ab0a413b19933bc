//! Keeps the benchmark harness from rotting: runs `bash bench/run.sh --smoke` (release build,
//! every server, 1-second load scenarios, the report) and checks the report it writes.
//!
//! Opt-in, because it builds in release mode (minutes when cold) and loads the machine: set
//! `VRA_BENCH_SMOKE=1`. Without it the test prints a SKIP line and passes.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Sections the report must have (see `src/bin/vra-loadgen/report.rs`).
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
    "## Micro-benchmarks",
    "## Targets",
    "## Commands",
];

#[test]
fn bench_run_smoke() {
    if std::env::var("VRA_BENCH_SMOKE").as_deref() != Ok("1") {
        // Straight to stderr: the test harness does not capture it, so the skip is visible.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: set VRA_BENCH_SMOKE=1 to run `bash bench/run.sh --smoke` (release build + 1-second load scenarios)"
        );
        return;
    }
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
    ] {
        assert!(
            !report.contains(row),
            "missing measurement `{row}`:\n{report}"
        );
    }
}
