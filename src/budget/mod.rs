//! The per-report cloud budget, behind the [`Ledger`] trait.
//!
//! The one promise: for a report, the cloud backends never receive more than
//! `MAX_CLOUD_CALLS` requests, whatever the concurrency and however many replicas. Every
//! cloud HTTP request (retries included) first takes a unit with [`Ledger::reserve`], a single
//! atomic check-and-increment; no lock is held across IO. The first refused reservation marks
//! the report exhausted, which pins its later calls to the secondary.
//!
//! With authentication on, every report belongs to a client ([`ReportKey`]): two clients'
//! reports of the same id are different reports, and a client may also have a cloud quota per
//! UTC day ([`Limits::client_day`]) that a reservation takes together with the report's unit,
//! in the same atomic step — a refused day quota spends no report unit and vice versa.
//!
//! Two backends: [`memory::MemoryLedger`] (one process) and [`redis::RedisLedger`] (shared by
//! replicas). A new backend implements the trait and is chosen in [`build`].

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::Tier;

/// Which report: its id, and the client it belongs to when callers authenticate. Client ids
/// come from configuration (`[A-Za-z0-9._-]`), so they never contain the separators the
/// backends put between client and report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportKey<'a> {
    pub client: Option<&'a str>,
    pub report: &'a str,
}

impl<'a> ReportKey<'a> {
    /// A report of no particular client (authentication off).
    pub fn anonymous(report: &'a str) -> Self {
        Self {
            client: None,
            report,
        }
    }
}

/// What one reservation may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cloud requests per report (`MAX_CLOUD_CALLS`, or the client's `max_cloud_calls`).
    pub report: u32,
    /// Cloud requests per UTC day of the report's client, all its reports together
    /// (`cloud_calls_per_day`); only with a client.
    pub client_day: Option<u32>,
}

impl Limits {
    pub fn report(report: u32) -> Self {
        Self {
            report,
            client_day: None,
        }
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A unit was taken (of the report, and of the client's day when it has a quota); `used`
    /// counts the report's.
    Granted { used: u32 },
    /// The budget is spent; the report is now marked exhausted. `newly` is true for the
    /// refusal that exhausted the report (the first one).
    Refused { used: u32, newly: bool },
    /// The client's quota for today is spent (`used` of `limit`). Nothing was taken and the
    /// report is not marked: tomorrow it may call the cloud again.
    DayQuotaSpent { used: u32, limit: u32 },
}

impl Reservation {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reservation::Granted { .. } => "granted",
            Reservation::Refused { .. } => "report_budget",
            Reservation::DayQuotaSpent { .. } => "day_quota",
        }
    }
}

/// The current UTC day, as days since the Unix epoch (the memory ledger's day; the Redis
/// ledger uses the Redis server's clock, one clock for every replica).
pub fn utc_day() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
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
    /// Atomically: if the report has used fewer than `limits.report` units, and its client
    /// (with a day quota) fewer than `limits.client_day` today, take one of each
    /// ([`Reservation::Granted`]). A spent report is marked exhausted
    /// ([`Reservation::Refused`]); a spent day quota takes nothing
    /// ([`Reservation::DayQuotaSpent`]). Refreshes the report's TTL either way.
    async fn reserve(&self, key: ReportKey<'_>, limits: Limits)
    -> Result<Reservation, LedgerError>;

    /// The report's state, without changing it.
    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError>;

    /// Adds one answered call to the report's counters; returns the report's state after it.
    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportUsage, LedgerError>;

    /// The cloud requests `client` has reserved today (UTC), all reports together.
    async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError>;

    /// Whether a reservation for the report would find room (a capped backend may refuse new
    /// reports); used to predict routes without reserving.
    fn admits(&self, _key: ReportKey<'_>) -> bool {
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
