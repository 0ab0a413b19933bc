//! Prometheus metrics, served as text on `VRA_METRICS_ADDR` at `/metrics`.
//!
//! Labels are low-cardinality on purpose: method, phase, tier, provider, model, outcome,
//! reason — never a report id. The attempt-duration histogram has the shape of the
//! OpenTelemetry `gen_ai.client.operation.duration` metric (seconds, its advised buckets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use std::sync::atomic::AtomicU64;

use crate::domain::{CacheStatus, FallbackReason, Nanos, ProviderError, TokenUsage, utc_day};

/// The generation methods of both doors (the `method` label of calls).
const CALL_METHODS: [&str; 4] = [
    "Generate",
    "GenerateStream",
    "ChatCompletions",
    "ChatCompletionsStream",
];

/// Why the edge turns a call away (the `reason` label of `requests_rejected`).
const EDGE_REJECTIONS: [&str; 5] = [
    "missing_credentials",
    "malformed_credentials",
    "invalid_credentials",
    "overloaded",
    "client_max_in_flight",
];

/// A registry that also keeps the exposed name of every family it registers
/// ([`Metrics::family_names`]), so a name is written once.
struct Families<'a> {
    registry: &'a mut Registry,
    prefix: &'static str,
    names: &'a mut Vec<String>,
}

impl Families<'_> {
    fn add(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.names.push(format!("{}_{name}", self.prefix));
        self.registry.register(name, help, metric);
    }

    fn add_with_unit(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names
            .push(format!("{}_{name}_{}", self.prefix, unit.as_str()));
        self.registry.register_with_unit(name, help, unit, metric);
    }
}

/// The `status` label of `cache_requests`: the status in lower case.
fn status_label(status: CacheStatus) -> &'static str {
    match status {
        CacheStatus::Miss => "miss",
        CacheStatus::Hit => "hit",
        CacheStatus::Bypass => "bypass",
    }
}

/// A gauge refresh run before each scrape ([`Metrics::on_scrape`]).
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

/// A counter of dollars.
type UsdCounter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    phase: &'static str,
    tier: &'static str,
    provider: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

/// Endpoints come from configuration (`base_urls`), never from requests: a bounded set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    provider: String,
    endpoint: String,
}

/// Queue waits, in seconds: from nothing to a caller's whole deadline.
const QUEUE_WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Ledger operations, in seconds: from a memory ledger's microseconds to a Redis timeout.
const LEDGER_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

fn ledger_histogram() -> Histogram {
    Histogram::new(LEDGER_BUCKETS)
}

fn queue_wait_histogram() -> Histogram {
    Histogram::new(QUEUE_WAIT_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    model: String,
    outcome: String,
}

/// Providers and models come from configuration: a bounded set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// `gen_ai.client.operation.duration` advised bucket boundaries, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the gateway, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    fallbacks: Family<ReasonLabels, Counter>,
    cost_limit_reports: Counter,
    budget_reserved: Family<ProviderLabels, Counter>,
    attempts: Family<AttemptLabels, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    in_flight: Family<MethodLabels, Gauge>,
    stream_aborts: Counter,
    panics: Family<MethodLabels, Counter>,
    ledger_errors: Family<KindLabels, Counter>,
    records_lost: Counter,
    client_reservations: Family<ClientLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    queue_wait: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    cost: Family<ModelLabels, UsdCounter>,
    savings: UsdCounter,
    cache_requests: Family<StatusLabels, Counter>,
    cache_errors: Family<OpLabels, Counter>,
    cache: CacheMetrics,
    request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    routes: Family<RouteLabels, Counter>,
    ledger_duration: Family<OpLabels, Histogram, fn() -> Histogram>,
    time_to_first_token: Family<MethodLabels, Histogram, fn() -> Histogram>,
    circuit_open: Family<TierLabels, Gauge>,
    endpoints: Family<EndpointStateLabels, Gauge>,
    day_quota_used: Family<ClientOnlyLabels, Gauge>,
    client_cost: Family<ClientOnlyLabels, UsdCounter>,
    /// The UTC day of each client's last day-quota count.
    quota_days: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    day_quota_limit: Family<ClientOnlyLabels, Gauge>,
    process: ProcessMetrics,
    /// Every family's exposed name (see [`Metrics::family_names`]).
    names: Vec<String>,
    /// Refreshes run before each scrape: gauges of state that lives elsewhere (circuits,
    /// endpoint pools).
    on_scrape: std::sync::Mutex<Vec<Refresh>>,
}

/// Rule ids and tiers are fixed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    rule: &'static str,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: &'static str,
    outcome: &'static str,
}

/// Providers come from configuration; tiers are two.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    provider: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointStateLabels {
    provider: String,
    state: &'static str,
}

/// Client ids come from the clients file, never from requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientOnlyLabels {
    client: String,
}

/// The process's own resource series, with the names and units every Prometheus client library
/// uses (`process_*`, no prefix), read from `/proc/self` at each scrape (Linux).
#[derive(Debug, Default)]
struct ProcessMetrics {
    resident_memory_bytes: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    open_fds: Gauge,
    start_time_seconds: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// The response cache's size series, by handle: fed by the memory store as entries come and go.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    bytes: Gauge,
    evictions: Counter,
}

impl CacheMetrics {
    /// An entry of `bytes` stored.
    pub fn added(&self, bytes: u64) {
        self.bytes.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// An entry of `bytes` gone (expired, replaced, purged, or `evicted` for room).
    pub fn removed(&self, bytes: u64, evicted: bool) {
        self.bytes.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        if evicted {
            self.evictions.inc();
        }
    }
}

/// One provider's series, by handle (see [`Metrics::provider`]): the same series the
/// label-taking methods of [`Metrics`] update.
#[derive(Clone, Debug)]
pub struct ProviderMetrics {
    budget_reserved: Counter,
    queue_wait: Histogram,
    attempt_ok: Histogram,
    input_tokens: Counter,
    output_tokens: Counter,
    /// `None` for a model without a price.
    cost: Option<UsdCounter>,
    savings: UsdCounter,
}

impl ProviderMetrics {
    pub fn budget_reserved(&self) {
        self.budget_reserved.inc();
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A successful attempt (failures go through [`Metrics::attempt_failed`], by error kind).
    pub fn attempt_ok(&self, elapsed: Duration) {
        self.attempt_ok.observe(elapsed.as_secs_f64());
    }

    pub fn tokens(&self, usage: TokenUsage) {
        self.input_tokens.inc_by(u64::from(usage.input));
        self.output_tokens.inc_by(u64::from(usage.output));
    }

    /// Adds an answered call's cost (when its model has a price) and what it saved against
    /// the primary model (when both have one).
    pub fn cost(&self, cost: Option<Nanos>, all_cloud: Option<Nanos>) {
        let (Some(series), Some(cost)) = (&self.cost, cost) else {
            return;
        };
        series.inc_by(cost.usd());
        if let Some(all_cloud) = all_cloud {
            let saved = all_cloud.saturating_sub(cost);
            if saved > Nanos::ZERO {
                self.savings.inc_by(saved.usd());
            }
        }
    }
}

/// Client ids come from the clients file, never from requests: a bounded label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Every family's exposed name (a counter's without `_total`), for checks.
        let mut names: Vec<String> = Vec::new();
        let process = ProcessMetrics::default();
        {
            let mut p = Families {
                registry: root.sub_registry_with_prefix("process"),
                prefix: "process",
                names: &mut names,
            };
            p.add_with_unit(
                "resident_memory",
                "Resident memory size in bytes",
                Unit::Bytes,
                process.resident_memory_bytes.clone(),
            );
            p.add_with_unit(
                "cpu",
                "Total user and system CPU time spent in seconds",
                Unit::Seconds,
                process.cpu_seconds.clone(),
            );
            p.add(
                "open_fds",
                "Number of open file descriptors",
                process.open_fds.clone(),
            );
            p.add_with_unit(
                "start_time",
                "Start time of the process since the Unix epoch in seconds",
                Unit::Seconds,
                process.start_time_seconds.clone(),
            );
        }
        let mut registry = Families {
            registry: root.sub_registry_with_prefix("vra_gateway"),
            prefix: "vra_gateway",
            names: &mut names,
        };
        let requests = Family::default();
        registry.add(
            "requests",
            "gRPC generation calls by method, phase, tier, provider and outcome",
            requests.clone(),
        );
        let fallbacks = Family::default();
        registry.add(
            "fallbacks",
            "Calls served by the secondary instead of the primary, by reason",
            fallbacks.clone(),
        );
        let cost_limit_reports = Counter::default();
        registry.add(
            "cost_limit_reports",
            "Reports whose cloud budget was exhausted",
            cost_limit_reports.clone(),
        );
        let budget_reserved = Family::default();
        registry.add(
            "budget_units_reserved",
            "Cloud budget units reserved (one per cloud HTTP request)",
            budget_reserved.clone(),
        );
        let attempts = Family::<AttemptLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.add(
            "upstream_attempt_duration_seconds",
            "Duration of upstream HTTP attempts (gen_ai.client.operation.duration)",
            attempts.clone(),
        );
        let tokens = Family::default();
        registry.add(
            "tokens",
            "Tokens reported by upstreams, by provider and type (input/output)",
            tokens.clone(),
        );
        let in_flight = Family::default();
        registry.add(
            "in_flight_requests",
            "gRPC generation calls in progress",
            in_flight.clone(),
        );
        let stream_aborts = Counter::default();
        registry.add(
            "stream_aborts",
            "Streams ended by an upstream error after the first delta",
            stream_aborts.clone(),
        );
        let panics = Family::default();
        registry.add(
            "panics",
            "Request tasks that panicked (a bug); the caller got INTERNAL",
            panics.clone(),
        );
        let ledger_errors = Family::default();
        registry.add(
            "ledger_errors",
            "Budget reservations the ledger could not answer (unavailable, timeout, full); the call failed safe",
            ledger_errors.clone(),
        );
        let records_lost = Counter::default();
        registry.add(
            "ledger_records_lost",
            "Call records sent after their response that the ledger never confirmed (after retries); the report's counters miss those calls unless a copy still lands",
            records_lost.clone(),
        );
        let client_reservations = Family::default();
        registry.add(
            "client_cloud_reservations",
            "Cloud reservations of authenticated clients, by client and outcome (granted, report_budget, day_quota)",
            client_reservations.clone(),
        );
        let rejected = Family::default();
        registry.add(
            "requests_rejected",
            "Calls turned away at the edge before any service, by reason (missing_credentials, malformed_credentials, invalid_credentials)",
            rejected.clone(),
        );
        let ejections = Family::default();
        registry.add(
            "endpoint_ejections",
            "Endpoints ejected from their provider's pool after consecutive failures (or a failed probe)",
            ejections.clone(),
        );
        let queue_wait =
            Family::<ProviderLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                queue_wait_histogram,
            );
        registry.add(
            "queue_wait_seconds",
            "Time an attempt waited for a free endpoint (max_in_flight) before it was sent",
            queue_wait.clone(),
        );
        let cost = Family::default();
        registry.add(
            "cost_usd",
            "Cost of answered calls in USD (tokens x the model's price), by provider and model; calls of unpriced models are not counted",
            cost.clone(),
        );
        let savings = UsdCounter::default();
        registry.add(
            "savings_usd",
            "USD saved by hybrid routing: each answered call's tokens priced at the primary model, minus its actual cost (never negative)",
            savings.clone(),
        );
        let cache_requests = Family::default();
        registry.add(
            "cache_requests",
            "Generation calls by response-cache status: hit (answered from the cache), miss (answered upstream), bypass (not looked up: the caller's options, or the store unreachable)",
            cache_requests.clone(),
        );
        let cache_errors = Family::default();
        registry.add(
            "cache_errors",
            "Response-cache store operations that failed (get, put, purge); the call went on without the cache",
            cache_errors.clone(),
        );
        let cache = CacheMetrics::default();
        registry.add(
            "cache_bytes",
            "Bytes the in-memory response cache holds (text and bookkeeping; VRA_CACHE_MAX_BYTES bounds it)",
            cache.bytes.clone(),
        );
        registry.add(
            "cache_evictions",
            "Entries the in-memory response cache evicted, least recently used first, to stay under VRA_CACHE_MAX_BYTES",
            cache.evictions.clone(),
        );
        let request_duration =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.add(
            "request_duration_seconds",
            "Generation calls, end to end (both doors), by method and outcome; streams until their last message",
            request_duration.clone(),
        );
        let time_to_first_token =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.add(
            "time_to_first_token_seconds",
            "Streamed calls: time from the call's arrival to its first delta",
            time_to_first_token.clone(),
        );
        let routes = Family::default();
        registry.add(
            "routes",
            "Answered generation calls by the matrix rule that routed them and the tier that answered (a fallback: the rule of the primary, the secondary's tier)",
            routes.clone(),
        );
        let ledger_duration =
            Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                ledger_histogram,
            );
        registry.add(
            "ledger_duration_seconds",
            "Budget ledger operations a call waits for, by operation (reserve), answered or not",
            ledger_duration.clone(),
        );
        let circuit_open = Family::default();
        registry.add(
            "circuit_open",
            "1 while a tier's circuit breaker is open (calls skip its provider), else 0",
            circuit_open.clone(),
        );
        let endpoints = Family::default();
        registry.add(
            "endpoints",
            "A provider's endpoints by state: healthy, or ejected (until a probe succeeds)",
            endpoints.clone(),
        );
        let client_cost = Family::default();
        registry.add(
            "client_cost_usd",
            "Cost of the answered calls of authenticated clients in USD, by client (calls of unpriced models are not counted)",
            client_cost.clone(),
        );
        let day_quota_used = Family::default();
        registry.add(
            "client_day_quota_used",
            "Cloud calls a client with cloud_calls_per_day made in the current UTC day, as its last reservation saw",
            day_quota_used.clone(),
        );
        let day_quota_limit = Family::default();
        registry.add(
            "client_day_quota_limit",
            "A client's cloud_calls_per_day",
            day_quota_limit.clone(),
        );
        // Series of fixed label sets exist from the start, at 0: a rate() over them works from
        // the first scrape, and a dashboard panel or alert shows 0 instead of "no data".
        for method in CALL_METHODS {
            let _ = panics.get_or_create(&MethodLabels { method });
            let _ = in_flight.get_or_create(&MethodLabels { method });
        }
        for reason in FallbackReason::ALL {
            let _ = fallbacks.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        for kind in ["unavailable", "timeout", "unconfirmed", "rejected", "full"] {
            let _ = ledger_errors.get_or_create(&KindLabels { kind });
        }
        for reason in EDGE_REJECTIONS {
            let _ = rejected.get_or_create(&ReasonLabels { reason });
        }
        for status in CacheStatus::ALL.map(status_label) {
            let _ = cache_requests.get_or_create(&StatusLabels { status });
        }
        for op in ["get", "put", "purge"] {
            let _ = cache_errors.get_or_create(&OpLabels { op });
        }
        Self {
            registry: root,
            request_duration,
            routes,
            ledger_duration,
            time_to_first_token,
            circuit_open,
            endpoints,
            day_quota_used,
            day_quota_limit,
            client_cost,
            quota_days: std::sync::Mutex::default(),
            process,
            on_scrape: std::sync::Mutex::default(),
            names,
            cost,
            savings,
            cache_requests,
            cache_errors,
            cache,
            ejections,
            queue_wait,
            client_reservations,
            rejected,
            panics,
            ledger_errors,
            records_lost,
            requests,
            fallbacks,
            cost_limit_reports,
            budget_reserved,
            attempts,
            tokens,
            in_flight,
            stream_aborts,
        }
    }

    /// Counts a finished generation call.
    pub fn request(
        &self,
        method: &'static str,
        phase: &'static str,
        tier: &'static str,
        provider: &str,
        outcome: &'static str,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                phase,
                tier,
                provider: provider.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts a cloud reservation of an authenticated client.
    pub fn client_reservation(&self, client: &str, outcome: &'static str) {
        self.client_reservations
            .get_or_create(&ClientLabels {
                client: client.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn fallback(&self, reason: FallbackReason) {
        self.fallbacks
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a generation call's cache status.
    pub fn cache_request(&self, status: CacheStatus) {
        self.cache_requests
            .get_or_create(&StatusLabels {
                status: status_label(status),
            })
            .inc();
    }

    /// Counts a failed cache store operation.
    pub fn cache_error(&self, op: &'static str) {
        self.cache_errors.get_or_create(&OpLabels { op }).inc();
    }

    /// The handles the memory store feeds.
    pub fn cache(&self) -> CacheMetrics {
        self.cache.clone()
    }

    pub fn report_hit_cost_limit(&self) {
        self.cost_limit_reports.inc();
    }

    /// The handles of `provider`'s series (and of its `model`'s), resolved once: looking a
    /// label set up hashes it and allocates its strings, which the call path should not do.
    /// `priced`: whether the model has a price (an unpriced model gets no cost series).
    pub fn provider(&self, provider: &str, model: &str, priced: bool) -> ProviderMetrics {
        let by_provider = ProviderLabels {
            provider: provider.to_string(),
        };
        let tokens = |r#type| {
            self.tokens
                .get_or_create(&TokenLabels {
                    provider: provider.to_string(),
                    r#type,
                })
                .clone()
        };
        ProviderMetrics {
            budget_reserved: self.budget_reserved.get_or_create(&by_provider).clone(),
            queue_wait: self.queue_wait.get_or_create(&by_provider).clone(),
            attempt_ok: self
                .attempts
                .get_or_create(&AttemptLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    outcome: "ok".to_string(),
                })
                .clone(),
            input_tokens: tokens("input"),
            output_tokens: tokens("output"),
            cost: priced.then(|| {
                self.cost
                    .get_or_create(&ModelLabels {
                        provider: provider.to_string(),
                        model: model.to_string(),
                    })
                    .clone()
            }),
            savings: self.savings.clone(),
        }
    }

    /// Makes `provider`'s `endpoint` known to the ejection counter (0 until its first ejection).
    pub fn endpoint_known(&self, provider: &str, endpoint: &str) {
        let _ = self.ejections.get_or_create(&EndpointLabels {
            provider: provider.to_string(),
            endpoint: endpoint.to_string(),
        });
    }

    /// Counts an endpoint ejected from `provider`'s pool.
    pub fn endpoint_ejected(&self, provider: &str, endpoint: &str) {
        self.ejections
            .get_or_create(&EndpointLabels {
                provider: provider.to_string(),
                endpoint: endpoint.to_string(),
            })
            .inc();
    }

    /// A failed attempt, by error kind (a successful one: [`ProviderMetrics::attempt_ok`]).
    pub fn attempt_failed(
        &self,
        provider: &str,
        model: &str,
        error: &ProviderError,
        elapsed: Duration,
    ) {
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: provider.to_string(),
                model: model.to_string(),
                outcome: error.kind(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A call's record, sent after its response, could not be made.
    pub fn record_lost(&self) {
        self.records_lost.inc();
    }

    pub fn stream_aborted(&self) {
        self.stream_aborts.inc();
    }

    /// Counts a request task that panicked.
    pub fn panicked(&self, method: &'static str) {
        self.panics.get_or_create(&MethodLabels { method }).inc();
    }

    /// Counts a reservation the ledger could not answer, by kind (`full`, `timeout`, ...).
    pub fn ledger_error(&self, kind: &'static str) {
        self.ledger_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a call rejected at the edge (authentication), by a low-cardinality reason.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Tracks one in-flight call until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>, method: &'static str) -> InFlight {
        self.in_flight.get_or_create(&MethodLabels { method }).inc();
        InFlight {
            metrics: self.clone(),
            method,
        }
    }

    /// The Prometheus text exposition of every metric.
    /// The name of every metric family the gateway exports, as exposed (a counter's without its
    /// `_total`) — also the ones without a series yet, which a scrape leaves out. The dashboard's
    /// and the alert rules' checks read it.
    pub fn family_names(&self) -> &[String] {
        &self.names
    }

    /// Runs `refresh` before every scrape (gauges of state kept elsewhere).
    pub fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.on_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(refresh));
    }

    /// A generation call's end-to-end duration.
    pub fn request_duration(&self, method: &'static str, outcome: &'static str, took: Duration) {
        self.request_duration
            .get_or_create(&DurationLabels { method, outcome })
            .observe(took.as_secs_f64());
    }

    /// An answered call's route: the rule that decided and the tier that answered.
    pub fn route(&self, rule: &'static str, tier: &'static str) {
        self.routes.get_or_create(&RouteLabels { rule, tier }).inc();
    }

    /// How long a ledger operation the call waited for took.
    pub fn ledger_duration(&self, op: &'static str, took: Duration) {
        self.ledger_duration
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
    }

    /// A streamed call's time to its first delta.
    pub fn time_to_first_token(&self, method: &'static str, took: Duration) {
        self.time_to_first_token
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    /// Whether `tier`'s circuit (its provider's) is open now.
    pub fn circuit(&self, provider: &str, tier: &'static str, open: bool) {
        self.circuit_open
            .get_or_create(&TierLabels {
                provider: provider.to_string(),
                tier,
            })
            .set(i64::from(open));
    }

    /// A provider's endpoints now.
    pub fn endpoints(&self, provider: &str, healthy: usize, ejected: usize) {
        for (state, n) in [("healthy", healthy), ("ejected", ejected)] {
            self.endpoints
                .get_or_create(&EndpointStateLabels {
                    provider: provider.to_string(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Day-quota counts of an earlier UTC day read 0: the client has made no call today.
    fn expire_day_quotas(&self) {
        let today = utc_day();
        let days = self
            .quota_days
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (client, day) in days.iter() {
            if *day < today {
                self.day_quota_used
                    .get_or_create(&ClientOnlyLabels {
                        client: client.clone(),
                    })
                    .set(0);
            }
        }
    }

    /// Adds an answered call's cost to its client's.
    pub fn client_cost(&self, client: &str, cost: Nanos) {
        self.client_cost
            .get_or_create(&ClientOnlyLabels {
                client: client.to_string(),
            })
            .inc_by(cost.usd());
    }

    /// A client's day quota as its last reservation saw it. The count is of the current UTC day:
    /// a scrape on a later day shows it at 0 until the client reserves again.
    pub fn client_day_quota(&self, client: &str, used: u32, limit: u32) {
        let labels = ClientOnlyLabels {
            client: client.to_string(),
        };
        self.quota_days
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(client.to_string(), utc_day());
        self.day_quota_used
            .get_or_create(&labels)
            .set(i64::from(used));
        self.day_quota_limit
            .get_or_create(&labels)
            .set(i64::from(limit));
    }

    pub fn render(&self) -> String {
        {
            // One refresh at a time: two scrapes at once must not add the same CPU twice.
            let refreshes = self
                .on_scrape
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for refresh in refreshes.iter() {
                refresh(self);
            }
            self.process.refresh();
            self.expire_day_quotas();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl ProcessMetrics {
    /// Reads `/proc/self` (nothing elsewhere: the series stay 0).
    fn refresh(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let ticks = clock_ticks();
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let total = (utime + stime) as f64 / ticks;
            let seen = self.cpu_seconds.get();
            if total > seen {
                self.cpu_seconds.inc_by(total - seen);
            }
        }
        // `VmRSS` is in kB whatever the page size.
        let rss_kb = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            });
        if let Some(kb) = rss_kb {
            self.resident_memory_bytes
                .set(i64::try_from(kb.saturating_mul(1024)).unwrap_or(i64::MAX));
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            let at = boot + start as f64 / ticks;
            self.start_time_seconds.set(at as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
    }
}

/// Clock ticks per second of `/proc/self/stat`'s times (`USER_HZ`, `getconf CLK_TCK`): 100 on
/// every Linux architecture the gateway is built for (the kernel fixes it for user space).
fn clock_ticks() -> f64 {
    100.0
}

/// The boot time (Unix seconds), from `/proc/stat`'s `btime`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight {
    metrics: Arc<Metrics>,
    method: &'static str,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics
            .in_flight
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .dec();
    }
}

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics listener; a failure is reported but does not stop the gateway.
pub async fn bind(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!("metrics disabled: cannot listen on {addr} (VRA_METRICS_ADDR): {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_low_cardinality_labels() {
        let m = Arc::new(Metrics::new());
        m.request("Generate", "DRAFT", "PRIMARY", "openai", "ok");
        m.fallback(FallbackReason::CostLimit);
        let openai = m.provider("openai", "gpt-4o", true);
        openai.attempt_ok(Duration::from_millis(30));
        openai.tokens(TokenUsage::reported(3, 4));
        m.attempt_failed(
            "openai",
            "gpt-4o",
            &ProviderError::Timeout,
            Duration::from_millis(30),
        );
        {
            let _g = m.in_flight("Generate");
            assert!(
                m.render()
                    .contains("vra_gateway_in_flight_requests{method=\"Generate\"} 1")
            );
        }
        let text = m.render();
        assert!(text.contains("vra_gateway_requests_total{method=\"Generate\",phase=\"DRAFT\",tier=\"PRIMARY\",provider=\"openai\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("vra_gateway_fallbacks_total{reason=\"COST_LIMIT\"} 1"));
        assert!(text.contains("vra_gateway_upstream_attempt_duration_seconds_bucket{le=\"0.04\",provider=\"openai\",model=\"gpt-4o\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("vra_gateway_upstream_attempt_duration_seconds_count{provider=\"openai\",model=\"gpt-4o\",outcome=\"timeout\"} 1"), "{text}");
        assert!(text.contains("vra_gateway_tokens_total{provider=\"openai\",type=\"output\"} 4"));
        assert!(text.contains("vra_gateway_in_flight_requests{method=\"Generate\"} 0"));
    }

    #[test]
    fn cost_and_savings_count_dollars() {
        let m = Metrics::new();
        // A local call priced 0 that would have cost $0.0075 on the primary.
        m.provider("local", "llama3:8b", true)
            .cost(Some(Nanos::ZERO), Some(Nanos(7_500_000)));
        m.provider("openai", "gpt-4o", true)
            .cost(Some(Nanos(2_500_000)), Some(Nanos(2_500_000)));
        // Unpriced: neither cost nor savings, and no series.
        m.provider("openai", "mystery", false)
            .cost(None, Some(Nanos(1)));
        let text = m.render();
        assert!(
            text.contains(
                "vra_gateway_cost_usd_total{provider=\"openai\",model=\"gpt-4o\"} 0.0025"
            ),
            "{text}"
        );
        assert!(
            text.contains("vra_gateway_cost_usd_total{provider=\"local\",model=\"llama3:8b\"} 0.0"),
            "{text}"
        );
        assert!(
            text.contains("vra_gateway_savings_usd_total 0.0075"),
            "{text}"
        );
        assert!(
            !text.contains("vra_gateway_cost_usd_total{provider=\"openai\",model=\"mystery\"}"),
            "{text}"
        );
    }

    #[test]
    fn a_day_quota_count_of_an_earlier_day_reads_zero() {
        let m = Metrics::new();
        m.client_day_quota("acme", 95, 100);
        assert!(
            m.render()
                .contains("vra_gateway_client_day_quota_used{client=\"acme\"} 95")
        );
        // The count was of yesterday: today the client has made no call.
        m.quota_days
            .lock()
            .unwrap()
            .insert("acme".into(), utc_day() - 1);
        let text = m.render();
        assert!(
            text.contains("vra_gateway_client_day_quota_used{client=\"acme\"} 0"),
            "{text}"
        );
        assert!(text.contains("vra_gateway_client_day_quota_limit{client=\"acme\"} 100"));
    }
}
