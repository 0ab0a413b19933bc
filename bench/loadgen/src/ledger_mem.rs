//! Memory per tracked report of [`MemoryLedger`]: reserve once for N distinct report ids and
//! compare the heap (counted by the global allocator) and the RSS before and after.
//!
//! Report ids are UUID-shaped (36 bytes), the common shape of real report ids; a shorter id
//! costs less (its bytes are one heap allocation per entry).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use vra_gateway::budget::Reservation;
use vra_gateway::budget::memory::MemoryLedger;

use crate::{alloc, drive, procstat};

/// Writes the `i`-th UUID-shaped report id into `buf`.
fn report_id(buf: &mut String, i: usize) {
    buf.clear();
    let _ = write!(buf, "{:08x}-0000-4000-8000-{:012x}", i as u32, i);
}

pub fn run(reports: usize, out: Option<&Path>) -> Result<(), String> {
    let pid = std::process::id();
    // Allocated before counting starts, so only the ledger's own memory is counted.
    let mut id = String::with_capacity(64);
    let rss_before = procstat::rss_kb(pid);
    alloc::start();
    let started = Instant::now();
    let ttl = Duration::from_secs(86_400);
    let ledger = MemoryLedger::with_capacity(ttl, reports.max(1));
    for i in 0..reports {
        report_id(&mut id, i);
        if !matches!(
            ledger.reserve_now(&id, 15),
            Ok(Reservation::Granted { used: 1, .. })
        ) {
            alloc::stop();
            return Err(format!("report {id}: first reservation was not granted"));
        }
    }
    let elapsed = started.elapsed();
    let heap = alloc::live().max(0) as u64;
    alloc::stop();
    let rss_after = procstat::rss_kb(pid);
    if ledger.len() != reports {
        return Err(format!(
            "ledger tracks {} reports, expected {reports}",
            ledger.len()
        ));
    }
    let rss_delta = rss_after.saturating_sub(rss_before) * 1024;
    // Every report expires: the sweep removes them and gives the tables' memory back.
    let swept = ledger.sweep(tokio::time::Instant::now() + ttl + Duration::from_secs(1));
    let rss_expired = procstat::rss_kb(pid);
    if swept != reports || !ledger.is_empty() {
        return Err(format!(
            "sweep removed {swept} of {reports} expired reports"
        ));
    }
    let rss_expired_delta = rss_expired.saturating_sub(rss_before) * 1024;
    let per = |bytes: u64| bytes as f64 / reports.max(1) as f64;
    let summary = json!({
        "kind": "ledger_mem",
        "reports": reports,
        "id_bytes": id.len(),
        "heap_bytes": heap,
        "rss_delta_bytes": rss_delta,
        "rss_before_kb": rss_before,
        "rss_full_kb": rss_after,
        "rss_after_expiry_kb": rss_expired,
        "rss_after_expiry_delta_bytes": rss_expired_delta,
        "heap_bytes_per_report": per(heap),
        "rss_bytes_per_report": per(rss_delta),
        "insert_ns_per_report": elapsed.as_nanos() as f64 / reports.max(1) as f64,
    });
    println!(
        "ledger-mem: {reports} reports ({}-byte ids): heap {:.1} B/report, RSS {:.1} B/report, {:.0} ns/insert; RSS {} kB before, {} kB full, {} kB after all expired",
        id.len(),
        per(heap),
        per(rss_delta),
        summary["insert_ns_per_report"].as_f64().unwrap_or(0.0),
        rss_before,
        rss_after,
        rss_expired
    );
    let line = summary.to_string();
    println!("{line}");
    if let Some(path) = out {
        drive::append_line(path, &line)?;
    }
    drop(ledger);
    Ok(())
}
