//! The in-process store (`VRA_CACHE=memory`): a [moka] cache weighed in bytes, evicting the
//! least recently used entries past `VRA_CACHE_MAX_BYTES`, each entry living
//! `VRA_CACHE_TTL_SECS`. One per gateway process: replicas do not share it (use the Redis store
//! for that).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::notification::RemovalCause;

use super::key::CacheKey;
use super::{Entry, Store, StoreError};
use crate::metrics::CacheMetrics;

/// What an entry weighs beyond its text: its key and the bookkeeping around it.
const ENTRY_OVERHEAD: usize = 128;

pub struct MemoryStore {
    entries: moka::sync::Cache<CacheKey, Arc<Entry>>,
    /// The byte gauge counts an entry from its insertion to its removal, whatever the cause
    /// (the eviction listener); size evictions are counted too.
    metrics: CacheMetrics,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, ttl: Duration, metrics: CacheMetrics) -> Self {
        let removals = metrics.clone();
        let listener = move |_key: Arc<CacheKey>, entry: Arc<Entry>, cause: RemovalCause| {
            removals.removed(weight(&entry), cause == RemovalCause::Size);
        };
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            // Plain LRU, not moka's default TinyLFU admission: a report rebuilt once must find
            // its new answers kept, however rarely each was asked before.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| {
                u32::try_from(weight(entry)).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .eviction_listener(listener)
            .build();
        Self { entries, metrics }
    }

    /// The bytes the entries weigh now, once pending evictions ran (tests).
    pub fn weighed_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// The bytes an entry is counted for.
pub fn weight(entry: &Entry) -> u64 {
    (entry.size() + ENTRY_OVERHEAD) as u64
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        Ok(self.entries.get(key))
    }

    async fn put(&self, key: CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        let bytes = weight(&entry);
        self.metrics.added(bytes);
        self.entries.insert(key, entry);
        Ok(())
    }

    async fn purge(&self, client: Option<&str>) -> Result<u64, StoreError> {
        let mut purged = 0;
        match client {
            None => {
                purged = self.entries.entry_count();
                self.entries.invalidate_all();
            }
            Some(client) => {
                for (key, _) in self.entries.iter() {
                    if key.client() == Some(client) {
                        self.entries.invalidate(&*key);
                        purged += 1;
                    }
                }
            }
        }
        self.entries.run_pending_tasks();
        Ok(purged)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenUsage;
    use crate::metrics::Metrics;

    fn key(i: usize, client: Option<&str>) -> CacheKey {
        CacheKey::sample(&format!("request {i}"), client)
    }

    fn entry(bytes: usize) -> Arc<Entry> {
        Arc::new(Entry::new(
            "x".repeat(bytes),
            "stop".into(),
            TokenUsage::reported(1, 1),
        ))
    }

    /// The value of one series in the metrics text.
    fn series(metrics: &Metrics, name: &str) -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }

    #[tokio::test]
    async fn the_byte_cap_holds_evicting_the_least_recently_used_and_counting() {
        let metrics = Metrics::new();
        let store = MemoryStore::new(10_000, Duration::from_secs(60), metrics.cache());
        let one = weight(&entry(868));
        assert_eq!(one, 1_000);
        // The first entry is read again and again: it is the most recently used, never evicted.
        store.put(key(0, None), entry(868)).await.unwrap();
        for i in 1..40 {
            store.put(key(i, None), entry(868)).await.unwrap();
            assert!(store.get(&key(0, None)).await.unwrap().is_some());
            store.entries.run_pending_tasks();
        }
        assert!(store.weighed_bytes() <= 10_000, "the cap holds");
        assert!(series(&metrics, "vra_gateway_cache_evictions_total") >= 29.0);
        let held = series(&metrics, "vra_gateway_cache_bytes");
        assert_eq!(
            held,
            store.weighed_bytes() as f64,
            "the gauge is what is held"
        );
        assert!(
            store.get(&key(0, None)).await.unwrap().is_some(),
            "the entry in use stays"
        );
    }

    #[tokio::test]
    async fn a_purge_drops_one_clients_entries_or_all() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60), Metrics::new().cache());
        for i in 0..3 {
            store.put(key(i, Some("a")), entry(10)).await.unwrap();
            store.put(key(i, Some("b")), entry(10)).await.unwrap();
        }
        assert_eq!(store.purge(Some("a")).await.unwrap(), 3);
        assert!(store.get(&key(0, Some("a"))).await.unwrap().is_none());
        assert!(store.get(&key(0, Some("b"))).await.unwrap().is_some());
        assert_eq!(store.purge(None).await.unwrap(), 3);
        assert!(store.get(&key(0, Some("b"))).await.unwrap().is_none());
    }
}
