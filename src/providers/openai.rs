//! The OpenAI Chat Completions wire format: `POST {base}/chat/completions`.
//!
//! Spoken by OpenAI and the many servers that copy it (vLLM, llama.cpp, LM Studio, Azure
//! OpenAI, ...). Non-streaming answers come from `choices[0].message.content` and `usage`;
//! streams are Server-Sent Events of `chat.completion.chunk` objects ([`SseDecoder`]).

use std::collections::VecDeque;

use super::BodyLimits;
use super::sse::SseEvents;
use super::stream::Decoder;
use super::wire::WireFormat;
use super::{ChatRequest, Completion, ProviderError, StreamEvent, TokenUsage};

/// The JSON shapes of the Chat Completions API that the gateway reads and writes.
pub mod wire {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize)]
    pub struct StreamOptions {
        pub include_usage: bool,
    }

    #[derive(Debug, Serialize)]
    pub struct Request<'a> {
        pub model: &'a str,
        pub messages: Vec<crate::providers::Message<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub temperature: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub top_p: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_tokens: Option<u32>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        pub stop: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        pub seed: Option<i64>,
        pub stream: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub stream_options: Option<StreamOptions>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Usage {
        #[serde(default)]
        pub prompt_tokens: u32,
        #[serde(default)]
        pub completion_tokens: u32,
    }

    #[derive(Debug, Deserialize)]
    pub struct ResponseMessage {
        pub content: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Choice {
        pub message: ResponseMessage,
        pub finish_reason: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Response {
        pub model: Option<String>,
        pub choices: Vec<Choice>,
        pub usage: Option<Usage>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Delta {
        pub content: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ChunkChoice {
        pub delta: Option<Delta>,
        pub finish_reason: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ChunkError {
        pub message: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Chunk {
        pub model: Option<String>,
        #[serde(default)]
        pub choices: Vec<ChunkChoice>,
        pub usage: Option<Usage>,
        pub error: Option<ChunkError>,
    }
}

/// The OpenAI Chat Completions format.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAi;

impl OpenAi {
    fn request<'a>(req: &'a ChatRequest, stream: bool) -> wire::Request<'a> {
        wire::Request {
            model: &req.model,
            messages: req.messages(),
            temperature: req.temperature,
            top_p: req.top_p,
            max_tokens: req.max_tokens,
            stop: &req.stop,
            seed: req.seed,
            stream,
            stream_options: stream.then_some(wire::StreamOptions {
                include_usage: true,
            }),
        }
    }
}

impl WireFormat for OpenAi {
    const SYSTEM: &'static str = "openai";
    const PATH: &'static str = "/chat/completions";
    const STREAM_ACCEPT: &'static str = "text/event-stream";
    type Decoder = SseDecoder;

    fn body(&self, req: &ChatRequest, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Self::request(req, stream))
    }

    fn parse(&self, body: &[u8]) -> Result<Completion, ProviderError> {
        parse_response(body)
    }

    fn decoder(&self, limits: BodyLimits) -> SseDecoder {
        SseDecoder::new(limits.line_bytes)
    }
}

/// Parses a non-streaming Chat Completions body.
pub fn parse_response(body: &[u8]) -> Result<Completion, ProviderError> {
    let resp: wire::Response = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("chat completion: {e}")))?;
    let choice = resp
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::Malformed("chat completion has no choices".into()))?;
    let text = choice
        .message
        .content
        .ok_or_else(|| ProviderError::Malformed("chat completion has no message content".into()))?;
    let usage = resp.usage.map_or(TokenUsage::default(), |u| {
        TokenUsage::reported(u.prompt_tokens, u.completion_tokens)
    });
    Ok(Completion {
        text,
        model: resp.model.unwrap_or_default(),
        usage,
        finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
    })
}

/// OpenAI Chat Completions streaming: SSE `data:` lines of `chat.completion.chunk` objects,
/// ended by `data: [DONE]`. Usage arrives in a last chunk with empty `choices` when the
/// request set `stream_options.include_usage`. The SSE framing (and its cap on what one event
/// accumulates) is [`SseEvents`]'.
#[derive(Debug)]
pub struct SseDecoder {
    events: SseEvents,
    model: String,
    usage: TokenUsage,
    finish_reason: Option<String>,
}

impl Default for SseDecoder {
    /// A decoder with the default `VRA_MAX_STREAM_LINE_BYTES` as its event data limit.
    fn default() -> Self {
        Self::new(BodyLimits::default().line_bytes)
    }
}

impl SseDecoder {
    /// A decoder whose events may carry at most `max_data` bytes of data (the stream line
    /// limit: one event is usually one line).
    pub fn new(max_data: usize) -> Self {
        Self {
            events: SseEvents::new(max_data),
            model: String::new(),
            usage: TokenUsage::default(),
            finish_reason: None,
        }
    }

    /// Bytes of data held for the event in progress (for the stream tests' memory bounds).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.events.held()
    }

    fn event(&mut self, data: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if data.trim() == "[DONE]" {
            out.push_back(StreamEvent::Done {
                model: std::mem::take(&mut self.model),
                usage: self.usage,
                finish_reason: self.finish_reason.take().unwrap_or_else(|| "stop".into()),
            });
            return Ok(());
        }
        let chunk: wire::Chunk = serde_json::from_str(data)
            .map_err(|e| ProviderError::Malformed(format!("stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            return Err(ProviderError::Upstream(err.message.unwrap_or_default()));
        }
        if let Some(model) = chunk.model {
            self.model = model;
        }
        if let Some(u) = chunk.usage {
            self.usage = TokenUsage::reported(u.prompt_tokens, u.completion_tokens);
        }
        for choice in chunk.choices {
            if let Some(text) = choice
                .delta
                .and_then(|d| d.content)
                .filter(|t| !t.is_empty())
            {
                out.push_back(StreamEvent::Delta(text));
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(())
    }
}

impl Decoder for SseDecoder {
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if let Some(event) = self.events.line(line)? {
            return self.event(&event.data, out);
        }
        // OpenAI ends with `data: [DONE]`, sometimes without the blank line after it.
        if self.events.pending_data() == Some("[DONE]")
            && let Some(event) = self.events.dispatch()
        {
            return self.event(&event.data, out);
        }
        Ok(())
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
mod tests {
    use super::*;
    use crate::domain::{ChatMessage, Role};

    #[test]
    fn request_body_has_the_wire_shape() {
        let req = ChatRequest {
            model: "gpt-4o".into(),
            messages: [
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "hello"),
                ChatMessage::new(Role::Assistant, "Hi."),
                ChatMessage::new(Role::User, "again"),
            ]
            .into(),
            temperature: Some(0.5),
            top_p: Some(0.9),
            max_tokens: Some(64),
            stop: vec!["END".into()],
            seed: Some(7),
        };
        let v = serde_json::to_value(OpenAi::request(&req, true)).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["content"], "hello");
        assert_eq!(
            (&v["messages"][2]["role"], &v["messages"][3]["content"]),
            (&serde_json::json!("assistant"), &serde_json::json!("again"))
        );
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["stop"][0], "END");
        assert!((v["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(v["seed"], 7);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let plain = ChatRequest {
            messages: [ChatMessage::new(Role::User, "hello")].into(),
            temperature: None,
            max_tokens: None,
            stop: vec![],
            top_p: None,
            seed: None,
            ..req
        };
        let v = serde_json::to_value(OpenAi::request(&plain, false)).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        assert!(
            v.get("temperature").is_none()
                && v.get("stop").is_none()
                && v.get("stream_options").is_none()
        );
    }

    #[test]
    fn parses_a_completion() {
        let body = br#"{"id":"x","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
        let c = parse_response(body).unwrap();
        assert_eq!(c.text, "Hi");
        assert_eq!(c.model, "gpt-4o-2024-08-06");
        assert_eq!(c.usage, TokenUsage::reported(5, 1));
        assert_eq!(c.finish_reason, "stop");
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        for body in [
            &b"<html>"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":null}}]}"#,
        ] {
            assert!(matches!(
                parse_response(body),
                Err(ProviderError::Malformed(_))
            ));
        }
    }
}
