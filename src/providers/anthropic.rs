//! The Anthropic Messages wire format (Claude): `POST {base}/v1/messages`.
//!
//! Shapes from Anthropic's API reference — "Messages" (docs.anthropic.com/en/api/messages) and
//! "Streaming Messages" (docs.anthropic.com/en/docs/build-with-claude/streaming):
//!
//! - The key travels in `x-api-key`, with `anthropic-version: 2023-06-01`.
//! - `max_tokens` is required: the caller's, else `VRA_MAX_OUTPUT_TOKENS`.
//! - The system prompt is a top-level `system` field (every system turn, joined by a blank
//!   line); `messages` alternate `user` and `assistant` (consecutive turns of one role are
//!   merged the same way, empty turns dropped) and open and close with a `user` turn (a
//!   conversation that opens or ends with an assistant turn gets a `.` user turn there: the
//!   API refuses the first, and reads the second as a prefill to continue rather than a turn
//!   to answer, which the newest models refuse). `temperature` (at most 1, Anthropic's range)
//!   or else `top_p` is passed on — the current models refuse both together — and `stop` as
//!   `stop_sequences` (whitespace-only ones left out: the API refuses them); `seed` has no
//!   counterpart and is left out.
//! - An answer's text is its `text` content blocks, joined; `usage.input_tokens` plus the
//!   prompt cache's `cache_creation_input_tokens` and `cache_read_input_tokens` count as input
//!   (priced at the model's input price), `output_tokens` as output; `stop_reason` maps to the
//!   OpenAI finish reasons ([`finish_reason`]).
//! - A stream is SSE with named events ([`MessagesDecoder`]): `message_start` (the model and
//!   the input tokens), `content_block_delta` (`text_delta`: one delta each),
//!   `message_delta` (the output tokens so far — cumulative — and the stop reason),
//!   `message_stop` (the end); `ping` and the block start/stop events carry nothing the
//!   gateway needs. An `error` event ends the stream: `overloaded_error`, `rate_limit_error`
//!   and `api_error` as the statuses they stand for (529, 429, 500: retried before the first
//!   delta), any other with its message. Usage fields of a `message_delta` replace the same
//!   fields of `message_start`, one by one, as Anthropic's own client merges them.
//! - Errors: `{"type": "error", "error": {"type": ..., "message": ...}}`; 529
//!   (`overloaded_error`) and 429 are transient like every 5xx (the HTTP provider's mapping).

use std::collections::VecDeque;

use http::HeaderName;

use super::BodyLimits;
use super::sse::SseEvents;
use super::stream::Decoder;
use super::wire::WireFormat;
use super::{ChatRequest, Completion, ProviderError, StreamEvent, TokenUsage};
use crate::domain::Role;

/// The `anthropic-version` every request sends.
pub const API_VERSION: &str = "2023-06-01";

/// The JSON shapes of the Messages API that the gateway reads and writes.
pub mod wire {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, PartialEq)]
    pub struct Turn {
        pub role: &'static str,
        pub content: String,
    }

    #[derive(Debug, Serialize)]
    pub struct Request<'a> {
        pub model: &'a str,
        pub max_tokens: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub system: Option<String>,
        pub messages: Vec<Turn>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub temperature: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub top_p: Option<f32>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub stop_sequences: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        pub stream: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    pub struct Usage {
        #[serde(default)]
        pub input_tokens: Option<u32>,
        #[serde(default)]
        pub output_tokens: Option<u32>,
        #[serde(default)]
        pub cache_creation_input_tokens: Option<u32>,
        #[serde(default)]
        pub cache_read_input_tokens: Option<u32>,
    }

    impl Usage {
        /// `later`'s fields over these, one by one (an absent field keeps its value).
        pub fn merge(&mut self, later: Usage) {
            let keep = |mine: &mut Option<u32>, theirs: Option<u32>| {
                if theirs.is_some() {
                    *mine = theirs;
                }
            };
            keep(&mut self.input_tokens, later.input_tokens);
            keep(&mut self.output_tokens, later.output_tokens);
            keep(
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            );
            keep(
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            );
        }

        /// Input tokens, the prompt cache's writes and reads included.
        pub fn input(&self) -> Option<u32> {
            let parts = [
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ];
            parts.iter().any(Option::is_some).then(|| {
                parts
                    .iter()
                    .flatten()
                    .fold(0u32, |a, b| a.saturating_add(*b))
            })
        }
    }

    #[derive(Debug, Deserialize)]
    pub struct ContentBlock {
        #[serde(rename = "type")]
        pub kind: String,
        pub text: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Response {
        pub model: Option<String>,
        pub content: Vec<ContentBlock>,
        pub stop_reason: Option<String>,
        pub usage: Option<Usage>,
    }

    #[derive(Debug, Deserialize)]
    pub struct StartMessage {
        pub model: Option<String>,
        #[serde(default)]
        pub usage: Usage,
    }

    #[derive(Debug, Deserialize)]
    pub struct Delta {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub text: Option<String>,
        pub stop_reason: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ErrorBody {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub message: Option<String>,
    }

    /// One streamed event, by its `type`.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Event {
        MessageStart {
            message: StartMessage,
        },
        ContentBlockDelta {
            delta: Delta,
        },
        MessageDelta {
            delta: Delta,
            #[serde(default)]
            usage: Usage,
        },
        MessageStop,
        Error {
            error: ErrorBody,
        },
        /// `ping`, `content_block_start`, `content_block_stop`, and event types added later.
        #[serde(other)]
        Other,
    }
}

/// The Anthropic Messages format. `max_tokens` is required by the API: requests without one
/// get `default_max_tokens` (`VRA_MAX_OUTPUT_TOKENS`).
#[derive(Debug, Clone, Copy)]
pub struct Anthropic {
    pub default_max_tokens: u32,
}

impl Anthropic {
    fn request<'a>(&self, req: &'a ChatRequest, stream: bool) -> wire::Request<'a> {
        let (system, messages) = conversation(req);
        // Anthropic's temperature goes up to 1; the current models take it or top_p, not both.
        let temperature = req.temperature.map(|t| t.clamp(0.0, 1.0));
        wire::Request {
            model: &req.model,
            max_tokens: req.max_tokens.unwrap_or(self.default_max_tokens),
            system,
            messages,
            temperature,
            top_p: req.top_p.filter(|_| temperature.is_none()),
            stop_sequences: req
                .stop
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
            stream,
        }
    }
}

/// The system prompt (every system turn, joined by a blank line) and the alternating
/// user/assistant turns (consecutive turns of one role joined the same way, empty ones
/// dropped), opening and closing with a user turn.
fn conversation(req: &ChatRequest) -> (Option<String>, Vec<wire::Turn>) {
    let mut system: Option<String> = None;
    let mut turns: Vec<wire::Turn> = Vec::new();
    for m in req.messages.iter() {
        let role = match m.role {
            Role::System => {
                match &mut system {
                    Some(s) => {
                        s.push_str("\n\n");
                        s.push_str(&m.content);
                    }
                    None => system = Some(m.content.clone()),
                }
                continue;
            }
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if m.content.trim().is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
            }
            _ => turns.push(wire::Turn {
                role,
                content: m.content.clone(),
            }),
        }
    }
    let placeholder = || wire::Turn {
        role: "user",
        content: ".".into(),
    };
    if turns.first().is_none_or(|t| t.role != "user") {
        turns.insert(0, placeholder());
    }
    if turns.last().is_some_and(|t| t.role != "user") {
        turns.push(placeholder());
    }
    (system, turns)
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`: `end_turn` and `stop_sequence` →
/// `stop`, `max_tokens` and `model_context_window_exceeded` → `length`, `tool_use` → `tool_calls`, `refusal` → `content_filter`;
/// another reason is passed on as it is.
pub fn finish_reason(stop_reason: Option<&str>) -> String {
    match stop_reason {
        None | Some("end_turn" | "stop_sequence") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        Some(other) => other,
    }
    .to_string()
}

impl WireFormat for Anthropic {
    const SYSTEM: &'static str = "anthropic";
    const PATH: &'static str = "/v1/messages";
    const STREAM_ACCEPT: &'static str = "text/event-stream";
    type Decoder = MessagesDecoder;

    fn body(&self, req: &ChatRequest, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&self.request(req, stream))
    }

    fn parse(&self, body: &[u8]) -> Result<Completion, ProviderError> {
        parse_response(body)
    }

    fn decoder(&self, limits: BodyLimits) -> MessagesDecoder {
        MessagesDecoder::new(limits.line_bytes)
    }

    fn auth_headers(&self, key: &str) -> Vec<(HeaderName, String)> {
        vec![
            (HeaderName::from_static("x-api-key"), key.to_string()),
            (
                HeaderName::from_static("anthropic-version"),
                API_VERSION.to_string(),
            ),
        ]
    }
}

/// Parses a non-streaming Messages body.
pub fn parse_response(body: &[u8]) -> Result<Completion, ProviderError> {
    let resp: wire::Response = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("message: {e}")))?;
    let text = resp
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect::<String>();
    let usage = resp.usage.map_or(TokenUsage::default(), |u| {
        TokenUsage::reported(u.input().unwrap_or(0), u.output_tokens.unwrap_or(0))
    });
    Ok(Completion {
        text,
        model: resp.model.unwrap_or_default(),
        usage,
        finish_reason: finish_reason(resp.stop_reason.as_deref()),
    })
}

/// Anthropic's streamed Messages: SSE events named by their `type`, from `message_start` to
/// `message_stop`. The SSE framing (and its cap on what one event accumulates) is
/// [`SseEvents`]'.
#[derive(Debug)]
pub struct MessagesDecoder {
    events: SseEvents,
    model: String,
    /// The usage fields seen so far, each replaced by a later event's when it has it.
    usage: wire::Usage,
    stop_reason: Option<String>,
}

impl MessagesDecoder {
    pub fn new(max_data: usize) -> Self {
        Self {
            events: SseEvents::new(max_data),
            model: String::new(),
            usage: wire::Usage::default(),
            stop_reason: None,
        }
    }

    /// Bytes of data held for the event in progress.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.events.held()
    }

    fn event(&mut self, data: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        let event: wire::Event = serde_json::from_str(data)
            .map_err(|e| ProviderError::Malformed(format!("stream event: {e}")))?;
        match event {
            wire::Event::MessageStart { message } => {
                if let Some(model) = message.model {
                    self.model = model;
                }
                self.usage.merge(message.usage);
            }
            wire::Event::ContentBlockDelta { delta } => {
                if delta.kind.as_deref() == Some("text_delta")
                    && let Some(text) = delta.text.filter(|t| !t.is_empty())
                {
                    out.push_back(StreamEvent::Delta(text));
                }
            }
            wire::Event::MessageDelta { delta, usage } => {
                // Cumulative counts: each field present is the whole so far.
                self.usage.merge(usage);
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(reason);
                }
            }
            wire::Event::MessageStop => {
                let usage = match (self.usage.input(), self.usage.output_tokens) {
                    (None, None) => TokenUsage::default(),
                    (input, output) => {
                        TokenUsage::reported(input.unwrap_or(0), output.unwrap_or(0))
                    }
                };
                out.push_back(StreamEvent::Done {
                    model: std::mem::take(&mut self.model),
                    usage,
                    finish_reason: finish_reason(self.stop_reason.take().as_deref()),
                });
            }
            wire::Event::Error { error } => return Err(stream_error(error)),
            wire::Event::Other => {}
        }
        Ok(())
    }
}

/// A stream's `error` event as the error it stands for: the transient kinds as their HTTP
/// statuses (so an attempt that has sent no text yet is retried, as their status would be),
/// any other as an upstream error with its message.
fn stream_error(error: wire::ErrorBody) -> ProviderError {
    let message = error.message.unwrap_or_default();
    let status = match error.kind.as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("api_error") => 500,
        Some(kind) => return ProviderError::Upstream(format!("{kind}: {message}")),
        None => return ProviderError::Upstream(message),
    };
    ProviderError::Status {
        status,
        retry_after: None,
        message,
    }
}

impl Decoder for MessagesDecoder {
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        match self.events.line(line)? {
            Some(event) => self.event(&event.data, out),
            None => Ok(()),
        }
    }

    fn finish(&mut self, rest: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if !rest.is_empty() {
            self.line(rest, out)?;
        }
        match self.events.dispatch() {
            Some(event) => self.event(&event.data, out),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::ChatMessage;

    fn req(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-6".into(),
            messages: messages.into(),
            temperature: Some(0.5),
            top_p: Some(0.25),
            max_tokens: None,
            stop: vec!["END".into()],
            seed: Some(7),
        }
    }

    const FORMAT: Anthropic = Anthropic {
        default_max_tokens: 4096,
    };

    #[test]
    fn the_request_has_a_top_level_system_alternating_turns_and_max_tokens() {
        let r = req(vec![
            ChatMessage::new(Role::System, "Be terse."),
            ChatMessage::new(Role::User, "one"),
            ChatMessage::new(Role::User, "two"),
            ChatMessage::new(Role::Assistant, "ok"),
            ChatMessage::new(Role::System, "Cite sources."),
            ChatMessage::new(Role::User, "three"),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&FORMAT.body(&r, true).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "claude-sonnet-4-6",
                "max_tokens": 4096,
                "system": "Be terse.\n\nCite sources.",
                "messages": [
                    {"role": "user", "content": "one\n\ntwo"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "three"},
                ],
                "temperature": 0.5,
                "stop_sequences": ["END"],
                "stream": true,
            })
        );
        let plain = ChatRequest {
            max_tokens: Some(64),
            temperature: None,
            top_p: None,
            stop: vec![],
            ..req(vec![ChatMessage::new(Role::User, "hi")])
        };
        let v: serde_json::Value =
            serde_json::from_slice(&FORMAT.body(&plain, false).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "claude-sonnet-4-6", "max_tokens": 64,
                "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn a_conversation_opens_and_closes_with_a_user_turn_and_has_no_empty_one() {
        let (_, turns) = conversation(&req(vec![
            ChatMessage::new(Role::Assistant, "Earlier answer."),
            ChatMessage::new(Role::User, "Go on."),
            ChatMessage::new(Role::User, "  "),
            ChatMessage::new(Role::Assistant, "Partial"),
        ]));
        let roles: Vec<&str> = turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(
            (turns[0].content.as_str(), turns[4].content.as_str()),
            (".", ".")
        );
        assert_eq!(turns[2].content, "Go on.", "the empty turn is dropped");
    }

    #[test]
    fn sampling_fits_anthropics_rules() {
        let both = ChatRequest {
            temperature: Some(1.7),
            top_p: Some(0.9),
            stop: vec!["\n".into(), "END".into()],
            ..req(vec![ChatMessage::new(Role::User, "hi")])
        };
        let v: serde_json::Value =
            serde_json::from_slice(&FORMAT.body(&both, false).unwrap()).unwrap();
        assert_eq!(v["temperature"], 1.0, "Anthropic's range ends at 1");
        assert!(v.get("top_p").is_none(), "not both");
        assert_eq!(
            v["stop_sequences"],
            serde_json::json!(["END"]),
            "no whitespace-only stop"
        );
        let top_p_only = ChatRequest {
            temperature: None,
            top_p: Some(0.25),
            ..both
        };
        let v: serde_json::Value =
            serde_json::from_slice(&FORMAT.body(&top_p_only, false).unwrap()).unwrap();
        assert_eq!(
            (v.get("temperature"), &v["top_p"]),
            (None, &serde_json::json!(0.25))
        );
    }

    #[test]
    fn the_key_goes_in_x_api_key_with_the_version() {
        let headers = FORMAT.auth_headers("sk-ant-secret");
        assert_eq!(
            headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            [
                ("x-api-key", "sk-ant-secret"),
                ("anthropic-version", "2023-06-01")
            ]
        );
    }

    #[test]
    fn parses_a_message_with_cache_tokens_as_input() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
            "content":[{"type":"text","text":"Hello"},{"type":"text","text":", world"}],
            "stop_reason":"max_tokens","stop_sequence":null,
            "usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":7}}"#;
        let c = parse_response(body).unwrap();
        assert_eq!(c.text, "Hello, world");
        assert_eq!(c.model, "claude-sonnet-4-5-20250929");
        assert_eq!(c.usage, TokenUsage::reported(115, 7));
        assert_eq!(c.finish_reason, "length");
        for bad in [&b"<html>"[..], br#"{"type":"message"}"#] {
            assert!(matches!(
                parse_response(bad),
                Err(ProviderError::Malformed(_))
            ));
        }
    }

    #[test]
    fn an_error_body_gives_its_message() {
        assert_eq!(
            <Anthropic as WireFormat>::error_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            )
            .as_deref(),
            Some("Overloaded")
        );
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (from, to) in [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("model_context_window_exceeded"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "pause_turn"),
            (None, "stop"),
        ] {
            assert_eq!(finish_reason(from), to);
        }
    }

    /// The event sequence of Anthropic's streaming reference, usage split between
    /// `message_start` (input) and a cumulative `message_delta` (output).
    pub(crate) const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    fn run(d: &mut MessagesDecoder, text: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut out = VecDeque::new();
        for line in text.split('\n') {
            d.line(line, &mut out)?;
        }
        d.finish("", &mut out)?;
        Ok(out.into())
    }

    #[test]
    fn a_stream_yields_deltas_then_done_with_split_usage() {
        let got = run(&mut MessagesDecoder::new(1 << 20), STREAM).unwrap();
        assert_eq!(
            got,
            vec![
                StreamEvent::Delta("Hello".into()),
                StreamEvent::Delta("!".into()),
                StreamEvent::Done {
                    model: "claude-sonnet-4-5-20250929".into(),
                    usage: TokenUsage::reported(30, 15),
                    finish_reason: "stop".into(),
                },
            ]
        );
    }

    #[test]
    fn an_error_event_ends_the_stream_with_its_message() {
        let cut = STREAM.split("event: content_block_stop").next().unwrap();
        let text = format!(
            "{cut}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n"
        );
        let err = run(&mut MessagesDecoder::new(1 << 20), &text).unwrap_err();
        assert_eq!(
            err,
            ProviderError::Status {
                status: 529,
                retry_after: None,
                message: "Overloaded".into()
            }
        );
        assert!(err.is_retryable(), "overloaded before any text is retried");
        let other = text.replace("overloaded_error", "invalid_request_error");
        assert_eq!(
            run(&mut MessagesDecoder::new(1 << 20), &other).unwrap_err(),
            ProviderError::Upstream("invalid_request_error: Overloaded".into())
        );
    }

    #[test]
    fn a_message_delta_replaces_usage_field_by_field() {
        // Newer API versions repeat the input side in message_delta, cumulatively; a field it
        // leaves out keeps message_start's value.
        let text = STREAM.replace(
            r#""usage":{"output_tokens":15}"#,
            r#""usage":{"input_tokens":40,"output_tokens":15}"#,
        );
        let got = run(&mut MessagesDecoder::new(1 << 20), &text).unwrap();
        let Some(StreamEvent::Done { usage, .. }) = got.last() else {
            panic!("done");
        };
        assert_eq!(
            *usage,
            TokenUsage::reported(45, 15),
            "40 input + 5 cache reads"
        );
    }

    #[test]
    fn a_stream_without_message_stop_has_no_done() {
        let cut = STREAM.split("event: message_stop").next().unwrap();
        let got = run(&mut MessagesDecoder::new(1 << 20), cut).unwrap();
        assert!(
            !got.iter().any(|e| matches!(e, StreamEvent::Done { .. })),
            "the stream layer makes this Truncated"
        );
    }
}
