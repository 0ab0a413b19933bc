//! The response cache (`VRA_CACHE`): a rebuilt report pays nothing for the sections that did
//! not change.
//!
//! - [`key`]: what an answer is keyed by — the client, and a SHA-256 of the request exactly as
//!   the answering model receives it (after routing and defaults).
//! - [`memory`] and [`redis`]: the stores behind the [`Store`] trait — one process's LRU under
//!   a byte cap, or the ledger's Redis (one node or a cluster) shared by every replica. Add a
//!   store here and choose it in [`build`].
//! - [`flight`]: single flight — concurrent identical requests send one upstream.
//!
//! How the pipeline uses it ([`crate::gateway`]): after routing and before any budget
//! reservation it looks the routed tier's key up; a hit answers at once, reserves nothing and
//! is recorded as a cached call of its report. A miss goes upstream as usual, and a finished
//! answer is stored under the tier and model that actually answered — a fallback answer under
//! the secondary's key, never the primary's. The cache never makes a call fail: a store that
//! cannot answer is skipped (counted), and the call proceeds.

pub mod flight;
pub mod key;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::budget::LedgerConfig;
use crate::domain::TokenUsage;
use crate::metrics::Metrics;
use crate::resilience::Deadline;

use flight::{FlightGuard, Flights, Join};
pub use key::{CacheKey, KeyInput};

/// Which store holds answers (`VRA_CACHE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Off,
    Memory,
    /// The ledger's Redis (`VRA_LEDGER_URL`), under its own key prefix.
    Redis,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Off => "off",
            Backend::Memory => "memory",
            Backend::Redis => "redis",
        }
    }
}

/// The cache's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub backend: Backend,
    /// How long an entry lives (`VRA_CACHE_TTL_SECS`).
    pub ttl: Duration,
    /// The memory store's byte cap (`VRA_CACHE_MAX_BYTES`).
    pub max_bytes: u64,
    /// Larger answers are not stored (`VRA_CACHE_MAX_ENTRY_BYTES`).
    pub max_entry_bytes: usize,
    /// The Redis store's key prefix (`VRA_CACHE_PREFIX`).
    pub prefix: String,
}

/// One stored answer: what a hit returns, and when it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub text: String,
    pub finish_reason: String,
    /// The token counts of the call that produced it.
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub estimated: bool,
    /// Unix time in milliseconds.
    pub stored_at_ms: u64,
}

impl Entry {
    /// An answer stored now.
    pub fn new(text: String, finish_reason: String, usage: TokenUsage) -> Self {
        Self {
            text,
            finish_reason,
            input_tokens: usage.input,
            output_tokens: usage.output,
            estimated: usage.estimated,
            stored_at_ms: now_ms(),
        }
    }

    pub fn usage(&self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            estimated: self.estimated,
        }
    }

    /// The bytes of its text (what `VRA_CACHE_MAX_ENTRY_BYTES` bounds).
    pub fn size(&self) -> usize {
        self.text.len() + self.finish_reason.len()
    }

    /// Whether it is at most `max_age` old (`None`: any age).
    fn fresh(&self, max_age: Option<Duration>) -> bool {
        max_age.is_none_or(|max| {
            let age = now_ms().saturating_sub(self.stored_at_ms);
            u128::from(age) <= max.as_millis()
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A store could not answer (the cache is then skipped; the call goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cache store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where answers are kept. Entries expire by themselves (`VRA_CACHE_TTL_SECS`).
#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError>;
    async fn put(&self, key: CacheKey, entry: Arc<Entry>) -> Result<(), StoreError>;
    /// Drops every entry of `client` (`None`: every entry); returns how many.
    async fn purge(&self, client: Option<&str>) -> Result<u64, StoreError>;
    /// `memory` or `redis`.
    fn backend(&self) -> &'static str;
    /// Whether an operation is a round trip away (its `put` then runs after the response).
    fn remote(&self) -> bool {
        false
    }
}

/// The outcome of a lookup.
pub enum Lookup {
    Hit(Arc<Entry>),
    /// Not cached: this call goes upstream, leading the flight of its key (followers wait for
    /// the guard, which [`Cache::store`] drops once the answer is stored), or on its own after
    /// a flight that stored nothing (`None`).
    Miss(Option<FlightGuard>),
    /// The store could not answer: the call goes on without the cache.
    Unavailable,
    /// The caller's deadline passed while it waited for an identical call.
    DeadlineExceeded,
}

/// The cache as the pipeline uses it: a store, single flight, the entry size cap.
pub struct Cache {
    store: Arc<dyn Store>,
    flights: Arc<Flights>,
    max_entry_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(store: Arc<dyn Store>, max_entry_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            flights: Arc::default(),
            max_entry_bytes,
            metrics,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Whether an answer of `bytes` may be stored (`VRA_CACHE_MAX_ENTRY_BYTES`).
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.max_entry_bytes
    }

    /// Looks `key` up. On a miss the call leads the key's flight; if another identical call is
    /// already upstream, waits for it (until `deadline`) and looks once more. A call waits for
    /// one flight at most: when that leader stored nothing under the key (it fell back, failed,
    /// or its answer was too large), the followers go upstream at once, side by side, instead
    /// of queueing behind one new leader after another.
    pub async fn lookup(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
        deadline: Deadline,
    ) -> Lookup {
        match self.get(key, max_age).await {
            Ok(Some(entry)) => return Lookup::Hit(entry),
            Ok(None) => {}
            Err(()) => return Lookup::Unavailable,
        }
        let leader = match self.flights.join(key) {
            Join::Lead(guard) => return Lookup::Miss(Some(guard)),
            Join::Follow(leader) => leader,
        };
        tokio::select! {
            () = leader.done() => {}
            () = deadline.passed() => return Lookup::DeadlineExceeded,
        }
        match self.get(key, max_age).await {
            Ok(Some(entry)) => Lookup::Hit(entry),
            Ok(None) => Lookup::Miss(None),
            Err(()) => Lookup::Unavailable,
        }
    }

    async fn get(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
    ) -> Result<Option<Arc<Entry>>, ()> {
        match self.store.get(key).await {
            Ok(entry) => Ok(entry.filter(|e| e.fresh(max_age))),
            Err(e) => {
                self.metrics.cache_error("get");
                tracing::debug!("response cache skipped: {e}");
                Err(())
            }
        }
    }

    /// Stores a finished answer under `key` (unless it is larger than
    /// `VRA_CACHE_MAX_ENTRY_BYTES`), then lets the key's followers look again. A remote store
    /// is written after the response: the answer never waits for it.
    pub async fn store(&self, key: CacheKey, entry: Entry, flight: Option<FlightGuard>) {
        if !self.fits(entry.size()) {
            return;
        }
        let entry = Arc::new(entry);
        if !self.store.remote() {
            if self.store.put(key, entry).await.is_err() {
                self.metrics.cache_error("put");
            }
            drop(flight);
            return;
        }
        let (store, metrics) = (Arc::clone(&self.store), Arc::clone(&self.metrics));
        tokio::spawn(async move {
            if let Err(e) = store.put(key, entry).await {
                metrics.cache_error("put");
                tracing::debug!("response cache not written: {e}");
            }
            drop(flight);
        });
    }

    /// Drops every entry of `client` (`None`: all); how many were dropped.
    pub async fn purge(&self, client: Option<&str>) -> Result<u64, StoreError> {
        let purged = self.store.purge(client).await;
        if purged.is_err() {
            self.metrics.cache_error("purge");
        }
        purged
    }
}

/// The cache `config` asks for (the Redis store on the ledger's `ledger.url`, bounded by its
/// timeout); `None` when it is off. The error never quotes the URL.
pub fn build(
    config: &CacheConfig,
    ledger: &LedgerConfig,
    metrics: Arc<Metrics>,
) -> Result<Option<Arc<Cache>>, String> {
    let store: Arc<dyn Store> = match config.backend {
        Backend::Off => return Ok(None),
        Backend::Memory => Arc::new(memory::MemoryStore::new(
            config.max_bytes,
            config.ttl,
            metrics.cache(),
        )),
        Backend::Redis => {
            let url = ledger
                .url
                .as_ref()
                .ok_or("VRA_CACHE=redis needs VRA_LEDGER_URL")?;
            Arc::new(redis::RedisStore::new(
                url.expose(),
                &config.prefix,
                config.ttl,
                ledger.timeout,
            )?)
        }
    };
    Ok(Some(Arc::new(Cache::new(
        store,
        config.max_entry_bytes,
        metrics,
    ))))
}
