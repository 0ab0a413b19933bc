//! Records sent after the response.
//!
//! Budget correctness needs only the reservation: it is the one atomic step that decides
//! whether a cloud request may go out. A call's record (its tokens, cost and counters, and the
//! settling of its cost hold) can follow the response. On a remote ledger
//! ([`Ledger::defers_records`]) every answer therefore goes out before its record, which is
//! sent in the background: a cloud call shows the budget its reservation returned (one Redis
//! round trip before the response instead of two), a local answer the budget last seen on this
//! replica ([`super::known`]) — so no answer waits for its record on a ledger that is down (a
//! cloud-routed call still waits for its reservation, bounded by the ledger timeout).
//!
//! What is promised in exchange:
//!
//! - **Applied once, retried until confirmed.** Every record carries a random id
//!   ([`CallRecord::id`]) and the ledger applies an id at most once (Redis: a marker key set
//!   in the same script). So a record is sent again after *any* transient failure
//!   ([`LedgerError::is_transient`]) — a refused connection, a timeout, a dropped connection,
//!   Redis restarting — [`RETRIES`] times with jittered backoff (4.1 s of waits, plus the sends'
//!   own timeouts: [`retry_window`], about 5 s with the default 200 ms, enough for a Redis
//!   restart): a copy of a record that did land changes nothing, so no call is counted twice
//!   and no hold released twice (which would let a report overspend its cap). The marker lives
//!   twice that window. An error that asking again would only repeat (a script error) ends it.
//! - **Never lost silently.** A record still unconfirmed after its retries is handed to the
//!   caller of [`record_in_background`], which the gateway logs and counts
//!   (`vra_gateway_ledger_records_lost_total`). Its hold expires and is charged in full as
//!   abandoned (the safe direction). "Unconfirmed" is not always "lost": a copy queued behind a Redis
//!   that was paused lands when Redis resumes — once.
//! - **Read your own calls** on one replica: [`Pending::settled`] waits until every record of
//!   a report this replica has started is done, and every usage read of the gateway
//!   (`GetReportUsage`, `ResolveRoute`) waits for it first — during a Redis outage, up to a
//!   record's [`retry_window`]. Another replica sees a call once its
//!   record lands, normally within a round trip of the response.
//! - **Nothing dropped at shutdown**: the server waits for [`Pending::idle`] (bounded by the
//!   grace period) after the last call.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{CallRecord, Ledger, LedgerError, ReportKey};

/// Retries of a record that failed (the first send not counted).
pub const RETRIES: u32 = 4;

/// The longest wait between two sends of a record.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The wait before retry `n` (1-based): 100 ms, 400 ms, 1.6 s, then 2 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(100 << (2 * (n - 1)).min(8)).min(MAX_BACKOFF)
}

/// The longest time from a record's first send to the end of its last copy, when each send
/// may take `timeout`: every send, every (jittered) wait between them.
pub fn retry_window(timeout: Duration) -> Duration {
    let waits: Duration = (1..=RETRIES)
        .map(|n| backoff(n).mul_f64(1.0 + JITTER))
        .sum();
    timeout.saturating_mul(RETRIES + 1).saturating_add(waits)
}

/// Waits are stretched by up to this share, at random, so replicas that lost Redis together do
/// not all send again at the same moment.
const JITTER: f64 = 0.25;

/// The records in flight, by report, each with its sequence number.
#[derive(Default)]
pub struct Pending {
    by_report: Mutex<HashMap<String, BTreeSet<u64>>>,
    /// The next record's sequence number (one sequence for every report).
    next: AtomicU64,
    changed: Notify,
}

/// One record in flight; dropping it (the record is done, or its task was dropped) ends it.
pub struct Tracked {
    pending: Arc<Pending>,
    key: String,
    seq: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut map = self.pending.map();
        if let Some(records) = map.get_mut(&self.key) {
            records.remove(&self.seq);
            if records.is_empty() {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.pending.changed.notify_waiters();
    }
}

impl Pending {
    fn map(&self) -> MutexGuard<'_, HashMap<String, BTreeSet<u64>>> {
        self.by_report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one record of `key` in flight until the returned guard is dropped.
    pub fn track(self: &Arc<Self>, key: ReportKey<'_>) -> Tracked {
        let key = key.owned();
        let mut map = self.map();
        // Taken under the lock, so a record's number and its entry appear together.
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        map.entry(key.clone()).or_default().insert(seq);
        drop(map);
        Tracked {
            pending: self.clone(),
            key,
            seq,
        }
    }

    /// Records of `key` in flight now.
    pub fn of(&self, key: ReportKey<'_>) -> usize {
        self.map().get(&key.owned()).map_or(0, BTreeSet::len)
    }

    /// Resolves once every record of `key` started before this call is done. Records started
    /// later do not hold it up, so a report with calls answered without pause is still read;
    /// each record is bounded (its retries and the ledger timeout), so the wait is too.
    pub async fn settled(&self, key: ReportKey<'_>) {
        let key = key.owned();
        let before = {
            let _map = self.map();
            self.next.load(Ordering::Relaxed)
        };
        self.wait_until(|map| {
            map.get(&key)
                .and_then(|records| records.first())
                .is_none_or(|&oldest| oldest >= before)
        })
        .await;
    }

    /// Resolves once no record at all is in flight.
    pub async fn idle(&self) {
        self.wait_until(HashMap::is_empty).await;
    }

    async fn wait_until(&self, done: impl Fn(&HashMap<String, BTreeSet<u64>>) -> bool) {
        loop {
            // Registered before the check, so a change between the two is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.map()) {
                return;
            }
            changed.await;
        }
    }
}

/// Sends `call` to `ledger`, again after each transient failure (the ledger applies its id
/// once); returns the last error.
pub async fn record_with_retry(
    ledger: &dyn Ledger,
    key: ReportKey<'_>,
    call: CallRecord,
) -> Result<(), LedgerError> {
    let mut retry = 0;
    loop {
        match ledger.record_detached(key, call).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && retry < RETRIES => {
                retry += 1;
                let wait = backoff(retry).mul_f64(1.0 + JITTER * rand::random::<f64>());
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Records `call` in a task of its own, tracked in `pending` until it is done; `on_error`
/// gets the error of a record that could not be made.
pub fn record_in_background(
    ledger: Arc<dyn Ledger>,
    pending: &Arc<Pending>,
    client: Option<Box<str>>,
    report: Box<str>,
    call: CallRecord,
    on_error: impl FnOnce(LedgerError) + Send + 'static,
) {
    let tracked = pending.track(ReportKey {
        client: client.as_deref(),
        report: &report,
    });
    tokio::spawn(async move {
        let key = ReportKey {
            client: client.as_deref(),
            report: &report,
        };
        if let Err(e) = record_with_retry(&*ledger, key, call).await {
            on_error(e);
        }
        drop(tracked);
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::budget::{HeldCost, HoldSpec, Limits, ReportBudget, ReportUsage, Reservation};
    use crate::domain::{Nanos, Phase, Tier, TokenUsage};

    /// A ledger whose records fail with the given errors, in order, then succeed.
    struct Flaky {
        errors: Mutex<Vec<LedgerError>>,
        records: AtomicU32,
    }

    impl Flaky {
        fn new(mut errors: Vec<LedgerError>) -> Self {
            errors.reverse();
            Self {
                errors: Mutex::new(errors),
                records: AtomicU32::new(0),
            }
        }
    }

    #[async_trait]
    impl Ledger for Flaky {
        async fn reserve(
            &self,
            _: ReportKey<'_>,
            _: Limits,
            _: HoldSpec,
        ) -> Result<Reservation, LedgerError> {
            unreachable!()
        }
        async fn release(
            &self,
            _: ReportKey<'_>,
            _: HeldCost,
            _: Nanos,
        ) -> Result<(), LedgerError> {
            unreachable!()
        }
        async fn usage(&self, _: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
            unreachable!()
        }
        async fn record(
            &self,
            _: ReportKey<'_>,
            _: CallRecord,
        ) -> Result<ReportBudget, LedgerError> {
            self.records.fetch_add(1, Ordering::SeqCst);
            match self.errors.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(ReportBudget::default()),
            }
        }
        async fn client_day_used(&self, _: &str) -> Result<u32, LedgerError> {
            unreachable!()
        }
        async fn ping(&self) -> Result<(), LedgerError> {
            Ok(())
        }
        fn backend(&self) -> &'static str {
            "flaky"
        }
    }

    fn call() -> CallRecord {
        CallRecord {
            id: 7,
            tier: Tier::Primary,
            fell_back: false,
            cloud: true,
            phase: Phase::Refine,
            usage: TokenUsage::reported(3, 4),
            cost: Some(Nanos(10)),
            all_cloud: Some(Nanos(10)),
            release: HeldCost {
                id: 9,
                amount: Nanos(100),
            },
            cached: false,
        }
    }

    fn unsent() -> LedgerError {
        LedgerError::Unavailable("connection refused".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_is_sent_again_after_any_transient_failure() {
        let key = ReportKey::anonymous("r");
        let ambiguous = || LedgerError::Timeout(200);
        let dropped = || LedgerError::Unavailable("connection failed".into());
        let ledger = Flaky::new(vec![unsent(), ambiguous(), dropped()]);
        assert_eq!(record_with_retry(&ledger, key, call()).await, Ok(()));
        assert_eq!(ledger.records.load(Ordering::SeqCst), 4);
        // Bounded: the failure after the last retry is the answer.
        let ledger = Flaky::new(vec![ambiguous(); 1 + RETRIES as usize]);
        assert_eq!(
            record_with_retry(&ledger, key, call()).await,
            Err(ambiguous())
        );
        assert_eq!(ledger.records.load(Ordering::SeqCst), 1 + RETRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_or_a_full_ledger_is_not_asked_again() {
        let key = ReportKey::anonymous("r");
        for error in [
            LedgerError::Full(3),
            LedgerError::Rejected("ResponseError".into()),
        ] {
            let ledger = Flaky::new(vec![error.clone()]);
            assert_eq!(record_with_retry(&ledger, key, call()).await, Err(error));
            assert_eq!(ledger.records.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn the_retry_window_covers_every_send_and_wait() {
        let waits = Duration::from_millis(100 + 400 + 1600 + 2000).mul_f64(1.0 + JITTER);
        assert_eq!(retry_window(Duration::ZERO), waits);
        assert_eq!(
            retry_window(Duration::from_millis(200)),
            Duration::from_millis(200) * (RETRIES + 1) + waits
        );
        assert_eq!(retry_window(Duration::MAX), Duration::MAX);
    }

    #[tokio::test]
    async fn a_background_record_reports_its_failure_and_untracks_itself() {
        let pending = Arc::new(Pending::default());
        let ledger: Arc<dyn Ledger> = Arc::new(Flaky::new(vec![LedgerError::Full(3)]));
        let (tx, rx) = tokio::sync::oneshot::channel();
        record_in_background(ledger, &pending, None, "r".into(), call(), move |e| {
            let _ = tx.send(e);
        });
        assert_eq!(rx.await, Ok(LedgerError::Full(3)));
        tokio::time::timeout(Duration::from_secs(5), pending.idle())
            .await
            .expect("nothing left in flight");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(1600));
        assert_eq!(backoff(4), MAX_BACKOFF);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn settled_waits_for_the_reports_own_records_only() {
        let pending = Arc::new(Pending::default());
        let a = ReportKey::anonymous("a");
        let mine = pending.track(a);
        let other = pending.track(ReportKey {
            client: Some("c"),
            report: "b",
        });
        assert_eq!(pending.of(a), 1);
        // Another report's record does not hold up a read of "a"…
        let b_settled = pending.settled(ReportKey::anonymous("b"));
        tokio::time::timeout(Duration::from_secs(5), b_settled)
            .await
            .expect("nothing of report b (anonymous) is pending");
        // …and "a" settles exactly when its record is done.
        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.settled(ReportKey::anonymous("a")).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(mine);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled after the record")
            .unwrap();
        assert_eq!(pending.of(a), 0);
        // A record started after the read began does not hold it up.
        let first = pending.track(a);
        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.settled(ReportKey::anonymous("a")).await })
        };
        tokio::task::yield_now().await;
        let later = pending.track(a);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled once the earlier record is done")
            .unwrap();
        assert_eq!(pending.of(a), 1);
        drop(later);
        let idle = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "client c's record is still in flight");
        drop(other);
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle after the last record")
            .unwrap();
    }
}
