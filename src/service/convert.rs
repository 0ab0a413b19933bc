//! The pipeline's plain values as the contract's messages (one `From` per type) and the
//! `GetReportUsage` answer.

use crate::budget::ReportUsage;
use crate::domain::{
    BudgetInfo, CacheStatus, FallbackReason, Nanos, Phase, QuotaInfo, RouteInfo, Tier, TokenUsage,
};
use crate::gateway::Generated;
use crate::pb;

impl From<QuotaInfo> for pb::ClientQuota {
    fn from(q: QuotaInfo) -> Self {
        pb::ClientQuota {
            used: q.used,
            limit: q.limit,
        }
    }
}

impl From<Tier> for pb::ProviderTier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Primary => pb::ProviderTier::Primary,
            Tier::Secondary => pb::ProviderTier::Secondary,
        }
    }
}

impl From<Option<FallbackReason>> for pb::FallbackReason {
    fn from(r: Option<FallbackReason>) -> Self {
        match r {
            None => pb::FallbackReason::Unspecified,
            Some(FallbackReason::CostLimit) => pb::FallbackReason::CostLimit,
            Some(FallbackReason::PrimaryError) => pb::FallbackReason::PrimaryError,
            Some(FallbackReason::CircuitOpen) => pb::FallbackReason::CircuitOpen,
            Some(FallbackReason::LedgerUnavailable) => pb::FallbackReason::LedgerUnavailable,
            Some(FallbackReason::ClientQuota) => pb::FallbackReason::ClientQuota,
        }
    }
}

impl From<RouteInfo> for pb::Route {
    fn from(r: RouteInfo) -> Self {
        pb::Route {
            tier: pb::ProviderTier::from(r.tier) as i32,
            provider: r.provider,
            model: r.model,
            cloud: r.cloud,
            fallback_reason: pb::FallbackReason::from(r.fallback) as i32,
            rule: r.rule.id().to_string(),
        }
    }
}

impl From<BudgetInfo> for pb::Budget {
    fn from(b: BudgetInfo) -> Self {
        pb::Budget {
            cloud_calls_used: b.used,
            cloud_calls_limit: b.limit,
            exhausted: b.exhausted,
            cloud_cost_used_usd: b.cost_used.usd(),
            cloud_cost_reserved_usd: b.cost_reserved.usd(),
            cloud_cost_limit_usd: b.cost_limit.map(Nanos::usd),
        }
    }
}

impl From<TokenUsage> for pb::Usage {
    fn from(u: TokenUsage) -> Self {
        pb::Usage {
            input_tokens: u.input,
            output_tokens: u.output,
            estimated: u.estimated,
            cached: false,
        }
    }
}

impl From<Option<CacheStatus>> for pb::CacheStatus {
    fn from(s: Option<CacheStatus>) -> Self {
        match s {
            None => pb::CacheStatus::Unspecified,
            Some(CacheStatus::Miss) => pb::CacheStatus::Miss,
            Some(CacheStatus::Hit) => pb::CacheStatus::Hit,
            Some(CacheStatus::Bypass) => pb::CacheStatus::Bypass,
        }
    }
}

impl From<Phase> for pb::CompilationPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Draft => pb::CompilationPhase::Draft,
            Phase::Expand => pb::CompilationPhase::Expand,
            Phase::Refine => pb::CompilationPhase::Refine,
            Phase::Abstract => pb::CompilationPhase::Abstract,
        }
    }
}

impl From<Generated> for pb::GenerateResponse {
    fn from(g: Generated) -> Self {
        let cached = g.cache == Some(CacheStatus::Hit);
        pb::GenerateResponse {
            text: g.text,
            route: Some(g.route.into()),
            usage: Some(pb::Usage {
                cached,
                ..g.usage.into()
            }),
            budget: Some(g.budget.into()),
            attempts: g.attempts,
            finish_reason: g.finish_reason,
            cost_usd: g.cost.map(Nanos::usd),
            cache_status: pb::CacheStatus::from(g.cache) as i32,
        }
    }
}

/// The `GetReportUsage` answer: counters, cost and savings, and the per-phase breakdown.
/// `primary_priced` says whether the all-cloud equivalent (and so the savings) is known.
pub(super) fn usage_response(
    report_id: String,
    usage: ReportUsage,
    budget: BudgetInfo,
    quota: Option<QuotaInfo>,
    primary_priced: bool,
) -> pb::GetReportUsageResponse {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let total = usage.cloud_cost.saturating_add(usage.local_cost);
    let all_cloud = primary_priced.then_some(usage.all_cloud);
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        for tier in [Tier::Primary, Tier::Secondary] {
            let cell = usage.cell(phase, tier);
            if cell.calls == 0 && cell.cached_calls == 0 {
                continue;
            }
            phases.push(pb::PhaseUsage {
                phase: pb::CompilationPhase::from(phase) as i32,
                tier: pb::ProviderTier::from(tier) as i32,
                calls: cell.calls,
                usage: Some(pb::Usage {
                    input_tokens: cell.input_tokens,
                    output_tokens: cell.output_tokens,
                    estimated: cell.estimated > 0,
                    cached: false,
                }),
                cost_usd: cell.cost.usd(),
                cached_calls: cell.cached_calls,
                cache_saved_usd: cell.cache_saved.usd(),
            });
        }
    }
    pb::GetReportUsageResponse {
        report_id,
        budget: Some(budget.into()),
        primary_calls: usage.primary_calls,
        secondary_calls: usage.secondary_calls,
        fallbacks: usage.fallbacks,
        cloud_usage: Some(pb::Usage {
            input_tokens: clamp(usage.cloud_input_tokens),
            output_tokens: clamp(usage.cloud_output_tokens),
            estimated: usage.cloud_estimated > 0,
            cached: false,
        }),
        local_usage: Some(pb::Usage {
            input_tokens: clamp(usage.local_input_tokens),
            output_tokens: clamp(usage.local_output_tokens),
            estimated: usage.local_estimated > 0,
            cached: false,
        }),
        client_quota: quota.map(Into::into),
        cost: Some(pb::ReportCost {
            cloud_usd: usage.cloud_cost.usd(),
            local_usd: usage.local_cost.usd(),
            total_usd: total.usd(),
            all_cloud_usd: all_cloud.map(Nanos::usd),
            // Signed: a local model priced above the primary costs more than all-cloud.
            savings_usd: all_cloud.map(|a| a.usd() - total.usd()),
            unpriced_calls: usage.unpriced_calls,
            abandoned_usd: usage.abandoned.usd(),
        }),
        phases,
        cached_calls: usage.cached_calls,
        cache_saved_usd: usage.cache_saved.usd(),
    }
}
