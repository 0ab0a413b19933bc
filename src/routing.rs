//! The routing matrix: which tier a call goes to, and which rule decided.
//!
//! This is a pure function over plain data — no IO, no clock, no configuration lookups — so
//! the whole matrix is pinned by one table-driven test below. Budget and fallback decisions
//! happen later (in [`crate::gateway`]); this module only answers "what does the matrix say".
//!
//! | condition  | phase    | section type                         | tier      | rule                       |
//! |------------|----------|--------------------------------------|-----------|----------------------------|
//! | always     | ABSTRACT | any                                  | PRIMARY   | `abstract-always-primary`  |
//! | hybrid off | other    | any                                  | PRIMARY   | `hybrid-off`               |
//! | hybrid on  | REFINE   | any                                  | PRIMARY   | `refine-primary`           |
//! | hybrid on  | EXPAND   | any                                  | SECONDARY | `expand-secondary`         |
//! | hybrid on  | DRAFT    | INTRODUCTION, CONCLUSION, ANALYSIS   | PRIMARY   | `draft-reasoning-primary`  |
//! | hybrid on  | DRAFT    | METHODOLOGY, IMPLEMENTATION          | SECONDARY | `draft-template-secondary` |
//! | hybrid on  | DRAFT    | OTHER, UNSPECIFIED                   | PRIMARY   | `draft-default-primary`    |

use crate::domain::{Phase, Rule, SectionType, Tier};

/// What the routing matrix needs to know about the deployment — plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `VRA_HYBRID_MODE`.
    pub hybrid: bool,
    /// Whether the primary provider is cloud tier (its requests count toward the budget).
    pub primary_cloud: bool,
    /// Whether the secondary provider is cloud tier.
    pub secondary_cloud: bool,
}

/// The matrix's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub tier: Tier,
    pub rule: Rule,
    /// Whether the chosen provider is cloud tier, i.e. whether each request needs a budget unit.
    pub cloud: bool,
}

/// Applies the routing matrix. Total over every input: there is no error case.
pub fn route(policy: Policy, phase: Phase, section: SectionType) -> Decision {
    use SectionType as S;
    let (tier, rule) = match (phase, policy.hybrid) {
        (Phase::Abstract, _) => (Tier::Primary, Rule::AbstractAlwaysPrimary),
        (_, false) => (Tier::Primary, Rule::HybridOff),
        (Phase::Refine, true) => (Tier::Primary, Rule::RefinePrimary),
        (Phase::Expand, true) => (Tier::Secondary, Rule::ExpandSecondary),
        (Phase::Draft, true) => match section {
            S::Introduction | S::Conclusion | S::Analysis => {
                (Tier::Primary, Rule::DraftReasoningPrimary)
            }
            S::Methodology | S::Implementation => (Tier::Secondary, Rule::DraftTemplateSecondary),
            S::Other | S::Unspecified => (Tier::Primary, Rule::DraftDefaultPrimary),
        },
    };
    Decision {
        rule,
        ..pinned(policy, tier)
    }
}

/// The decision for a call that names its tier itself (a pinned model): the matrix aside,
/// budget and fallback as for any call of that tier.
pub fn pinned(policy: Policy, tier: Tier) -> Decision {
    let cloud = match tier {
        Tier::Primary => policy.primary_cloud,
        Tier::Secondary => policy.secondary_cloud,
    };
    Decision {
        tier,
        rule: Rule::Pinned,
        cloud,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected (tier, rule) for one matrix cell, written out independently of `route`.
    fn expected(hybrid: bool, phase: Phase, section: SectionType) -> (Tier, &'static str) {
        use SectionType as S;
        match (hybrid, phase, section) {
            (_, Phase::Abstract, _) => (Tier::Primary, "abstract-always-primary"),
            (false, _, _) => (Tier::Primary, "hybrid-off"),
            (true, Phase::Refine, _) => (Tier::Primary, "refine-primary"),
            (true, Phase::Expand, _) => (Tier::Secondary, "expand-secondary"),
            (true, Phase::Draft, S::Introduction | S::Conclusion | S::Analysis) => {
                (Tier::Primary, "draft-reasoning-primary")
            }
            (true, Phase::Draft, S::Methodology | S::Implementation) => {
                (Tier::Secondary, "draft-template-secondary")
            }
            (true, Phase::Draft, S::Other | S::Unspecified) => {
                (Tier::Primary, "draft-default-primary")
            }
        }
    }

    /// Every combination: hybrid × phase × section type × primary local or cloud.
    #[test]
    fn matrix_covers_every_combination() {
        let mut cells = 0;
        for hybrid in [false, true] {
            for primary_cloud in [true, false] {
                let policy = Policy {
                    hybrid,
                    primary_cloud,
                    secondary_cloud: false,
                };
                for phase in Phase::ALL {
                    for section in SectionType::ALL {
                        let got = route(policy, phase, section);
                        let (tier, rule) = expected(hybrid, phase, section);
                        let ctx =
                            format!("hybrid={hybrid} cloud={primary_cloud} {phase:?} {section:?}");
                        assert_eq!(got.tier, tier, "{ctx}");
                        assert_eq!(got.rule.id(), rule, "{ctx}");
                        // A local primary never counts toward the budget, the abstract included.
                        let cloud = tier == Tier::Primary && primary_cloud;
                        assert_eq!(got.cloud, cloud, "{ctx}");
                        cells += 1;
                    }
                }
            }
        }
        assert_eq!(cells, 2 * 2 * 4 * 7);
    }

    /// A few rows spelled out literally, so a systematic mistake in `expected` cannot hide.
    #[test]
    fn documented_examples() {
        let hybrid = Policy {
            hybrid: true,
            primary_cloud: true,
            secondary_cloud: false,
        };
        let d = route(hybrid, Phase::Draft, SectionType::Methodology);
        assert_eq!(
            (d.tier, d.rule.id(), d.cloud),
            (Tier::Secondary, "draft-template-secondary", false)
        );
        let d = route(hybrid, Phase::Abstract, SectionType::Methodology);
        assert_eq!(
            (d.tier, d.rule.id(), d.cloud),
            (Tier::Primary, "abstract-always-primary", true)
        );
        let d = route(hybrid, Phase::Expand, SectionType::Introduction);
        assert_eq!((d.tier, d.rule.id()), (Tier::Secondary, "expand-secondary"));
        let off = Policy {
            hybrid: false,
            ..hybrid
        };
        let d = route(off, Phase::Expand, SectionType::Methodology);
        assert_eq!((d.tier, d.rule.id()), (Tier::Primary, "hybrid-off"));
    }

    #[test]
    fn cloud_secondary_is_reported() {
        let policy = Policy {
            hybrid: true,
            primary_cloud: true,
            secondary_cloud: true,
        };
        assert!(route(policy, Phase::Expand, SectionType::Other).cloud);
    }

    #[test]
    fn a_pinned_tier_serves_whatever_the_matrix_says_with_that_tiers_budget() {
        let policy = Policy {
            hybrid: true,
            primary_cloud: true,
            secondary_cloud: false,
        };
        for (tier, cloud) in [(Tier::Primary, true), (Tier::Secondary, false)] {
            let d = pinned(policy, tier);
            assert_eq!((d.tier, d.rule.id(), d.cloud), (tier, "pinned", cloud));
        }
    }
}
