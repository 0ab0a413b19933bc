//! The shared store (`VRA_CACHE=redis`): answers in the ledger's Redis — one node or a cluster,
//! `VRA_LEDGER_URL` — on a connection of their own (a 1 MiB answer never queues a budget
//! reservation behind it), every operation bounded by `VRA_LEDGER_TIMEOUT_MS`.
//!
//! One string per answer, `{VRA_CACHE_PREFIX}{client}:{sha256 hex}` (`~` for no client: client
//! ids are `[A-Za-z0-9._-]`), JSON, set with `PX` = `VRA_CACHE_TTL_SECS`. Single-key commands
//! only, so a cluster spreads answers over every master by their digest. A purge `SCAN`s each
//! master for the exact key shape (prefix, client, `:`, 64 hex digits) and `UNLINK`s what it
//! finds, so no ledger key can match it even under a shared prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::key::CacheKey;
use super::{Entry, Store, StoreError};
use crate::budget::redis::connection::{Conn, Target};

/// The key part standing for "no client" (never a client id).
const NO_CLIENT: &str = "~";
/// Keys asked for per `SCAN` step of a purge.
const SCAN_COUNT: usize = 1_000;

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    ttl_ms: u64,
    timeout: Duration,
}

impl RedisStore {
    /// A store on `url` (`VRA_LEDGER_URL`), connecting lazily like the ledger. Errors never
    /// quote the URL.
    pub fn new(url: &str, prefix: &str, ttl: Duration, timeout: Duration) -> Result<Self, String> {
        let target = Target::parse(url)?;
        Ok(Self {
            conn: target.connect(timeout)?,
            prefix: prefix.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            timeout,
        })
    }

    fn key(&self, key: &CacheKey) -> String {
        format!(
            "{}{}:{}",
            self.prefix,
            key.client().unwrap_or(NO_CLIENT),
            key.hex()
        )
    }

    /// The `SCAN MATCH` pattern of every answer of `client` (`None`: of every client).
    fn pattern(&self, client: Option<&str>) -> String {
        let client = client.map_or_else(|| "*".to_string(), glob_escape);
        format!(
            "{}{client}:{}",
            glob_escape(&self.prefix),
            "[0-9a-f]".repeat(64)
        )
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!("{:?}", e.kind()))),
            Err(_) => Err(StoreError(format!(
                "timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Every key matching `pattern` on one node (`node`: a cluster master; `None`: the single
    /// node), unlinked batch by batch.
    async fn purge_node(
        &self,
        node: Option<(String, u16)>,
        pattern: &str,
    ) -> Result<u64, StoreError> {
        let mut cursor: u64 = 0;
        let mut purged = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = match (&self.conn, &node) {
                (Conn::Cluster(cluster), Some((host, port))) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let mut cluster = cluster.clone();
                    let value = self.bounded(cluster.route_command(scan, routing)).await?;
                    redis::from_redis_value(value).map_err(|_| unexpected("SCAN"))?
                }
                _ => {
                    let mut conn = self.conn.clone();
                    self.bounded(scan.query_async(&mut conn)).await?
                }
            };
            if !keys.is_empty() {
                purged += self.unlink(&keys).await?;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }

    /// Unlinks `keys`: one command on a single node; in a cluster one per key, all at once (the
    /// keys of one node live in many slots, and a multi-key command across slots is refused).
    async fn unlink(&self, keys: &[String]) -> Result<u64, StoreError> {
        if matches!(self.conn, Conn::Node(_)) {
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(keys);
            let mut conn = self.conn.clone();
            return self.bounded(unlink.query_async::<u64>(&mut conn)).await;
        }
        let each = keys.iter().map(|key| {
            let mut conn = self.conn.clone();
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(key);
            async move { unlink.query_async::<u64>(&mut conn).await }
        });
        let unlinked = self
            .bounded(futures_util::future::try_join_all(each))
            .await?;
        Ok(unlinked.into_iter().sum())
    }

    /// A cluster's masters, as `CLUSTER SLOTS` names them (host or announced name, port).
    async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let Conn::Cluster(cluster) = &self.conn else {
            return Ok(Vec::new());
        };
        let mut cluster = cluster.clone();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let value = self.bounded(cluster.route_command(slots, routing)).await?;
        let ranges: Vec<Vec<redis::Value>> =
            redis::from_redis_value(value).map_err(|_| unexpected("CLUSTER SLOTS"))?;
        let mut masters = Vec::new();
        for range in ranges {
            // [start, end, [host, port, id, {metadata}], replicas...]
            let Some(redis::Value::Array(master)) = range.get(2) else {
                continue;
            };
            let host = master
                .first()
                .and_then(|h| redis::from_redis_value_ref::<String>(h).ok());
            let port = master
                .get(1)
                .and_then(|p| redis::from_redis_value_ref::<u16>(p).ok());
            if let (Some(host), Some(port)) = (host, port)
                && !masters.contains(&(host.clone(), port))
            {
                masters.push((host, port));
            }
        }
        Ok(masters)
    }
}

fn unexpected(command: &str) -> StoreError {
    StoreError(format!("unexpected reply to {command}"))
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.key(key));
        let bytes: Option<Vec<u8>> = self.bounded(get.query_async(&mut conn)).await?;
        // A value that does not decode (another version wrote it) is a miss.
        Ok(bytes
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            .map(Arc::new))
    }

    async fn put(&self, key: CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&*entry).map_err(|e| StoreError(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.key(&key))
            .arg(value)
            .arg("PX")
            .arg(self.ttl_ms);
        self.bounded(set.query_async::<()>(&mut conn)).await
    }

    async fn purge(&self, client: Option<&str>) -> Result<u64, StoreError> {
        let pattern = self.pattern(client);
        if matches!(self.conn, Conn::Node(_)) {
            return self.purge_node(None, &pattern).await;
        }
        let mut purged = 0;
        for master in self.masters().await? {
            purged += self.purge_node(Some(master), &pattern).await?;
        }
        Ok(purged)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_and_patterns_have_one_exact_shape() {
        let store = RedisStore::new(
            "redis://127.0.0.1:1",
            "vra:cache:",
            Duration::from_secs(60),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let hex = "[0-9a-f]".repeat(64);
        assert_eq!(store.pattern(Some("acme")), format!("vra:cache:acme:{hex}"));
        assert_eq!(store.pattern(None), format!("vra:cache:*:{hex}"));
    }
}
