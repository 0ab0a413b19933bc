//! The cache key: who asks, and a SHA-256 of the request exactly as the answering model
//! receives it.
//!
//! The key is made *after* routing and the server-side defaults (the peers' caches that key the
//! raw request serve an answer to a request that was sent differently): the tier, provider and
//! model that will be asked, the phase and section type, every message, and every option that
//! changes the answer as it is sent — `max_tokens` included when the gateway supplies it. Not in
//! the key: the report and section ids (a rebuilt report is a new report) and whether the call
//! streams (a hit replays either way).
//!
//! The client id is part of the key itself, not only of the digest: one client never reads
//! another's answers, and a purge can drop one client's entries. The key never appears in logs,
//! spans or errors (its `Debug` shows nothing of it).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::domain::{ChatMessage, Phase, SectionType, Tier};

/// The key's version: a change of what is keyed, or of how an entry is stored, bumps it, so
/// entries written by another version are never read.
pub const VERSION: &str = "vra-cache/1";

/// What a cached answer is keyed by: the request as its model receives it.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// The authenticated client (`None` with authentication off).
    pub client: Option<&'a str>,
    pub tier: Tier,
    /// The configured provider name and the model it is sent.
    pub provider: &'a str,
    pub model: &'a str,
    pub phase: Phase,
    pub section: SectionType,
    pub messages: &'a [ChatMessage],
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// As sent upstream (the gateway's default under a cost cap included).
    pub max_tokens: Option<u32>,
    pub stop: &'a [String],
    pub seed: Option<i64>,
}

/// A cache key: the client, and the digest of everything else.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    client: Option<Arc<str>>,
    digest: [u8; 32],
}

impl CacheKey {
    pub fn new(input: &KeyInput<'_>) -> Self {
        let mut canon = Canonical(Sha256::new());
        canon.text(VERSION);
        canon.opt(input.client.map(str::as_bytes));
        canon.text(input.tier.as_str());
        canon.text(input.provider);
        canon.text(input.model);
        canon.text(input.phase.as_str());
        canon.text(input.section.as_str());
        canon.number(input.messages.len() as u64);
        for message in input.messages {
            canon.text(message.role.as_str());
            canon.text(&message.content);
        }
        canon.opt(input.temperature.map(float).as_ref().map(|b| &b[..]));
        canon.opt(input.top_p.map(float).as_ref().map(|b| &b[..]));
        canon.opt(
            input
                .max_tokens
                .map(u32::to_le_bytes)
                .as_ref()
                .map(|b| &b[..]),
        );
        // Stop sequences are a set: their order does not change the answer.
        let mut stop: Vec<&str> = input.stop.iter().map(String::as_str).collect();
        stop.sort_unstable();
        stop.dedup();
        canon.number(stop.len() as u64);
        for s in stop {
            canon.text(s);
        }
        canon.opt(input.seed.map(i64::to_le_bytes).as_ref().map(|b| &b[..]));
        CacheKey {
            client: input.client.map(Arc::from),
            digest: canon.0.finalize().into(),
        }
    }

    /// The client whose key this is.
    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// The digest, in lower-case hex (the Redis store's key).
    pub fn hex(&self) -> String {
        use std::fmt::Write as _;
        self.digest
            .iter()
            .fold(String::with_capacity(64), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    }
}

impl CacheKey {
    /// The key of one user turn of `text` from `client` to gpt-4o, DRAFT / ANALYSIS, no
    /// options: a key for the stores' and single flight's unit tests.
    #[cfg(test)]
    pub(crate) fn sample(text: &str, client: Option<&str>) -> CacheKey {
        use crate::domain::Role;
        let messages = [ChatMessage::new(Role::User, text)];
        CacheKey::new(&KeyInput {
            client,
            tier: Tier::Primary,
            provider: "openai",
            model: "gpt-4o",
            phase: Phase::Draft,
            section: SectionType::Analysis,
            messages: &messages,
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: &[],
            seed: None,
        })
    }
}

/// Nothing of the key: it must not reach a log line.
impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

/// A float's canonical bytes: `-0.0` is `0.0` (NaN never gets here: validation refuses it).
fn float(v: f32) -> [u8; 4] {
    let v = if v == 0.0 { 0.0 } else { v };
    v.to_le_bytes()
}

/// An unambiguous encoding into the hash: every field is length-prefixed (or tagged when
/// optional), so no two different requests feed the same bytes.
struct Canonical(Sha256);

impl Canonical {
    fn number(&mut self, n: u64) {
        self.0.update(n.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.number(bytes.len() as u64);
        self.0.update(bytes);
    }

    fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    fn opt(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.0.update([0]),
            Some(bytes) => {
                self.0.update([1]);
                self.bytes(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::Role;

    /// An owned [`KeyInput`], for generating requests.
    #[derive(Debug, Clone)]
    struct Request {
        client: Option<String>,
        tier: Tier,
        model: String,
        phase: Phase,
        section: SectionType,
        messages: Vec<ChatMessage>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        max_tokens: Option<u32>,
        stop: Vec<String>,
        seed: Option<i64>,
    }

    impl Request {
        fn key(&self) -> CacheKey {
            CacheKey::new(&KeyInput {
                client: self.client.as_deref(),
                tier: self.tier,
                provider: "openai",
                model: &self.model,
                phase: self.phase,
                section: self.section,
                messages: &self.messages,
                temperature: self.temperature,
                top_p: self.top_p,
                max_tokens: self.max_tokens,
                stop: &self.stop,
                seed: self.seed,
            })
        }
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)]
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            proptest::option::of("[a-z]{1,8}"),
            prop_oneof![Just(Tier::Primary), Just(Tier::Secondary)],
            "[a-z0-9.:-]{1,12}",
            proptest::sample::select(Phase::ALL.to_vec()),
            proptest::sample::select(SectionType::ALL.to_vec()),
            proptest::collection::vec((role(), ".{0,24}"), 1..4),
            proptest::option::of(0.0f32..2.0),
            proptest::option::of(0.01f32..1.0),
            proptest::option::of(1u32..10_000),
            proptest::collection::vec("[a-z#]{1,4}", 0..3),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |(client, tier, model, phase, section, turns, t, p, m, stop, seed)| Request {
                    client,
                    tier,
                    model,
                    phase,
                    section,
                    messages: turns
                        .into_iter()
                        .map(|(role, text)| ChatMessage::new(role, text))
                        .collect(),
                    temperature: t,
                    top_p: p,
                    max_tokens: m,
                    stop,
                    seed,
                },
            )
    }

    proptest! {
        /// The same request gives the same key, whatever the order of its stop set.
        #[test]
        fn the_key_is_stable(request in request()) {
            let mut shuffled = request.clone();
            shuffled.stop.reverse();
            prop_assert_eq!(request.key(), request.clone().key());
            prop_assert_eq!(request.key(), shuffled.key());
        }

        /// Changing any keyed field changes the key.
        #[test]
        fn every_keyed_field_changes_the_key(request in request(), field in 0usize..12) {
            let mut other = request.clone();
            match field {
                0 => other.client = Some(format!("{}x", other.client.unwrap_or_default())),
                1 => other.tier = match other.tier {
                    Tier::Primary => Tier::Secondary,
                    Tier::Secondary => Tier::Primary,
                },
                2 => other.model.push('x'),
                3 => other.phase = Phase::ALL[(other.phase.index() + 1) % 4],
                4 => other.section = if other.section == SectionType::Other {
                    SectionType::Analysis
                } else {
                    SectionType::Other
                },
                5 => other.messages[0].content.push('x'),
                6 => other.messages.push(ChatMessage::new(Role::User, "")),
                7 => other.temperature = Some(other.temperature.map_or(0.5, |t| t + 0.25)),
                8 => other.top_p = Some(other.top_p.map_or(0.5, |p| p / 2.0)),
                9 => other.max_tokens = Some(other.max_tokens.map_or(7, |m| m + 1)),
                10 => other.stop.push("zzzzz".into()),
                _ => other.seed = Some(other.seed.map_or(0, |s| s.wrapping_add(1))),
            }
            prop_assert_ne!(request.key(), other.key());
        }
    }

    #[test]
    fn a_message_boundary_is_part_of_the_key() {
        let one = Request {
            client: None,
            tier: Tier::Primary,
            model: "m".into(),
            phase: Phase::Draft,
            section: SectionType::Analysis,
            messages: vec![ChatMessage::new(Role::User, "ab")],
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: Vec::new(),
            seed: None,
        };
        let two = Request {
            messages: vec![
                ChatMessage::new(Role::User, "a"),
                ChatMessage::new(Role::User, "b"),
            ],
            ..one.clone()
        };
        let role = Request {
            messages: vec![ChatMessage::new(Role::System, "ab")],
            ..one.clone()
        };
        assert_ne!(one.key(), two.key());
        assert_ne!(one.key(), role.key());
        let zero = Request {
            temperature: Some(0.0),
            ..one.clone()
        };
        let negative_zero = Request {
            temperature: Some(-0.0),
            ..one.clone()
        };
        assert_eq!(zero.key(), negative_zero.key());
        assert_ne!(zero.key(), one.key(), "temperature 0 is not unset");
        assert_eq!(format!("{:?}", one.key()), "CacheKey(..)");
        assert_eq!(one.key().hex().len(), 64);
    }
}
