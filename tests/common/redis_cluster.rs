//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on free
//! loopback ports (at most 55535: each node's cluster bus listens on its port + 10000), joined by
//! `redis-cli --cluster create`. Gated like [`super::redis_server`]: without `redis-server` and
//! `redis-cli` the tests are ignored, unless `VRA_REQUIRE_REDIS=1` makes them fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::redis_server::{on_path, spawn_ready};
use super::trials::Gate;

/// One cluster node.
struct Node {
    child: Child,
    port: u16,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
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

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until every node says
    /// `cluster_state:ok`.
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
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
            let child = spawn_ready(
                Command::new(&server)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", "1000"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&dir),
            )
            .await;
            nodes.push(Node { child, port });
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
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
        let cluster = RedisCluster { nodes, dir };
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
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// One node's plain (non-cluster) URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
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
            for i in 0..self.nodes.len() {
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

    /// The number of keys on each master (replicas are left out).
    pub async fn keys_per_master(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for i in 0..self.nodes.len() {
            let mut conn = self.node(i).await;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut conn)
                .await
                .expect("ROLE");
            let master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master");
            if master {
                let n: u64 = redis::cmd("DBSIZE")
                    .query_async(&mut conn)
                    .await
                    .expect("DBSIZE");
                counts.push(n);
            }
        }
        counts
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
