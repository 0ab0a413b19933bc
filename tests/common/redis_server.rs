//! A real `redis-server` for tests, on a free port, started, stopped, frozen and restarted by
//! the test itself — without persistence, or with an append-only file ([`RedisServer::start_aof`])
//! for tests whose budget counts must survive a restart. When the binary is missing the tests that need it are reported as ignored
//! ([`gate`]) — unless `VRA_REQUIRE_REDIS=1` (set by `.ci/run`), which makes the absence a
//! failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::trials::Gate;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Append-only file with fsync on every write: what was acknowledged survives a kill.
    aof: bool,
    /// The port of the master this server replicates, if it is a replica.
    replica_of: Option<u16>,
}

/// The `redis-server` on PATH, if any.
pub fn binary() -> Option<PathBuf> {
    on_path("redis-server")
}

/// A program on PATH, if any.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Starts a `redis-server` command and waits for its "Ready to accept connections" line; its
/// stdout is drained from then on, so the server never blocks on a full pipe.
pub async fn spawn_ready(command: &mut Command) -> Child {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return;
            }
        }
        panic!("redis-server exited before it was ready");
    })
    .await
    .expect("redis-server ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

const MISSING: &str = "redis-server not found on PATH; .ci/run installs it";

fn required() -> bool {
    std::env::var("VRA_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Whether the tests that need a `redis-server` run: closed (ignored, with the reason) when the
/// binary is missing, unless `VRA_REQUIRE_REDIS=1` — then they run, and fail.
pub fn gate() -> Gate {
    if binary().is_none() && !required() {
        Gate::Closed(MISSING.into())
    } else {
        Gate::Open
    }
}

/// Whether a line of a master's `INFO replication` shows a replica done with its initial sync
/// (`state=online`) that has acknowledged the stream since (`offset` > 0): before its first
/// acknowledgement, a replica that is online may take most of a second to answer a `WAIT`.
pub fn replica_acknowledges(line: &str) -> bool {
    line.starts_with("slave")
        && line.contains("state=online")
        && line
            .split(',')
            .find_map(|f| f.strip_prefix("offset="))
            .and_then(|o| o.parse::<u64>().ok())
            .is_some_and(|o| o > 0)
}

impl RedisServer {
    /// Starts a server without persistence; panics (failing the test) when there is no
    /// `redis-server` binary.
    pub async fn start() -> RedisServer {
        Self::start_with(false, None).await
    }

    /// Starts a replica of `master` (without persistence); [`RedisServer::wait_replica`] on
    /// the master tells when it has synced.
    pub async fn start_replica_of(master: &RedisServer) -> RedisServer {
        Self::start_with(false, Some(master.port)).await
    }

    /// Starts a server with an append-only file (`--appendfsync always`): a restart on the same
    /// directory keeps every acknowledged write.
    pub async fn start_aof() -> RedisServer {
        Self::start_with(true, None).await
    }

    async fn start_with(aof: bool, replica_of: Option<u16>) -> RedisServer {
        if binary().is_none() {
            if required() {
                panic!("{MISSING} (and VRA_REQUIRE_REDIS=1 makes it mandatory)");
            }
            panic!("{MISSING} (this test was asked to run anyway)");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind a free port")
            .local_addr()
            .expect("local address")
            .port();
        let dir = std::env::temp_dir().join(format!("vra-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            aof,
            replica_of,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the process and waits for its "Ready to accept connections" line.
    async fn spawn(&mut self) {
        let persistence: &[&str] = if self.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut command = Command::new(binary().expect("redis-server"));
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir);
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = spawn_ready(&mut command).await;
        self.child = Some(child);
    }

    /// Stops the server (as if it crashed) and waits for the process to end.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port and directory: empty without persistence, with every
    /// acknowledged write with an append-only file.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Sends a signal (`STOP` freezes it, `CONT` thaws it) to the running server.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .ok_or("redis-server is not running")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("kill -{signal}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pid} failed"))
        }
    }

    /// Every command the server processes from now on (`MONITOR`), one line each.
    pub async fn monitor(&self) -> BoxStream<'static, String> {
        let monitor = redis::Client::open(self.url())
            .expect("url")
            .get_async_monitor()
            .await
            .expect("MONITOR connection");
        monitor.into_on_message::<String>().boxed()
    }

    /// The names of the keys that expire from now on: keyspace notifications are switched on
    /// and subscribed to before this returns, so no expiry after it is missed.
    pub async fn expired_keys(&self) -> BoxStream<'static, Vec<u8>> {
        let mut conn = self.client().await;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Ex")
            .query_async::<()>(&mut conn)
            .await
            .expect("enable keyspace notifications");
        let mut pubsub = redis::Client::open(self.url())
            .expect("url")
            .get_async_pubsub()
            .await
            .expect("pub/sub connection");
        pubsub
            .subscribe("__keyevent@0__:expired")
            .await
            .expect("subscribe to expiry events");
        pubsub
            .into_on_message()
            .map(|msg| msg.get_payload_bytes().to_vec())
            .boxed()
    }

    /// A Redis ledger on this server (prefix `vra:`, an hour's report TTL), driven directly.
    pub fn ledger(&self) -> vra_gateway::budget::redis::RedisLedger {
        vra_gateway::budget::redis::RedisLedger::new(
            &self.url(),
            "vra:",
            Duration::from_secs(3600),
            Duration::from_secs(2),
        )
        .expect("a Redis ledger")
    }

    /// Polls this master's `INFO replication` until a replica is in sync and acknowledging
    /// ([`replica_acknowledges`]; there is no event to wait for).
    pub async fn wait_replica(&self) {
        let mut conn = self.client().await;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .expect("INFO replication");
                if info.lines().any(replica_acknowledges) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a replica online within 30 s");
    }

    /// A plain client connection for assertions.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
