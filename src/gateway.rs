//! The request pipeline, independent of gRPC: route → budget → call (retry) → fallback →
//! record. [`crate::service`] is thin glue around it.
//!
//! For each call:
//! 1. [`routing::route`] picks the tier and names the rule.
//! 2. If the primary is chosen and its circuit is closed, each HTTP attempt first leases an
//!    endpoint of the provider's pool ([`Pool::acquire`]: balancing, ejection, the
//!    `max_in_flight` queue; a retry prefers an endpoint not tried yet), then, for a
//!    cloud-tier provider, reserves a budget unit ([`Ledger::reserve`]); retries follow
//!    [`RetryPolicy`] and never sleep past the caller's deadline. A full queue or a pool
//!    whose endpoints are all ejected fails the tier like an upstream error (the secondary's
//!    full queue is `RESOURCE_EXHAUSTED`).
//! 3. A refused reservation (`COST_LIMIT`), a client's spent day quota (`CLIENT_QUOTA`), an
//!    unreachable ledger (`LEDGER_UNAVAILABLE`), an open circuit (`CIRCUIT_OPEN`) or a
//!    primary that fails for good (`PRIMARY_ERROR`) sends the call to the secondary, with a
//!    `[Hybrid] ... Event=FALLBACK` line.
//!
//! With authentication on, every call carries its [`Client`]: the ledger keys its report under
//! the client, the client's `max_cloud_calls` replaces `MAX_CLOUD_CALLS`, and its
//! `cloud_calls_per_day` is reserved together with the report's unit.
//! 4. If the secondary fails too, the caller gets every provider's error.
//!
//! Streaming follows the same steps up to the first delta; after it, no retry or fallback is
//! possible (the client never gets text from two models spliced together).
//!
//! Each concern reads on its own: `Gateway::serve` decides between the tiers,
//! `Gateway::call_tier` runs one tier's attempts under a circuit-breaker permit,
//! `Gateway::reserve` is the budget step, `Gateway::attempt` one upstream request with its
//! span and metrics, and `Gateway::retry_delay` the retry decision. Everything acquired is a
//! guard (the breaker's [`CallPermit`](crate::resilience::CallPermit), the endpoint
//! [`Lease`], a place in an endpoint queue, the in-flight gauge),
//! so a call dropped anywhere — by a deadline, a cancel or a panic — leaves no state behind.
//! The one exception is deliberate: a budget unit reserved for an attempt stays spent even if
//! the request never left, because the ledger cannot know whether it reached the cloud.
//!
//! Money: with `MAX_CLOUD_COST_USD`, each cloud attempt also holds its worst-case cost (an
//! upper bound of its input tokens, plus its `max_tokens` — the gateway sends
//! `VRA_MAX_OUTPUT_TOKENS` when the caller set none) in the same reservation. The [`Hold`] is a
//! guard: a failed attempt releases it, an answered call settles it to the actual cost when it
//! is recorded, and a call dropped mid-way is charged the whole hold (the upstream may have
//! billed it). Every answered call is priced ([`crate::cost`]); usage the upstream did not
//! report is estimated and marked.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt};
use opentelemetry::context::FutureExt as _;
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use crate::budget::deferred::{self, Pending};
use crate::budget::{
    CallRecord, Ledger, LedgerError, Limits, ReportBudget, ReportKey, ReportUsage, Reservation,
};
use crate::config::Config;
use crate::cost::{self, Price};
use crate::domain::{
    BudgetInfo, Client, FallbackReason, Nanos, Phase, ProviderError, ProviderFailure, QuotaInfo,
    RouteInfo, Rule, SectionType, Tier, TokenUsage,
};
use crate::error::GatewayError;
use crate::metrics::{Metrics, ProviderMetrics};
use crate::providers::pool::{HealthChange, Lease, Pool};
use crate::providers::{ChatRequest, Completion, EventStream, Provider, StreamEvent, Tiers};
use crate::resilience::{BreakerState, CircuitBreaker, Deadline, RetryPolicy};
use crate::routing::{self, Policy};
use crate::telemetry::{self, Hybrid};

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateInput {
    pub report_id: String,
    pub section_id: String,
    pub section_type: SectionType,
    pub phase: Phase,
    pub prompt: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// The authenticated caller (`None` with authentication off).
    pub client: Option<Arc<Client>>,
}

/// The result of a generation (for streams, `text` is empty: it went out as deltas).
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub route: RouteInfo,
    pub usage: TokenUsage,
    pub budget: BudgetInfo,
    pub attempts: u32,
    pub finish_reason: String,
    /// The call's cost; `None` when its model has no price.
    pub cost: Option<Nanos>,
}

/// One message of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Delta(String),
    Done(Generated),
}

/// Capacity of the channel between the upstream reader and the client: a slow client fills it
/// and then slows the upstream read instead of growing memory.
const STREAM_BUFFER: usize = 16;

/// The gateway's shared state: providers, ledger, policies. Cheap to share behind an `Arc`.
pub struct Gateway {
    limit: u32,
    policy: Policy,
    tiers: Tiers,
    ledger: Arc<dyn Ledger>,
    /// Records sent after their response ([`Ledger::defers_records`]), by report.
    pending: Arc<Pending>,
    retry: RetryPolicy,
    breakers: [CircuitBreaker; 2],
    stream_idle: Duration,
    metrics: Arc<Metrics>,
    /// Each tier's provider series, by tier index (resolved once, not per call).
    tier_metrics: [ProviderMetrics; 2],
    /// A ledger that is down or full fails every call the same way: one warning a second.
    ledger_warnings: telemetry::Throttle,
    /// Each tier's model price (`None`: a cloud model without a price), by tier index.
    prices: [Option<Price>; 2],
    /// `MAX_CLOUD_COST_USD`.
    cost_cap: Option<Nanos>,
    /// `VRA_MAX_OUTPUT_TOKENS`: `max_tokens` of a cloud request without one, under a cost cap.
    output_ceiling: u32,
    /// The price "all on the primary" is computed at: the primary's, when it is cloud tier
    /// (with a local primary an all-cloud equivalent means nothing, and is left unknown).
    all_cloud_price: Option<Price>,
}

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

/// Per-call bookkeeping shared by the unary and streaming paths.
struct CallState<'a> {
    input: &'a GenerateInput,
    /// The report's ledger key and what the call may spend.
    key: ReportKey<'a>,
    limits: Limits,
    deadline: Deadline,
    attempts: u32,
    /// The `used` count of this call's last reservation.
    last_used: Option<u32>,
    /// The report's budget as this call's last granted reservation left it.
    granted: Option<ReportBudget>,
    refused: bool,
    /// The client's day quota, as the last refused reservation saw it.
    quota_spent: Option<QuotaInfo>,
}

impl<'a> CallState<'a> {
    fn new(gateway: &Gateway, input: &'a GenerateInput, deadline: Deadline) -> Self {
        let (key, limits) = gateway.scope(input.client.as_deref(), &input.report_id);
        Self {
            input,
            key,
            limits,
            deadline,
            attempts: 0,
            last_used: None,
            granted: None,
            refused: false,
            quota_spent: None,
        }
    }

    /// This call's `[Hybrid]` events.
    fn hybrid(&self) -> Hybrid<'a> {
        let input = self.input;
        Hybrid::new(input.phase.as_str(), &input.section_id, &input.report_id)
            .client(self.key.client)
    }

    /// The upstream request; `max_tokens` defaults to `ceiling` when given (a cloud tier
    /// under a cost cap: its worst case must be bounded).
    fn chat_request(&self, model: &str, ceiling: Option<u32>) -> ChatRequest {
        let input = self.input;
        ChatRequest {
            model: model.to_string(),
            system: input.system_prompt.clone(),
            prompt: input.prompt.clone(),
            temperature: input.temperature,
            max_tokens: input.max_tokens.or(ceiling),
            stop: input.stop.clone(),
        }
    }

    /// The texts of the request's messages, for token estimates.
    fn messages(&self) -> impl Iterator<Item = &'a str> + 'a {
        let input = self.input;
        input
            .system_prompt
            .as_deref()
            .into_iter()
            .chain(std::iter::once(input.prompt.as_str()))
    }
}

/// A granted reservation's hold on the report's cost cap. Settled by the call's record
/// ([`Hold::settle`]); when its attempt fails, released uncharged or charged in full
/// ([`Hold::close`], by [`ProviderError::may_have_been_billed`]); dropped anywhere else — the
/// call was cancelled or its stream broke after output began — it charges itself in full, in
/// the background, so no hold outlives its call.
struct Hold {
    ledger: Arc<dyn Ledger>,
    client: Option<Box<str>>,
    report: Box<str>,
    amount: Nanos,
    armed: bool,
}

impl Hold {
    fn key(&self) -> ReportKey<'_> {
        ReportKey {
            client: self.client.as_deref(),
            report: &self.report,
        }
    }

    /// Disarms the guard, handing over what the call's record needs to settle it: the ledger,
    /// the report's key (owned) and the amount.
    fn settle(mut self) -> (Arc<dyn Ledger>, Option<Box<str>>, Box<str>, Nanos) {
        self.armed = false;
        (
            self.ledger.clone(),
            self.client.take(),
            std::mem::take(&mut self.report),
            self.amount,
        )
    }

    /// The attempt failed without an answer: release the hold, charging it in full when the
    /// upstream may have billed the work anyway, else nothing. Disarmed before the ledger
    /// answers: if this future is dropped mid-release, the hold may stay held until the report
    /// expires — the safe direction for a cap, it can only block spending (re-sending the
    /// release could release twice and let the report overspend).
    async fn close(mut self, billed: bool) {
        self.armed = false;
        let charge = if billed { self.amount } else { Nanos::ZERO };
        if let Err(e) = self.ledger.release(self.key(), self.amount, charge).await {
            tracing::warn!(
                "could not release a cost hold of report: {e}; it expires with the report"
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
        let (ledger, client, report, amount) = (
            self.ledger.clone(),
            self.client.take(),
            std::mem::take(&mut self.report),
            self.amount,
        );
        runtime.spawn(async move {
            let key = ReportKey {
                client: client.as_deref(),
                report: &report,
            };
            if let Err(e) = ledger.release(key, amount, amount).await {
                tracing::warn!("could not charge the cost hold of a dropped call: {e}");
            }
        });
    }
}

/// A successful first phase of a call: the value, the tier that produced it and why.
/// What the serving attempt still holds, and what it asked for.
struct Sent {
    /// The serving endpoint's slot: held until the value is consumed (a stream's end).
    lease: Lease,
    /// The attempt's cost hold, settled when the call is recorded.
    hold: Option<Hold>,
    /// The `max_tokens` sent upstream (an estimated output never exceeds it).
    max_tokens: Option<u32>,
}

struct Served<T> {
    value: T,
    sent: Sent,
    tier: Tier,
    fallback: Option<FallbackReason>,
    decision: routing::Decision,
}

impl Gateway {
    pub fn new(
        config: &Config,
        tiers: Tiers,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let prices = [
            config
                .pricing
                .lookup(&config.primary.model, config.primary.provider.is_cloud())
                .price(),
            config
                .pricing
                .lookup(
                    &config.secondary.model,
                    config.secondary.provider.is_cloud(),
                )
                .price(),
        ];
        let tier_metrics = [Tier::Primary, Tier::Secondary].map(|tier| {
            let (pool, model) = tiers.of(tier);
            metrics.provider(&pool.config().name, model, prices[tier.index()].is_some())
        });
        Self {
            limit: config.max_cloud_calls,
            policy: Policy {
                hybrid: config.hybrid_mode,
                primary_cloud: tiers.primary.config().is_cloud(),
                secondary_cloud: tiers.secondary.config().is_cloud(),
            },
            tiers,
            ledger,
            pending: Arc::default(),
            retry: config.retry.into(),
            breakers: [
                CircuitBreaker::new(config.circuit),
                CircuitBreaker::new(config.circuit),
            ],
            stream_idle: config.stream_idle_timeout,
            ledger_warnings: telemetry::Throttle::new(Duration::from_secs(1)),
            prices,
            cost_cap: config.max_cloud_cost,
            output_ceiling: config.max_output_tokens,
            all_cloud_price: config
                .primary
                .provider
                .is_cloud()
                .then(|| config.pricing.lookup(&config.primary.model, true).price())
                .flatten(),
            metrics,
            tier_metrics,
        }
    }

    /// The price of the model a tier sends to.
    fn price(&self, tier: Tier) -> Option<Price> {
        self.prices[tier.index()]
    }

    /// Whether "all on the primary" has a cost: the primary is cloud tier and has a price.
    pub fn primary_priced(&self) -> bool {
        self.all_cloud_price.is_some()
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn provider(&self, tier: Tier) -> (&Arc<Pool>, &str) {
        self.tiers.of(tier)
    }

    fn provider_name(&self, tier: Tier) -> &str {
        &self.provider(tier).0.config().name
    }

    fn breaker(&self, tier: Tier) -> &CircuitBreaker {
        match tier {
            Tier::Primary => &self.breakers[0],
            Tier::Secondary => &self.breakers[1],
        }
    }

    /// Whether the secondary's circuit is open or every endpoint of it is ejected (used by
    /// health reporting).
    pub fn secondary_unusable(&self) -> bool {
        self.breaker(Tier::Secondary).state() == BreakerState::Open
            || !self.tiers.secondary.usable()
    }

    fn route_info(&self, tier: Tier, rule: Rule, fallback: Option<FallbackReason>) -> RouteInfo {
        let (provider, model) = self.provider(tier);
        RouteInfo {
            tier,
            provider: provider.config().name.clone(),
            model: model.to_string(),
            cloud: provider.config().is_cloud(),
            fallback,
            rule,
        }
    }

    /// The ledger key of `report` as seen by `client`, and what a call may spend on it: the
    /// client's own per-report cap and day quota when it has them.
    fn scope<'a>(&self, client: Option<&'a Client>, report: &'a str) -> (ReportKey<'a>, Limits) {
        let key = ReportKey {
            client: client.map(|c| c.id.as_str()),
            report,
        };
        let limits = Limits {
            report: client.and_then(|c| c.max_cloud_calls).unwrap_or(self.limit),
            client_day: client.and_then(|c| c.cloud_calls_per_day),
            cost_cap: self.cost_cap,
        };
        (key, limits)
    }

    /// The report's state, including every call this replica has answered: a read waits for
    /// the records still on their way ([`deferred`]).
    async fn read_usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
        self.pending.settled(key).await;
        self.ledger.usage(key).await
    }

    /// Resolves once every record sent after its response has landed (or failed for good);
    /// the server waits for it before exiting.
    pub async fn flush_records(&self) {
        self.pending.idle().await;
    }

    /// The client's day quota now, when it has one (`Err` when the ledger cannot answer).
    async fn day_quota(
        &self,
        key: ReportKey<'_>,
        limits: Limits,
    ) -> Option<Result<QuotaInfo, GatewayError>> {
        let (client, limit) = key.client.zip(limits.client_day)?;
        Some(
            self.ledger
                .client_day_used(client)
                .await
                .map(|used| QuotaInfo { used, limit })
                .map_err(GatewayError::from),
        )
    }

    /// What `Generate` would do now for `client`, without calling anything or spending budget.
    pub async fn resolve(
        &self,
        client: Option<&Client>,
        report_id: &str,
        phase: Phase,
        section: SectionType,
    ) -> (RouteInfo, BudgetInfo, Option<QuotaInfo>) {
        let (key, limits) = self.scope(client, report_id);
        let decision = routing::route(self.policy, phase, section);
        let usage = self.read_usage(key).await;
        let quota = self.day_quota(key, limits).await;
        let budget = budget_from(usage.as_ref().ok(), limits);
        let primary_open = self.breaker(Tier::Primary).state() == BreakerState::Open;
        let quota_spent = matches!(quota, Some(Ok(q)) if q.used >= q.limit);
        let fallback = match (decision.tier, decision.cloud, &usage) {
            (Tier::Secondary, _, _) => None,
            (Tier::Primary, true, Err(_)) => Some(FallbackReason::LedgerUnavailable),
            (Tier::Primary, true, Ok(_)) if matches!(quota, Some(Err(_))) => {
                Some(FallbackReason::LedgerUnavailable)
            }
            (Tier::Primary, true, Ok(_)) if !self.ledger.admits(key) => {
                Some(FallbackReason::LedgerUnavailable)
            }
            (Tier::Primary, true, Ok(u)) if u.is_spent(limits) => Some(FallbackReason::CostLimit),
            (Tier::Primary, true, Ok(_)) if quota_spent => Some(FallbackReason::ClientQuota),
            (Tier::Primary, _, _) if primary_open => Some(FallbackReason::CircuitOpen),
            (Tier::Primary, _, _) => None,
        };
        let tier = if fallback.is_some() {
            Tier::Secondary
        } else {
            decision.tier
        };
        let route = self.route_info(tier, decision.rule, fallback);
        (route, budget, quota.and_then(Result::ok))
    }

    /// One of `client`'s reports and its day quota, or an error when the ledger cannot answer.
    pub async fn usage(
        &self,
        client: Option<&Client>,
        report_id: &str,
    ) -> Result<(ReportUsage, BudgetInfo, Option<QuotaInfo>), GatewayError> {
        let (key, limits) = self.scope(client, report_id);
        let usage = self.read_usage(key).await?;
        let quota = self.day_quota(key, limits).await.transpose()?;
        Ok((usage, budget_from(Some(&usage), limits), quota))
    }

    /// Unary generation.
    pub async fn generate(
        &self,
        input: &GenerateInput,
        deadline: Deadline,
    ) -> Result<Generated, GatewayError> {
        let mut state = CallState::new(self, input, deadline);
        let served = self
            .serve(&mut state, |provider, req| {
                Box::pin(async move { provider.complete(&req).await })
            })
            .await?;
        let Completion {
            text,
            usage,
            finish_reason,
            ..
        } = served.value;
        let route = self.route_info(served.tier, served.decision.rule, served.fallback);
        state.hybrid().routed(&route.provider, &route.model);
        let usage = cost::complete_usage(
            usage,
            state.messages(),
            text.len(),
            0,
            served.sent.max_tokens,
        );
        let (budget, cost) = self
            .finish_call(&state, &route, usage, served.sent.hold)
            .await;
        telemetry::record_route(&Span::current(), &route, &budget);
        Ok(Generated {
            text,
            route,
            usage,
            budget,
            attempts: state.attempts,
            finish_reason,
            cost,
        })
    }

    /// Streaming generation. Retries and fallback happen before the first delta; the returned
    /// channel then yields deltas and a final `Done`, or one error. Dropping the receiver
    /// cancels the upstream request promptly.
    pub fn generate_stream(
        self: &Arc<Self>,
        input: GenerateInput,
        deadline: Deadline,
    ) -> mpsc::Receiver<Result<StreamItem, GatewayError>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let gateway = self.clone();
        let span = Span::current();
        let cx = opentelemetry::Context::current();
        tokio::spawn(
            async move {
                let closed = tx.clone();
                let deadline_at = deadline;
                tokio::select! {
                    // The client went away: dropping the pipeline drops the upstream request.
                    _ = closed.closed() => {
                        tracing::debug!("stream cancelled by the client");
                    }
                    _ = sleep_until(deadline_at) => {
                        let _ = tx.send(Err(GatewayError::DeadlineExceeded)).await;
                    }
                    run = AssertUnwindSafe(gateway.run_stream(&input, deadline, &tx)).catch_unwind() => {
                        if let Err(panic) = run {
                            gateway.metrics.panicked("GenerateStream");
                            telemetry::caught_panic("GenerateStream", &*panic);
                            let _ = tx.send(Err(GatewayError::Internal)).await;
                        }
                    }
                }
            }
            .instrument(span)
            .with_context(cx),
        );
        rx
    }

    async fn run_stream(
        &self,
        input: &GenerateInput,
        deadline: Deadline,
        tx: &mpsc::Sender<Result<StreamItem, GatewayError>>,
    ) {
        let mut state = CallState::new(self, input, deadline);
        let idle = self.stream_idle;
        let served = self
            .serve(&mut state, move |provider, req| {
                Box::pin(open_stream(provider, req, idle))
            })
            .await;
        // `_lease` holds the endpoint's slot while the rest of the stream is read.
        let Served {
            value: (first, mut rest),
            sent:
                Sent {
                    lease: _lease,
                    hold,
                    max_tokens,
                },
            tier,
            fallback,
            decision,
        } = match served {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let route = self.route_info(tier, decision.rule, fallback);
        // Logged as soon as the route is final, before the text flows.
        state.hybrid().routed(&route.provider, &route.model);
        let mut end = None;
        // What was streamed, for a usage estimate when the upstream reports none.
        let (mut chunks, mut bytes) = (0u32, 0usize);
        match first {
            StreamEvent::Delta(text) => {
                chunks += 1;
                bytes += text.len();
                if tx.send(Ok(StreamItem::Delta(text))).await.is_err() {
                    return;
                }
            }
            done @ StreamEvent::Done { .. } => end = Some(done),
        }
        while end.is_none() {
            let error = match rest.next().await {
                Some(Ok(StreamEvent::Delta(text))) => {
                    chunks = chunks.saturating_add(1);
                    bytes = bytes.saturating_add(text.len());
                    if tx.send(Ok(StreamItem::Delta(text))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(done @ StreamEvent::Done { .. })) => {
                    end = Some(done);
                    continue;
                }
                Some(Err(e)) => e,
                None => ProviderError::Truncated,
            };
            let error = error.to_string();
            state
                .hybrid()
                .stream_aborted(&route.provider, &route.model, &error);
            self.metrics.stream_aborted();
            let _ = tx.send(Err(GatewayError::StreamAborted(error))).await;
            return;
        }
        let Some(StreamEvent::Done {
            usage,
            finish_reason,
            ..
        }) = end
        else {
            return;
        };
        let usage = cost::complete_usage(usage, state.messages(), bytes, chunks, max_tokens);
        let (budget, cost) = self.finish_call(&state, &route, usage, hold).await;
        telemetry::record_route(&Span::current(), &route, &budget);
        let _ = tx
            .send(Ok(StreamItem::Done(Generated {
                text: String::new(),
                route,
                usage,
                budget,
                attempts: state.attempts,
                finish_reason,
                cost,
            })))
            .await;
    }

    /// Routes and serves one call up to a successful first result, falling back as needed.
    async fn serve<T, F>(&self, state: &mut CallState<'_>, op: F) -> Result<Served<T>, GatewayError>
    where
        T: Send,
        F: Fn(Arc<dyn Provider>, Arc<ChatRequest>) -> BoxFuture<'static, Result<T, ProviderError>>,
    {
        let input = state.input;
        let decision = routing::route(self.policy, input.phase, input.section_type);
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
        let capped = self.cost_cap.is_some() && pool.config().is_cloud();
        // Built once per tier and shared by its attempts.
        let request = Arc::new(state.chat_request(model, capped.then_some(self.output_ceiling)));
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
            Some(_) => self.worst_case(tier, state, request),
            None => Nanos::ZERO,
        };
        let reservation = self.ledger.reserve(state.key, state.limits, hold).await;
        if let (Some(client), Ok(r)) = (state.key.client, &reservation) {
            self.metrics.client_reservation(client, r.label());
        }
        match reservation {
            Ok(Reservation::Granted { used, cost, held }) => {
                state.last_used = Some(used);
                state.granted = Some(ReportBudget {
                    used,
                    exhausted: false,
                    cloud_cost: cost,
                    held,
                });
                self.tier_metrics[tier.index()].budget_reserved();
                let hold = (hold > Nanos::ZERO).then(|| Hold {
                    ledger: self.ledger.clone(),
                    client: state.key.client.map(Into::into),
                    report: state.key.report.into(),
                    amount: hold,
                    armed: true,
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
                state.quota_spent = Some(QuotaInfo { used, limit });
                Budgeted::QuotaSpent
            }
            Err(e) => {
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
        telemetry::record_request(&span, request.system.as_deref(), &request.prompt);
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

    /// Prices a served call, records it in the ledger (settling its hold) and returns the
    /// report's budget after it and the call's cost.
    async fn finish_call(
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
            release: Nanos::ZERO,
        };
        let metrics = &self.tier_metrics[route.tier.index()];
        metrics.tokens(usage);
        metrics.cost(cost, all_cloud);
        telemetry::record_cost(&Span::current(), usage, cost);
        state
            .hybrid()
            .usage(&route.provider, &route.model, usage, cost.map(Nanos::usd));
        let limits = state.limits;
        // A cloud call on a ledger a round trip away is answered with the budget its
        // reservation returned, adjusted by its own settling; the record follows.
        if self.ledger.defers_records()
            && route.cloud
            && let Some(granted) = state.granted
        {
            let (client, report, release) = match hold {
                Some(hold) => {
                    let (_, client, report, amount) = hold.settle();
                    (client, report, amount)
                }
                None => (
                    state.key.client.map(Into::into),
                    state.key.report.into(),
                    Nanos::ZERO,
                ),
            };
            let after = ReportBudget {
                cloud_cost: granted.cloud_cost.saturating_add(cost.unwrap_or_default()),
                held: granted.held.saturating_sub(release),
                ..granted
            };
            let metrics = self.metrics.clone();
            let record = CallRecord { release, ..record };
            deferred::record_in_background(
                self.ledger.clone(),
                &self.pending,
                client,
                report,
                record,
                move |e| {
                    metrics.record_lost();
                    tracing::warn!(
                        "could not record usage of a call after its response ({} tries): {e}; the report's counters miss it unless a copy still lands (once){}",
                        1 + deferred::RETRIES,
                        if release > Nanos::ZERO {
                            " and its cost hold stays held until the report expires"
                        } else {
                            ""
                        }
                    );
                },
            );
            let budget = BudgetInfo {
                exhausted: state.refused || after.is_spent(limits),
                ..budget_info(after, limits)
            };
            return (budget, cost);
        }
        let recorded = match hold {
            None => self.ledger.record(state.key, record).await,
            // Settling a hold must not be lost if this call is dropped while the ledger works
            // (a deadline, a client gone): the record runs as its own task.
            Some(hold) => {
                let (ledger, client, report, release) = hold.settle();
                let record = CallRecord { release, ..record };
                tokio::spawn(async move {
                    let key = ReportKey {
                        client: client.as_deref(),
                        report: &report,
                    };
                    ledger.record(key, record).await
                })
                .await
                .unwrap_or_else(|_| Err(LedgerError::Unavailable("the record task failed".into())))
            }
        };
        let budget = match recorded {
            Ok(b) => BudgetInfo {
                exhausted: state.refused || b.is_spent(limits),
                ..budget_info(b, limits)
            },
            Err(e) => {
                if let Some(held_back) = self.ledger_warnings.check() {
                    tracing::warn!(held_back, "could not record usage of report: {e}");
                }
                // What this call knows without the ledger: its own last reservation.
                BudgetInfo {
                    used: state.last_used.unwrap_or(0),
                    exhausted: state.refused || state.last_used.is_some_and(|u| u >= limits.report),
                    ..budget_from(None, limits)
                }
            }
        };
        (budget, cost)
    }
}

/// A report's budget as callers see it, under `limits`.
fn budget_from(usage: Option<&ReportUsage>, limits: Limits) -> BudgetInfo {
    budget_info(usage.map(ReportUsage::budget).unwrap_or_default(), limits)
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

/// Opens an upstream stream and waits for its first event, so that failures before the first
/// delta can still be retried or fall back.
async fn open_stream(
    provider: Arc<dyn Provider>,
    request: Arc<ChatRequest>,
    idle: Duration,
) -> Result<(StreamEvent, EventStream), ProviderError> {
    let mut stream = provider.stream(&request, idle).await?;
    match stream.next().await {
        Some(Ok(first)) => Ok((first, stream)),
        Some(Err(e)) => Err(e),
        None => Err(ProviderError::Truncated),
    }
}

/// Resolves when the deadline passes (never, without one).
pub(crate) async fn sleep_until(deadline: Deadline) {
    match deadline.0 {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
