//! In-process ledger: sharded maps behind short-lived mutexes.
//!
//! A reservation is one lock of one shard, a lookup and an increment — no `.await` while the
//! lock is held, so it is atomic with respect to every other task.
//!
//! Memory is bounded twice. By time: an entry unused for `VRA_REPORT_TTL_SECS` is treated as
//! absent and removed by a periodic sweep ([`MemoryLedger::spawn_sweeper`]), one shard at a
//! time, which also gives freed capacity back. By count: at most `VRA_LEDGER_MAX_REPORTS`
//! reports are tracked; when full, a *new* report's reservation fails with
//! [`LedgerError::Full`] — the pipeline treats that like an unreachable ledger and serves the
//! call locally (`LEDGER_UNAVAILABLE`), never over budget — while known reports keep working.
//! Nothing live is ever evicted: that would reset its budget.
//!
//! A client's report is stored under `client|report` (neither id may contain `|`), and the
//! clients' day counters live in one more small map — its size is bounded by the clients
//! file, since client ids never come from requests. A reservation with a day quota holds the
//! report's shard lock and then the day map's lock (always in that order), so both units are
//! taken in one critical section.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    CallRecord, Ledger, LedgerError, Limits, ReportBudget, ReportKey, ReportUsage, Reservation,
    utc_day,
};
use crate::domain::Nanos;

/// The default of `VRA_LEDGER_MAX_REPORTS`.
pub const DEFAULT_MAX_REPORTS: usize = 250_000;

/// Enough shards that one holds a few thousand entries at the default cap, so a sweep step
/// (one shard) holds its lock only briefly.
const SHARDS: usize = 256;

/// One shard: report id → entry.
type Shard = Mutex<HashMap<Box<str>, Entry>>;

#[derive(Debug, Clone, Copy)]
struct Entry {
    usage: ReportUsage,
    last_used: Instant,
}

/// A client's cloud requests on one UTC day.
#[derive(Debug, Clone, Copy, Default)]
struct DayCount {
    day: u64,
    used: u32,
}

impl DayCount {
    fn used_on(&self, day: u64) -> u32 {
        if self.day == day { self.used } else { 0 }
    }
}

/// The key of a report in the shards: `client|report`, or the bare report id.
fn scoped(key: ReportKey<'_>) -> Cow<'_, str> {
    match key.client {
        Some(client) => Cow::Owned(format!("{client}|{}", key.report)),
        None => Cow::Borrowed(key.report),
    }
}

/// Budget state of one process.
pub struct MemoryLedger {
    shards: Box<[Shard]>,
    hasher: RandomState,
    ttl: Duration,
    max_reports: usize,
    /// Entries across all shards; never above `max_reports`.
    tracked: AtomicUsize,
    /// Client id → its cloud requests today. Locked after a shard, never before.
    days: Mutex<HashMap<Box<str>, DayCount>>,
}

impl MemoryLedger {
    /// A ledger with the default cap of `VRA_LEDGER_MAX_REPORTS`.
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, DEFAULT_MAX_REPORTS)
    }

    /// Whether a reservation for `report_id` would find room: it is tracked already, or the
    /// cap has room for one more.
    pub fn admits(&self, report_id: &str) -> bool {
        self.tracked.load(Ordering::Acquire) < self.max_reports
            || self.shard(report_id).contains_key(report_id)
    }

    /// A ledger that tracks at most `max_reports` reports.
    pub fn with_capacity(ttl: Duration, max_reports: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            ttl,
            max_reports,
            tracked: AtomicUsize::new(0),
            days: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one slot of the cap for a new entry, exactly (no overshoot under contention).
    fn admit_new(&self) -> Result<(), LedgerError> {
        self.tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_reports).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| LedgerError::Full(self.max_reports))
    }

    fn shard(&self, report_id: &str) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        let idx = (self.hasher.hash_one(report_id) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-update of plain counters;
        // the data is still consistent enough to keep serving.
        self.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the live entry of `report_id`, creating (or resetting an expired) one; a
    /// new entry needs a slot of the cap.
    fn with_entry<T>(
        &self,
        report_id: &str,
        now: Instant,
        f: impl FnOnce(&mut ReportUsage) -> T,
    ) -> Result<T, LedgerError> {
        let mut shard = self.shard(report_id);
        let entry = match shard.get_mut(report_id) {
            Some(entry) => entry,
            None => {
                self.admit_new()?;
                shard.entry(report_id.into()).or_insert(Entry {
                    usage: ReportUsage::default(),
                    last_used: now,
                })
            }
        };
        // An expired entry starts over — unless calls still hold part of its cost cap: their
        // releases must find their holds (else other calls' holds would be under-counted).
        if now.saturating_duration_since(entry.last_used) > self.ttl
            && entry.usage.held == Nanos::ZERO
        {
            entry.usage = ReportUsage::default();
        }
        entry.last_used = now;
        Ok(f(&mut entry.usage))
    }

    /// Synchronous reservation of a report of no particular client.
    pub fn reserve_now(&self, report_id: &str, limit: u32) -> Result<Reservation, LedgerError> {
        self.reserve_at(
            ReportKey::anonymous(report_id),
            Limits::report(limit),
            Nanos::ZERO,
            Instant::now(),
            utc_day(),
        )
    }

    /// The whole atomic step, as of `now` and UTC day `day`: the report's shard lock, and
    /// inside it the day map's lock when the client has a quota.
    fn reserve_at(
        &self,
        key: ReportKey<'_>,
        limits: Limits,
        hold: Nanos,
        now: Instant,
        day: u64,
    ) -> Result<Reservation, LedgerError> {
        self.with_entry(&scoped(key), now, |u| {
            if u.exhausted || u.cloud_calls_used >= limits.report {
                let newly = !u.exhausted;
                u.exhausted = true;
                return Reservation::Refused {
                    used: u.cloud_calls_used,
                    newly,
                };
            }
            let over_cost = limits
                .cost_cap
                .is_some_and(|cap| u.cloud_cost.saturating_add(u.held).saturating_add(hold) > cap);
            if over_cost {
                return Reservation::NoRoomUnderCap {
                    used: u.cloud_calls_used,
                };
            }
            if let (Some(client), Some(limit)) = (key.client, limits.client_day) {
                let mut days = self.days();
                let count = days.entry(client.into()).or_default();
                // `day` was read before the locks: a reservation that read the old day can
                // get here after one that started the new day, and must count in the new one
                // (never reset it to the old).
                let day = day.max(count.day);
                let used = count.used_on(day);
                if used >= limit {
                    return Reservation::DayQuotaSpent { used, limit };
                }
                *count = DayCount {
                    day,
                    used: used + 1,
                };
            }
            u.cloud_calls_used += 1;
            u.held = u.held.saturating_add(hold);
            Reservation::Granted {
                used: u.cloud_calls_used,
                cost: u.cloud_cost,
                held: u.held,
            }
        })
    }

    fn days(&self) -> MutexGuard<'_, HashMap<Box<str>, DayCount>> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn day_used(&self, client: &str, day: u64) -> u32 {
        self.days().get(client).map_or(0, |c| c.used_on(day))
    }

    fn usage_at(&self, report_id: &str, now: Instant) -> ReportUsage {
        let shard = self.shard(report_id);
        match shard.get(report_id) {
            Some(e)
                if now.saturating_duration_since(e.last_used) <= self.ttl
                    || e.usage.held > Nanos::ZERO =>
            {
                e.usage
            }
            _ => ReportUsage::default(),
        }
    }

    /// Removes entries idle for longer than the TTL as of `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        (0..SHARDS).map(|i| self.sweep_shard(i, now)).sum()
    }

    /// One bounded step of the sweep: one shard, under its lock only for this step. Capacity
    /// the shard no longer needs is given back to the allocator.
    fn sweep_shard(&self, index: usize, now: Instant) -> usize {
        let mut map = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, e| {
            now.saturating_duration_since(e.last_used) <= self.ttl || e.usage.held > Nanos::ZERO
        });
        let removed = before - map.len();
        // Under the lock, so the count never lags behind the entries that really exist.
        self.tracked.fetch_sub(removed, Ordering::AcqRel);
        if map.capacity() > 2 * map.len() + 16 {
            map.shrink_to_fit();
        }
        removed
    }

    /// Number of tracked reports (expired but not yet swept ones included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sweeps expired entries every `min(ttl, 60 s)` until the ledger is dropped, one shard
    /// per step, yielding between steps so no worker is held up for long.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = self
            .ttl
            .min(Duration::from_secs(60))
            .max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                for index in 0..SHARDS {
                    let Some(ledger) = weak.upgrade() else { return };
                    ledger.sweep_shard(index, now);
                    drop(ledger);
                    tokio::task::yield_now().await;
                }
            }
        });
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(
        &self,
        key: ReportKey<'_>,
        limits: Limits,
        hold: Nanos,
    ) -> Result<Reservation, LedgerError> {
        self.reserve_at(key, limits, hold, Instant::now(), utc_day())
    }

    async fn release(
        &self,
        key: ReportKey<'_>,
        hold: Nanos,
        charge: Nanos,
    ) -> Result<(), LedgerError> {
        self.with_entry(&scoped(key), Instant::now(), |u| u.release(hold, charge))
    }

    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
        Ok(self.usage_at(&scoped(key), Instant::now()))
    }

    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportBudget, LedgerError> {
        self.with_entry(&scoped(key), Instant::now(), |u| {
            u.apply(&call);
            u.budget()
        })
    }

    async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError> {
        Ok(self.day_used(client, utc_day()))
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        Ok(())
    }

    fn admits(&self, key: ReportKey<'_>) -> bool {
        MemoryLedger::admits(self, &scoped(key))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::PhaseTierUsage;
    use crate::domain::{Phase, Tier, TokenUsage};

    #[test]
    fn grants_exactly_the_limit_then_pins_exhausted() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        for i in 1..=3 {
            assert_eq!(ledger.reserve_now("r", 3).unwrap(), Reservation::granted(i));
        }
        assert_eq!(
            ledger.reserve_now("r", 3).unwrap(),
            Reservation::Refused {
                used: 3,
                newly: true
            }
        );
        // Exhaustion is sticky even if the limit were raised for later calls.
        assert_eq!(
            ledger.reserve_now("r", 10).unwrap(),
            Reservation::Refused {
                used: 3,
                newly: false
            }
        );
        assert!(ledger.usage_at("r", Instant::now()).exhausted);
        assert_eq!(
            ledger.reserve_now("other", 3).unwrap(),
            Reservation::granted(1)
        );
    }

    #[test]
    fn zero_limit_refuses_at_once() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        assert_eq!(
            ledger.reserve_now("r", 0).unwrap(),
            Reservation::Refused {
                used: 0,
                newly: true
            }
        );
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let ledger = Arc::new(MemoryLedger::new(Duration::from_secs(60)));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| {
                            matches!(l.reserve_now("hot", 15), Ok(Reservation::Granted { .. }))
                        })
                        .count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 15);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let ledger = MemoryLedger::new(Duration::from_secs(10));
        ledger.reserve_now("r", 5).unwrap();
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(ledger.usage_at("r", later), ReportUsage::default());
        assert_eq!(ledger.sweep(Instant::now()), 0);
        assert_eq!(ledger.sweep(later), 1);
        assert!(ledger.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_forgets_a_report_idle_for_its_ttl() {
        let ledger = Arc::new(MemoryLedger::new(Duration::from_secs(10)));
        ledger.spawn_sweeper();
        ledger.reserve_now("r", 5).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        ledger.reserve_now("r", 5).unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(ledger.len(), 1, "used 9 s ago: kept");
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(ledger.is_empty(), "idle for more than its TTL: swept");
    }

    #[test]
    fn a_full_ledger_refuses_new_reports_but_serves_known_ones() {
        let ledger = MemoryLedger::with_capacity(Duration::from_secs(10), 2);
        ledger.reserve_now("a", 5).unwrap();
        ledger.reserve_now("b", 5).unwrap();
        assert_eq!(ledger.reserve_now("c", 5), Err(LedgerError::Full(2)));
        assert!(ledger.admits("a") && !ledger.admits("c"));
        assert_eq!(ledger.len(), 2, "nothing live was evicted");
        assert_eq!(ledger.reserve_now("a", 5), Ok(Reservation::granted(2)));
        // Once the sweep frees a slot, new reports are welcome again.
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(ledger.sweep(later), 2);
        assert_eq!(ledger.with_entry("c", later, |u| u.cloud_calls_used), Ok(0));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn the_cap_is_exact_under_contention() {
        let ledger = Arc::new(MemoryLedger::with_capacity(Duration::from_secs(60), 100));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| l.reserve_now(&format!("{t}-{i}"), 1).is_ok())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 100);
        assert_eq!(ledger.len(), 100);
    }

    fn of<'a>(client: &'a str, report: &'a str) -> ReportKey<'a> {
        ReportKey {
            client: Some(client),
            report,
        }
    }

    #[test]
    fn clients_have_separate_reports_of_the_same_id() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let (now, day) = (Instant::now(), 20_000);
        let limits = Limits::report(1);
        let a = ledger.reserve_at(of("a", "q3"), limits, Nanos::ZERO, now, day);
        let b = ledger.reserve_at(of("b", "q3"), limits, Nanos::ZERO, now, day);
        let anonymous =
            ledger.reserve_at(ReportKey::anonymous("q3"), limits, Nanos::ZERO, now, day);
        for r in [a, b, anonymous] {
            assert_eq!(r, Ok(Reservation::granted(1)));
        }
        assert!(matches!(
            ledger.reserve_at(of("a", "q3"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::Refused { used: 1, .. })
        ));
        assert_eq!(
            ledger
                .usage_at(&scoped(of("b", "q3")), now)
                .cloud_calls_used,
            1
        );
        assert!(!ledger.usage_at(&scoped(of("b", "q3")), now).exhausted);
    }

    #[test]
    fn the_day_quota_and_the_report_budget_never_spend_each_other() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let (now, day) = (Instant::now(), 20_000);
        let limits = Limits {
            report: 2,
            client_day: Some(3),
            cost_cap: None,
        };
        // Report r1 takes 2 units of the day, then is refused without touching the day.
        for used in 1..=2 {
            assert_eq!(
                ledger.reserve_at(of("c", "r1"), limits, Nanos::ZERO, now, day),
                Ok(Reservation::granted(used))
            );
        }
        assert!(matches!(
            ledger.reserve_at(of("c", "r1"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::Refused { .. })
        ));
        assert_eq!(ledger.day_used("c", day), 2);
        // Report r2 takes the last unit of the day; then the quota refuses without a unit of r2.
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::granted(1))
        );
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::DayQuotaSpent { used: 3, limit: 3 })
        );
        let r2 = ledger.usage_at(&scoped(of("c", "r2")), now);
        assert_eq!((r2.cloud_calls_used, r2.exhausted), (1, false));
        // Another client's day is its own; the next UTC day starts from zero.
        assert_eq!(
            ledger.reserve_at(of("d", "r2"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::granted(1))
        );
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, Nanos::ZERO, now, day + 1),
            Ok(Reservation::granted(2))
        );
        assert_eq!(ledger.day_used("c", day + 1), 1);
        // A reservation that read the old day just before midnight, but got the lock after
        // the new day began, counts in the new day and leaves its count intact.
        assert_eq!(
            ledger.reserve_at(of("c", "r3"), limits, Nanos::ZERO, now, day),
            Ok(Reservation::granted(1))
        );
        assert_eq!(ledger.day_used("c", day + 1), 2);
    }

    #[test]
    fn the_day_quota_is_exact_under_contention() {
        let ledger = Arc::new(MemoryLedger::new(Duration::from_secs(60)));
        let limits = Limits {
            report: 1000,
            client_day: Some(37),
            cost_cap: None,
        };
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|i| {
                            let report = format!("r{}", (t * 50 + i) % 7);
                            matches!(
                                l.reserve_at(
                                    of("c", &report),
                                    limits,
                                    Nanos::ZERO,
                                    Instant::now(),
                                    1
                                ),
                                Ok(Reservation::Granted { .. })
                            )
                        })
                        .count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 37);
        assert_eq!(ledger.day_used("c", 1), 37);
    }

    #[test]
    fn records_split_by_tier_phase_and_cost() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let call = |tier, fell_back, cloud, phase, cost| CallRecord {
            id: 1,
            tier,
            fell_back,
            cloud,
            phase,
            usage: TokenUsage::reported(10, 5),
            cost,
            all_cloud: Some(Nanos(100)),
            release: Nanos::ZERO,
        };
        ledger
            .with_entry("r", Instant::now(), |u| {
                u.apply(&call(
                    Tier::Primary,
                    false,
                    true,
                    Phase::Draft,
                    Some(Nanos(100)),
                ));
                u.apply(&call(
                    Tier::Secondary,
                    true,
                    false,
                    Phase::Refine,
                    Some(Nanos(3)),
                ));
                u.apply(&call(Tier::Secondary, false, false, Phase::Expand, None));
            })
            .unwrap();
        let u = ledger.usage_at("r", Instant::now());
        assert_eq!((u.primary_calls, u.secondary_calls, u.fallbacks), (1, 2, 1));
        assert_eq!((u.cloud_input_tokens, u.cloud_output_tokens), (10, 5));
        assert_eq!((u.local_input_tokens, u.local_output_tokens), (20, 10));
        assert_eq!((u.cloud_cost, u.local_cost), (Nanos(100), Nanos(3)));
        assert_eq!((u.all_cloud, u.unpriced_calls), (Nanos(300), 1));
        let cell = |phase, tier| *u.cell(phase, tier);
        assert_eq!(cell(Phase::Draft, Tier::Primary).calls, 1);
        assert_eq!(cell(Phase::Refine, Tier::Secondary).cost, Nanos(3));
        assert_eq!(cell(Phase::Expand, Tier::Secondary).output_tokens, 5);
        assert_eq!(
            cell(Phase::Refine, Tier::Primary),
            PhaseTierUsage::default()
        );
    }

    /// The dollar cap: a hold must fit beside the settled cost and the other holds; settling
    /// frees what the call did not spend; a refusal marks the report exhausted.
    #[test]
    fn holds_fit_under_the_cost_cap_and_settle_to_the_actual_cost() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let (now, day) = (Instant::now(), 1);
        let limits = Limits {
            report: 100,
            client_day: None,
            cost_cap: Some(Nanos(1_000)),
        };
        let key = ReportKey::anonymous("capped");
        let reserve = |hold| ledger.reserve_at(key, limits, Nanos(hold), now, day);
        assert!(matches!(
            reserve(400),
            Ok(Reservation::Granted { used: 1, .. })
        ));
        assert!(matches!(
            reserve(400),
            Ok(Reservation::Granted { used: 2, .. })
        ));
        // 800 held: another 400 does not fit (nothing taken, the report not marked), 200 does.
        let usage = ledger.usage_at("capped", now);
        assert_eq!((usage.held, usage.cloud_cost), (Nanos(800), Nanos::ZERO));
        assert!(!usage.is_spent(limits));
        assert_eq!(reserve(400), Ok(Reservation::NoRoomUnderCap { used: 2 }));
        assert!(!ledger.usage_at("capped", now).exhausted);
        assert!(matches!(
            reserve(200),
            Ok(Reservation::Granted { used: 3, .. })
        ));
        assert_eq!(reserve(1), Ok(Reservation::NoRoomUnderCap { used: 3 }));
        // Settling: one answered for 150, one failed (charged 0).
        ledger
            .with_entry("capped", now, |u| {
                u.apply(&CallRecord {
                    id: 1,
                    tier: Tier::Primary,
                    fell_back: false,
                    cloud: true,
                    phase: Phase::Refine,
                    usage: TokenUsage::reported(10, 10),
                    cost: Some(Nanos(150)),
                    all_cloud: Some(Nanos(150)),
                    release: Nanos(400),
                });
                u.release(Nanos(400), Nanos::ZERO);
                u.release(Nanos(200), Nanos(200));
            })
            .unwrap();
        let usage = ledger.usage_at("capped", now);
        assert_eq!((usage.held, usage.cloud_cost), (Nanos::ZERO, Nanos(350)));
        assert_eq!(usage.abandoned, Nanos(200));
        // Exactly at the cap is spent.
        let at_cap = Limits {
            cost_cap: Some(Nanos(150)),
            ..limits
        };
        let fresh = ReportUsage {
            cloud_cost: Nanos(150),
            ..ReportUsage::default()
        };
        assert!(fresh.is_spent(at_cap));
        assert!(!fresh.is_spent(limits));
    }

    /// An entry past its TTL that still has holds in flight is neither reset nor swept: the
    /// holds' releases must find them.
    #[test]
    fn expiry_keeps_reports_with_holds_in_flight() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let limits = Limits {
            report: 100,
            client_day: None,
            cost_cap: Some(Nanos(1_000)),
        };
        let start = Instant::now();
        let later = start + Duration::from_secs(120);
        for (report, hold) in [("held", 600), ("idle", 0)] {
            ledger
                .reserve_at(ReportKey::anonymous(report), limits, Nanos(hold), start, 1)
                .unwrap();
        }
        assert_eq!(
            ledger.sweep(later),
            1,
            "only the report without holds expires"
        );
        assert_eq!(ledger.usage_at("held", later).held, Nanos(600));
        // A new call on the old entry still sees the hold: 600 + 600 > 1000.
        assert_eq!(
            ledger.reserve_at(ReportKey::anonymous("held"), limits, Nanos(600), later, 1),
            Ok(Reservation::NoRoomUnderCap { used: 1 })
        );
    }
}
