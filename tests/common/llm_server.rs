//! A real LLM server for tests: llama-cpp-python's OpenAI-compatible server
//! (`python -m llama_cpp.server`) with a tiny GGUF model, both installed by `.ci/llm-setup.sh`
//! outside the clone. Opt-in: the tests that need it run only with `VRA_REAL_LLM=1` ([`gate`]);
//! then a missing `VRA_LLM_PYTHON` / `VRA_LLM_MODEL` or a server that does not start fails them.
//!
//! One server serves a whole test binary ([`shared`]): it is started by the first test that
//! asks for it, on a free port, and ready once `GET /v1/models` answers. It handles one request
//! at a time, so tests take [`LlmServer::exclusive`] for their duration. Statics are never
//! dropped, so the binary's `main` stops it at the end ([`stop_shared`]); a Ctrl-C reaches it
//! too (same process group).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::trials::Gate;

/// How long the server may take to load the model and answer `GET /v1/models`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub const HOW: &str = "set VRA_REAL_LLM=1 and run .ci/llm-setup.sh (it prints VRA_LLM_PYTHON and VRA_LLM_MODEL to export)";

/// Whether the real-LLM tests run: only with `VRA_REAL_LLM=1`; otherwise they are ignored,
/// with the reason.
pub fn gate() -> Gate {
    if std::env::var("VRA_REAL_LLM").as_deref() == Ok("1") {
        Gate::Open
    } else {
        Gate::Closed(HOW.into())
    }
}

pub struct LlmServer {
    child: Mutex<Option<Child>>,
    pub port: u16,
    log: PathBuf,
    /// Serialises the tests: the server answers one request at a time.
    turn: tokio::sync::Mutex<()>,
}

static SHARED: OnceLock<Result<LlmServer, String>> = OnceLock::new();

/// The binary's one server, started on first use; panics (failing the test) with the reason
/// when it cannot be started.
pub fn shared() -> &'static LlmServer {
    match SHARED.get_or_init(LlmServer::start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// Stops the shared server, if it was started (call at the end of `main`: statics are never
/// dropped).
pub fn stop_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        server.stop();
        let _ = std::fs::remove_file(&server.log);
    }
}

fn required_path(var: &str) -> Result<PathBuf, String> {
    let value = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!("{var} is not set: run .ci/llm-setup.sh and export what it prints")
        })?;
    let path = PathBuf::from(value);
    if !path.is_file() {
        return Err(format!(
            "{var}={} does not exist: run .ci/llm-setup.sh",
            path.display()
        ));
    }
    Ok(path)
}

impl LlmServer {
    fn start() -> Result<LlmServer, String> {
        let python = required_path("VRA_LLM_PYTHON")?;
        let model = required_path("VRA_LLM_MODEL")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log =
            std::env::temp_dir().join(format!("vra-llm-server-{}-{port}.log", std::process::id()));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&model)
            .args(["--chat_format", "gemma"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "1024", "--n_threads", "2", "--verbose", "False"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let server = LlmServer {
            child: Mutex::new(Some(child)),
            port,
            log,
            turn: tokio::sync::Mutex::new(()),
        };
        server.wait_ready(started)?;
        eprintln!(
            "real LLM server ready on port {port} in {:.1?} (log: {})",
            started.elapsed(),
            server.log.display()
        );
        Ok(server)
    }

    /// Polls `GET /v1/models` until it answers 200, the process exits, or [`READY_TIMEOUT`].
    fn wait_ready(&self, started: Instant) -> Result<(), String> {
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "the LLM server exited before it was ready ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if self.models_answer() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                self.stop();
                return Err(format!(
                    "the LLM server did not answer GET /v1/models within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// One `GET /v1/models` over plain HTTP/1.1: true on a 200 with a model list.
    fn models_answer(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = conn.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200") && response.contains("\"data\"")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- last lines of {} ---\n{tail}", self.log.display())
    }

    /// Base URL for an OpenAI-kind provider.
    pub fn openai_base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Holds the server for one test (it answers one request at a time). A test that panicked
    /// while holding it does not block the others (an async mutex is not poisoned).
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Fails the test if the server died (e.g. SIGILL on a CPU it was not built for).
    pub fn assert_alive(&self) {
        if let Some(status) = self.exited() {
            panic!("the LLM server died ({status}):\n{}", self.log_tail());
        }
    }

    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
