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
//! Money works the same way. With a dollar cap (`MAX_CLOUD_COST_USD`, [`Limits::cost_cap`]),
//! every cloud attempt also *holds* its worst-case cost in the same atomic step as its unit: a
//! hold that does not fit under the cap beside the report's settled cost and the holds of calls
//! in flight is refused ([`Reservation::NoRoomUnderCap`]; the report is not marked, a later,
//! smaller or less crowded call may fit). After the attempt the hold is released and the
//! actual cost settled ([`CallRecord::release`], [`Ledger::release`]), so a report's settled
//! cloud cost never exceeds its cap. Every answered call also adds its tokens and cost to the
//! report's per-phase breakdown ([`PhaseTierUsage`]).
//!
//! A hold also carries its own expiry ([`HoldSpec::ttl`]: the attempt's deadline plus
//! `VRA_HOLD_GRACE_MS`). One whose owner died — a replica killed mid-call — is settled by the
//! report's next reservation or read as an abandoned charge of its worst case (the policy of a
//! call dropped mid-way: the upstream may have billed it), so the report's holds go back to what
//! live calls hold instead of shrinking its room until the report expires. A late release or
//! record of an expired hold corrects that charge to the real one.
//!
//! Two backends: [`memory::MemoryLedger`] (one process) and [`redis::RedisLedger`] (shared by
//! replicas). A new backend implements the trait and is chosen in [`build`].

pub mod deferred;
pub mod known;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// The memory ledger's day; the Redis ledger uses the Redis server's clock, one clock for every
/// replica.
pub use crate::domain::utc_day;
use crate::domain::{Nanos, Phase, Secret, Tier, TokenUsage};

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

    /// One string naming the report in the gateway's own maps: `client/report`, or the report
    /// alone (client ids never contain `/`).
    pub fn owned(&self) -> String {
        match self.client {
            Some(client) => format!("{client}/{}", self.report),
            None => self.report.to_string(),
        }
    }
}

/// The cost hold a reservation takes: its id (random, one per attempt), its amount (the
/// attempt's worst case; zero for none) and how long it lives unless released or settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSpec {
    pub id: u64,
    pub amount: Nanos,
    pub ttl: Duration,
}

impl HoldSpec {
    /// No hold (no cost cap, or a free attempt).
    pub const NONE: HoldSpec = HoldSpec {
        id: 0,
        amount: Nanos::ZERO,
        ttl: Duration::ZERO,
    };

    /// The hold as its release or record names it.
    pub fn held(&self) -> HeldCost {
        HeldCost {
            id: self.id,
            amount: self.amount,
        }
    }
}

/// A hold as its release or record names it: the id and amount its reservation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldCost {
    pub id: u64,
    pub amount: Nanos,
}

impl HeldCost {
    pub const NONE: HeldCost = HeldCost {
        id: 0,
        amount: Nanos::ZERO,
    };

    /// The member naming this hold in a ledger's set of live holds: `{id:016x}:{amount}`.
    pub fn member(&self) -> String {
        format!("{:016x}:{}", self.id, self.amount.0)
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
    /// The report's cloud cost cap (`MAX_CLOUD_COST_USD`): settled cost plus the holds of
    /// calls in flight never exceed it.
    pub cost_cap: Option<Nanos>,
}

impl Limits {
    pub fn report(report: u32) -> Self {
        Self {
            report,
            client_day: None,
            cost_cap: None,
        }
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A unit was taken (of the report, and of the client's day when it has a quota); `used`
    /// counts the report's. `cost` is the report's settled cloud cost and `held` every hold
    /// in flight, this one included, as the reservation left them: the budget a call answered
    /// before its record lands shows ([`Ledger::defers_records`]).
    Granted {
        used: u32,
        cost: Nanos,
        held: Nanos,
        /// The client's cloud calls of the current UTC day, this one included, when the call
        /// was reserved under a day quota.
        day_used: Option<u32>,
    },
    /// The budget is spent; the report is now marked exhausted. `newly` is true for the
    /// refusal that exhausted the report (the first one).
    Refused { used: u32, newly: bool },
    /// The client's quota for today is spent (`used` of `limit`). Nothing was taken and the
    /// report is not marked: tomorrow it may call the cloud again.
    DayQuotaSpent { used: u32, limit: u32 },
    /// The attempt's worst case does not fit under the cost cap beside the settled cost and the
    /// other calls' holds. Nothing was taken and the report is not marked: once holds settle
    /// (usually far below their worst case), a later call may fit.
    NoRoomUnderCap { used: u32 },
}

impl Reservation {
    /// A grant of a report with no cost settled or held (tests, mostly).
    pub fn granted(used: u32) -> Self {
        Reservation::Granted {
            used,
            cost: Nanos::ZERO,
            held: Nanos::ZERO,
            day_used: None,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reservation::Granted { .. } => "granted",
            Reservation::Refused { .. } => "report_budget",
            Reservation::DayQuotaSpent { .. } => "day_quota",
            Reservation::NoRoomUnderCap { .. } => "cost_cap",
        }
    }
}

/// One cell of a report's breakdown: the calls of one phase answered by one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTierUsage {
    pub calls: u32,
    /// Calls whose usage was estimated (the upstream reported none).
    pub estimated: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Cost of the priced calls.
    pub cost: Nanos,
    /// Calls answered from the response cache with this tier's answer (not in `calls`).
    pub cached_calls: u32,
    /// What those calls would have cost upstream.
    pub cache_saved: Nanos,
}

impl PhaseTierUsage {
    fn add(&mut self, call: &CallRecord) {
        self.calls = self.calls.saturating_add(1);
        self.estimated = self
            .estimated
            .saturating_add(u32::from(call.usage.estimated));
        self.input_tokens = self.input_tokens.saturating_add(call.usage.input);
        self.output_tokens = self.output_tokens.saturating_add(call.usage.output);
        self.cost = self.cost.saturating_add(call.cost.unwrap_or_default());
    }
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
    /// Settled cost of cloud calls, including [`ReportUsage::abandoned`]. This is what the
    /// dollar cap bounds.
    pub cloud_cost: Nanos,
    /// Charged for cloud attempts without an answer that may have been billed (a timeout, a
    /// broken or dropped call): their whole worst case. Part of `cloud_cost`.
    pub abandoned: Nanos,
    /// Cost of local calls (0 unless a local model has a `[pricing]` entry).
    pub local_cost: Nanos,
    /// What the same calls' tokens would have cost on the primary model.
    pub all_cloud: Nanos,
    /// Answered calls whose model has no price: their cost is unknown and not in the sums.
    pub unpriced_calls: u32,
    /// Answered cloud / local calls whose usage was estimated.
    pub cloud_estimated: u32,
    pub local_estimated: u32,
    /// Worst-case cost held by cloud calls in flight, not yet settled.
    pub held: Nanos,
    /// Calls, tokens and cost per phase and answering tier (by [`Phase::index`] and
    /// [`Tier::index`]; read it with [`ReportUsage::cell`]).
    pub phases: [[PhaseTierUsage; 2]; 4],
    /// Calls answered from the response cache: in none of the counts above (no upstream call,
    /// no unit, no dollar).
    pub cached_calls: u32,
    /// What those calls would have cost upstream, at their models' prices.
    pub cache_saved: Nanos,
}

/// The part of a report's state its budget depends on: what a call's response shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBudget {
    pub used: u32,
    pub exhausted: bool,
    /// Settled cloud cost.
    pub cloud_cost: Nanos,
    /// Worst-case cost held by cloud calls in flight.
    pub held: Nanos,
}

impl ReportBudget {
    /// Whether a new cloud reservation would be refused now (a call budget spent, or a cost
    /// cap without room left). A reservation of a positive hold may be refused even when this
    /// is false: it needs room for its worst case.
    pub fn is_spent(&self, limits: Limits) -> bool {
        self.exhausted
            || self.used >= limits.report
            || limits
                .cost_cap
                .is_some_and(|cap| self.cloud_cost.saturating_add(self.held) >= cap)
    }
}

impl ReportUsage {
    /// The budget part of the state.
    pub fn budget(&self) -> ReportBudget {
        ReportBudget {
            used: self.cloud_calls_used,
            exhausted: self.exhausted,
            cloud_cost: self.cloud_cost,
            held: self.held,
        }
    }

    /// See [`ReportBudget::is_spent`].
    pub fn is_spent(&self, limits: Limits) -> bool {
        self.budget().is_spent(limits)
    }

    /// Adds one answered call (and releases its hold) — the one definition of what a call
    /// record does, shared by every backend that keeps `ReportUsage` in process. A cached call
    /// counts only as cached, with what it saved.
    pub fn apply(&mut self, call: &CallRecord) {
        if call.cached {
            let saved = call.cost.unwrap_or_default();
            self.cached_calls = self.cached_calls.saturating_add(1);
            self.cache_saved = self.cache_saved.saturating_add(saved);
            let cell = self.cell_mut(call.phase, call.tier);
            cell.cached_calls = cell.cached_calls.saturating_add(1);
            cell.cache_saved = cell.cache_saved.saturating_add(saved);
            return;
        }
        match call.tier {
            Tier::Primary => self.primary_calls = self.primary_calls.saturating_add(1),
            Tier::Secondary => self.secondary_calls = self.secondary_calls.saturating_add(1),
        }
        if call.fell_back {
            self.fallbacks = self.fallbacks.saturating_add(1);
        }
        let input = u64::from(call.usage.input);
        let output = u64::from(call.usage.output);
        let estimated = u32::from(call.usage.estimated);
        let cost = call.cost.unwrap_or_default();
        if call.cloud {
            self.cloud_input_tokens = self.cloud_input_tokens.saturating_add(input);
            self.cloud_output_tokens = self.cloud_output_tokens.saturating_add(output);
            self.cloud_cost = self.cloud_cost.saturating_add(cost);
            self.cloud_estimated = self.cloud_estimated.saturating_add(estimated);
        } else {
            self.local_input_tokens = self.local_input_tokens.saturating_add(input);
            self.local_output_tokens = self.local_output_tokens.saturating_add(output);
            self.local_cost = self.local_cost.saturating_add(cost);
            self.local_estimated = self.local_estimated.saturating_add(estimated);
        }
        if call.cost.is_none() {
            self.unpriced_calls = self.unpriced_calls.saturating_add(1);
        }
        self.all_cloud = self
            .all_cloud
            .saturating_add(call.all_cloud.unwrap_or_default());
        self.cell_mut(call.phase, call.tier).add(call);
    }

    /// The calls of `phase` answered by `tier`.
    pub fn cell(&self, phase: Phase, tier: Tier) -> &PhaseTierUsage {
        &self.phases[phase.index()][tier.index()]
    }

    pub fn cell_mut(&mut self, phase: Phase, tier: Tier) -> &mut PhaseTierUsage {
        &mut self.phases[phase.index()][tier.index()]
    }

    /// Releases a live hold and charges `charge` to the cloud cost (see [`Ledger::release`]).
    pub fn release(&mut self, hold: Nanos, charge: Nanos) {
        self.held = self.held.saturating_sub(hold);
        self.charge_abandoned(charge);
    }

    /// Settles an expired hold: charged in full, as abandoned.
    pub fn expire(&mut self, hold: Nanos) {
        self.release(hold, hold);
    }

    /// Takes back the abandoned charge of a hold that expired before its owner released or
    /// recorded it (the owner's own charge follows).
    pub fn unexpire(&mut self, hold: Nanos) {
        self.cloud_cost = self.cloud_cost.saturating_sub(hold);
        self.abandoned = self.abandoned.saturating_sub(hold);
    }

    fn charge_abandoned(&mut self, charge: Nanos) {
        self.cloud_cost = self.cloud_cost.saturating_add(charge);
        self.abandoned = self.abandoned.saturating_add(charge);
    }
}

/// One answered call, recorded after the fact for `GetReportUsage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    /// Unique per call (random). A ledger whose failures can be ambiguous — the record may
    /// have been applied although no answer came back — applies one id at most once, so a
    /// record can be sent again after any transient failure ([`deferred`]).
    pub id: u64,
    /// The tier that answered.
    pub tier: Tier,
    /// Whether the matrix chose the primary but the secondary answered.
    pub fell_back: bool,
    /// Whether the answering provider is cloud tier.
    pub cloud: bool,
    pub phase: Phase,
    pub usage: TokenUsage,
    /// The call's cost; `None` when its model has no price.
    pub cost: Option<Nanos>,
    /// The same tokens priced at the primary model; `None` when that has no price.
    pub all_cloud: Option<Nanos>,
    /// The hold the call's last attempt reserved, released by this record
    /// ([`HeldCost::NONE`] for none).
    pub release: HeldCost,
    /// Answered from the response cache: `usage` and `cost` are those of the call that produced
    /// the answer (what this one saved); nothing was sent, reserved or spent.
    pub cached: bool,
}

/// The ledger could not answer; callers fail safe (no unbudgeted cloud request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger timed out after {0} ms")]
    Timeout(u64),
    /// A reservation was granted, but fewer replicas than `VRA_LEDGER_MIN_REPLICAS` confirmed
    /// holding it in time: a failover could lose it, so it is not used. Its unit stays taken
    /// (a replica may yet apply it); its hold, which no attempt will use, is the caller's to
    /// release uncharged.
    #[error(
        "ledger reservation not confirmed: {acked} of {wanted} replicas acknowledged it (VRA_LEDGER_MIN_REPLICAS)"
    )]
    Unconfirmed { acked: u32, wanted: u32 },
    /// The ledger answered with an error that asking again would only repeat (a script error,
    /// a wrong key type): the operation was refused, not lost on the way.
    #[error("ledger refused the operation: {0}")]
    Rejected(String),
    /// `VRA_LEDGER_URL` names a deployment the ledger cannot use (the wrong kind, too old).
    #[error("ledger misconfigured: {0}")]
    Misconfigured(String),
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
            LedgerError::Unconfirmed { .. } => "unconfirmed",
            LedgerError::Rejected(_) => "rejected",
            LedgerError::Full(_) => "full",
            LedgerError::Misconfigured(_) => "misconfigured",
        }
    }

    /// Whether the same operation may succeed later: not after a refusal, nor from a full
    /// in-memory ledger.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            LedgerError::Full(_) | LedgerError::Rejected(_) | LedgerError::Misconfigured(_)
        )
    }
}

/// Storage of per-report budget state.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Atomically: if the report has used fewer than `limits.report` units, `hold` fits under
    /// `limits.cost_cap` beside the settled cost and the other holds, and its client (with a
    /// day quota) has used fewer than `limits.client_day` today, take one unit of each and
    /// hold `hold` ([`Reservation::Granted`]). A spent report is marked exhausted
    /// ([`Reservation::Refused`]); a spent day quota takes nothing
    /// ([`Reservation::DayQuotaSpent`]). Refreshes the report's TTL either way. First, holds
    /// of the report past their expiry are settled as abandoned ([`ReportUsage::expire`]).
    async fn reserve(
        &self,
        key: ReportKey<'_>,
        limits: Limits,
        hold: HoldSpec,
    ) -> Result<Reservation, LedgerError>;

    /// Releases `hold` (taken by a granted reservation whose attempt produced no answer to
    /// record) and adds `charge` to the report's cloud cost and to its `abandoned` cost: 0 for
    /// an attempt the upstream cannot have billed, the whole hold for one that may have been
    /// (see [`crate::domain::ProviderError::may_have_been_billed`], and calls dropped mid-way).
    /// A hold that already expired was charged in full: that charge becomes `charge`.
    async fn release(
        &self,
        key: ReportKey<'_>,
        hold: HeldCost,
        charge: Nanos,
    ) -> Result<(), LedgerError>;

    /// The report's state (expired holds settled first, as a reservation would).
    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError>;

    /// Adds one answered call to the report's counters and releases its hold
    /// ([`ReportUsage::apply`]); returns the report's budget after it.
    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportBudget, LedgerError>;

    /// [`Ledger::record`] for a caller that does not need the budget back (a record sent after
    /// the response, [`deferred`]): a remote ledger can answer it with less.
    async fn record_detached(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<(), LedgerError> {
        self.record(key, call).await.map(drop)
    }

    /// Whether a call's record should follow its response ([`deferred`]): true for a
    /// backend a round trip away. A cloud call is then answered with the budget its
    /// reservation returned, any other with the budget last seen ([`known`]).
    fn defers_records(&self) -> bool {
        false
    }

    /// The cloud requests `client` has reserved today (UTC), all reports together.
    async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError>;

    /// Whether a reservation for the report would find room (a capped backend may refuse new
    /// reports); used to predict routes without reserving.
    fn admits(&self, _key: ReportKey<'_>) -> bool {
        true
    }

    /// Whether the backend answers right now (for health reporting).
    async fn ping(&self) -> Result<(), LedgerError>;

    /// The startup check: warnings to log, or [`LedgerError::Misconfigured`] when the backend
    /// is not one the ledger can use (the gateway then exits 2). An unreachable backend is an
    /// ordinary error: the gateway serves fail-safe until it answers.
    async fn check(&self) -> Result<Vec<String>, LedgerError> {
        self.ping().await.map(|()| Vec::new())
    }

    /// Short backend name for logs: `memory`, `redis`.
    fn backend(&self) -> &'static str;
}

#[derive(Debug, Clone, PartialEq)]
/// The ledger's settings: where it lives and how long a report is remembered.
pub struct LedgerConfig {
    pub url: Option<Secret>,
    pub prefix: String,
    pub timeout: Duration,
    /// Reports the in-memory ledger tracks at most.
    pub max_reports: usize,
    /// A report's entry is forgotten this long after its last use (`VRA_REPORT_TTL_SECS`).
    pub report_ttl: Duration,
    /// A cost hold lives this long past its attempt's deadline (`VRA_HOLD_GRACE_MS`).
    pub hold_grace: Duration,
    /// Replicas that must confirm a reservation before it counts (`VRA_LEDGER_MIN_REPLICAS`;
    /// Redis only).
    pub min_replicas: u32,
}

/// Picks the backend from the configuration: Redis when `VRA_LEDGER_URL` is set. Must run
/// inside the Tokio runtime (the memory ledger starts its TTL sweeper).
pub fn build(config: &LedgerConfig) -> Result<Arc<dyn Ledger>, LedgerError> {
    match &config.url {
        Some(url) => Ok(Arc::new(
            redis::RedisLedger::new(
                url.expose(),
                &config.prefix,
                config.report_ttl,
                config.timeout,
            )?
            .confirmed_by(config.min_replicas)?,
        )),
        None => {
            let ledger = Arc::new(memory::MemoryLedger::with_capacity(
                config.report_ttl,
                config.max_reports,
            ));
            ledger.spawn_sweeper();
            Ok(ledger)
        }
    }
}
