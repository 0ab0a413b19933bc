//! The per-report cloud budget, behind the [`Ledger`] trait.
//!
//! The one promise: for a report, the cloud backends never receive more than
//! `MAX_CLOUD_CALLS` requests, whatever the concurrency and however many replicas. Every
//! cloud HTTP request (retries included) first takes a unit with [`Ledger::reserve`], a single
//! atomic check-and-increment; no lock is held across IO. The first refused reservation marks
//! the report exhausted, which pins its later calls to the secondary.
//!
//! Two backends: [`memory::MemoryLedger`] (one process) and [`redis::RedisLedger`] (shared by
//! replicas). A new backend implements the trait and is chosen in [`build`].

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::Tier;

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A unit was taken; `used` counts it.
    Granted { used: u32 },
    /// The budget is spent; the report is now marked exhausted. `newly` is true for the
    /// refusal that exhausted the report (the first one).
    Refused { used: u32, newly: bool },
}

/// What the ledger knows about one report. An unknown report is all zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportUsage {
    pub cloud_calls_used: u32,
    pub exhausted: bool,
    pub primary_calls: u32,
    pub secondary_calls: u32,
    pub fallbacks: u32,
    pub cloud_input_tokens: u64,
    pub cloud_output_tokens: u64,
    pub local_input_tokens: u64,
    pub local_output_tokens: u64,
}

impl ReportUsage {
    /// Whether a new cloud reservation would be refused now.
    pub fn is_spent(&self, limit: u32) -> bool {
        self.exhausted || self.cloud_calls_used >= limit
    }
}

/// One answered call, recorded after the fact for `GetReportUsage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    /// The tier that answered.
    pub tier: Tier,
    /// Whether the matrix chose the primary but the secondary answered.
    pub fell_back: bool,
    /// Whether the answering provider is cloud tier.
    pub cloud: bool,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// The ledger could not answer; callers fail safe (no unbudgeted cloud request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger timed out after {0} ms")]
    Timeout(u64),
    /// The in-memory ledger tracks `VRA_LEDGER_MAX_REPORTS` reports and this one is new.
    /// Evicting a live report would reset its budget, so the new one fails safe instead.
    #[error("ledger full: already tracking {0} reports (VRA_LEDGER_MAX_REPORTS)")]
    Full(usize),
}

impl LedgerError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerError::Unavailable(_) => "unavailable",
            LedgerError::Timeout(_) => "timeout",
            LedgerError::Full(_) => "full",
        }
    }
}

/// Storage of per-report budget state.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Atomically: if the report has used fewer than `limit` units, take one
    /// ([`Reservation::Granted`]); otherwise mark it exhausted ([`Reservation::Refused`]).
    /// Refreshes the report's TTL either way.
    async fn reserve(&self, report_id: &str, limit: u32) -> Result<Reservation, LedgerError>;

    /// The report's state, without changing it.
    async fn usage(&self, report_id: &str) -> Result<ReportUsage, LedgerError>;

    /// Adds one answered call to the report's counters; returns the report's state after it.
    async fn record(&self, report_id: &str, call: CallRecord) -> Result<ReportUsage, LedgerError>;

    /// Whether a reservation for `report_id` would find room (a capped backend may refuse new
    /// reports); used to predict routes without reserving.
    fn admits(&self, _report_id: &str) -> bool {
        true
    }

    /// Whether the backend answers right now (for health reporting).
    async fn ping(&self) -> Result<(), LedgerError>;

    /// Short backend name for logs: `memory`, `redis`.
    fn backend(&self) -> &'static str;
}

/// Picks the backend from the configuration: Redis when `VRA_LEDGER_URL` is set. Must run
/// inside the Tokio runtime (the memory ledger starts its TTL sweeper).
pub fn build(config: &Config) -> Result<Arc<dyn Ledger>, LedgerError> {
    match &config.ledger.url {
        Some(url) => Ok(Arc::new(redis::RedisLedger::new(
            url.expose(),
            &config.ledger.prefix,
            config.report_ttl,
            config.ledger.timeout,
        )?)),
        None => {
            let ledger = Arc::new(memory::MemoryLedger::with_capacity(
                config.report_ttl,
                config.ledger.max_reports,
            ));
            ledger.spawn_sweeper();
            Ok(ledger)
        }
    }
}
