//! The `[Hybrid]` lines: the operator-facing story of each call, one builder for every event.

use std::fmt;

use tracing::Level;

use crate::domain::{FallbackReason, TokenUsage, Untrusted, UntrustedList};

use super::propagation::current_trace_id;
use super::{LogFormat, settings};

/// One `[Hybrid]` event: the operator-facing story of a call, built in one place.
///
/// Text logs get the documented line (`[Hybrid] Phase=DRAFT | Section=1.3 | ...`); JSON logs
/// get the same line as `message` plus each part as its own field (`event`, `phase`,
/// `section`, `report_id`, `client`, `provider`, `model`, `reason`, `error`) and `trace_id`, so log
/// pipelines never parse the message. Ids reach here validated (no control characters, no
/// `|`); error text is shown through [`Untrusted`] (escaped, capped), so no event can forge a
/// second line.
#[derive(Debug, Clone, Copy)]
pub struct Hybrid<'a> {
    pub phase: &'a str,
    /// The section id (`-` when the caller sent none).
    pub section: &'a str,
    pub report_id: &'a str,
    /// The authenticated client (from configuration, never from the request), if any.
    pub client: Option<&'a str>,
}

impl<'a> Hybrid<'a> {
    pub fn new(phase: &'a str, section_id: &'a str, report_id: &'a str) -> Self {
        let section = if section_id.is_empty() {
            "-"
        } else {
            section_id
        };
        Self {
            phase,
            section,
            report_id,
            client: None,
        }
    }

    /// The same events, naming the authenticated client (text lines end in `| Client=ID`).
    pub fn client(self, client: Option<&'a str>) -> Self {
        Self { client, ..self }
    }

    /// INFO: the call was served by `provider` / `model`.
    pub fn routed(self, provider: &str, model: &str) {
        let p = Upper(provider);
        self.emit(
            Level::INFO,
            Parts {
                event: "ROUTED",
                provider: Some(provider),
                model: Some(model),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Section={} | Provider={p} | Model={model} | Report={}",
                self.phase, self.section, self.report_id
            ),
        );
    }

    /// INFO: the call was answered from the response cache with `provider` / `model`'s answer:
    /// nothing was sent upstream, no budget spent.
    pub fn cache_hit(self, provider: &str, model: &str) {
        let p = Upper(provider);
        self.emit(
            Level::INFO,
            Parts {
                event: "CACHE_HIT",
                provider: Some(provider),
                model: Some(model),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Event=CACHE_HIT | Phase={} | Section={} | Provider={p} | Model={model} | Report={}",
                self.phase, self.section, self.report_id
            ),
        );
    }

    /// WARN: the primary failed for good; the secondary takes over (`PRIMARY_ERROR`).
    pub fn fallback_on_error(self, primary: &str, error: &str) {
        let e = Untrusted(error);
        let error = &[error];
        self.emit(
            Level::WARN,
            Parts {
                event: "FALLBACK",
                provider: Some(primary),
                reason: Some("PRIMARY_ERROR"),
                error: Some(error),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FALLBACK | From=PRIMARY | To=SECONDARY | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// WARN: the primary was skipped for `reason` (`COST_LIMIT`, `CIRCUIT_OPEN`, ...).
    pub fn fallback(self, reason: FallbackReason) {
        let r = reason.as_str();
        self.emit(
            Level::WARN,
            Parts {
                event: "FALLBACK",
                reason: Some(r),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Event=FALLBACK | Reason={r} | Report={} | Phase={} | Section={}",
                self.report_id, self.phase, self.section
            ),
        );
    }

    /// ERROR: the call fell back and the secondary failed too; `errors` lists every provider's.
    pub fn fallback_failed(self, errors: &[&str]) {
        let e = UntrustedList(errors);
        self.emit(
            Level::ERROR,
            Parts {
                event: "FALLBACK_FAILED",
                error: Some(errors),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FALLBACK_FAILED | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// ERROR: the only provider the call could use (the secondary) failed.
    pub fn failed(self, provider: &str, errors: &[&str]) {
        let (p, e) = (Upper(provider), UntrustedList(errors));
        self.emit(
            Level::ERROR,
            Parts {
                event: "FAILED",
                provider: Some(provider),
                error: Some(errors),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=FAILED | Provider={p} | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    /// INFO on target `vra_gateway::usage` (not a `[Hybrid]` line: the story of a route
    /// stays one line per decision): what an answered call used and cost. Text logs get
    /// `usage | Phase=… | Section=… | Provider=… | Model=… | Tokens=IN/OUT | Cost=$… |
    /// Report=…` (`~` marks estimated counts, `Cost=unknown` a model without a price); JSON
    /// logs get `input_tokens`, `output_tokens`, `estimated` and `cost_usd` (absent when
    /// unknown) as fields.
    pub fn usage(self, provider: &str, model: &str, usage: TokenUsage, cost_usd: Option<f64>) {
        let p = Upper(provider);
        let est = if usage.estimated { "~" } else { "" };
        let cost = UsdText(cost_usd);
        let client = ClientSuffix(self.client);
        let line = format_args!(
            "usage | Phase={} | Section={} | Provider={p} | Model={model} | Tokens={est}{}/{est}{} | Cost={cost} | Report={}{client}",
            self.phase, self.section, usage.input, usage.output, self.report_id
        );
        if settings().log_format == LogFormat::Text {
            tracing::info!(target: "vra_gateway::usage", "{}", line);
            return;
        }
        let trace_id = current_trace_id();
        tracing::info!(
            target: "vra_gateway::usage",
            event = "USAGE",
            phase = self.phase,
            section = self.section,
            report_id = self.report_id,
            client = self.client,
            provider,
            model,
            input_tokens = usage.input,
            output_tokens = usage.output,
            estimated = usage.estimated,
            cost_usd,
            trace_id = trace_id.as_deref(),
            "{}",
            line
        );
    }

    /// ERROR: a stream broke after its first delta.
    pub fn stream_aborted(self, provider: &str, model: &str, error: &str) {
        let (p, e) = (Upper(provider), Untrusted(error));
        let error = &[error];
        self.emit(
            Level::ERROR,
            Parts {
                event: "STREAM_ABORTED",
                provider: Some(provider),
                model: Some(model),
                error: Some(error),
                ..Parts::default()
            },
            format_args!(
                "[Hybrid] Phase={} | Event=STREAM_ABORTED | Provider={p} | Error={e} | Report={}",
                self.phase, self.report_id
            ),
        );
    }

    fn emit(self, level: Level, parts: Parts<'_>, line: fmt::Arguments<'_>) {
        let client = ClientSuffix(self.client);
        let line = format_args!("{line}{client}");
        if settings().log_format == LogFormat::Text {
            macro_rules! text {
                ($level:expr) => {
                    tracing::event!(target: "vra_gateway::hybrid", $level, "{}", line)
                };
            }
            match level {
                Level::INFO => text!(Level::INFO),
                Level::WARN => text!(Level::WARN),
                _ => text!(Level::ERROR),
            }
            return;
        }
        let trace_id = current_trace_id();
        let error = parts.error.map(|e| UntrustedList(e).to_string());
        macro_rules! json {
            ($level:expr) => {
                tracing::event!(
                    target: "vra_gateway::hybrid",
                    $level,
                    event = parts.event,
                    phase = self.phase,
                    section = self.section,
                    report_id = self.report_id,
                    client = self.client,
                    provider = parts.provider,
                    model = parts.model,
                    reason = parts.reason,
                    error = error.as_deref(),
                    trace_id = trace_id.as_deref(),
                    "{}",
                    line
                )
            };
        }
        match level {
            Level::INFO => json!(Level::INFO),
            Level::WARN => json!(Level::WARN),
            _ => json!(Level::ERROR),
        }
    }
}

/// The optional parts of a `[Hybrid]` event.
#[derive(Default)]
struct Parts<'a> {
    event: &'static str,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    reason: Option<&'static str>,
    /// Each provider's error, shown escaped and capped one by one.
    error: Option<&'a [&'a str]>,
}

/// A cost in usage lines: `$0.000123` (to the micro-dollar, or more digits when smaller),
/// or `unknown`.
struct UsdText(Option<f64>);

impl fmt::Display for UsdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unknown"),
            Some(usd) if usd == 0.0 || usd >= 0.000_001 => write!(f, "${usd:.6}"),
            Some(usd) => write!(f, "${usd:.9}"),
        }
    }
}

/// ` | Client=ID` after a `[Hybrid]` line of an authenticated call; nothing otherwise.
struct ClientSuffix<'a>(Option<&'a str>);

impl fmt::Display for ClientSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " | Client={id}"),
            None => Ok(()),
        }
    }
}

/// Displays a provider name in upper case (as `[Hybrid]` lines write it) without allocating.
struct Upper<'a>(&'a str);

impl fmt::Display for Upper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        self.0
            .chars()
            .try_for_each(|c| f.write_char(c.to_ascii_uppercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_provider_names_without_allocating() {
        assert_eq!(Upper("openai").to_string(), "OPENAI");
    }
}
