//! Server-side accounting from `/proc`: CPU time (utime + stime) and resident memory (VmRSS)
//! of the watched processes and all their descendants (nginx workers, LiteLLM's workers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux everywhere).
pub const CLK_TCK: f64 = 100.0;

/// How often RSS is sampled during a measured run.
const RSS_PERIOD: Duration = Duration::from_millis(100);

/// The `stat` fields we need: parent pid and CPU ticks (user + system) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pids` and every live descendant of them.
pub fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = pids.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            todo.extend(c);
        }
    }
    out
}

/// Total CPU ticks of the processes.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat(p)).map(|(_, t)| t).sum()
}

/// VmRSS of one process in KiB (0 if it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Busy CPU ticks of the whole machine (all CPUs; steal and idle excluded).
fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?)
        })
        .unwrap_or(0)
}

/// Summed VmRSS of the processes, KiB.
pub fn total_rss_kb(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kb(p)).sum()
}

/// CPU and RSS of the watched processes over one measured window.
pub struct Watch {
    pids: Vec<u32>,
    /// The server, the load generator itself and the declared environment (upstream, Redis):
    /// everything else busy on the machine during the window is interference.
    known: Vec<u32>,
    known_start: u64,
    machine_start: u64,
    ticks_start: u64,
    rss_start: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

/// What a [`Watch`] saw.
#[derive(Debug, Clone)]
pub struct Usage {
    pub pids: Vec<u32>,
    pub cpu_seconds: f64,
    pub rss_kb_start: u64,
    pub rss_kb_peak: u64,
    pub rss_kb_end: u64,
    /// CPU seconds used by processes outside the benchmark during the window.
    pub foreign_cpu_seconds: f64,
}

impl Watch {
    /// Starts watching; `None` when there is nothing to watch.
    pub fn start(roots: &[u32], environment: &[u32]) -> Option<Watch> {
        if roots.is_empty() {
            return None;
        }
        let pids = with_descendants(roots);
        let mut known_roots = roots.to_vec();
        known_roots.extend_from_slice(environment);
        known_roots.push(std::process::id());
        let known = with_descendants(&known_roots);
        let rss_start = total_rss_kb(&pids);
        let peak = Arc::new(AtomicU64::new(rss_start));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (pids, peak, stop) = (pids.clone(), peak.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(total_rss_kb(&pids), Ordering::Relaxed);
                        std::thread::sleep(RSS_PERIOD);
                    }
                })
                .ok()
        };
        Some(Watch {
            known_start: cpu_ticks(&known),
            machine_start: machine_busy_ticks(),
            known,
            ticks_start: cpu_ticks(&pids),
            pids,
            rss_start,
            peak,
            stop,
            sampler,
        })
    }

    pub fn finish(mut self) -> Usage {
        let ticks = cpu_ticks(&self.pids).saturating_sub(self.ticks_start);
        let known = cpu_ticks(&self.known).saturating_sub(self.known_start);
        let machine = machine_busy_ticks().saturating_sub(self.machine_start);
        let rss_end = total_rss_kb(&self.pids);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        Usage {
            pids: std::mem::take(&mut self.pids),
            cpu_seconds: ticks as f64 / CLK_TCK,
            rss_kb_start: self.rss_start,
            rss_kb_peak: self.peak.load(Ordering::Relaxed).max(rss_end),
            rss_kb_end: rss_end,
            foreign_cpu_seconds: machine.saturating_sub(known) as f64 / CLK_TCK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kb(me) > 0);
        assert!(with_descendants(&[me]).contains(&me));
        assert!(stat(me).is_some());
    }
}
