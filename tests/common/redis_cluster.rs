//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on free
//! loopback ports (at most 55535: each node's cluster bus listens on its port + 10000), joined by
//! `redis-cli --cluster create`. Gated like [`super::redis_server`]: without `redis-server` and
//! `redis-cli` the tests are ignored, unless `VRA_REQUIRE_REDIS=1` makes them fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::redis_server::{on_path, replica_acknowledges, spawn_ready};
use super::trials::Gate;

/// One cluster node; `child` is `None` while it is killed.
struct Node {
    child: Option<Child>,
    port: u16,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// Each node's settings (port, address and state file come after them and win).
    args: Vec<String>,
    /// The password the nodes require (`--requirepass`), if any.
    password: Option<String>,
}

const MISSING: &str = "redis-server and redis-cli not found on PATH; .ci/run installs them";

/// Open when `redis-server` and `redis-cli` are installed, or when `VRA_REQUIRE_REDIS=1`.
pub fn gate() -> Gate {
    let required = std::env::var("VRA_REQUIRE_REDIS").is_ok_and(|v| v == "1");
    if (on_path("redis-server").is_none() || on_path("redis-cli").is_none()) && !required {
        Gate::Closed(MISSING.into())
    } else {
        Gate::Open
    }
}

/// A free loopback port whose cluster-bus port (+10000) is free too.
fn free_node_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// The test nodes' settings: a short node timeout, no persistence of data.
fn test_args() -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        "1000",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// A cluster node's command: `args`, then its port and its state (`nodes-{port}.conf`) in
/// `dir`, so a node started again rejoins the cluster as the node it was.
fn node_command(
    server: &std::path::Path,
    args: &[String],
    port: u16,
    dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(server);
    command
        .args(args)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .arg("--dir")
        .arg(dir);
    command
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until every node says
    /// `cluster_state:ok`.
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, test_args(), None).await
    }

    /// [`RedisCluster::start`] with nodes run with `args` (a deployment's settings; they must
    /// enable cluster mode) that require `password` from clients and from each other.
    pub async fn start_with(
        masters: usize,
        replicas: usize,
        args: Vec<String>,
        password: Option<String>,
    ) -> RedisCluster {
        let server = on_path("redis-server").expect(MISSING);
        let cli = on_path("redis-cli").expect(MISSING);
        let dir = std::env::temp_dir().join(format!(
            "vra-cluster-{}-{}",
            std::process::id(),
            free_node_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_node_port();
            let child = spawn_ready(&mut node_command(&server, &args, port, &dir)).await;
            nodes.push(Node {
                child: Some(child),
                port,
            });
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        if let Some(password) = &password {
            create.env("REDISCLI_AUTH", password);
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster {
            nodes,
            dir,
            args,
            password,
        };
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}{}", self.userinfo(), seeds.join(","))
    }

    /// `:password@` when the nodes require one.
    fn userinfo(&self) -> String {
        self.password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"))
    }

    /// One node's plain (non-cluster) URL.
    pub fn node_url(&self, i: usize) -> String {
        format!(
            "redis://{}127.0.0.1:{}",
            self.userinfo(),
            self.nodes[i].port
        )
    }

    async fn node(&self, i: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.node_url(i))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node")
    }

    /// Polls every node's `CLUSTER INFO` until all say `cluster_state:ok` (the cluster
    /// gossips its state; there is no event to wait for).
    pub async fn wait_ok(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        'poll: loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok in {within:?}"
            );
            for i in self.live() {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut self.node(i).await)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return;
        }
    }

    /// The nodes running (not killed).
    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// The running masters, by index.
    pub async fn masters(&self) -> Vec<usize> {
        let mut masters = Vec::new();
        for i in self.live() {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut self.node(i).await)
                .await
                .expect("ROLE");
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master")
            {
                masters.push(i);
            }
        }
        masters
    }

    /// The number of keys on each master (replicas are left out).
    pub async fn keys_per_master(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for i in self.masters().await {
            counts.push(self.dbsize(i).await);
        }
        counts
    }

    /// The number of keys on node `i`.
    pub async fn dbsize(&self, i: usize) -> u64 {
        redis::cmd("DBSIZE")
            .query_async(&mut self.node(i).await)
            .await
            .expect("DBSIZE")
    }

    /// Polls every running master's `INFO replication` until each has at least one replica in
    /// sync and acknowledging ([`replica_acknowledges`]; there is no event
    /// to wait for).
    pub async fn wait_replicated(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        'poll: loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not every master had an online replica within {within:?}"
            );
            for i in self.masters().await {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut self.node(i).await)
                    .await
                    .unwrap_or_default();
                if !info.lines().any(replica_acknowledges) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return;
        }
    }

    /// Polls until `n` running nodes are masters: after a master is killed, until its replica
    /// has been promoted (the cluster decides after its node timeout; no event to wait for).
    pub async fn wait_masters(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.masters().await.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica promoted within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills node `i` with SIGKILL (no shutdown, no last write) and waits for the process to
    /// end.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.expect("kill a cluster node");
        }
    }

    /// Starts killed node `i` again: it rejoins as the node it was (a former master as a
    /// replica of the one promoted in its place), with no data until it syncs.
    pub async fn restart(&mut self, i: usize) {
        let server = on_path("redis-server").expect(MISSING);
        let command = &mut node_command(&server, &self.args, self.nodes[i].port, &self.dir);
        let child = spawn_ready(command).await;
        self.nodes[i].child = Some(child);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
