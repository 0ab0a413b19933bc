//! The tier loop: which tier serves a call ([`Gateway::serve`]), one tier's attempts under a
//! circuit-breaker permit ([`Gateway::call_tier`]), the budget step before each attempt
//! ([`Gateway::reserve`]), one upstream request with its span and metrics
//! ([`Gateway::attempt`]) and the retry decision ([`Gateway::retry_delay`]).

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use futures_util::future::BoxFuture;
use tracing::{Instrument, Span};

use crate::budget::{HoldSpec, LedgerError, ReportBudget, Reservation};
use crate::cost;
use crate::domain::{FallbackReason, Nanos, ProviderError, ProviderFailure, QuotaInfo, Tier};
use crate::error::GatewayError;
use crate::providers::pool::{HealthChange, Lease};
use crate::providers::{ChatRequest, Provider};
use crate::routing;
use crate::telemetry;

use super::hold::Hold;
use super::{CallState, Gateway};
/// What happened on one tier.
enum TierOutcome<T> {
    /// The value, and what its attempt still holds.
    Ok(T, Sent),
    Failed(ProviderError),
    BudgetRefused,
    QuotaSpent,
    LedgerDown,
    CircuitOpen,
}

/// The budget step's answer for one attempt.
enum Budgeted {
    /// Go ahead (a unit was taken, or the provider is local and needs none), holding the
    /// attempt's worst-case cost under a cost cap.
    Go(Option<Hold>),
    Refused,
    QuotaSpent,
    LedgerDown,
}

/// What the serving attempt still holds, and what it asked for.
pub(super) struct Sent {
    /// The serving endpoint's slot: held until the value is consumed (a stream's end).
    pub(super) lease: Lease,
    /// The attempt's cost hold, settled when the call is recorded.
    pub(super) hold: Option<Hold>,
    /// The `max_tokens` sent upstream (an estimated output never exceeds it).
    pub(super) max_tokens: Option<u32>,
}

/// A successful first phase of a call: the value, the tier that produced it and why.
pub(super) struct Served<T> {
    pub(super) value: T,
    pub(super) sent: Sent,
    pub(super) tier: Tier,
    pub(super) fallback: Option<FallbackReason>,
    pub(super) decision: routing::Decision,
}
impl Gateway {
    /// Routes and serves one call up to a successful first result, falling back as needed.
    pub(super) async fn serve<T, F>(
        &self,
        state: &mut CallState<'_>,
        decision: routing::Decision,
        op: F,
    ) -> Result<Served<T>, GatewayError>
    where
        T: Send,
        F: Fn(Arc<dyn Provider>, Arc<ChatRequest>) -> BoxFuture<'static, Result<T, ProviderError>>,
    {
        let span = Span::current();
        span.record("vra.route.rule", decision.rule.id());
        let mut failures = Vec::new();
        let mut fallback = None;

        if decision.tier == Tier::Primary {
            let reason = match self.call_tier(state, Tier::Primary, &op).await {
                TierOutcome::Ok(value, sent) => {
                    return Ok(Served {
                        value,
                        sent,
                        tier: Tier::Primary,
                        fallback: None,
                        decision,
                    });
                }
                TierOutcome::BudgetRefused => FallbackReason::CostLimit,
                TierOutcome::QuotaSpent => FallbackReason::ClientQuota,
                TierOutcome::LedgerDown => FallbackReason::LedgerUnavailable,
                TierOutcome::CircuitOpen => self.circuit_open_reason(state, decision.cloud).await,
                TierOutcome::Failed(error) => {
                    let primary = self.provider_name(Tier::Primary);
                    let error = error.to_string();
                    state.hybrid().fallback_on_error(primary, &error);
                    failures.push(ProviderFailure {
                        tier: Tier::Primary.as_str(),
                        provider: primary.to_string(),
                        error,
                    });
                    FallbackReason::PrimaryError
                }
            };
            if reason != FallbackReason::PrimaryError {
                state.hybrid().fallback(reason);
            }
            self.metrics.fallback(reason);
            span.record("vra.fallback.reason", reason.as_str());
            fallback = Some(reason);
        }

        let secondary = self.provider_name(Tier::Secondary);
        let error = match self.call_tier(state, Tier::Secondary, &op).await {
            TierOutcome::Ok(value, sent) => {
                return Ok(Served {
                    value,
                    sent,
                    tier: Tier::Secondary,
                    fallback,
                    decision,
                });
            }
            TierOutcome::BudgetRefused => {
                return Err(GatewayError::BudgetExhausted {
                    used: state.last_used.unwrap_or(state.limits.report),
                    limit: state.limits.report,
                    provider: secondary.to_string(),
                });
            }
            TierOutcome::QuotaSpent => {
                let QuotaInfo { used, limit } =
                    state.quota_spent.unwrap_or(QuotaInfo { used: 0, limit: 0 });
                return Err(GatewayError::ClientQuotaExhausted {
                    used,
                    limit,
                    provider: secondary.to_string(),
                });
            }
            TierOutcome::LedgerDown => {
                "ledger unavailable: a cloud-tier secondary cannot be budgeted".to_string()
            }
            TierOutcome::CircuitOpen => "circuit open".to_string(),
            TierOutcome::Failed(ProviderError::QueueFull { max_queue }) => {
                state.hybrid().failed(secondary, &["endpoint queue full"]);
                return Err(GatewayError::QueueFull {
                    provider: secondary.to_string(),
                    max_queue,
                });
            }
            TierOutcome::Failed(e) => e.to_string(),
        };
        failures.push(ProviderFailure {
            tier: Tier::Secondary.as_str(),
            provider: secondary.to_string(),
            error,
        });
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        if fallback.is_some() {
            state.hybrid().fallback_failed(&errors);
        } else {
            state.hybrid().failed(secondary, &errors);
        }
        Err(GatewayError::AllProvidersFailed(failures))
    }

    /// Why a call whose primary circuit is open falls back: a spent report budget or day
    /// quota takes precedence (it would have refused the call anyway, and it is what
    /// `ResolveRoute` predicts), else the open circuit.
    async fn circuit_open_reason(&self, state: &CallState<'_>, cloud: bool) -> FallbackReason {
        if !cloud {
            return FallbackReason::CircuitOpen;
        }
        // Not `read_usage`: a fallback decision does not wait for other calls' records.
        if let Ok(u) = self.ledger.usage(state.key).await
            && u.is_spent(state.limits)
        {
            return FallbackReason::CostLimit;
        }
        match self.day_quota(state.key, state.limits).await {
            Some(Ok(q)) if q.used >= q.limit => FallbackReason::ClientQuota,
            _ => FallbackReason::CircuitOpen,
        }
    }

    /// Calls one tier's provider, with retries, under a circuit-breaker permit. The permit is
    /// a guard: if this future is dropped mid-call, it gives no verdict (see [`crate::resilience::CallPermit`]).
    async fn call_tier<T, F>(&self, state: &mut CallState<'_>, tier: Tier, op: &F) -> TierOutcome<T>
    where
        F: Fn(Arc<dyn Provider>, Arc<ChatRequest>) -> BoxFuture<'static, Result<T, ProviderError>>,
    {
        let Some(permit) = self.breaker(tier).admit() else {
            return TierOutcome::CircuitOpen;
        };
        let (pool, model) = self.provider(tier);
        // Built once per tier and shared by its attempts.
        let request = Arc::new(state.chat_request(model, self.ceiling(tier)));
        let mut attempt = 0u32;
        // The endpoints this call has tried: a retry prefers another one.
        let mut tried = Vec::new();
        loop {
            let queued = StdInstant::now();
            let mut lease = match pool.acquire(&tried).await {
                Ok(lease) => lease,
                Err(error) => {
                    permit.failed(error.is_provider_fault());
                    return TierOutcome::Failed(error);
                }
            };
            let waited = queued.elapsed();
            self.tier_metrics[tier.index()].queue_wait(waited);
            tried.push(lease.index());
            attempt += 1;
            let hold = match self.reserve(state, tier, &request).await {
                Budgeted::Go(hold) => hold,
                Budgeted::Refused => {
                    permit.failed(false);
                    return TierOutcome::BudgetRefused;
                }
                Budgeted::QuotaSpent => {
                    permit.failed(false);
                    return TierOutcome::QuotaSpent;
                }
                Budgeted::LedgerDown => {
                    permit.failed(false);
                    return TierOutcome::LedgerDown;
                }
            };
            let error = match self
                .attempt(state, tier, attempt, &request, op, &mut lease, waited)
                .await
            {
                Ok(value) => {
                    permit.succeeded();
                    let max_tokens = request.max_tokens;
                    return TierOutcome::Ok(
                        value,
                        Sent {
                            lease,
                            hold,
                            max_tokens,
                        },
                    );
                }
                Err(error) => error,
            };
            // No answer: the attempt costs nothing, or its worst case if it may have been billed.
            if let Some(hold) = hold {
                hold.close(error.may_have_been_billed()).await;
            }
            // The slot is free during the backoff.
            drop(lease);
            match self.retry_delay(state, attempt, &error) {
                Some(delay) => {
                    tracing::debug!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        provider = self.provider_name(tier),
                        error = %error,
                        "retrying upstream request"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => {
                    permit.failed(error.is_provider_fault());
                    return TierOutcome::Failed(error);
                }
            }
        }
    }

    /// The budget step before each attempt: a cloud-tier provider needs one unit of the
    /// report's budget (and of the client's day, when it has a quota) and, under a cost cap,
    /// room for the attempt's worst-case cost, reserved atomically; a local one needs nothing.
    async fn reserve(
        &self,
        state: &mut CallState<'_>,
        tier: Tier,
        request: &ChatRequest,
    ) -> Budgeted {
        let (provider, _) = self.provider(tier);
        let config = provider.config();
        if !config.is_cloud() {
            return Budgeted::Go(None);
        }
        let hold = match self.cost_cap {
            Some(_) => HoldSpec {
                id: rand::random(),
                amount: self.worst_case(tier, state, request),
                // The attempt ends by the call's deadline (a stream's includes its cap), else
                // by the provider's timeout, and never lasts longer than the longest attempt;
                // the hold lives the grace beyond.
                ttl: state
                    .deadline
                    .remaining()
                    .unwrap_or(config.timeout)
                    .min(self.longest_attempt)
                    .saturating_add(self.hold_grace),
            },
            None => HoldSpec::NONE,
        };
        let asked = StdInstant::now();
        let reservation = self.ledger.reserve(state.key, state.limits, hold).await;
        self.metrics.ledger_duration("reserve", asked.elapsed());
        if let (Some(client), Ok(r)) = (state.key.client, &reservation) {
            self.metrics.client_reservation(client, r.label());
        }
        match reservation {
            Ok(Reservation::Granted {
                used,
                cost,
                held,
                day_used,
            }) => {
                if let (Some(client), Some(day_used), Some(limit)) =
                    (state.key.client, day_used, state.limits.client_day)
                {
                    self.metrics.client_day_quota(client, day_used, limit);
                }
                state.last_used = Some(used);
                state.granted = Some(ReportBudget {
                    used,
                    exhausted: false,
                    cloud_cost: cost,
                    held,
                });
                self.tier_metrics[tier.index()].budget_reserved();
                let hold = (hold.amount > Nanos::ZERO).then(|| {
                    Hold::new(
                        self.ledger.clone(),
                        self.pending.clone(),
                        state.key,
                        hold.held(),
                    )
                });
                Budgeted::Go(hold)
            }
            Ok(Reservation::Refused { used, newly }) => {
                state.last_used = Some(used);
                state.refused = true;
                if newly {
                    self.metrics.report_hit_cost_limit();
                }
                Budgeted::Refused
            }
            Ok(Reservation::NoRoomUnderCap { used }) => {
                // This call only: the report is not spent, a later call may fit.
                state.last_used = Some(used);
                Budgeted::Refused
            }
            Ok(Reservation::DayQuotaSpent { used, limit }) => {
                if let Some(client) = state.key.client {
                    self.metrics.client_day_quota(client, used, limit);
                }
                state.quota_spent = Some(QuotaInfo { used, limit });
                Budgeted::QuotaSpent
            }
            Err(e) => {
                if matches!(e, LedgerError::Unconfirmed { .. }) && hold.amount > Nanos::ZERO {
                    // Granted, hold included, but not confirmed by the replicas: no attempt
                    // uses it, so it goes back uncharged (the unit stays taken).
                    Hold::new(
                        self.ledger.clone(),
                        self.pending.clone(),
                        state.key,
                        hold.held(),
                    )
                    .unused();
                }
                self.metrics.ledger_error(e.kind());
                if let Some(held_back) = self.ledger_warnings.check() {
                    tracing::warn!(
                        backend = self.ledger.backend(),
                        held_back,
                        "budget ledger unavailable: {e}; cloud calls fail safe to the secondary"
                    );
                }
                Budgeted::LedgerDown
            }
        }
    }

    /// One upstream request to the leased endpoint: its CLIENT span, its metrics, its
    /// outcome, and the endpoint's health verdict (the caller keeps the lease: a stream holds
    /// its endpoint's slot until it ends).
    #[allow(clippy::too_many_arguments)]
    async fn attempt<T, F>(
        &self,
        state: &mut CallState<'_>,
        tier: Tier,
        attempt: u32,
        request: &Arc<ChatRequest>,
        op: &F,
        lease: &mut Lease,
        waited: Duration,
    ) -> Result<T, ProviderError>
    where
        F: Fn(Arc<dyn Provider>, Arc<ChatRequest>) -> BoxFuture<'static, Result<T, ProviderError>>,
    {
        let (pool, model) = self.provider(tier);
        let config = pool.config();
        let provider = lease.provider().clone();
        let (address, port) = provider.address();
        let upstream = telemetry::Upstream {
            system: pool.system(),
            provider: &config.name,
            cloud: config.is_cloud(),
            address,
            port,
        };
        state.attempts += 1;
        let span = telemetry::attempt_span(upstream, model, tier, attempt);
        span.record("vra.queue.wait_ms", waited.as_millis() as u64);
        telemetry::record_request(&span, &request.messages);
        let started = StdInstant::now();
        let result = op(provider.clone(), Arc::clone(request))
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => {
                self.tier_metrics[tier.index()].attempt_ok(elapsed);
                telemetry::attempt_ok(&span);
            }
            Err(error) => {
                self.metrics
                    .attempt_failed(&config.name, model, error, elapsed);
                telemetry::attempt_failed(&span, error);
                if error.is_auth() {
                    tracing::error!(
                        "provider `{}` rejected its credentials ({error}): a configuration error, check its API key",
                        config.name
                    );
                }
            }
        }
        match lease.judge(result.as_ref().map(|_| ())) {
            Some(HealthChange::Ejected { duration, failures }) => {
                let endpoint = lease.endpoint();
                self.metrics.endpoint_ejected(&config.name, endpoint);
                tracing::warn!(
                    provider = %config.name,
                    endpoint = %endpoint,
                    failures,
                    ejected_ms = duration.as_millis() as u64,
                    "endpoint ejected from the provider's pool after consecutive failures"
                );
            }
            Some(HealthChange::Restored) => {
                let endpoint = lease.endpoint();
                tracing::info!(
                    provider = %config.name,
                    endpoint = %endpoint,
                    "endpoint back in the provider's pool: its probe succeeded"
                );
            }
            None => {}
        }
        result
    }

    /// The most one attempt of `request` on `tier` can cost: an upper bound of its input
    /// tokens plus its `max_tokens`, at the tier's price. A model without a price cannot be
    /// bounded, so its hold never fits (configuration refuses a cost cap with an unpriced
    /// cloud model; this is the fail-safe).
    fn worst_case(&self, tier: Tier, state: &CallState<'_>, request: &ChatRequest) -> Nanos {
        let Some(price) = self.price(tier) else {
            return Nanos(u64::MAX);
        };
        let input = cost::input_tokens_bound(state.messages());
        let output = request.max_tokens.unwrap_or(self.output_ceiling);
        price.cost_of(input, u64::from(output))
    }

    /// How long to wait before retrying after failed attempt `attempt`, or `None` when the
    /// error is final, the attempts are used up, or the wait would pass the caller's deadline.
    fn retry_delay(
        &self,
        state: &CallState<'_>,
        attempt: u32,
        error: &ProviderError,
    ) -> Option<Duration> {
        if !self.retry.should_retry(attempt, error) {
            return None;
        }
        let delay = self.retry.delay(attempt, error, rand::random::<f64>());
        (!state.deadline.would_pass(delay)).then_some(delay)
    }
}
