//! Where the Redis ledger keeps a report: the names of its keys.
//!
//! Four kinds of key, all under `VRA_LEDGER_PREFIX`: a report's hash, the sorted set of its live
//! cost holds (by expiry), a client's day-quota hash, and the short-lived marker of one record
//! (see the record script). A script touches a report, its holds, and its quota or a marker.
//!
//! **One node** (`redis://`): `{prefix}[{client}/]report:{report}`,
//! `{prefix}[{client}/]holds:{report}`, `{prefix}{client}/quota`,
//! `{prefix}[{client}/]record:{id:016x}` — the layout earlier versions wrote, kept so that an
//! upgrade does not orphan the budgets of reports in progress.
//!
//! **A cluster** (`redis+cluster://`): every key one script touches must hash to one slot, so
//! each key carries a hash tag (the part between the first `{` and the next `}`):
//!
//! - with clients configured, the client: `{prefix}{acme}/report:{report}`,
//!   `{prefix}{acme}/quota`, `{prefix}{acme}/record:{id}` — a client's reports and its day
//!   quota live together, so one reservation checks both atomically. The price: all of one
//!   client's traffic lands on one shard (see docs/operations.md for the numbers).
//! - without clients, the report: `{prefix}report:{=report}`, `{prefix}holds:{=report}`,
//!   `{prefix}record:{=report}:{id}`.
//!   The `=` keeps the tag non-empty whatever the report id (an id starting with `}` would
//!   otherwise make an empty tag, and Redis would hash the whole key — two keys of one report
//!   on two slots). An id holding a `}` ends the tag early, the same way in both keys, so they
//!   still share a slot; ids are data, never patterns.
//!
//! Client ids are `[A-Za-z0-9._-]` and the prefix may not hold a brace in cluster mode (the
//! configuration refuses it), so no other part can move the tag.

use super::super::ReportKey;

/// The key layout of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Hash-tagged (a cluster) or the single-node layout.
    tagged: bool,
}

impl Keys {
    pub fn new(prefix: &str, tagged: bool) -> Self {
        Self {
            prefix: prefix.to_string(),
            tagged,
        }
    }

    /// The report's hash.
    pub fn report(&self, key: ReportKey<'_>) -> Vec<u8> {
        match (self.tagged, key.client) {
            (true, None) => self.join(&["report:{=", key.report, "}"]),
            (_, client) => self.scoped(client, &["report:", key.report]),
        }
    }

    /// The sorted set of the report's live cost holds.
    pub fn holds(&self, key: ReportKey<'_>) -> Vec<u8> {
        match (self.tagged, key.client) {
            (true, None) => self.join(&["holds:{=", key.report, "}"]),
            (_, client) => self.scoped(client, &["holds:", key.report]),
        }
    }

    /// The client's day-quota hash.
    pub fn quota(&self, client: &str) -> Vec<u8> {
        self.scoped(Some(client), &["quota"])
    }

    /// The marker of record `id` of the report.
    pub fn marker(&self, key: ReportKey<'_>, id: u64) -> Vec<u8> {
        let id = format!("{id:016x}");
        match (self.tagged, key.client) {
            (true, None) => self.join(&["record:{=", key.report, "}:", &id]),
            (_, client) => self.scoped(client, &["record:", &id]),
        }
    }

    /// `{prefix}[{client}/]{parts...}`, the client as a hash tag when tagged.
    fn scoped(&self, client: Option<&str>, parts: &[&str]) -> Vec<u8> {
        match client {
            None => self.join(parts),
            Some(client) if self.tagged => {
                let mut all = vec!["{", client, "}/"];
                all.extend_from_slice(parts);
                self.join(&all)
            }
            Some(client) => {
                let mut all = vec![client, "/"];
                all.extend_from_slice(parts);
                self.join(&all)
            }
        }
    }

    /// `{prefix}{parts...}` in one allocation.
    fn join(&self, parts: &[&str]) -> Vec<u8> {
        let len = self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = Vec::with_capacity(len);
        key.extend_from_slice(self.prefix.as_bytes());
        for part in parts {
            key.extend_from_slice(part.as_bytes());
        }
        key
    }
}

/// The hash tag of a key as Redis Cluster computes it: the bytes between the first `{` and the
/// next `}`, when not empty; else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key<'a>(client: Option<&'a str>, report: &'a str) -> ReportKey<'a> {
        ReportKey { client, report }
    }

    #[test]
    fn one_node_keeps_the_layout_earlier_versions_wrote() {
        let keys = Keys::new("vra:", false);
        assert_eq!(keys.report(key(None, "q3")), b"vra:report:q3");
        assert_eq!(keys.report(key(Some("acme"), "q3")), b"vra:acme/report:q3");
        assert_eq!(keys.quota("acme"), b"vra:acme/quota");
        assert_eq!(keys.holds(key(None, "q3")), b"vra:holds:q3");
        assert_eq!(
            keys.marker(key(None, "q3"), 255),
            b"vra:record:00000000000000ff"
        );
        assert_eq!(
            keys.marker(key(Some("acme"), "q3"), 1),
            b"vra:acme/record:0000000000000001"
        );
    }

    #[test]
    fn a_cluster_tags_by_client_or_by_report() {
        let keys = Keys::new("vra:", true);
        assert_eq!(
            keys.report(key(Some("acme"), "q3")),
            b"vra:{acme}/report:q3"
        );
        assert_eq!(keys.quota("acme"), b"vra:{acme}/quota");
        assert_eq!(
            keys.marker(key(Some("acme"), "q3"), 1),
            b"vra:{acme}/record:0000000000000001"
        );
        assert_eq!(keys.report(key(None, "q3")), b"vra:report:{=q3}");
        assert_eq!(
            keys.marker(key(None, "q3"), 1),
            b"vra:record:{=q3}:0000000000000001"
        );
        assert_eq!(hash_tag(b"vra:report:{=q3}"), b"=q3");
        assert_eq!(hash_tag(b"vra:{}x"), b"vra:{}x");
    }

    proptest! {
        /// Whatever the report id (braces included): every key a script touches shares one
        /// hash tag, and distinct reports get distinct keys.
        #[test]
        fn every_key_of_one_script_shares_a_slot(
            report in "[{}a-z=:/]{1,12}",
            other in "[{}a-z=:/]{1,12}",
            client in proptest::option::of("[a-z]{1,6}"),
            id in any::<u64>(),
        ) {
            let keys = Keys::new("vra:", true);
            let k = key(client.as_deref(), &report);
            let tag = hash_tag(&keys.report(k)).to_vec();
            prop_assert!(!tag.is_empty());
            let marker = keys.marker(k, id);
            prop_assert_eq!(hash_tag(&marker), &tag[..]);
            let holds = keys.holds(k);
            prop_assert_eq!(hash_tag(&holds), &tag[..]);
            if let Some(client) = &client {
                let quota = keys.quota(client);
                prop_assert_eq!(hash_tag(&quota), &tag[..]);
            }
            if other != report {
                prop_assert_ne!(keys.report(k), keys.report(key(client.as_deref(), &other)));
                // A client's markers are named by the call's random id alone.
                if client.is_none() {
                    prop_assert_ne!(keys.marker(k, id), keys.marker(key(None, &other), id));
                }
            }
        }
    }
}
