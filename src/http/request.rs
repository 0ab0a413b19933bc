//! An OpenAI Chat Completions request, read into the pipeline's request.
//!
//! The door does not validate what the pipeline validates: it builds the same
//! [`pb::GenerateRequest`] a gRPC caller sends and hands it to [`crate::service::validate`],
//! remembering where each field came from ([`Sources`]) so that an error names the header,
//! the `metadata` key or the body field the caller set. What only this door has — the OpenAI
//! fields, the report carried in headers or `metadata`, the model — is read here.
//!
//! Fields that would change the answer and that the gateway cannot honour (`tools`,
//! `response_format` other than text, `n` > 1, `logprobs`, penalties, image or audio parts, …)
//! are refused, naming the field: never silently dropped. Fields that change nothing about the
//! answer (`store`, `service_tier`, …) are accepted and ignored.

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::Tier;
use crate::pb;

/// Header carrying the report id (`metadata.vra_report_id` in the body otherwise).
pub const REPORT_ID: &str = "x-vra-report-id";
/// Header carrying the section id.
pub const SECTION_ID: &str = "x-vra-section-id";
/// Header carrying the phase: `DRAFT`, `EXPAND`, `REFINE` or `ABSTRACT` (any case; the enum's
/// full names, `COMPILATION_PHASE_DRAFT`, too).
pub const PHASE: &str = "x-vra-phase";
/// Header carrying the section type: `INTRODUCTION` … `OTHER` (any case; full names too).
pub const SECTION_TYPE: &str = "x-vra-section-type";
/// Header carrying the caller's deadline, in milliseconds.
pub const TIMEOUT_MS: &str = "x-vra-timeout-ms";
/// The virtual model that lets the routing matrix decide.
pub const AUTO_MODEL: &str = "vra-auto";

/// The body of `POST /v1/chat/completions`, as far as the door reads it.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Every other field: refused unless it changes nothing (see [`unsupported`]).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `stop`: one sequence or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// `name`, `tool_calls`, …: refused unless empty.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A message's content: a string, or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part; only `text` parts are accepted.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Where a request field came from, so that an error names what the caller set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// Not given anywhere: named by its header, where it is usually set.
    #[default]
    Unset,
    Header,
    Metadata,
}

/// Where the report fields came from, and which body field gave `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    pub report_id: Source,
    pub section_id: Source,
    pub phase: Source,
    pub section_type: Source,
    pub max_completion_tokens: bool,
}

impl Sources {
    /// The HTTP name of a pipeline field ([`crate::error::GatewayError::InvalidArgument`]'s
    /// `field`): the header, `metadata` key or body field the caller set.
    pub fn param(&self, field: &str) -> String {
        let carried = |source: Source, header: &str, key: &str| match source {
            Source::Metadata => format!("metadata.{key}"),
            Source::Header | Source::Unset => header.to_string(),
        };
        match field {
            "report_id" => carried(self.report_id, REPORT_ID, "vra_report_id"),
            "section_id" => carried(self.section_id, SECTION_ID, "vra_section_id"),
            "phase" => carried(self.phase, PHASE, "vra_phase"),
            "section_type" => carried(self.section_type, SECTION_TYPE, "vra_section_type"),
            "options.max_tokens" if self.max_completion_tokens => {
                "max_completion_tokens".to_string()
            }
            other => other.strip_prefix("options.").unwrap_or(other).to_string(),
        }
    }
}

/// A request the door refuses before the pipeline sees it: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub param: String,
    pub message: String,
}

impl Refused {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The model the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// `vra-auto`, or no model: the routing matrix decides.
    Auto,
    /// A model name, to be matched against the configured tiers.
    Named(String),
}

/// A request read: the pipeline's request and what only the HTTP door has.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub request: pb::GenerateRequest,
    pub model: ModelChoice,
    pub stream: bool,
    pub include_usage: bool,
    /// The caller's `user`, for a hashed id in the span (never the value itself).
    pub user: Option<String>,
    pub sources: Sources,
}

/// Reads a request: the report fields (headers first, then `metadata`), the messages, the
/// options; refuses what cannot be honoured.
pub fn read(headers: &HeaderMap, body: ChatCompletionRequest) -> Result<Read, Refused> {
    unsupported(&body.other)?;
    let metadata = body.metadata.unwrap_or_default();
    let mut sources = Sources::default();
    let report_id = carried(
        headers,
        &metadata,
        REPORT_ID,
        "vra_report_id",
        &mut sources.report_id,
    )?;
    let section_id = carried(
        headers,
        &metadata,
        SECTION_ID,
        "vra_section_id",
        &mut sources.section_id,
    )?;
    let phase = match carried(headers, &metadata, PHASE, "vra_phase", &mut sources.phase)? {
        Some(value) => enum_value(
            &value,
            "COMPILATION_PHASE_",
            pb::CompilationPhase::from_str_name,
        )
        .ok_or_else(|| {
            Refused::new(
                sources.param("phase"),
                format!(
                    "`{}` is not a phase; accepted: DRAFT, EXPAND, REFINE, ABSTRACT",
                    shown(&value)
                ),
            )
        })?,
        None => 0,
    };
    let section_type = match carried(
        headers,
        &metadata,
        SECTION_TYPE,
        "vra_section_type",
        &mut sources.section_type,
    )? {
        Some(value) => enum_value(&value, "SECTION_TYPE_", pb::SectionType::from_str_name)
            .ok_or_else(|| {
                Refused::new(
                    sources.param("section_type"),
                    format!(
                        "`{}` is not a section type; accepted: INTRODUCTION, METHODOLOGY, IMPLEMENTATION, ANALYSIS, CONCLUSION, OTHER",
                        shown(&value)
                    ),
                )
            })?,
        None => 0,
    };
    let messages = conversation(body.messages)?;
    let max_tokens = match (body.max_tokens, body.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(Refused::new(
                "max_completion_tokens",
                "differs from max_tokens; set one of them",
            ));
        }
        (a, b) => {
            sources.max_completion_tokens = b.is_some();
            b.or(a)
        }
    };
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let (cache_mode, max_age_secs) = cache_control(headers);
    let model = match body.model.as_deref().map(str::trim) {
        None | Some("") | Some(AUTO_MODEL) => ModelChoice::Auto,
        Some(name) => ModelChoice::Named(name.to_string()),
    };
    Ok(Read {
        request: pb::GenerateRequest {
            report_id: report_id.unwrap_or_default(),
            section_id: section_id.unwrap_or_default(),
            section_type,
            phase,
            messages,
            options: Some(pb::GenerationOptions {
                temperature: body.temperature,
                max_tokens,
                stop,
                top_p: body.top_p,
                seed: body.seed,
                cache: cache_mode as i32,
                max_age_secs,
            }),
            ..Default::default()
        },
        model,
        stream: body.stream.unwrap_or(false),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        user: body.user.filter(|u| !u.is_empty()),
        sources,
    })
}

/// The response-cache mode a request's `Cache-Control` asks for (RFC 9111 request directives,
/// any case, in any of the header's lines): `only-if-cached` (a cached answer or 404, never
/// upstream — with `no-cache` too it is always 404) over `no-store` (neither look up nor store)
/// over `no-cache` (skip the lookup, store); `max-age=N` bounds a cached answer's age. Other and
/// malformed directives are ignored, as caches do.
pub fn cache_control(headers: &HeaderMap) -> (pb::CacheMode, Option<u32>) {
    let (mut no_store, mut no_cache, mut only_if_cached, mut max_age) = (false, false, false, None);
    let directives = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for directive in directives {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" => no_store = true,
            "no-cache" => no_cache = true,
            "only-if-cached" => only_if_cached = true,
            "max-age" => {
                // The smallest of several; a value past u32 seconds means "any age".
                if let Some(secs) = value.and_then(|v| v.parse::<u64>().ok()) {
                    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
                    max_age = Some(max_age.map_or(secs, |m: u32| m.min(secs)));
                }
            }
            _ => {}
        }
    }
    let mode = if only_if_cached {
        // Never upstream: with `no-cache` no cached answer is acceptable either (age 0).
        if no_cache {
            max_age = Some(0);
        }
        pb::CacheMode::OnlyIfCached
    } else if no_store {
        pb::CacheMode::NoStore
    } else if no_cache {
        pb::CacheMode::NoCache
    } else {
        pb::CacheMode::Unspecified
    };
    (mode, max_age)
}

/// The conversation: `system` and `developer` turns as system turns, `user` and `assistant`
/// turns as they are. Tool turns and non-text fields are refused, naming the message.
fn conversation(messages: Vec<Message>) -> Result<Vec<pb::ChatMessage>, Refused> {
    if messages.is_empty() {
        return Err(Refused::new("messages", "needs at least one message"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            if let Some(key) = message
                .other
                .iter()
                .find(|(_, v)| !is_unset(v))
                .map(|(k, _)| k)
            {
                return Err(Refused::new(
                    format!("messages[{i}].{key}"),
                    "is not supported: the gateway sends text messages only",
                ));
            }
            let role = match message.role.as_str() {
                "system" | "developer" => pb::ChatRole::System,
                "user" => pb::ChatRole::User,
                "assistant" => pb::ChatRole::Assistant,
                role => {
                    return Err(Refused::new(
                        format!("messages[{i}].role"),
                        format!(
                            "`{}` is not supported: the gateway sends system, developer, user and assistant turns",
                            shown(role)
                        ),
                    ));
                }
            };
            Ok(pb::ChatMessage {
                role: role as i32,
                content: text_of(i, message.content)?,
            })
        })
        .collect()
}

/// A message's text: the string, or its text parts joined; any other part is refused.
fn text_of(i: usize, content: Option<Content>) -> Result<String, Refused> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    ("text", None) => {
                        return Err(Refused::new(
                            format!("messages[{i}].content[{j}].text"),
                            "is missing",
                        ));
                    }
                    (kind, _) => {
                        return Err(Refused::new(
                            format!("messages[{i}].content[{j}].type"),
                            format!(
                                "`{}` parts are not supported: the gateway sends text only",
                                shown(kind)
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Body fields accepted and ignored: they change nothing about the answer.
const IGNORED: &[&str] = &[
    "store",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
];

/// Refuses every field the gateway cannot honour, unless it is given as its no-op value.
fn unsupported(other: &Map<String, Value>) -> Result<(), Refused> {
    for (key, value) in other {
        if IGNORED.contains(&key.as_str()) || is_unset(value) {
            continue;
        }
        let no_op = match key.as_str() {
            "n" => value.as_u64() == Some(1),
            "logprobs" => value == &Value::Bool(false),
            "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
            "response_format" => value.get("type").and_then(Value::as_str) == Some("text"),
            "modalities" => value
                .as_array()
                .is_some_and(|m| m.iter().all(|v| v.as_str() == Some("text"))),
            "tools" | "functions" | "logit_bias" => {
                value.as_array().is_some_and(Vec::is_empty)
                    || value.as_object().is_some_and(Map::is_empty)
            }
            "tool_choice" | "function_call" => value.as_str() == Some("none"),
            _ => false,
        };
        if !no_op {
            return Err(Refused::new(
                key.clone(),
                "is not supported by the gateway (it would change the answer, and no tier can honour it)",
            ));
        }
    }
    Ok(())
}

fn is_unset(value: &Value) -> bool {
    value.is_null()
}

/// A report field from its header, else from `metadata`: `None` when neither has it.
fn carried(
    headers: &HeaderMap,
    metadata: &Map<String, Value>,
    header: &'static str,
    key: &'static str,
    source: &mut Source,
) -> Result<Option<String>, Refused> {
    if let Some(value) = headers.get(header) {
        *source = Source::Header;
        let text = value
            .to_str()
            .map_err(|_| Refused::new(header, "must be visible ASCII"))?;
        return Ok(Some(text.to_string()));
    }
    match metadata.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            *source = Source::Metadata;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Refused::new(format!("metadata.{key}"), "must be a string")),
    }
}

/// An enum value by its short or full name, any case: `draft`, `DRAFT` and
/// `COMPILATION_PHASE_DRAFT` are the same. The `_UNSPECIFIED` value is not a value.
fn enum_value<T: Into<i32>>(
    text: &str,
    prefix: &str,
    by_name: fn(&str) -> Option<T>,
) -> Option<i32> {
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    };
    if full.ends_with("_UNSPECIFIED") {
        return None;
    }
    by_name(&full).map(Into::into)
}

/// A value a caller sent, as an error message may quote it: escaped and cut.
fn shown(value: &str) -> String {
    crate::domain::Untrusted(value).to_string()
}

/// The tier a model name pins, when a configured tier sends that model.
pub fn pinned_tier(name: &str, primary: &str, secondary: &str) -> Option<Tier> {
    if name == primary {
        Some(Tier::Primary)
    } else if name == secondary {
        Some(Tier::Secondary)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(json: Value) -> ChatCompletionRequest {
        serde_json::from_value(json).expect("a request body")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn simple(extra: Value) -> ChatCompletionRequest {
        let mut json = serde_json::json!({
            "model": "vra-auto",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Write the introduction."}
            ]
        });
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        body(json)
    }

    proptest::proptest! {
        /// The body's field order (a map's) changes nothing the cache keys on: any permutation
        /// of a body's fields reads as the same request.
        #[test]
        fn the_request_does_not_depend_on_the_bodys_field_order(
            order in proptest::strategy::Strategy::prop_shuffle(
                proptest::strategy::Just((0..7).collect::<Vec<usize>>())
            ),
            temperature in 0.0f32..2.0,
            seed in proptest::prelude::any::<i64>(),
        ) {
            let fields = [
                ("model", serde_json::json!("vra-auto")),
                ("messages", serde_json::json!([{"role": "user", "content": "Write it."}])),
                ("temperature", serde_json::json!(temperature)),
                ("top_p", serde_json::json!(0.5)),
                ("max_tokens", serde_json::json!(64)),
                ("stop", serde_json::json!(["END", "STOP"])),
                ("seed", serde_json::json!(seed)),
            ];
            let text = |order: &[usize]| {
                let parts: Vec<String> = order
                    .iter()
                    .map(|&i| format!("{:?}:{}", fields[i].0, fields[i].1))
                    .collect();
                format!("{{{}}}", parts.join(","))
            };
            let read_of = |json: String| {
                let body: ChatCompletionRequest = serde_json::from_str(&json).expect("a body");
                read(&HeaderMap::new(), body).expect("readable").request
            };
            let sorted: Vec<usize> = (0..7).collect();
            proptest::prop_assert_eq!(read_of(text(&order)), read_of(text(&sorted)));
        }
    }

    #[test]
    fn cache_control_maps_to_the_cache_mode() {
        let mode = |pairs: &[(&'static str, &str)]| cache_control(&headers(pairs));
        assert_eq!(mode(&[]), (pb::CacheMode::Unspecified, None));
        assert_eq!(
            mode(&[("cache-control", "No-Cache")]),
            (pb::CacheMode::NoCache, None)
        );
        assert_eq!(
            mode(&[("cache-control", "no-cache, no-store")]),
            (pb::CacheMode::NoStore, None),
            "no-store wins"
        );
        assert_eq!(
            mode(&[("cache-control", "only-if-cached, max-age=60")]),
            (pb::CacheMode::OnlyIfCached, Some(60))
        );
        assert_eq!(
            mode(&[("cache-control", "no-store, only-if-cached")]),
            (pb::CacheMode::OnlyIfCached, None),
            "only-if-cached never goes upstream"
        );
        assert_eq!(
            mode(&[("cache-control", "only-if-cached, no-cache")]),
            (pb::CacheMode::OnlyIfCached, Some(0)),
            "no cached answer is acceptable: always a 404"
        );
        assert_eq!(
            mode(&[(
                "cache-control",
                "max-age=\"30\", max-age=90, max-age=x, private"
            )]),
            (pb::CacheMode::Unspecified, Some(30)),
            "the smallest valid max-age; unknown and malformed directives ignored"
        );
        assert_eq!(
            mode(&[("cache-control", "max-age=99999999999")]),
            (pb::CacheMode::Unspecified, Some(u32::MAX))
        );
    }

    #[test]
    fn headers_carry_the_report_and_win_over_metadata() {
        let h = headers(&[
            (REPORT_ID, "q3"),
            (SECTION_ID, "1.2"),
            (PHASE, "refine"),
            (SECTION_TYPE, "SECTION_TYPE_ANALYSIS"),
        ]);
        let read = read(
            &h,
            simple(
                serde_json::json!({"metadata": {"vra_report_id": "other", "vra_phase": "DRAFT"}}),
            ),
        )
        .unwrap();
        let r = &read.request;
        assert_eq!((r.report_id.as_str(), r.section_id.as_str()), ("q3", "1.2"));
        assert_eq!(r.phase, pb::CompilationPhase::Refine as i32);
        assert_eq!(r.section_type, pb::SectionType::Analysis as i32);
        assert_eq!(read.sources.report_id, Source::Header);
        assert_eq!(read.model, ModelChoice::Auto);
        assert_eq!(
            r.messages,
            [
                turn(pb::ChatRole::System, "be brief"),
                turn(pb::ChatRole::User, "Write the introduction.")
            ]
        );
        assert!(r.prompt.is_empty() && r.system_prompt.is_empty());
    }

    #[test]
    fn metadata_carries_the_report_for_frameworks_without_headers() {
        let read = read(
            &HeaderMap::new(),
            simple(serde_json::json!({"metadata": {
                "vra_report_id": "q3", "vra_section_id": "2", "vra_phase": "COMPILATION_PHASE_EXPAND",
                "vra_section_type": "methodology", "unrelated": "kept out"
            }})),
        )
        .unwrap();
        assert_eq!(read.request.report_id, "q3");
        assert_eq!(read.request.phase, pb::CompilationPhase::Expand as i32);
        assert_eq!(
            read.request.section_type,
            pb::SectionType::Methodology as i32
        );
        assert_eq!(read.sources.phase, Source::Metadata);
        assert_eq!(read.sources.param("phase"), "metadata.vra_phase");
        assert_eq!(read.sources.param("report_id"), "metadata.vra_report_id");
        assert_eq!(Sources::default().param("report_id"), REPORT_ID);
    }

    #[test]
    fn options_are_mapped_and_unsupported_fields_are_named() {
        let read = read(
            &HeaderMap::new(),
            simple(serde_json::json!({
                "temperature": 0.3, "top_p": 0.9, "max_completion_tokens": 64, "stop": "END",
                "seed": 7, "user": "alice", "stream": true, "stream_options": {"include_usage": true},
                "n": 1, "logprobs": false, "store": true, "response_format": {"type": "text"}
            })),
        )
        .unwrap();
        let options = read.request.options.clone().unwrap();
        assert_eq!(
            (options.temperature, options.max_tokens),
            (Some(0.3), Some(64))
        );
        assert_eq!(options.stop, vec!["END".to_string()]);
        assert_eq!((options.top_p, options.seed), (Some(0.9), Some(7)));
        assert!(read.stream && read.include_usage);
        assert_eq!(
            read.sources.param("options.max_tokens"),
            "max_completion_tokens"
        );
        for (field, value) in [
            ("tools", serde_json::json!([{"type": "function"}])),
            ("n", serde_json::json!(2)),
            ("logprobs", serde_json::json!(true)),
            (
                "response_format",
                serde_json::json!({"type": "json_object"}),
            ),
            ("frequency_penalty", serde_json::json!(0.5)),
            ("some_new_field", serde_json::json!("x")),
        ] {
            let err = super::read(
                &HeaderMap::new(),
                simple(serde_json::json!({ field: value })),
            )
            .unwrap_err();
            assert_eq!(err.param, field, "{err:?}");
        }
    }

    fn turn(role: pb::ChatRole, content: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            role: role as i32,
            content: content.into(),
        }
    }

    #[test]
    fn messages_are_the_whole_conversation_in_text() {
        let refused = |messages: Value| {
            super::read(
                &HeaderMap::new(),
                body(serde_json::json!({ "messages": messages })),
            )
            .unwrap_err()
            .param
        };
        let read = super::read(
            &HeaderMap::new(),
            body(serde_json::json!({"messages": [
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "more", "name": null}
            ]})),
        )
        .unwrap();
        use pb::ChatRole::{Assistant, System, User};
        assert_eq!(
            read.request.messages,
            [
                turn(System, "ab"),
                turn(User, "hi"),
                turn(Assistant, "Hello."),
                turn(System, "be brief"),
                turn(User, "more")
            ]
        );
        assert_eq!(refused(serde_json::json!([])), "messages");
        assert_eq!(
            refused(
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "tool", "content": "b", "tool_call_id": "t"}])
            ),
            "messages[1].tool_call_id"
        );
        assert_eq!(
            refused(
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "function", "content": "b"}])
            ),
            "messages[1].role"
        );
        assert_eq!(
            refused(
                serde_json::json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
            ),
            "messages[0].content[0].type"
        );
        assert_eq!(
            refused(serde_json::json!([{"role": "user", "content": "a", "tool_calls": []}])),
            "messages[0].tool_calls"
        );
    }

    #[test]
    fn a_bad_phase_is_refused_naming_where_it_came_from() {
        let err = read(
            &headers(&[(PHASE, "POLISH")]),
            simple(serde_json::json!({})),
        )
        .unwrap_err();
        assert_eq!(err.param, PHASE);
        assert!(err.message.contains("DRAFT"), "{err:?}");
        let err = read(
            &headers(&[(PHASE, "unspecified")]),
            simple(serde_json::json!({})),
        )
        .unwrap_err();
        assert_eq!(err.param, PHASE);
        let err = read(
            &HeaderMap::new(),
            simple(serde_json::json!({"metadata": {"vra_section_type": 3}})),
        )
        .unwrap_err();
        assert_eq!(err.param, "metadata.vra_section_type");
    }

    #[test]
    fn a_model_pins_the_tier_that_sends_it() {
        assert_eq!(
            pinned_tier("gpt-4o", "gpt-4o", "llama3:8b"),
            Some(Tier::Primary)
        );
        assert_eq!(
            pinned_tier("llama3:8b", "gpt-4o", "llama3:8b"),
            Some(Tier::Secondary)
        );
        assert_eq!(pinned_tier("gpt-5", "gpt-4o", "llama3:8b"), None);
        let named = read(
            &HeaderMap::new(),
            simple(serde_json::json!({"model": "gpt-4o"})),
        )
        .unwrap();
        assert_eq!(named.model, ModelChoice::Named("gpt-4o".into()));
    }

    proptest! {
        /// Any header value: no panic; a phase is read exactly when it names one (any case,
        /// short or full name).
        #[test]
        fn phase_headers_are_total(value in "[ -~]{0,40}") {
            let Ok(header) = value.parse() else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(PHASE, header);
            let known = ["DRAFT", "EXPAND", "REFINE", "ABSTRACT"];
            let upper = value.trim().to_ascii_uppercase();
            let short = upper.strip_prefix("COMPILATION_PHASE_").unwrap_or(&upper);
            match read(&h, simple(serde_json::json!({}))) {
                Ok(r) => {
                    prop_assert!(known.contains(&short));
                    prop_assert!(r.request.phase > 0);
                }
                Err(e) => {
                    prop_assert!(!known.contains(&short));
                    prop_assert_eq!(e.param, PHASE);
                }
            }
        }

        /// Any metadata value: no panic, and an error names the metadata key.
        #[test]
        fn metadata_values_are_total(value in proptest::option::of("[ -~]{0,20}"), number in proptest::num::i64::ANY) {
            let v = match &value { Some(s) => Value::String(s.clone()), None => Value::from(number) };
            let result = read(
                &HeaderMap::new(),
                simple(serde_json::json!({"metadata": {"vra_section_type": v}})),
            );
            if let Err(e) = result {
                prop_assert_eq!(e.param, "metadata.vra_section_type");
            }
        }
    }
}
