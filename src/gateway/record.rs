//! Pricing an answered call and recording it in the ledger: inline on the memory ledger (a
//! lock away), after the response on a ledger a round trip away
//! ([`crate::budget::deferred`]; the answer shows the budget its reservation returned, or the
//! one last seen here, [`crate::budget::known`]).

use tracing::Span;

use crate::budget::deferred;
use crate::budget::{
    CallRecord, HeldCost, LedgerError, Limits, ReportBudget, ReportKey, ReportUsage,
};
use crate::domain::{BudgetInfo, Nanos, RouteInfo, TokenUsage};
use crate::telemetry;

use super::hold::Hold;
use super::{CallState, Gateway};
impl Gateway {
    /// Prices a served call, records it in the ledger (settling its hold) and returns the
    /// report's budget after it and the call's cost.
    pub(super) async fn finish_call(
        &self,
        state: &CallState<'_>,
        route: &RouteInfo,
        usage: TokenUsage,
        hold: Option<Hold>,
    ) -> (BudgetInfo, Option<Nanos>) {
        let cost = self.price(route.tier).map(|p| p.cost(usage));
        let all_cloud = self.all_cloud_price.map(|p| p.cost(usage));
        let record = CallRecord {
            id: rand::random(),
            tier: route.tier,
            fell_back: route.fallback.is_some(),
            cloud: route.cloud,
            phase: state.input.phase,
            usage,
            cost,
            all_cloud,
            release: HeldCost::NONE,
            cached: false,
        };
        let metrics = &self.tier_metrics[route.tier.index()];
        metrics.tokens(usage);
        metrics.cost(cost, all_cloud);
        if let (Some(client), Some(cost)) = (state.key.client, cost) {
            self.metrics.client_cost(client, cost);
        }
        telemetry::record_cost(&Span::current(), usage, cost);
        state
            .hybrid()
            .usage(&route.provider, &route.model, usage, cost.map(Nanos::usd));
        (self.record_answer(state, route, record, hold).await, cost)
    }

    /// Records an answered call (settling its hold) and returns the report's budget after it:
    /// inline on a ledger a lock away; on one a round trip away the record follows the answer,
    /// which shows the budget its reservation returned, settled by its own cost (a cloud call),
    /// or the one last seen here (any other answer).
    pub(super) async fn record_answer(
        &self,
        state: &CallState<'_>,
        route: &RouteInfo,
        record: CallRecord,
        hold: Option<Hold>,
    ) -> BudgetInfo {
        let cost = record.cost;
        let limits = state.limits;
        // On a ledger a round trip away no answer waits for its record: a cloud call shows
        // the budget its reservation returned, settled by its own cost; any other answer the
        // budget last seen here ([`crate::budget::known`]). The record follows, retried.
        if self.ledger.defers_records() {
            let (client, report, release) = match hold {
                Some(hold) => {
                    let (_, client, report, held) = hold.settle();
                    (client, report, held)
                }
                None => (
                    state.key.client.map(Into::into),
                    state.key.report.into(),
                    HeldCost::NONE,
                ),
            };
            let budget = match state.granted {
                Some(granted) if route.cloud => {
                    let after = settled(granted, cost, release.amount);
                    self.known.note(state.key, after);
                    after
                }
                granted => {
                    let mut known = self.known.get(state.key).unwrap_or_default();
                    // What this call's own reservation saw is the latest view of the count,
                    // the settled cost and, after a refusal, of the spent mark.
                    if let Some(used) = state.last_used {
                        known.used = known.used.max(used);
                        known.exhausted |= state.refused;
                        if let Some(granted) = granted {
                            known.cloud_cost = known.cloud_cost.max(granted.cloud_cost);
                        }
                        self.known.note(state.key, known);
                    }
                    known
                }
            };
            let (metrics, warnings) = (self.metrics.clone(), self.ledger_warnings.clone());
            let record = CallRecord { release, ..record };
            deferred::record_in_background(
                self.ledger.clone(),
                &self.pending,
                client,
                report,
                record,
                move |e| {
                    metrics.record_lost();
                    let Some(held_back) = warnings.check() else {
                        return;
                    };
                    tracing::warn!(
                        held_back,
                        "could not record usage of a call after its response ({} tries): {e}; the report's counters miss it unless a copy still lands (once){}",
                        1 + deferred::RETRIES,
                        if release.amount > Nanos::ZERO {
                            " and its cost hold is charged in full when it expires"
                        } else {
                            ""
                        }
                    );
                },
            );
            return answered(budget, limits, state.refused);
        }
        let recorded = match hold {
            None => self.ledger.record(state.key, record).await,
            // Settling a hold must not be lost if this call is dropped while the ledger works
            // (a deadline, a client gone): the record runs as its own task.
            // Counted in flight, so a shutdown waits for it even when the call is gone.
            Some(hold) => {
                let (ledger, client, report, release) = hold.settle();
                let record = CallRecord { release, ..record };
                let tracked = self.pending.track(state.key);
                tokio::spawn(async move {
                    let key = ReportKey {
                        client: client.as_deref(),
                        report: &report,
                    };
                    let recorded = ledger.record(key, record).await;
                    drop(tracked);
                    recorded
                })
                .await
                .unwrap_or_else(|_| Err(LedgerError::Unavailable("the record task failed".into())))
            }
        };
        match recorded {
            Ok(b) => answered(b, limits, state.refused),
            Err(e) => {
                if let Some(held_back) = self.ledger_warnings.check() {
                    tracing::warn!(held_back, "could not record usage of report: {e}");
                }
                unrecorded(state.last_used, state.refused, limits)
            }
        }
    }
}

/// A report's budget as callers see it, under `limits`.
pub(super) fn budget_from(usage: Option<&ReportUsage>, limits: Limits) -> BudgetInfo {
    budget_info(usage.map(ReportUsage::budget).unwrap_or_default(), limits)
}

/// The report's budget once a call is settled, as its reservation returned it (`granted`): the
/// call's cost added and its hold released. What a call answered before its record lands shows.
fn settled(granted: ReportBudget, cost: Option<Nanos>, release: Nanos) -> ReportBudget {
    ReportBudget {
        cloud_cost: granted.cloud_cost.saturating_add(cost.unwrap_or_default()),
        held: granted.held.saturating_sub(release),
        ..granted
    }
}

/// The budget an answered call shows: the report's after it, spent when it is, or when this
/// call was refused a unit on its way (it fell back because the report is spent).
fn answered(budget: ReportBudget, limits: Limits, refused: bool) -> BudgetInfo {
    BudgetInfo {
        exhausted: refused || budget.is_spent(limits),
        ..budget_info(budget, limits)
    }
}

/// What a call knows of its report when the ledger could not record it: its own last
/// reservation.
fn unrecorded(last_used: Option<u32>, refused: bool, limits: Limits) -> BudgetInfo {
    BudgetInfo {
        used: last_used.unwrap_or(0),
        exhausted: refused || last_used.is_some_and(|u| u >= limits.report),
        ..budget_from(None, limits)
    }
}

fn budget_info(budget: ReportBudget, limits: Limits) -> BudgetInfo {
    BudgetInfo {
        used: budget.used,
        limit: limits.report,
        exhausted: budget.is_spent(limits),
        cost_used: budget.cloud_cost,
        cost_reserved: budget.held,
        cost_limit: limits.cost_cap,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use futures_util::FutureExt as _;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::budget::memory::MemoryLedger;
    use crate::budget::{HoldSpec, Ledger, Reservation};
    use crate::config::{Config, Sources};
    use crate::domain::{ChatMessage, Phase, Role, Rule, SectionType, Tier};
    use crate::gateway::{CallState, GenerateInput};
    use crate::metrics::Metrics;
    use crate::providers::Tiers;
    use crate::resilience::Deadline;

    const LIMITS: Limits = Limits {
        report: 3,
        client_day: None,
        cost_cap: Some(Nanos(1_000_000)),
    };

    fn budget(used: u32, cloud_cost: u64, held: u64) -> ReportBudget {
        ReportBudget {
            used,
            exhausted: false,
            cloud_cost: Nanos(cloud_cost),
            held: Nanos(held),
        }
    }

    #[test]
    fn a_settled_call_adds_its_cost_and_releases_its_hold() {
        let after = settled(budget(2, 100, 900), Some(Nanos(40)), Nanos(500));
        assert_eq!(after, budget(2, 140, 400));
        // An unpriced call adds nothing; a release never goes below zero.
        assert_eq!(settled(budget(1, 7, 10), None, Nanos(50)), budget(1, 7, 0));
    }

    #[test]
    fn an_answered_call_shows_the_report_spent_when_it_is_or_when_it_was_refused() {
        let open = answered(budget(1, 0, 0), LIMITS, false);
        assert_eq!((open.used, open.limit, open.exhausted), (1, 3, false));
        assert!(answered(budget(3, 0, 0), LIMITS, false).exhausted);
        assert!(answered(budget(1, 1_000_000, 0), LIMITS, false).exhausted);
        assert!(answered(budget(1, 0, 0), LIMITS, true).exhausted);
    }

    #[test]
    fn an_unrecorded_call_shows_its_own_last_reservation() {
        let none = unrecorded(None, false, LIMITS);
        assert_eq!((none.used, none.limit, none.exhausted), (0, 3, false));
        assert_eq!(none.cost_limit, LIMITS.cost_cap);
        let last = unrecorded(Some(3), false, LIMITS);
        assert_eq!((last.used, last.exhausted), (3, true));
        assert!(unrecorded(Some(1), true, LIMITS).exhausted);
    }

    /// A memory ledger whose records wait for a permit, so a test can hold one in flight.
    struct GatedLedger {
        inner: MemoryLedger,
        gate: Semaphore,
        defers: bool,
    }

    #[async_trait]
    impl Ledger for GatedLedger {
        async fn reserve(
            &self,
            key: ReportKey<'_>,
            limits: Limits,
            hold: HoldSpec,
        ) -> Result<Reservation, LedgerError> {
            self.inner.reserve(key, limits, hold).await
        }
        async fn release(
            &self,
            key: ReportKey<'_>,
            hold: HeldCost,
            charge: Nanos,
        ) -> Result<(), LedgerError> {
            self.inner.release(key, hold, charge).await
        }
        async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
            self.inner.usage(key).await
        }
        async fn record(
            &self,
            key: ReportKey<'_>,
            call: CallRecord,
        ) -> Result<ReportBudget, LedgerError> {
            let _permit = self.gate.acquire().await.expect("gate open");
            self.inner.record(key, call).await
        }
        fn defers_records(&self) -> bool {
            self.defers
        }
        async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError> {
            self.inner.client_day_used(client).await
        }
        async fn ping(&self) -> Result<(), LedgerError> {
            Ok(())
        }
        fn backend(&self) -> &'static str {
            "gated"
        }
    }

    /// A gateway whose primary is `openai` (cloud, priced) under a cost cap, over `ledger`.
    fn gateway(ledger: Arc<GatedLedger>) -> Gateway {
        crate::install_crypto_provider();
        let sources = Sources {
            env: [
                ("OPENAI_API_KEY", "sk-test"),
                ("MAX_CLOUD_COST_USD", "0.001"),
                ("MAX_CLOUD_CALLS", "3"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Sources::default()
        };
        let config = Config::from_sources(&sources).expect("valid config");
        let tiers = Tiers::build(&config.primary, &config.secondary, &[]).expect("tiers");
        Gateway::new(&config, tiers, ledger, Arc::new(Metrics::new()))
    }

    fn gated(defers: bool) -> Arc<GatedLedger> {
        Arc::new(GatedLedger {
            inner: MemoryLedger::new(Duration::from_secs(60)),
            gate: Semaphore::new(0),
            defers,
        })
    }

    fn input() -> GenerateInput {
        GenerateInput {
            report_id: "r1".into(),
            section_id: "s1".into(),
            section_type: SectionType::Introduction,
            phase: Phase::Draft,
            messages: [ChatMessage::new(Role::User, "hello")].into(),
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: Vec::new(),
            seed: None,
            pin: None,
            client: None,
            cache: Default::default(),
        }
    }

    const HOLD: Nanos = Nanos(5_000);
    const HELD: HeldCost = HeldCost {
        id: 42,
        amount: HOLD,
    };

    /// Reserves a unit holding `HOLD`, as the tier loop does before a cloud attempt.
    async fn reserve(gateway: &Gateway, state: &mut CallState<'_>) -> Hold {
        let spec = HoldSpec {
            id: HELD.id,
            amount: HOLD,
            ttl: Duration::from_secs(60),
        };
        let Ok(Reservation::Granted {
            used, cost, held, ..
        }) = gateway.ledger.reserve(state.key, state.limits, spec).await
        else {
            panic!("the reservation is granted");
        };
        state.last_used = Some(used);
        state.granted = Some(ReportBudget {
            used,
            exhausted: false,
            cloud_cost: cost,
            held,
        });
        Hold::new(
            gateway.ledger.clone(),
            gateway.pending.clone(),
            state.key,
            HELD,
        )
    }

    async fn report_usage(gateway: &Gateway) -> ReportUsage {
        gateway
            .ledger
            .usage(ReportKey::anonymous("r1"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_record_that_settles_a_hold_lands_even_when_its_call_is_dropped() {
        let ledger = gated(false);
        let gateway = gateway(ledger.clone());
        let input = input();
        let mut state = CallState::new(&gateway, &input, Deadline(None));
        let hold = reserve(&gateway, &mut state).await;
        let route = gateway.route_info(Tier::Primary, Rule::DraftDefaultPrimary, None);
        let usage = TokenUsage::reported(10, 20);
        // The call is dropped (a deadline, a client gone) while the ledger works on its record.
        let call = gateway.finish_call(&state, &route, usage, Some(hold));
        assert!(
            call.now_or_never().is_none(),
            "the record waits at the gate"
        );
        ledger.gate.add_permits(1);
        for _ in 0..100 {
            if report_usage(&gateway).await.primary_calls == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let after = report_usage(&gateway).await;
        let cost = gateway.price(Tier::Primary).unwrap().cost(usage);
        assert_eq!(after.primary_calls, 1);
        assert_eq!((after.held, after.cloud_cost), (Nanos::ZERO, cost));
        assert_eq!(
            after.abandoned,
            Nanos::ZERO,
            "settled at its cost, not charged in full"
        );
    }

    #[tokio::test]
    async fn on_a_deferring_ledger_the_answer_shows_the_reservation_settled_and_the_record_follows()
    {
        let ledger = gated(true);
        let gateway = gateway(ledger.clone());
        let input = input();
        let mut state = CallState::new(&gateway, &input, Deadline(None));
        let hold = reserve(&gateway, &mut state).await;
        let route = gateway.route_info(Tier::Primary, Rule::DraftDefaultPrimary, None);
        let usage = TokenUsage::reported(10, 20);
        let (budget, cost) = gateway
            .finish_call(&state, &route, usage, Some(hold))
            .now_or_never()
            .expect("answered without waiting for the ledger");
        let cost = cost.expect("gpt-4o has a price");
        assert_eq!((budget.used, budget.limit, budget.exhausted), (1, 3, false));
        assert_eq!(
            (budget.cost_used, budget.cost_reserved),
            (cost, Nanos::ZERO)
        );
        assert_eq!(
            report_usage(&gateway).await.primary_calls,
            0,
            "not recorded yet"
        );
        ledger.gate.add_permits(1);
        gateway.flush_records().await;
        let after = report_usage(&gateway).await;
        assert_eq!(after.primary_calls, 1);
        assert_eq!((after.held, after.cloud_cost), (Nanos::ZERO, cost));
    }

    #[tokio::test]
    async fn on_a_deferring_ledger_a_local_answer_shows_the_budget_last_seen_and_never_waits() {
        let ledger = gated(true);
        let gateway = gateway(ledger.clone());
        let input = input();
        let usage = TokenUsage::reported(10, 20);
        let cloud = gateway.route_info(Tier::Primary, Rule::DraftDefaultPrimary, None);
        let local = gateway.route_info(Tier::Secondary, Rule::ExpandSecondary, None);
        // Every record waits at the gate: an answer that waited for one would never come.
        let mut state = CallState::new(&gateway, &input, Deadline(None));
        let hold = reserve(&gateway, &mut state).await;
        let (first, _) = gateway
            .finish_call(&state, &cloud, usage, Some(hold))
            .now_or_never()
            .expect("a cloud answer never waits for its record");

        let plain = CallState::new(&gateway, &input, Deadline(None));
        let (budget, _) = gateway
            .finish_call(&plain, &local, usage, None)
            .now_or_never()
            .expect("a local answer never waits for its record");
        assert_eq!(
            (budget.used, budget.cost_used, budget.exhausted),
            (1, first.cost_used, false),
            "the budget the cloud answer left here"
        );

        // A call refused a unit (the report is spent) falls back: its answer shows it, and so
        // does the next local answer, which saw no ledger at all.
        let mut refused = CallState::new(&gateway, &input, Deadline(None));
        refused.last_used = Some(3);
        refused.refused = true;
        let (budget, _) = gateway
            .finish_call(&refused, &local, usage, None)
            .now_or_never()
            .expect("answered at once");
        assert_eq!((budget.used, budget.exhausted), (3, true));
        let (budget, _) = gateway
            .finish_call(&plain, &local, usage, None)
            .now_or_never()
            .expect("answered at once");
        assert_eq!((budget.used, budget.exhausted), (3, true));

        assert_eq!(report_usage(&gateway).await.secondary_calls, 0);
        ledger.gate.add_permits(4);
        gateway.flush_records().await;
        let after = report_usage(&gateway).await;
        assert_eq!(
            (after.primary_calls, after.secondary_calls),
            (1, 3),
            "every record followed its answer"
        );
    }
}
