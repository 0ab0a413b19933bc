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
//! Everything acquired is a guard (the breaker's
//! [`CallPermit`](crate::resilience::CallPermit), the endpoint
//! [`Lease`](crate::providers::pool::Lease), a place in an endpoint queue, the in-flight gauge),
//! so a call dropped anywhere — by a deadline, a cancel or a panic — leaves no state behind.
//! The one exception is deliberate: a budget unit reserved for an attempt stays spent even if
//! the request never left, because the ledger cannot know whether it reached the cloud.
//!
//! Money: with `MAX_CLOUD_COST_USD`, each cloud attempt also holds its worst-case cost (an
//! upper bound of its input tokens, plus its `max_tokens` — the gateway sends
//! `VRA_MAX_OUTPUT_TOKENS` when the caller set none) in the same reservation. The hold
//! (`hold::Hold`) is a guard: a failed attempt releases it, an answered call settles it to the
//! actual cost when it is recorded, and a call dropped mid-way is charged the whole hold (the upstream may have
//! billed it). Every answered call is priced ([`crate::cost`]); usage the upstream did not
//! report is estimated and marked.
//!
//! # Layout
//!
//! - this file: the entry points ([`Gateway::generate`], [`Gateway::generate_stream`],
//!   [`Gateway::resolve`], [`Gateway::usage`]), the shared state and a call's bookkeeping;
//! - `tier`: the tier loop — which tier serves, its attempts under a breaker permit, the budget
//!   step before each attempt, retries;
//! - `hold`: the cost hold guard;
//! - `record`: pricing an answered call and recording it (inline or after the response);
//! - `stream`: a streamed call after its first event.

use std::sync::Arc;
use std::time::Duration;

use tracing::Span;

use crate::budget::deferred::Pending;
use crate::budget::known::KnownBudgets;
use crate::budget::{Ledger, LedgerError, Limits, ReportBudget, ReportKey, ReportUsage};
use crate::cache::Cache;
use crate::config::Config;
use crate::cost::{self, Price};
use crate::domain::{
    BudgetInfo, CacheOptions, CacheStatus, ChatMessage, Client, FallbackReason, Nanos, Phase,
    QuotaInfo, RouteInfo, Rule, SectionType, Tier, TokenUsage,
};
use crate::error::GatewayError;
use crate::metrics::{Metrics, ProviderMetrics};
use crate::providers::pool::Pool;
use crate::providers::{ChatRequest, Completion, Tiers};
use crate::resilience::{BreakerState, CircuitBreaker, Deadline, RetryPolicy};
use crate::routing::{self, Policy};
use crate::telemetry::{self, Hybrid};
use crate::throttle::Throttle;

mod cache;
mod hold;
mod record;
mod stream;
mod tier;

use cache::Looked;
use record::budget_from;

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateInput {
    pub report_id: String,
    pub section_id: String,
    pub section_type: SectionType,
    pub phase: Phase,
    /// The conversation, in order; it holds at least one user turn.
    pub messages: Arc<[ChatMessage]>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    /// The tier the caller named (a pinned model), instead of the matrix's.
    pub pin: Option<Tier>,
    /// The authenticated caller (`None` with authentication off).
    pub client: Option<Arc<Client>>,
    /// How the call uses the response cache.
    pub cache: CacheOptions,
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
    /// The call's cost; `None` when its model has no price (0 for a cache hit).
    pub cost: Option<Nanos>,
    /// Whether the answer came from the response cache (`None`: no cache configured).
    pub cache: Option<CacheStatus>,
}

/// One message of a generation stream: `Started` once the route is final (before any text),
/// then deltas, then `Done` — or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Started(Started),
    Delta(String),
    Done(Generated),
}

/// What a stream's caller can know before the first delta: who answers, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub route: RouteInfo,
    pub attempts: u32,
    /// The report's cloud calls as this call's last reservation left them (`None`: it
    /// reserved none).
    pub cloud_calls_used: Option<u32>,
    pub cloud_calls_limit: u32,
    /// Whether the answer comes from the response cache (`None`: no cache configured).
    pub cache: Option<CacheStatus>,
}

/// The gateway's shared state: providers, ledger, policies. Cheap to share behind an `Arc`.
pub struct Gateway {
    limit: u32,
    policy: Policy,
    tiers: Tiers,
    ledger: Arc<dyn Ledger>,
    /// Records sent after their response ([`Ledger::defers_records`]), by report.
    pending: Arc<Pending>,
    /// The budget last seen per report, shown by answers that take no unit when records are
    /// deferred.
    known: KnownBudgets,
    retry: RetryPolicy,
    breakers: [CircuitBreaker; 2],
    stream_idle: Duration,
    metrics: Arc<Metrics>,
    /// Each tier's provider series, by tier index (resolved once, not per call).
    tier_metrics: [ProviderMetrics; 2],
    /// A ledger that is down or full fails every call the same way: one warning a second
    /// (shared with the record tasks).
    ledger_warnings: Arc<Throttle>,
    /// Each tier's model price (`None`: a cloud model without a price), by tier index.
    prices: [Option<Price>; 2],
    /// `MAX_CLOUD_COST_USD`.
    cost_cap: Option<Nanos>,
    /// `VRA_HOLD_GRACE_MS`: how long a cost hold outlives its attempt's deadline.
    hold_grace: Duration,
    /// The longest one upstream attempt may last: the providers' timeouts and the stream cap
    /// (`VRA_STREAM_MAX_MS`). A hold never lives longer than this plus its grace, which the
    /// configuration keeps below the report TTL.
    longest_attempt: Duration,
    /// `VRA_MAX_OUTPUT_TOKENS`: `max_tokens` of a cloud request without one, under a cost cap.
    output_ceiling: u32,
    /// The price "all on the primary" is computed at: the primary's, when it is cloud tier
    /// (with a local primary an all-cloud equivalent means nothing, and is left unknown).
    all_cloud_price: Option<Price>,
    /// The response cache (`VRA_CACHE`), when on.
    cache: Option<Arc<Cache>>,
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
            messages: Arc::clone(&input.messages),
            temperature: input.temperature,
            top_p: input.top_p,
            max_tokens: input.max_tokens.or(ceiling),
            stop: input.stop.clone(),
            seed: input.seed,
        }
    }

    /// The texts of the request's messages, for token estimates.
    fn messages(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.input.messages.iter().map(|m| m.content.as_str())
    }
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
            known: KnownBudgets::new(config.ledger.report_ttl),
            retry: config.retry.into(),
            breakers: [
                CircuitBreaker::new(config.circuit),
                CircuitBreaker::new(config.circuit),
            ],
            stream_idle: config.stream_idle_timeout,
            ledger_warnings: Arc::new(Throttle::new(Duration::from_secs(1))),
            prices,
            cost_cap: config.max_cloud_cost,
            hold_grace: config.ledger.hold_grace,
            longest_attempt: [
                config.primary.provider.timeout,
                config.secondary.provider.timeout,
                config.limits.stream_max,
            ]
            .into_iter()
            .max()
            .unwrap_or_default(),
            output_ceiling: config.max_output_tokens,
            all_cloud_price: config
                .primary
                .provider
                .is_cloud()
                .then(|| config.pricing.lookup(&config.primary.model, true).price())
                .flatten(),
            metrics,
            tier_metrics,
            cache: None,
        }
    }

    /// The gateway with a response cache.
    pub fn with_cache(self, cache: Option<Arc<Cache>>) -> Self {
        Self { cache, ..self }
    }

    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
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

    /// Sets the gauges of state kept here (each tier's circuit, each pool's endpoints); the
    /// metrics call it before every scrape.
    pub fn report_health(&self, metrics: &Metrics) {
        for tier in [Tier::Primary, Tier::Secondary] {
            let pool = self.provider(tier).0;
            let name = &pool.config().name;
            metrics.circuit(
                name,
                tier.as_str(),
                self.breaker(tier).state() != BreakerState::Closed,
            );
            let (healthy, ejected) = pool.health();
            metrics.endpoints(name, healthy, ejected);
            for endpoint in pool.endpoints() {
                metrics.endpoint_known(name, endpoint);
            }
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
        let usage = self.ledger.usage(key).await?;
        if self.ledger.defers_records() {
            self.known.note(key, usage.budget());
        }
        Ok(usage)
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
        let decision = self.decide(input);
        let cached = match self.cache_lookup(&state, decision).await? {
            Looked::Hit(entry) => return Ok(self.answer_cached(&state, decision, &entry).await),
            Looked::Go(cached) => cached,
        };
        let served = self
            .serve(&mut state, decision, |provider, req| {
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
        let cache = cached.status();
        self.cache_store(&state, cached, &route, &text, usage, &finish_reason)
            .await;
        Ok(Generated {
            text,
            route,
            usage,
            budget,
            attempts: state.attempts,
            finish_reason,
            cost,
            cache,
        })
    }

    /// The matrix's decision for a call (or the tier the caller pinned).
    fn decide(&self, input: &GenerateInput) -> routing::Decision {
        match input.pin {
            Some(tier) => routing::pinned(self.policy, tier),
            None => routing::route(self.policy, input.phase, input.section_type),
        }
    }
}
