//! The budget this replica last saw for each report, for answers that do not wait for the
//! ledger.
//!
//! On a ledger a round trip away ([`super::Ledger::defers_records`]) no answer waits for its
//! record: a cloud call shows the budget its reservation returned, settled by its own cost;
//! a local answer — which takes no unit and may be the fail-safe path of a ledger that is down
//! — shows the budget this replica last saw for its report: from that call's own reservation
//! when it tried one, else from the latest cloud answer or usage read of the report here.
//! It may lag other replicas' calls; `GetReportUsage` is the exact read.
//!
//! Each report's entry only moves forward: the count used, the settled cost and a spent mark
//! never go back when an older view arrives late (an earlier read, answers finishing out of
//! order); the cost held is the latest view's.
//!
//! Bounded by entries ([`CAPACITY`], least recently used evicted, by the moka crate) and by
//! idleness (the report TTL, at most [`MAX_IDLE`]): a report it forgot shows its unit limit and
//! nothing spent.

use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{ReportBudget, ReportKey};

/// Reports remembered at most: a replica's working set of reports in progress.
pub const CAPACITY: u64 = 10_000;

/// The longest idleness an entry survives, whatever the report TTL.
pub const MAX_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The last budget seen per report.
pub struct KnownBudgets {
    by_report: Cache<String, ReportBudget>,
}

impl KnownBudgets {
    /// Entries forgotten after `idle` without use (the report TTL: the ledger forgets the
    /// report then too).
    pub fn new(idle: Duration) -> Self {
        Self {
            by_report: Cache::builder()
                .max_capacity(CAPACITY)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(idle.min(MAX_IDLE))
                .build(),
        }
    }

    /// Merges `budget` into what is known of the report ([`merged`]).
    pub fn note(&self, key: ReportKey<'_>, budget: ReportBudget) {
        self.by_report
            .entry(key.owned())
            .and_upsert_with(|known| match known {
                Some(known) => merged(*known.value(), budget),
                None => budget,
            });
    }

    /// The report's latest budget seen here, if any.
    pub fn get(&self, key: ReportKey<'_>) -> Option<ReportBudget> {
        self.by_report.get(&key.owned())
    }
}

/// `seen` after `known`: counts and the spent mark never go back; the cost held is `seen`'s.
fn merged(known: ReportBudget, seen: ReportBudget) -> ReportBudget {
    ReportBudget {
        used: known.used.max(seen.used),
        exhausted: known.exhausted || seen.exhausted,
        cloud_cost: known.cloud_cost.max(seen.cloud_cost),
        held: seen.held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Nanos;

    #[test]
    fn the_latest_budget_per_report_and_client() {
        let known = KnownBudgets::new(Duration::from_secs(60));
        let a = ReportKey::anonymous("q3");
        let b = ReportKey {
            client: Some("acme"),
            report: "q3",
        };
        assert_eq!(known.get(a), None);
        let first = ReportBudget {
            used: 1,
            exhausted: false,
            cloud_cost: Nanos(10),
            held: Nanos(0),
        };
        known.note(a, first);
        known.note(a, ReportBudget { used: 2, ..first });
        assert_eq!(known.get(a).map(|k| k.used), Some(2));
        assert_eq!(known.get(b), None, "another client's report of the same id");
    }

    #[test]
    fn it_stays_within_its_capacity() {
        let known = KnownBudgets::new(Duration::from_secs(60));
        for i in 0..CAPACITY * 2 {
            known.note(
                ReportKey::anonymous(&format!("r{i}")),
                ReportBudget::default(),
            );
        }
        known.by_report.run_pending_tasks();
        assert!(known.by_report.entry_count() <= CAPACITY);
    }
}
