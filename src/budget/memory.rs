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
    CallRecord, HeldCost, HoldSpec, Ledger, LedgerError, Limits, ReportBudget, ReportKey,
    ReportUsage, Reservation, utc_day,
};
use crate::domain::Nanos;

/// The default of `VRA_LEDGER_MAX_REPORTS`.
pub const DEFAULT_MAX_REPORTS: usize = 250_000;

/// Enough shards that one holds a few thousand entries at the default cap, so a sweep step
/// (one shard) holds its lock only briefly.
const SHARDS: usize = 256;

/// One shard: report id → entry.
type Shard = Mutex<HashMap<Box<str>, Entry>>;

#[derive(Debug, Clone)]
struct Entry {
    usage: ReportUsage,
    last_used: Instant,
    /// The cost holds of calls in flight (usually none or one): id, amount, expiry.
    holds: Vec<(u64, Nanos, Instant)>,
    /// The ids of holds settled as expired whose owner has not been heard from since.
    settled: Vec<u64>,
}

/// What ending a hold found ([`Entry::end_hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldEnd {
    /// It was live: it leaves `held`.
    Live,
    /// It had expired and been charged in full: that charge is taken back.
    Expired,
    /// Nothing (no hold, or ended already): nothing changes.
    Unknown,
}

impl Entry {
    /// Settles every hold past its expiry as an abandoned charge ([`ReportUsage::expire`]).
    fn settle_expired(&mut self, now: Instant) {
        let (usage, settled) = (&mut self.usage, &mut self.settled);
        self.holds.retain(|&(id, amount, expires)| {
            let live = expires > now;
            if !live {
                usage.expire(amount);
                settled.push(id);
            }
            live
        });
    }

    /// Ends hold `held`: still live, it leaves `held`; settled as expired (charged in full),
    /// that charge is taken back for the owner's own to replace it; unknown, nothing changes.
    fn end_hold(&mut self, held: HeldCost) -> HoldEnd {
        if held.amount == Nanos::ZERO {
            return HoldEnd::Unknown;
        }
        if let Some(i) = self.holds.iter().position(|&(id, _, _)| id == held.id) {
            self.holds.swap_remove(i);
            self.usage.held = self.usage.held.saturating_sub(held.amount);
            return HoldEnd::Live;
        }
        if let Some(i) = self.settled.iter().position(|&id| id == held.id) {
            self.settled.swap_remove(i);
            self.usage.unexpire(held.amount);
            return HoldEnd::Expired;
        }
        HoldEnd::Unknown
    }

    /// Whether a call may still settle a hold here: the entry must not be forgotten.
    fn holds_live(&self, now: Instant) -> bool {
        self.holds.iter().any(|&(_, _, expires)| expires > now)
    }
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
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, LedgerError> {
        let mut shard = self.shard(report_id);
        let entry = match shard.get_mut(report_id) {
            Some(entry) => entry,
            None => {
                self.admit_new()?;
                shard.entry(report_id.into()).or_insert(Entry {
                    usage: ReportUsage::default(),
                    last_used: now,
                    holds: Vec::new(),
                    settled: Vec::new(),
                })
            }
        };
        entry.settle_expired(now);
        // An expired entry starts over — unless calls still hold part of its cost cap: their
        // releases must find their holds (else other calls' holds would be under-counted).
        if now.saturating_duration_since(entry.last_used) > self.ttl && entry.holds.is_empty() {
            entry.usage = ReportUsage::default();
            entry.settled.clear();
        }
        entry.last_used = now;
        Ok(f(entry))
    }

    /// Synchronous reservation of a report of no particular client.
    pub fn reserve_now(&self, report_id: &str, limit: u32) -> Result<Reservation, LedgerError> {
        self.reserve_at(
            ReportKey::anonymous(report_id),
            Limits::report(limit),
            HoldSpec::NONE,
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
        spec: HoldSpec,
        now: Instant,
        day: u64,
    ) -> Result<Reservation, LedgerError> {
        let hold = spec.amount;
        self.with_entry(&scoped(key), now, |entry| {
            let u = &mut entry.usage;
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
            let mut day_used = None;
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
                day_used = Some(used + 1);
            }
            u.cloud_calls_used += 1;
            u.held = u.held.saturating_add(hold);
            let granted = Reservation::Granted {
                used: u.cloud_calls_used,
                cost: u.cloud_cost,
                held: u.held,
                day_used,
            };
            if hold > Nanos::ZERO {
                let expires = now.checked_add(spec.ttl).unwrap_or(now + self.ttl);
                entry.holds.push((spec.id, hold, expires));
            }
            granted
        })
    }

    /// [`Ledger::release`] as of `now`.
    fn release_at(
        &self,
        key: ReportKey<'_>,
        hold: HeldCost,
        charge: Nanos,
        now: Instant,
    ) -> Result<(), LedgerError> {
        self.with_entry(&scoped(key), now, |e| {
            // A hold ended already is not charged again.
            if e.end_hold(hold) != HoldEnd::Unknown {
                e.usage.release(Nanos::ZERO, charge);
            }
        })
    }

    /// [`Ledger::record`] as of `now`.
    fn record_at(
        &self,
        key: ReportKey<'_>,
        call: &CallRecord,
        now: Instant,
    ) -> Result<ReportBudget, LedgerError> {
        self.with_entry(&scoped(key), now, |e| {
            e.end_hold(call.release);
            e.usage.apply(call);
            e.usage.budget()
        })
    }

    fn days(&self) -> MutexGuard<'_, HashMap<Box<str>, DayCount>> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn day_used(&self, client: &str, day: u64) -> u32 {
        self.days().get(client).map_or(0, |c| c.used_on(day))
    }

    /// The report's usage as of `now`, expired holds settled (a read does not refresh the TTL).
    fn usage_at(&self, report_id: &str, now: Instant) -> ReportUsage {
        let mut shard = self.shard(report_id);
        let Some(e) = shard.get_mut(report_id) else {
            return ReportUsage::default();
        };
        // Expired holds first, then the rule of `with_entry`: idle past the TTL with no hold
        // in flight, the report is gone.
        e.settle_expired(now);
        if now.saturating_duration_since(e.last_used) > self.ttl && e.holds.is_empty() {
            return ReportUsage::default();
        }
        e.usage
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
            now.saturating_duration_since(e.last_used) <= self.ttl || e.holds_live(now)
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
        hold: HoldSpec,
    ) -> Result<Reservation, LedgerError> {
        self.reserve_at(key, limits, hold, Instant::now(), utc_day())
    }

    async fn release(
        &self,
        key: ReportKey<'_>,
        hold: HeldCost,
        charge: Nanos,
    ) -> Result<(), LedgerError> {
        self.release_at(key, hold, charge, Instant::now())
    }

    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
        Ok(self.usage_at(&scoped(key), Instant::now()))
    }

    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportBudget, LedgerError> {
        self.record_at(key, &call, Instant::now())
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
    use crate::budget::{HeldCost, HoldSpec, PhaseTierUsage};
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
        assert_eq!(
            ledger.with_entry("c", later, |e| e.usage.cloud_calls_used),
            Ok(0)
        );
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
        let a = ledger.reserve_at(of("a", "q3"), limits, HoldSpec::NONE, now, day);
        let b = ledger.reserve_at(of("b", "q3"), limits, HoldSpec::NONE, now, day);
        let anonymous =
            ledger.reserve_at(ReportKey::anonymous("q3"), limits, HoldSpec::NONE, now, day);
        for r in [a, b, anonymous] {
            assert_eq!(r, Ok(Reservation::granted(1)));
        }
        assert!(matches!(
            ledger.reserve_at(of("a", "q3"), limits, HoldSpec::NONE, now, day),
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
        let grant = |used, day_used| {
            Ok(Reservation::Granted {
                used,
                cost: Nanos::ZERO,
                held: Nanos::ZERO,
                day_used: Some(day_used),
            })
        };
        // Report r1 takes 2 units of the day, then is refused without touching the day; each
        // grant says the day's count.
        for used in 1..=2 {
            assert_eq!(
                ledger.reserve_at(of("c", "r1"), limits, HoldSpec::NONE, now, day),
                grant(used, used)
            );
        }
        assert!(matches!(
            ledger.reserve_at(of("c", "r1"), limits, HoldSpec::NONE, now, day),
            Ok(Reservation::Refused { .. })
        ));
        assert_eq!(ledger.day_used("c", day), 2);
        // Report r2 takes the last unit of the day; then the quota refuses without a unit of r2.
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, HoldSpec::NONE, now, day),
            grant(1, 3)
        );
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, HoldSpec::NONE, now, day),
            Ok(Reservation::DayQuotaSpent { used: 3, limit: 3 })
        );
        let r2 = ledger.usage_at(&scoped(of("c", "r2")), now);
        assert_eq!((r2.cloud_calls_used, r2.exhausted), (1, false));
        // Another client's day is its own; the next UTC day starts from zero.
        assert_eq!(
            ledger.reserve_at(of("d", "r2"), limits, HoldSpec::NONE, now, day),
            grant(1, 1)
        );
        assert_eq!(
            ledger.reserve_at(of("c", "r2"), limits, HoldSpec::NONE, now, day + 1),
            grant(2, 1)
        );
        assert_eq!(ledger.day_used("c", day + 1), 1);
        // A reservation that read the old day just before midnight, but got the lock after
        // the new day began, counts in the new day and leaves its count intact.
        assert_eq!(
            ledger.reserve_at(of("c", "r3"), limits, HoldSpec::NONE, now, day),
            grant(1, 2)
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
                                    HoldSpec::NONE,
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
            release: HeldCost::NONE,
            cached: false,
        };
        ledger
            .with_entry("r", Instant::now(), |e| {
                let u = &mut e.usage;
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
        let reserve = |id, amount| ledger.reserve_at(key, limits, hold(id, amount), now, day);
        assert!(matches!(
            reserve(1, 400),
            Ok(Reservation::Granted { used: 1, .. })
        ));
        assert!(matches!(
            reserve(2, 400),
            Ok(Reservation::Granted { used: 2, .. })
        ));
        // 800 held: another 400 does not fit (nothing taken, the report not marked), 200 does.
        let usage = ledger.usage_at("capped", now);
        assert_eq!((usage.held, usage.cloud_cost), (Nanos(800), Nanos::ZERO));
        assert!(!usage.is_spent(limits));
        assert_eq!(reserve(9, 400), Ok(Reservation::NoRoomUnderCap { used: 2 }));
        assert!(!ledger.usage_at("capped", now).exhausted);
        assert!(matches!(
            reserve(3, 200),
            Ok(Reservation::Granted { used: 3, .. })
        ));
        assert_eq!(reserve(9, 1), Ok(Reservation::NoRoomUnderCap { used: 3 }));
        // Settling: one answered for 150, one failed (charged 0), one dropped (charged in full).
        ledger
            .record_at(key, &answered(held(1, 400), 150), now)
            .unwrap();
        ledger
            .release_at(key, held(2, 400), Nanos::ZERO, now)
            .unwrap();
        ledger
            .release_at(key, held(3, 200), Nanos(200), now)
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
        for (report, amount) in [("held", 600), ("idle", 0)] {
            ledger
                .reserve_at(
                    ReportKey::anonymous(report),
                    limits,
                    hold(1, amount),
                    start,
                    1,
                )
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
            ledger.reserve_at(ReportKey::anonymous("held"), limits, hold(2, 600), later, 1),
            Ok(Reservation::NoRoomUnderCap { used: 1 })
        );
    }

    /// A hold of `amount` with id `id`, living an hour.
    fn hold(id: u64, amount: u64) -> HoldSpec {
        HoldSpec {
            id,
            amount: Nanos(amount),
            ttl: Duration::from_secs(3600),
        }
    }

    fn held(id: u64, amount: u64) -> HeldCost {
        HeldCost {
            id,
            amount: Nanos(amount),
        }
    }

    /// An answered cloud call costing `cost`, settling `release`.
    fn answered(release: HeldCost, cost: u64) -> CallRecord {
        CallRecord {
            id: release.id,
            tier: Tier::Primary,
            fell_back: false,
            cloud: true,
            phase: Phase::Refine,
            usage: TokenUsage::reported(10, 10),
            cost: Some(Nanos(cost)),
            all_cloud: Some(Nanos(cost)),
            release,
            cached: false,
        }
    }

    /// A hold whose call never settles it (its replica died) is settled at its expiry — by the
    /// next reservation or read — as an abandoned charge of its full amount, so the report's
    /// holds are what live calls hold; a late record or release corrects the charge; and an
    /// idle report whose holds all expired can be forgotten.
    #[test]
    fn an_expired_hold_is_charged_as_abandoned_and_a_late_settling_corrects_it() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let limits = Limits {
            report: 100,
            client_day: None,
            cost_cap: Some(Nanos(1_000)),
        };
        let key = ReportKey::anonymous("orphaned");
        let start = Instant::now();
        let short = |id, amount| HoldSpec {
            ttl: Duration::from_secs(10),
            ..hold(id, amount)
        };
        ledger
            .reserve_at(key, limits, short(1, 600), start, 1)
            .unwrap();
        ledger
            .reserve_at(key, limits, short(2, 300), start, 1)
            .unwrap();
        let before = ledger.usage_at("orphaned", start + Duration::from_secs(9));
        assert_eq!((before.held, before.cloud_cost), (Nanos(900), Nanos::ZERO));
        let after = start + Duration::from_secs(11);
        let u = ledger.usage_at("orphaned", after);
        assert_eq!(
            (u.held, u.cloud_cost, u.abandoned),
            (Nanos::ZERO, Nanos(900), Nanos(900))
        );
        // The cap counts them as spent: 900 + 200 > 1000, 100 fits.
        assert_eq!(
            ledger.reserve_at(key, limits, hold(3, 200), after, 1),
            Ok(Reservation::NoRoomUnderCap { used: 2 })
        );
        // The first call's record arrives late: its real cost (150) replaces the 600 charged.
        ledger
            .record_at(key, &answered(held(1, 600), 150), after)
            .unwrap();
        let u = ledger.usage_at("orphaned", after);
        assert_eq!(
            (u.held, u.cloud_cost, u.abandoned),
            (Nanos::ZERO, Nanos(450), Nanos(300))
        );
        // The second's release says the upstream cannot have billed it: nothing is charged.
        ledger
            .release_at(key, held(2, 300), Nanos::ZERO, after)
            .unwrap();
        let u = ledger.usage_at("orphaned", after);
        assert_eq!((u.cloud_cost, u.abandoned), (Nanos(150), Nanos::ZERO));
        // A copy of that release, or a release of a hold never taken, changes nothing.
        for id in [2, 99] {
            ledger
                .release_at(key, held(id, 300), Nanos(300), after)
                .unwrap();
        }
        let u = ledger.usage_at("orphaned", after);
        assert_eq!((u.cloud_cost, u.abandoned), (Nanos(150), Nanos::ZERO));
        // Idle past the report TTL with no live hold: a read finds it gone, the sweep forgets it.
        assert_eq!(
            ledger.usage_at("orphaned", after + Duration::from_secs(120)),
            ReportUsage::default()
        );
        assert_eq!(ledger.sweep(after + Duration::from_secs(120)), 1);
    }
}
