//! The Redis ledger's connection — one node or a cluster — and what the gateway checks about
//! the deployment at startup.
//!
//! `VRA_LEDGER_URL` selects the deployment by its scheme:
//!
//! - `redis://[user:password@]host:port[/db]` (`rediss://` for TLS): one node, through
//!   [`redis::aio::ConnectionManager`], which reconnects after failures;
//! - `redis+cluster://[user:password@]host:port[,host:port…]` (`rediss+cluster://`): a Redis
//!   (or Valkey) Cluster, through the redis crate's cluster client, which learns the slot map
//!   from the listed nodes, follows `MOVED`/`ASK` and refreshes the map after a failover.
//!
//! Both connect lazily, so a gateway started while Redis is down serves (fail-safe) and
//! recovers by itself. Errors name the problem and at most a `host:port`, never the URL (it may
//! hold a password).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The two URL forms, for messages.
const FORMS: &str = "redis://[user:password@]host:port[/db] (or rediss://) for one node, \
                     redis+cluster://[user:password@]host:port[,host:port...] (or rediss+cluster://) for a cluster";

/// Where the ledger lives, as `VRA_LEDGER_URL` says.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One node: its URL.
    Node(String),
    /// A cluster: one single-node URL per listed seed node, and the seeds' `host:port`s.
    Cluster {
        urls: Vec<String>,
        seeds: Vec<String>,
    },
}

impl std::fmt::Debug for Target {
    /// Without the URLs: they may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(_) => f.write_str("Node(..)"),
            Target::Cluster { seeds, .. } => write!(f, "Cluster({seeds:?})"),
        }
    }
}

impl Target {
    /// Reads `VRA_LEDGER_URL`. The error never quotes the URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("not a Redis URL; accepted: {FORMS}"));
        };
        let node_scheme = match scheme {
            "redis" | "rediss" => return Ok(Target::Node(url.to_string())),
            "redis+cluster" => "redis",
            "rediss+cluster" => "rediss",
            _ => return Err(format!("not a Redis URL; accepted: {FORMS}")),
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, rest),
        };
        let mut urls = Vec::new();
        let mut seeds = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let valid = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                && !host.contains(['/', '?', '#', ' ']);
            if !valid {
                return Err(format!(
                    "a cluster URL lists host:port pairs (no database, no options); accepted: {FORMS}"
                ));
            }
            urls.push(match userinfo {
                Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}"),
                None => format!("{node_scheme}://{host}"),
            });
            seeds.push(host.to_string());
        }
        Ok(Target::Cluster { urls, seeds })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// Makes the (lazy) connection: every operation is bounded by `timeout` on top.
    pub fn connect(&self, timeout: Duration) -> Result<Conn, String> {
        match self {
            Target::Node(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| format!("invalid VRA_LEDGER_URL ({:?})", e.kind()))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client, config)
                    .map(Conn::Node)
                    .map_err(|e| format!("{:?}", e.kind()))
            }
            Target::Cluster { urls, .. } => {
                let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(3)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|e| format!("invalid VRA_LEDGER_URL ({:?})", e.kind()))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// The `INFO` of every node this URL names, each with its `host:port` (a cluster's seeds
    /// are asked one by one, over plain connections: a seed that is not a cluster node cannot
    /// be reached through the cluster client at all). Unreachable nodes are left out.
    pub async fn infos(&self, timeout: Duration) -> Vec<(String, String)> {
        let (urls, labels): (Vec<&str>, Vec<String>) = match self {
            Target::Node(url) => (vec![url.as_str()], vec![node_label(url)]),
            Target::Cluster { urls, seeds } => {
                (urls.iter().map(String::as_str).collect(), seeds.clone())
            }
        };
        let mut infos = Vec::new();
        for (url, label) in urls.into_iter().zip(labels) {
            let info = async {
                let client = redis::Client::open(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("INFO")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            };
            if let Ok(Some(text)) = tokio::time::timeout(timeout, info).await {
                infos.push((label, text));
            }
        }
        infos
    }
}

/// A single-node URL's `host:port`, for messages.
fn node_label(url: &str) -> String {
    redis::Client::open(url)
        .map(|c| c.get_connection_info().addr().to_string())
        .unwrap_or_else(|_| "the ledger".into())
}

/// The connection of either deployment; clones share it.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What one node's `INFO` says that matters to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub node: String,
    /// `redis_version` (Valkey reports its Redis compatibility level there too).
    pub major: Option<u32>,
    pub version: String,
    pub cluster_enabled: bool,
    pub maxmemory_policy: Option<String>,
    /// `role:master` (a replica's writes come from its master).
    pub master: bool,
    /// `connected_slaves`: the replicas attached right now.
    pub replicas: u32,
}

impl NodeFacts {
    pub fn from_info(node: &str, info: &str) -> NodeFacts {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_string)
        };
        let version = field("redis_version").unwrap_or_default();
        NodeFacts {
            node: node.to_string(),
            major: version.split('.').next().and_then(|m| m.parse().ok()),
            version,
            cluster_enabled: field("cluster_enabled").as_deref() == Some("1"),
            maxmemory_policy: field("maxmemory_policy"),
            master: field("role").as_deref() != Some("slave"),
            replicas: field("connected_slaves")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// Judges the deployment: `Err` (the gateway exits 2 naming `VRA_LEDGER_URL`) for a node older
/// than Redis 5 (the scripts read the server's clock with `TIME`, which scripts may call only
/// since 5) or a deployment that is not what the URL's scheme says; otherwise warnings, one
/// per node whose `maxmemory-policy` may evict the ledger's keys (every ledger key has a TTL,
/// so `volatile-*` evicts them as surely as `allkeys-*`): an evicted report's budget starts
/// again from zero; and one per master with fewer replicas attached than `min_replicas`
/// (`VRA_LEDGER_MIN_REPLICAS`), whose grants fail safe until enough attach.
pub fn assess(
    facts: &[NodeFacts],
    cluster: bool,
    min_replicas: u32,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for f in facts {
        match f.major {
            Some(major) if major >= 5 => {}
            _ => {
                return Err(format!(
                    "{} runs Redis {}; the ledger needs Redis or Valkey 5 or later",
                    f.node,
                    if f.version.is_empty() {
                        "of an unknown version"
                    } else {
                        &f.version
                    }
                ));
            }
        }
        if cluster && !f.cluster_enabled {
            return Err(format!(
                "{} is not a cluster node (cluster_enabled:0); use redis://{} for one node",
                f.node, f.node
            ));
        }
        if !cluster && f.cluster_enabled {
            return Err(format!(
                "{} is a Redis Cluster node; use redis+cluster://{}[,host:port...] so that keys on other masters are reached",
                f.node, f.node
            ));
        }
        if let Some(policy) = &f.maxmemory_policy
            && policy != "noeviction"
        {
            warnings.push(format!(
                "{} has maxmemory-policy {policy}: under memory pressure Redis may evict budget keys (all have a TTL), and an evicted report's budget starts again from zero; use noeviction",
                f.node
            ));
        }
        if f.master && f.replicas < min_replicas {
            warnings.push(format!(
                "{} has {} replica(s) attached and VRA_LEDGER_MIN_REPLICAS is {min_replicas}: its reservations are not confirmed, so cloud calls of its reports fail safe to the secondary until enough replicas attach",
                f.node, f.replicas
            ));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_selects_the_deployment_and_errors_hide_the_url() {
        assert_eq!(
            Target::parse("redis://:pw@h:6379/0").unwrap(),
            Target::Node("redis://:pw@h:6379/0".into())
        );
        let Target::Cluster { urls, seeds } =
            Target::parse("rediss+cluster://u:p@a:7000, b:7001").unwrap()
        else {
            panic!("a cluster");
        };
        assert_eq!(urls, ["rediss://u:p@a:7000", "rediss://u:p@b:7001"]);
        assert_eq!(seeds, ["a:7000", "b:7001"]);
        assert!(
            Target::parse("redis+cluster://a:7000")
                .unwrap()
                .is_cluster()
        );
        for bad in [
            "http://u:hunter2@h",
            "redis+cluster://:hunter2@a:7000/0",
            "redis+cluster://:hunter2@a",
            "redis+cluster://:hunter2@a:0",
            "redis+cluster://:hunter2@",
            "hunter2",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(
            !format!("{:?}", Target::parse("redis://:hunter2@h:1").unwrap()).contains("hunter2")
        );
    }

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\n# Cluster\r\ncluster_enabled:1\r\n";

    #[test]
    fn info_is_read_field_by_field() {
        let facts = NodeFacts::from_info("a:1", INFO);
        assert_eq!(
            facts,
            NodeFacts {
                node: "a:1".into(),
                major: Some(7),
                version: "7.0.15".into(),
                cluster_enabled: true,
                maxmemory_policy: Some("noeviction".into()),
                master: true,
                replicas: 1,
            }
        );
        let replica = NodeFacts::from_info("b:2", "redis_version:7.2.4\nrole:slave\n");
        assert_eq!((replica.master, replica.replicas), (false, 0));
    }

    #[test]
    fn the_deployment_must_match_the_scheme_and_be_recent() {
        let cluster_node = NodeFacts::from_info("a:1", INFO);
        let single = NodeFacts {
            cluster_enabled: false,
            ..cluster_node.clone()
        };
        assert_eq!(
            assess(std::slice::from_ref(&cluster_node), true, 1),
            Ok(vec![])
        );
        assert_eq!(assess(std::slice::from_ref(&single), false, 0), Ok(vec![]));
        assert!(
            assess(std::slice::from_ref(&single), true, 0)
                .unwrap_err()
                .contains("not a cluster node")
        );
        assert!(
            assess(std::slice::from_ref(&cluster_node), false, 0)
                .unwrap_err()
                .contains("redis+cluster://a:1")
        );
        let old = NodeFacts {
            major: Some(4),
            version: "4.0.9".into(),
            ..single.clone()
        };
        assert!(assess(&[old], false, 0).unwrap_err().contains("4.0.9"));
        let evicting = NodeFacts {
            maxmemory_policy: Some("allkeys-lru".into()),
            ..single.clone()
        };
        let warnings = assess(&[evicting], false, 0).unwrap();
        assert!(warnings[0].contains("allkeys-lru"), "{warnings:?}");
        let volatile = NodeFacts {
            maxmemory_policy: Some("volatile-ttl".into()),
            ..single
        };
        assert_eq!(assess(&[volatile], false, 0).unwrap().len(), 1);
    }

    #[test]
    fn a_master_short_of_the_replicas_a_grant_needs_is_named() {
        let master = NodeFacts::from_info("a:1", INFO);
        let warnings = assess(std::slice::from_ref(&master), true, 2).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("a:1 has 1 replica(s)")
                && warnings[0].contains("MIN_REPLICAS is 2"),
            "{warnings:?}"
        );
        // Replicas are not asked for replicas of their own.
        let replica = NodeFacts {
            master: false,
            replicas: 0,
            ..master
        };
        assert_eq!(assess(&[replica], true, 2), Ok(vec![]));
    }
}
