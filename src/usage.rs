//! A report's cost table, as `vra-gateway usage REPORT_ID` and the demo print it: one row
//! per phase × answering tier (calls, tokens, cost), the totals, the all-cloud equivalent and
//! what hybrid routing saved. Rendered from the `GetReportUsage` answer alone, so it shows
//! exactly what any client can read.

use std::fmt::Write as _;

use crate::pb;

/// `$0.004250`: dollars to the micro-dollar.
fn usd(v: f64) -> String {
    format!("${v:.6}")
}

/// The table for `usage`, with `primary_model` naming the all-cloud reference.
pub fn render(usage: &pb::GetReportUsageResponse, primary_model: Option<&str>) -> String {
    let mut out = String::new();
    let cost = usage.cost.unwrap_or_default();
    let budget = usage.budget.unwrap_or_default();
    let _ = writeln!(
        out,
        "report {}: cost by phase and answering tier",
        usage.report_id
    );
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>5} {:>11} {:>11} {:>12}",
        "phase", "tier", "calls", "input tok", "output tok", "cost"
    );
    let _ = writeln!(out, "{}", "-".repeat(63));
    let mut any_estimated = false;
    let (mut calls, mut input, mut output) = (0u64, 0u64, 0u64);
    // Cells of cached calls only are in the line about the cache below.
    for cell in usage.phases.iter().filter(|c| c.calls > 0) {
        let phase = pb::CompilationPhase::try_from(cell.phase)
            .ok()
            .and_then(|p| pb::short_name(p.as_str_name(), "COMPILATION_PHASE_"))
            .unwrap_or("-");
        let tier = pb::ProviderTier::try_from(cell.tier)
            .ok()
            .and_then(|t| pb::short_name(t.as_str_name(), "PROVIDER_TIER_"))
            .unwrap_or("-");
        let u = cell.usage.unwrap_or_default();
        let mark = if u.estimated { "~" } else { "" };
        any_estimated |= u.estimated;
        calls += u64::from(cell.calls);
        input += u64::from(u.input_tokens);
        output += u64::from(u.output_tokens);
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:>5} {:>11} {:>11} {:>12}",
            phase,
            tier,
            cell.calls,
            format!("{mark}{}", u.input_tokens),
            format!("{mark}{}", u.output_tokens),
            usd(cell.cost_usd)
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(63));
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>5} {:>11} {:>11} {:>12}",
        "total",
        "",
        calls,
        input,
        output,
        usd(cost.total_usd)
    );
    let _ = writeln!(
        out,
        "  cloud {}, local {}",
        usd(cost.cloud_usd),
        usd(cost.local_usd)
    );
    if cost.abandoned_usd > 0.0 {
        let _ = writeln!(
            out,
            "  of which {} charged for cloud attempts without an answer (timed out, broken or dropped: their worst case)",
            usd(cost.abandoned_usd)
        );
    }
    match (cost.all_cloud_usd, cost.savings_usd) {
        (Some(all), Some(saved)) => {
            let reference = primary_model.map_or_else(
                || "the primary model".to_string(),
                |m| format!("the primary model ({m})"),
            );
            let share = if all > 0.0 {
                format!(" ({:.0}%)", saved / all * 100.0)
            } else {
                String::new()
            };
            let _ = writeln!(out, "  all on {reference}: {}", usd(all));
            let _ = writeln!(out, "  saved by hybrid routing: {}{share}", usd(saved));
        }
        _ => {
            let _ = writeln!(
                out,
                "  all-cloud equivalent unknown: the primary model has no price ([pricing] in the TOML file)"
            );
        }
    }
    if cost.unpriced_calls > 0 {
        let _ = writeln!(
            out,
            "  {} call(s) of a model without a price: their cost is unknown and not in these sums",
            cost.unpriced_calls
        );
    }
    if usage.cached_calls > 0 {
        let _ = writeln!(
            out,
            "  {} call(s) answered from the response cache (not in the rows above): {} saved",
            usage.cached_calls,
            usd(usage.cache_saved_usd)
        );
    }
    if any_estimated {
        let _ = writeln!(
            out,
            "  ~ estimated: the upstream reported no usage for some of these calls"
        );
    }
    let cap = match budget.cloud_cost_limit_usd {
        Some(limit) => format!(
            ", cloud cost {} of the {} cap",
            usd(budget.cloud_cost_used_usd),
            usd(limit)
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  budget: cloud calls {}/{}{cap}{}",
        budget.cloud_calls_used,
        budget.cloud_calls_limit,
        if budget.exhausted {
            " — exhausted"
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_totals_and_savings() {
        let usage = pb::GetReportUsageResponse {
            report_id: "q3".into(),
            budget: Some(pb::Budget {
                cloud_calls_used: 2,
                cloud_calls_limit: 15,
                cloud_cost_used_usd: 0.0075,
                cloud_cost_limit_usd: Some(0.5),
                ..Default::default()
            }),
            cost: Some(pb::ReportCost {
                cloud_usd: 0.0075,
                local_usd: 0.0,
                total_usd: 0.0075,
                all_cloud_usd: Some(0.01),
                savings_usd: Some(0.0025),
                unpriced_calls: 0,
                abandoned_usd: 0.001,
            }),
            phases: vec![
                pb::PhaseUsage {
                    phase: pb::CompilationPhase::Refine as i32,
                    tier: pb::ProviderTier::Primary as i32,
                    calls: 2,
                    usage: Some(pb::Usage {
                        input_tokens: 1000,
                        output_tokens: 500,
                        estimated: false,
                        cached: false,
                    }),
                    cost_usd: 0.0075,
                    ..Default::default()
                },
                pb::PhaseUsage {
                    phase: pb::CompilationPhase::Expand as i32,
                    tier: pb::ProviderTier::Secondary as i32,
                    calls: 1,
                    usage: Some(pb::Usage {
                        input_tokens: 10,
                        output_tokens: 20,
                        estimated: true,
                        cached: false,
                    }),
                    cost_usd: 0.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = render(&usage, Some("gpt-4o"));
        assert!(text.contains("REFINE    PRIMARY"), "{text}");
        assert!(text.contains("$0.007500"), "{text}");
        assert!(text.contains("~20"), "{text}");
        assert!(
            text.contains("total                    3        1010         520"),
            "{text}"
        );
        assert!(
            text.contains("all on the primary model (gpt-4o): $0.010000"),
            "{text}"
        );
        assert!(
            text.contains("saved by hybrid routing: $0.002500 (25%)"),
            "{text}"
        );
        assert!(text.contains("~ estimated"), "{text}");
        assert!(
            text.contains("of which $0.001000 charged for cloud attempts without an answer"),
            "{text}"
        );
        assert!(
            text.contains("cloud calls 2/15, cloud cost $0.007500 of the $0.500000 cap"),
            "{text}"
        );
        let unknown = pb::GetReportUsageResponse {
            cost: Some(pb::ReportCost {
                unpriced_calls: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&unknown, None);
        assert!(text.contains("all-cloud equivalent unknown"), "{text}");
        let rebuilt = pb::GetReportUsageResponse {
            phases: vec![pb::PhaseUsage {
                phase: pb::CompilationPhase::Draft as i32,
                tier: pb::ProviderTier::Primary as i32,
                cached_calls: 3,
                cache_saved_usd: 0.003,
                ..Default::default()
            }],
            cached_calls: 3,
            cache_saved_usd: 0.003,
            ..Default::default()
        };
        let cached = render(&rebuilt, None);
        assert!(!cached.contains("DRAFT"), "no row without calls: {cached}");
        assert!(
            cached.contains(
                "3 call(s) answered from the response cache (not in the rows above): $0.003000 saved"
            ),
            "{cached}"
        );
        assert!(
            text.contains("2 call(s) of a model without a price"),
            "{text}"
        );
    }
}
