//! Running the real `vra-gateway` binary from tests: a clean environment, an empty working
//! directory, and its stderr collected line by line.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_vra-gateway");
/// The API key every process test uses; it must never show up in logs.
pub const KEY: &str = "sk-live-DO-NOT-LOG-4f9a8b7c";

/// A fresh, empty working directory (so no stray `.env` is read).
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vra-gw-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary with a clean environment (PATH only) in an empty directory.
pub fn command(dir: &PathBuf, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Sends a signal (`-TERM`, `-HUP`, ...) to a running child process.
pub fn signal(child: &Child, flag: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([flag, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {flag} {pid}");
}

/// Name of a signal that may end a process, for failure messages.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// The exit code of a process that exited; a process ended by a signal is always a test
/// failure, reported with the signal (and whether it dumped core) and everything it logged.
fn exit_code(status: ExitStatus, stderr: &dyn Fn() -> String) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    let signal = status.signal().unwrap_or_default();
    panic!(
        "the gateway was ended by signal {signal} ({}){}, not by exit; its stderr:\n{}",
        signal_name(signal),
        if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        },
        stderr()
    )
}

pub async fn run_to_end(
    dir: &PathBuf,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = command(dir, env).args(args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        exit_code(out.status, &|| stderr.clone()),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// `env` with `/metrics` served on a free loopback port ([`gateway_env`] turns it off).
pub fn metrics_on(env: &mut Vec<(&str, &str)>) {
    env.retain(|(k, _)| *k != "VRA_METRICS_ADDR");
    env.push(("VRA_METRICS_ADDR", "127.0.0.1:0"));
}

/// A running gateway binary whose stderr lines are collected.
pub struct Running {
    pub child: Child,
    pub addr: String,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub async fn start(env: &[(&str, &str)]) -> Running {
        Running::start_with_args(&[], env).await
    }

    /// `vra-gateway serve ARGS…` (e.g. `--config PATH`).
    pub async fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = command(&temp_dir(), env)
            .arg("serve")
            .args(args)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
                .await
                .expect("gateway started in time")
                .expect("gateway is running");
            seen.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        Running {
            child,
            addr,
            lines,
            seen,
        }
    }

    /// The URL of the gateway's `/metrics` (started with `VRA_METRICS_ADDR` on, see
    /// [`metrics_on`]), from its start-up line.
    pub async fn metrics_url(&mut self) -> String {
        self.wait_for("metrics on http://")
            .await
            .split("metrics on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("metrics URL")
            .to_string()
    }

    /// Collects lines until one contains `needle` (or fails after a timeout).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no log line with {needle:?}; saw:\n{}",
                        self.seen.join("\n")
                    )
                })
                .expect("stderr open");
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGHUP: the gateway re-reads its reloadable files.
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, flag: &str) {
        signal(&self.child, flag);
    }

    /// Waits for exit and returns the code plus every stderr line; panics, naming the signal,
    /// when the process was ended by a signal instead.
    pub async fn finish(mut self) -> (i32, Vec<String>) {
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exited")
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let code = exit_code(status, &|| self.seen.join("\n"));
        (code, self.seen)
    }
}

pub fn gateway_env<'a>(
    cloud: &'a str,
    local: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("VRA_HYBRID_MODE", "true"),
        ("VRA_GATEWAY_ADDR", "127.0.0.1:0"),
        ("VRA_METRICS_ADDR", ""),
        ("OPENAI_BASE_URL", cloud),
        ("OLLAMA_HOST", local),
        ("OPENAI_API_KEY", KEY),
        ("VRA_RETRY_MAX_ATTEMPTS", "1"),
        ("MAX_CLOUD_CALLS", "1"),
    ];
    env.extend_from_slice(extra);
    env
}
