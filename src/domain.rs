//! The plain types every layer shares: tiers, phases, section types, rule ids, fallback
//! reasons, where a call went ([`RouteInfo`]), a report's budget ([`BudgetInfo`]), token usage
//! and provider errors — plus [`Untrusted`], the one way text from outside (an upstream's error
//! body, a client's id) reaches a log line or a status.
//!
//! This module imports nothing from the crate: routing, providers, the ledger, the pipeline,
//! telemetry and metrics all speak these types, so none of them needs to import another.

use std::fmt;
use std::time::Duration;

/// The phase of report compilation a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Draft,
    Expand,
    Refine,
    Abstract,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Draft, Phase::Expand, Phase::Refine, Phase::Abstract];

    /// Upper-case name used in `[Hybrid]` log lines and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Draft => "DRAFT",
            Phase::Expand => "EXPAND",
            Phase::Refine => "REFINE",
            Phase::Abstract => "ABSTRACT",
        }
    }

    /// The phase's position in [`Phase::ALL`] (for tables indexed by phase).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of section being written. Only DRAFT routing looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionType {
    Unspecified,
    Introduction,
    Conclusion,
    Analysis,
    Methodology,
    Implementation,
    Other,
}

impl SectionType {
    pub const ALL: [SectionType; 7] = [
        SectionType::Unspecified,
        SectionType::Introduction,
        SectionType::Conclusion,
        SectionType::Analysis,
        SectionType::Methodology,
        SectionType::Implementation,
        SectionType::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SectionType::Unspecified => "UNSPECIFIED",
            SectionType::Introduction => "INTRODUCTION",
            SectionType::Conclusion => "CONCLUSION",
            SectionType::Analysis => "ANALYSIS",
            SectionType::Methodology => "METHODOLOGY",
            SectionType::Implementation => "IMPLEMENTATION",
            SectionType::Other => "OTHER",
        }
    }
}

/// Which configured provider the matrix picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Primary,
    Secondary,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Primary => "PRIMARY",
            Tier::Secondary => "SECONDARY",
        }
    }

    /// 0 for the primary, 1 for the secondary (for tables indexed by tier).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The matrix row that decided. The ids are part of the public contract (README, `Route.rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    AbstractAlwaysPrimary,
    HybridOff,
    RefinePrimary,
    ExpandSecondary,
    DraftReasoningPrimary,
    DraftTemplateSecondary,
    DraftDefaultPrimary,
    /// The caller named the model (the HTTP door's `model`): its tier serves, the matrix aside.
    Pinned,
}

impl Rule {
    /// Stable kebab-case id.
    pub fn id(self) -> &'static str {
        match self {
            Rule::AbstractAlwaysPrimary => "abstract-always-primary",
            Rule::HybridOff => "hybrid-off",
            Rule::RefinePrimary => "refine-primary",
            Rule::ExpandSecondary => "expand-secondary",
            Rule::DraftReasoningPrimary => "draft-reasoning-primary",
            Rule::DraftTemplateSecondary => "draft-template-secondary",
            Rule::DraftDefaultPrimary => "draft-default-primary",
            Rule::Pinned => "pinned",
        }
    }
}

/// Why the secondary served a call the matrix gave to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    CostLimit,
    PrimaryError,
    CircuitOpen,
    LedgerUnavailable,
    /// The caller's client has spent its cloud quota for the UTC day.
    ClientQuota,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 5] = [
        FallbackReason::CostLimit,
        FallbackReason::PrimaryError,
        FallbackReason::CircuitOpen,
        FallbackReason::LedgerUnavailable,
        FallbackReason::ClientQuota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::CostLimit => "COST_LIMIT",
            FallbackReason::PrimaryError => "PRIMARY_ERROR",
            FallbackReason::CircuitOpen => "CIRCUIT_OPEN",
            FallbackReason::LedgerUnavailable => "LEDGER_UNAVAILABLE",
            FallbackReason::ClientQuota => "CLIENT_QUOTA",
        }
    }
}

/// Who wrote a turn of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role as the OpenAI and Ollama wire formats (and the GenAI conventions) name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of the conversation a call sends: the caller's `messages`, or its
/// `system_prompt` and `prompt` as a system and a user turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// How one call uses the response cache (`GenerationOptions.cache`; the HTTP door's
/// `Cache-Control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CacheMode {
    /// Answer from the cache when it holds the request, else call upstream and store.
    #[default]
    Default,
    /// Skip the lookup, still store the answer.
    NoCache,
    /// Neither look up nor store.
    NoStore,
    /// Answer from the cache or fail; nothing is sent upstream.
    OnlyIfCached,
}

/// A call's cache options: its mode, and the oldest answer it accepts (`None`: any the cache
/// keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CacheOptions {
    pub mode: CacheMode,
    pub max_age: Option<Duration>,
}

/// Whether a call's answer came from the response cache (no status when the gateway runs
/// without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Looked up and not found: answered upstream.
    Miss,
    /// Answered from the cache.
    Hit,
    /// Not looked up (the caller's options, or the cache store unreachable).
    Bypass,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 3] = [CacheStatus::Miss, CacheStatus::Hit, CacheStatus::Bypass];

    /// Upper-case name: span attribute, `x-vra-cache`, metrics label (lower-cased there).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Miss => "MISS",
            CacheStatus::Hit => "HIT",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// Where a call went and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub tier: Tier,
    pub provider: String,
    pub model: String,
    pub cloud: bool,
    pub fallback: Option<FallbackReason>,
    pub rule: Rule,
}

/// A report's budget as returned to callers. `exhausted` means no cloud call is left: the
/// budget is used up (or was refused), so the next primary call will fall back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetInfo {
    pub used: u32,
    pub limit: u32,
    pub exhausted: bool,
    /// The report's settled cloud cost (calls whose model has a price).
    pub cost_used: Nanos,
    /// The report's cloud cost reserved by calls in flight, not yet settled.
    pub cost_reserved: Nanos,
    /// `MAX_CLOUD_COST_USD`, when set.
    pub cost_limit: Option<Nanos>,
}

/// An authenticated caller: an entry of `VRA_CLIENTS_FILE` (matched by bearer token, or by
/// the id of a verified client certificate). The edge puts it into the request's extensions as
/// an `Arc<Client>`; its id scopes every ledger key, and ids come only from configuration,
/// never from requests, so they are safe as metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `[A-Za-z0-9._-]{1,64}`.
    pub id: String,
    /// Cloud requests per UTC day, all of this client's reports together.
    pub cloud_calls_per_day: Option<u32>,
    /// Per-report cloud cap for this client (overrides `MAX_CLOUD_CALLS`).
    pub max_cloud_calls: Option<u32>,
    /// Generation calls this client may have in flight at once; more are shed.
    pub max_in_flight: Option<u32>,
    /// May call the admin RPCs (`PurgeCache`).
    pub admin: bool,
}

impl Client {
    /// Whether `id` is a valid client id: `[A-Za-z0-9._-]{1,64}`.
    pub fn valid_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

/// A client's cloud quota for the current UTC day, as returned to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaInfo {
    pub used: u32,
    pub limit: u32,
}

/// Token counts of one call: as reported by the upstream, or estimated where it reported
/// none ([`crate::cost::complete_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u32,
    pub output: u32,
    /// At least one of the counts is an estimate: the upstream did not report it.
    pub estimated: bool,
}

impl TokenUsage {
    /// Counts as the upstream reported them.
    pub const fn reported(input: u32, output: u32) -> Self {
        Self {
            input,
            output,
            estimated: false,
        }
    }
}

/// The current UTC day, as days since the Unix epoch (day quotas count per UTC day).
pub fn utc_day() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// An amount of US dollars in integer nano-dollars (10⁻⁹ USD): ledgers add them exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    /// Dollars, rounded to the nearest nano-dollar (negative → 0).
    pub fn from_usd(usd: f64) -> Nanos {
        Nanos((usd * 1e9).round().clamp(0.0, u64::MAX as f64) as u64)
    }

    pub fn usd(self) -> f64 {
        self.0 as f64 / 1e9
    }

    pub fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
}

/// Why one upstream request failed. Messages never contain API keys or prompt text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("connect error: {}", Untrusted(.0))]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP {status}{}{}", if .message.is_empty() { "" } else { ": " }, Untrusted(.message))]
    Status {
        status: u16,
        /// The upstream's `Retry-After`, already parsed.
        retry_after: Option<Duration>,
        /// A short excerpt of the upstream's error message (empty for 401/403).
        message: String,
    },
    #[error("malformed response: {}", Untrusted(.0))]
    Malformed(String),
    #[error("upstream error: {}", Untrusted(.0))]
    Upstream(String),
    #[error("stream idle for {0} ms")]
    StreamIdle(u64),
    #[error("stream ended without a terminal event")]
    Truncated,
    #[error("transport error: {}", Untrusted(.0))]
    Transport(String),
    /// A body or a stream line past its limit (`VRA_MAX_RESPONSE_BYTES`,
    /// `VRA_MAX_STREAM_LINE_BYTES`): the rest is not read.
    #[error("{what} larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// Every endpoint of the provider is ejected after repeated failures: nothing was sent.
    #[error("all endpoints ejected after repeated failures")]
    AllEndpointsEjected,
    /// Every endpoint was at its `max_in_flight` and the wait queue was full: nothing was sent.
    #[error("endpoint queue full ({max_queue} calls waiting for a free endpoint)")]
    QueueFull { max_queue: usize },
}

impl ProviderError {
    /// Whether the upstream may have done (and billed) the work although no answer came back:
    /// the request was delivered and then timed out, broke, went silent or was unreadable.
    /// Not for a refused connection, an HTTP error status (the upstream answered that it did
    /// not do the work) or an attempt that was never sent. Under a cost cap such an attempt is
    /// charged its whole worst case.
    pub fn may_have_been_billed(&self) -> bool {
        match self {
            ProviderError::Connect(_)
            | ProviderError::Status { .. }
            | ProviderError::AllEndpointsEjected
            | ProviderError::QueueFull { .. } => false,
            ProviderError::Timeout
            | ProviderError::Malformed(_)
            | ProviderError::Upstream(_)
            | ProviderError::StreamIdle(_)
            | ProviderError::Truncated
            | ProviderError::Transport(_)
            | ProviderError::TooLarge { .. } => true,
        }
    }

    /// Connect errors, timeouts, 408, 429 and 5xx may succeed on another try — and so may a
    /// stream that broke or went silent (retried only before its first delta).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_)
            | ProviderError::Timeout
            | ProviderError::Transport(_)
            | ProviderError::StreamIdle(_)
            | ProviderError::Truncated => true,
            ProviderError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// Whether the failure says something about the provider's health (circuit breaker food),
    /// as opposed to this particular request (e.g. a 400). A 3xx counts: redirects are not
    /// followed, so every call to a base URL that redirects fails the same way.
    pub fn is_provider_fault(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                matches!(status, 300..=399 | 401 | 403 | 408 | 429 | 500..=599)
            }
            // Local overload, not the provider's health.
            ProviderError::QueueFull { .. } => false,
            _ => true,
        }
    }

    /// Whether this is an authentication problem — a configuration error, logged as such.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ProviderError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// `Retry-After` sent with the error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Low-cardinality type for `error.type` and metric labels.
    pub fn kind(&self) -> String {
        match self {
            ProviderError::Connect(_) => "connect_error".into(),
            ProviderError::Timeout => "timeout".into(),
            ProviderError::Status { status, .. } => status.to_string(),
            ProviderError::Malformed(_) => "malformed_response".into(),
            ProviderError::Upstream(_) => "upstream_error".into(),
            ProviderError::StreamIdle(_) => "stream_idle".into(),
            ProviderError::Truncated => "stream_truncated".into(),
            ProviderError::Transport(_) => "transport_error".into(),
            ProviderError::TooLarge { .. } => "response_too_large".into(),
            ProviderError::AllEndpointsEjected => "all_endpoints_ejected".into(),
            ProviderError::QueueFull { .. } => "queue_full".into(),
        }
    }

    /// The HTTP status, when the upstream answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One provider's failure, as reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// `PRIMARY` or `SECONDARY`.
    pub tier: &'static str,
    /// Configured provider name.
    pub provider: String,
    pub error: String,
}

impl std::fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.tier, self.provider, self.error)
    }
}

/// Longest piece of outside text (an upstream's error message, say) kept in a log line or a
/// status message, in bytes.
pub const MAX_UNTRUSTED_BYTES: usize = 512;

/// Displays text that came from outside the gateway so that it stays on one line, in its own
/// field, and within [`MAX_UNTRUSTED_BYTES`] (plus a final `…` when cut): control characters
/// (C0, DEL, C1), the Unicode line and paragraph separators, the bidirectional-text controls
/// and `|` (the `[Hybrid]` field separator) are escaped (`\n`, `\u{1b}`, `\u{7c}`), and
/// longer text is cut on a character boundary. Nothing an upstream sends can start a second
/// (forged) log line, add a forged ` | Field=` part, or make a terminal show reordered text.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let mut written = 0;
        let mut plain_from = 0;
        let text = self.0;
        for (i, c) in text.char_indices() {
            let escaped = match c {
                '\n' => Some(Escape::Short('n')),
                '\r' => Some(Escape::Short('r')),
                '\t' => Some(Escape::Short('t')),
                c if is_separator_or_control(c) => Some(Escape::Code(c)),
                _ => None,
            };
            let width = match escaped {
                Some(Escape::Short(_)) => 2,
                Some(Escape::Code(c)) => 4 + hex_digits(c),
                None => c.len_utf8(),
            };
            if written + width > MAX_UNTRUSTED_BYTES {
                f.write_str(&text[plain_from..i])?;
                return f.write_char('…');
            }
            written += width;
            if let Some(e) = escaped {
                f.write_str(&text[plain_from..i])?;
                match e {
                    Escape::Short(s) => write!(f, "\\{s}")?,
                    Escape::Code(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                }
                plain_from = i + c.len_utf8();
            }
        }
        f.write_str(&text[plain_from..])
    }
}

/// Several pieces of outside text (one per provider, say), each shown as [`Untrusted`] —
/// escaped and capped on its own, so a long first one cannot push out the others — joined
/// by `; `.
#[derive(Debug, Clone, Copy)]
pub struct UntrustedList<'a>(pub &'a [&'a str]);

impl fmt::Display for UntrustedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, text) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            Untrusted(text).fmt(f)?;
        }
        Ok(())
    }
}

enum Escape {
    Short(char),
    Code(char),
}

fn hex_digits(c: char) -> usize {
    let n = c as u32;
    (32 - n.max(1).leading_zeros() as usize).div_ceil(4)
}

/// Whether an id (`report_id`, `section_id`) holds a character that could forge or split a log
/// line or a `[Hybrid]` field: a control character (C0, DEL, C1), a Unicode line or paragraph
/// separator, a bidirectional-text control, or `|`.
pub fn has_forbidden_id_char(id: &str) -> bool {
    id.chars().any(is_separator_or_control)
}

/// Characters that can end a log line, split a `[Hybrid]` field or reorder what a terminal
/// shows ("Trojan Source"): C0/DEL/C1 controls, U+2028/U+2029, the bidi marks, embeddings,
/// overrides and isolates, and `|`.
fn is_separator_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '|' | '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Why a call was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `VRA_MAX_IN_FLIGHT` calls are in flight.
    Gateway,
    /// The client has its `max_in_flight` calls in flight.
    Client,
}

impl Shed {
    /// The `reason` label of `vra_gateway_requests_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Gateway => "overloaded",
            Shed::Client => "client_max_in_flight",
        }
    }
}

/// A secret value (API key, URL with a password). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself — call only where it is sent to the service it belongs to.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables indexed by phase or tier (a report's breakdown, the gateway's prices) rely on
    /// these positions.
    #[test]
    fn indexes_follow_the_declaration_order() {
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(phase.index(), i, "{phase}");
        }
        assert_eq!((Tier::Primary.index(), Tier::Secondary.index()), (0, 1));
    }

    #[test]
    fn untrusted_text_stays_on_one_line() {
        let forged = "oops\n[Hybrid] Event=FALLBACK | Reason=COST_LIMIT\r\u{1b}[31m\u{85}\u{2028}";
        let shown = Untrusted(forged).to_string();
        assert_eq!(
            shown,
            "oops\\n[Hybrid] Event=FALLBACK \\u{7c} Reason=COST_LIMIT\\r\\u{1b}[31m\\u{85}\\u{2028}"
        );
        assert_eq!(Untrusted("a\u{202e}b").to_string(), "a\\u{202e}b");
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn untrusted_text_is_capped_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let shown = Untrusted(&long).to_string();
        assert!(shown.len() <= MAX_UNTRUSTED_BYTES + '…'.len_utf8());
        assert!(shown.ends_with('…'));
        let escapes = "\n".repeat(1000);
        let shown = Untrusted(&escapes).to_string();
        assert_eq!(shown.len(), MAX_UNTRUSTED_BYTES + '…'.len_utf8());
        assert_eq!(Untrusted("short").to_string(), "short");
    }

    #[test]
    fn each_listed_text_is_capped_on_its_own() {
        let long = "x".repeat(4000);
        let shown = UntrustedList(&[&long, "second\nerror"]).to_string();
        assert!(shown.ends_with("…; second\\nerror"), "{shown}");
    }

    #[test]
    fn ids_with_separators_are_forbidden() {
        for bad in [
            "a\nb",
            "a\rb",
            "a\tb",
            "a|b",
            "\u{85}",
            "\u{7f}",
            "\u{0}",
            "x\u{2028}",
            "x\u{202e}y",
            "\u{2066}",
        ] {
            assert!(has_forbidden_id_char(bad), "{bad:?}");
        }
        for good in ["q3-report", "1.3", "Bericht für Q3", "ü/ß:#@", ""] {
            assert!(!has_forbidden_id_char(good), "{good:?}");
        }
    }
}
