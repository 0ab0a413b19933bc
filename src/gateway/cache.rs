//! The response cache in the pipeline ([`crate::cache`]): the lookup after routing and before
//! any budget step, a hit's answer and record, and the store of a finished answer under the
//! tier that actually answered.

use std::sync::Arc;

use tracing::Span;

use crate::budget::{CallRecord, HeldCost};
use crate::cache::flight::FlightGuard;
use crate::cache::{CacheKey, Entry, KeyInput, Lookup};
use crate::domain::{CacheMode, CacheStatus, Client, Nanos, RouteInfo, Tier, TokenUsage};
use crate::error::GatewayError;
use crate::routing::Decision;
use crate::telemetry;

use super::{CallState, Gateway, Generated};

/// What the lookup decided.
pub(super) enum Looked {
    /// Answer with this entry; nothing goes upstream.
    Hit(Arc<Entry>),
    /// Go upstream; then store (or not) as [`CacheCall`] says.
    Go(CacheCall),
}

/// A call that goes upstream, as the cache sees it.
pub(super) struct CacheCall {
    /// `None` without a cache.
    status: Option<CacheStatus>,
    /// Whether its finished answer is stored.
    store: bool,
    /// The key looked up (the routed tier's), and the flight this call leads on it.
    looked_up: Option<(Tier, CacheKey, Option<FlightGuard>)>,
}

impl CacheCall {
    const OFF: CacheCall = CacheCall {
        status: None,
        store: false,
        looked_up: None,
    };

    pub(super) fn status(&self) -> Option<CacheStatus> {
        self.status
    }
}

impl Gateway {
    /// `PurgeCache`: drops `target`'s cached answers (`None`: every answer). Admin only: with
    /// authentication on, `caller` needs `admin = true`.
    pub async fn purge_cache(
        &self,
        caller: Option<&Client>,
        target: Option<&str>,
    ) -> Result<u64, GatewayError> {
        if caller.is_some_and(|c| !c.admin) {
            return Err(GatewayError::PermissionDenied { what: "PurgeCache" });
        }
        let cache = self.cache.as_ref().ok_or(GatewayError::NoCache)?;
        let purged = cache
            .purge(target)
            .await
            .map_err(|e| GatewayError::CacheStore(e.to_string()))?;
        tracing::info!(
            purged,
            client = target,
            by = caller.map(|c| c.id.as_str()),
            "response cache purged: {purged} answers of {}",
            target.map_or_else(|| "every client".to_string(), |c| format!("client {c}"))
        );
        Ok(purged)
    }

    /// `max_tokens` as `tier` is sent it: the caller's, else the gateway's ceiling for a cloud
    /// tier under a cost cap.
    pub(super) fn ceiling(&self, tier: Tier) -> Option<u32> {
        let capped = self.cost_cap.is_some() && self.provider(tier).0.config().is_cloud();
        capped.then_some(self.output_ceiling)
    }

    /// Whether a streamed call keeps its text for the cache.
    pub(super) fn cache_keeps(&self, call: &CacheCall) -> bool {
        call.store && self.cache.is_some()
    }

    /// Whether an answer of `bytes` may be stored.
    pub(super) fn cache_fits(&self, bytes: usize) -> bool {
        self.cache.as_ref().is_some_and(|c| c.fits(bytes))
    }

    /// The key of the call's request as `tier` would receive it.
    fn cache_key(&self, state: &CallState<'_>, tier: Tier) -> CacheKey {
        let input = state.input;
        let (pool, model) = self.provider(tier);
        CacheKey::new(&KeyInput {
            client: state.key.client,
            tier,
            provider: &pool.config().name,
            model,
            phase: input.phase,
            section: input.section_type,
            messages: &input.messages,
            temperature: input.temperature,
            top_p: input.top_p,
            max_tokens: input.max_tokens.or(self.ceiling(tier)),
            stop: &input.stop,
            seed: input.seed,
        })
    }

    /// Looks the routed tier's answer up, as the call's options allow; a miss leads the key's
    /// flight (identical calls wait for it). `ONLY_IF_CACHED` without an answer is an error.
    pub(super) async fn cache_lookup(
        &self,
        state: &CallState<'_>,
        decision: Decision,
    ) -> Result<Looked, GatewayError> {
        let options = state.input.cache;
        let Some(cache) = &self.cache else {
            // No cache holds no answer.
            if options.mode == CacheMode::OnlyIfCached {
                return Err(GatewayError::NotCached);
            }
            return Ok(Looked::Go(CacheCall::OFF));
        };
        let skip = match options.mode {
            CacheMode::NoStore => Some(false),
            CacheMode::NoCache => Some(true),
            _ if options.max_age.is_some_and(|age| age.is_zero()) => Some(true),
            _ => None,
        };
        let looked = match skip {
            Some(store) => Looked::Go(CacheCall {
                status: Some(CacheStatus::Bypass),
                store,
                looked_up: None,
            }),
            None => {
                let key = self.cache_key(state, decision.tier);
                match cache.lookup(&key, options.max_age, state.deadline).await {
                    Lookup::Hit(entry) => Looked::Hit(entry),
                    Lookup::Miss(flight) => Looked::Go(CacheCall {
                        status: Some(CacheStatus::Miss),
                        store: true,
                        looked_up: Some((decision.tier, key, flight)),
                    }),
                    Lookup::Unavailable => Looked::Go(CacheCall {
                        status: Some(CacheStatus::Bypass),
                        store: true,
                        looked_up: None,
                    }),
                    Lookup::DeadlineExceeded => return Err(GatewayError::DeadlineExceeded),
                }
            }
        };
        let status = match &looked {
            Looked::Hit(_) => CacheStatus::Hit,
            Looked::Go(call) => call.status.unwrap_or(CacheStatus::Bypass),
        };
        self.metrics.cache_request(status);
        Span::current().record("vra.cache.status", status.as_str());
        if options.mode == CacheMode::OnlyIfCached && status != CacheStatus::Hit {
            return Err(GatewayError::NotCached);
        }
        Ok(looked)
    }

    /// A hit's answer: the routed tier's cached text and original usage, recorded as a cached
    /// call of the report (what it saved: its tokens at the model's price); no unit, no hold,
    /// no dollar.
    pub(super) async fn answer_cached(
        &self,
        state: &CallState<'_>,
        decision: Decision,
        entry: &Entry,
    ) -> Generated {
        let route = self.route_info(decision.tier, decision.rule, None);
        state.hybrid().cache_hit(&route.provider, &route.model);
        let usage = entry.usage();
        let record = CallRecord {
            id: rand::random(),
            tier: route.tier,
            fell_back: false,
            cloud: route.cloud,
            phase: state.input.phase,
            usage,
            cost: self.price(route.tier).map(|p| p.cost(usage)),
            all_cloud: None,
            release: HeldCost::NONE,
            cached: true,
        };
        let budget = self.record_answer(state, &route, record, None).await;
        telemetry::record_route(&Span::current(), &route, &budget);
        Generated {
            text: entry.text.clone(),
            route,
            usage,
            budget,
            attempts: 0,
            finish_reason: entry.finish_reason.clone(),
            cost: Some(Nanos::ZERO),
            cache: Some(CacheStatus::Hit),
        }
    }

    /// Stores a finished answer under the key of the tier that answered it — a fallback answer
    /// under the secondary's, never under the primary's the call looked up — then ends the
    /// call's flight.
    pub(super) async fn cache_store(
        &self,
        state: &CallState<'_>,
        call: CacheCall,
        route: &RouteInfo,
        text: &str,
        usage: TokenUsage,
        finish_reason: &str,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        if !call.store {
            return;
        }
        let (key, flight) = match call.looked_up {
            Some((tier, key, flight)) if tier == route.tier => (key, flight),
            // A fallback: the looked-up key's flight ends unanswered (its followers go on by
            // themselves), and the answer goes under its own tier's key.
            _ => (self.cache_key(state, route.tier), None),
        };
        let entry = Entry::new(text.to_string(), finish_reason.to_string(), usage);
        cache.store(key, entry, flight).await;
    }
}
