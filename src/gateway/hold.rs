//! The cost hold guard: a granted reservation's worst case, held on the report's cost cap until
//! the call settles it, releases it or is dropped.

use std::sync::Arc;

use crate::budget::deferred::Pending;
use crate::budget::{HeldCost, Ledger, ReportKey};
use crate::domain::Nanos;

/// A granted reservation's hold on the report's cost cap. Settled by the call's record
/// ([`Hold::settle`]); when its attempt fails, released uncharged or charged in full
/// ([`Hold::close`], by [`may_have_been_billed`]); dropped anywhere else — the call was
/// cancelled or its stream broke after output began — it charges itself in full, in the
/// background, so no hold outlives its call. That background charge is counted among the
/// report's ledger writes in flight ([`Pending`]): a read on this replica waits for it, and so
/// does shutdown.
///
/// [`may_have_been_billed`]: crate::domain::ProviderError::may_have_been_billed
pub(super) struct Hold {
    ledger: Arc<dyn Ledger>,
    pending: Arc<Pending>,
    client: Option<Box<str>>,
    report: Box<str>,
    held: HeldCost,
    armed: bool,
    /// What dropping it charges: the whole hold, unless [`Hold::unused`] said no attempt used it.
    charge_on_drop: bool,
}

impl Hold {
    /// An armed hold of `held` (its id and amount) on `key`'s report.
    pub(super) fn new(
        ledger: Arc<dyn Ledger>,
        pending: Arc<Pending>,
        key: ReportKey<'_>,
        held: HeldCost,
    ) -> Self {
        Self {
            ledger,
            pending,
            client: key.client.map(Into::into),
            report: key.report.into(),
            held,
            armed: true,
            charge_on_drop: true,
        }
    }

    /// A hold whose reservation was granted but that no attempt will use (its grant was not
    /// confirmed by the ledger's replicas): released uncharged, in the background, like a drop.
    pub(super) fn unused(mut self) {
        self.charge_on_drop = false;
    }

    fn key(&self) -> ReportKey<'_> {
        ReportKey {
            client: self.client.as_deref(),
            report: &self.report,
        }
    }

    /// Disarms the guard, handing over what the call's record needs to settle it: the ledger,
    /// the report's key (owned) and the hold.
    pub(super) fn settle(mut self) -> (Arc<dyn Ledger>, Option<Box<str>>, Box<str>, HeldCost) {
        self.armed = false;
        (
            self.ledger.clone(),
            self.client.take(),
            std::mem::take(&mut self.report),
            self.held,
        )
    }

    /// The attempt failed without an answer: release the hold, charging it in full when the
    /// upstream may have billed the work anyway, else nothing. Disarmed before the ledger
    /// answers: if this future is dropped mid-release, the hold stays until it expires and is
    /// charged in full — the safe direction for a cap (re-sending the release could release
    /// twice and let the report overspend).
    pub(super) async fn close(mut self, billed: bool) {
        self.armed = false;
        let charge = if billed {
            self.held.amount
        } else {
            Nanos::ZERO
        };
        if let Err(e) = self.ledger.release(self.key(), self.held, charge).await {
            tracing::warn!(
                "could not release a cost hold of report: {e}; it is charged in full when it expires"
            );
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Counted before the task starts: a read or a shutdown right after the drop waits.
        let tracked = self.pending.track(self.key());
        let (ledger, client, report, held) = (
            self.ledger.clone(),
            self.client.take(),
            std::mem::take(&mut self.report),
            self.held,
        );
        let charge = if self.charge_on_drop {
            held.amount
        } else {
            Nanos::ZERO
        };
        runtime.spawn(async move {
            let key = ReportKey {
                client: client.as_deref(),
                report: &report,
            };
            if let Err(e) = ledger.release(key, held, charge).await {
                tracing::warn!(
                    "could not release the cost hold of a call that ended without an attempt to settle it: {e}; it is charged in full when it expires"
                );
            }
            drop(tracked);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::budget::memory::MemoryLedger;
    use crate::budget::{HoldSpec, Limits, Reservation};

    const REPORT: ReportKey<'static> = ReportKey {
        client: Some("acme"),
        report: "r1",
    };
    const AMOUNT: Nanos = Nanos(700);
    const HELD: HeldCost = HeldCost {
        id: 7,
        amount: AMOUNT,
    };

    /// A memory ledger with one granted reservation holding `AMOUNT` on `REPORT`.
    async fn ledger_with_a_hold() -> Arc<dyn Ledger> {
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(Duration::from_secs(60)));
        let limits = Limits {
            cost_cap: Some(Nanos(10_000)),
            ..Limits::report(5)
        };
        let spec = HoldSpec {
            id: HELD.id,
            amount: AMOUNT,
            ttl: Duration::from_secs(60),
        };
        let granted = ledger.reserve(REPORT, limits, spec).await.unwrap();
        assert!(matches!(granted, Reservation::Granted { held, .. } if held == AMOUNT));
        ledger
    }

    /// The report's (settled cost, held, abandoned).
    async fn state(ledger: &Arc<dyn Ledger>) -> (Nanos, Nanos, Nanos) {
        let u = ledger.usage(REPORT).await.unwrap();
        (u.cloud_cost, u.held, u.abandoned)
    }

    #[tokio::test]
    async fn a_failed_attempt_that_cannot_have_been_billed_releases_its_hold_uncharged() {
        let ledger = ledger_with_a_hold().await;
        Hold::new(ledger.clone(), Arc::default(), REPORT, HELD)
            .close(false)
            .await;
        assert_eq!(
            state(&ledger).await,
            (Nanos::ZERO, Nanos::ZERO, Nanos::ZERO)
        );
    }

    #[tokio::test]
    async fn a_failed_attempt_that_may_have_been_billed_is_charged_its_whole_hold() {
        let ledger = ledger_with_a_hold().await;
        Hold::new(ledger.clone(), Arc::default(), REPORT, HELD)
            .close(true)
            .await;
        assert_eq!(state(&ledger).await, (AMOUNT, Nanos::ZERO, AMOUNT));
    }

    #[tokio::test]
    async fn a_dropped_hold_charges_itself_in_full_in_the_background() {
        let ledger = ledger_with_a_hold().await;
        let pending: Arc<Pending> = Arc::default();
        drop(Hold::new(ledger.clone(), pending.clone(), REPORT, HELD));
        // The charge runs as a task of its own, counted in flight until it lands: what a read
        // and a shutdown wait for.
        assert_eq!(pending.of(REPORT), 1);
        pending.idle().await;
        assert_eq!(state(&ledger).await, (AMOUNT, Nanos::ZERO, AMOUNT));
    }

    #[tokio::test]
    async fn an_unused_hold_is_released_uncharged_in_the_background() {
        let ledger = ledger_with_a_hold().await;
        let pending: Arc<Pending> = Arc::default();
        Hold::new(ledger.clone(), pending.clone(), REPORT, HELD).unused();
        assert_eq!(pending.of(REPORT), 1);
        pending.idle().await;
        assert_eq!(
            state(&ledger).await,
            (Nanos::ZERO, Nanos::ZERO, Nanos::ZERO)
        );
    }

    #[tokio::test]
    async fn a_settled_hold_is_disarmed_and_handed_over_whole() {
        let ledger = ledger_with_a_hold().await;
        let (_, client, report, amount) =
            Hold::new(ledger.clone(), Arc::default(), REPORT, HELD).settle();
        assert_eq!(
            (client.as_deref(), &*report, amount),
            (Some("acme"), "r1", HELD)
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Nothing released it: settling it is now the record's job.
        assert_eq!(state(&ledger).await, (Nanos::ZERO, AMOUNT, Nanos::ZERO));
    }

    #[test]
    fn a_hold_dropped_outside_a_runtime_does_not_panic() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hold = runtime.block_on(async {
            let ledger = ledger_with_a_hold().await;
            Hold::new(ledger, Arc::default(), REPORT, HELD)
        });
        drop(runtime);
        drop(hold);
    }
}
