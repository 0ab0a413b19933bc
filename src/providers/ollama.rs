//! Ollama's native chat wire format: `POST {host}/api/chat`.
//!
//! Non-streaming requests send `"stream": false` and read `message.content`,
//! `prompt_eval_count` and `eval_count`; streams are NDJSON ([`NdjsonDecoder`]). Sampling
//! options go under `options` with Ollama's names (`num_predict` for max tokens).

use std::collections::VecDeque;

use super::BodyLimits;
use super::stream::Decoder;
use super::wire::WireFormat;
use super::{ChatRequest, Completion, ProviderError, StreamEvent, TokenUsage};

/// The JSON shapes of Ollama's `/api/chat`.
pub mod wire {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Default)]
    pub struct Options<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub temperature: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub top_p: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub num_predict: Option<u32>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        pub stop: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        pub seed: Option<i64>,
    }

    #[derive(Debug, Serialize)]
    pub struct Request<'a> {
        pub model: &'a str,
        pub messages: Vec<crate::providers::Message<'a>>,
        pub stream: bool,
        pub options: Options<'a>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ResponseMessage {
        #[serde(default)]
        pub content: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct ChatResponse {
        pub model: Option<String>,
        pub message: Option<ResponseMessage>,
        #[serde(default)]
        pub done: bool,
        pub done_reason: Option<String>,
        #[serde(default)]
        pub prompt_eval_count: u32,
        #[serde(default)]
        pub eval_count: u32,
        pub error: Option<String>,
    }
}

/// Ollama's `/api/chat` format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ollama;

impl Ollama {
    fn request<'a>(req: &'a ChatRequest, stream: bool) -> wire::Request<'a> {
        wire::Request {
            model: &req.model,
            messages: req.messages(),
            stream,
            options: wire::Options {
                temperature: req.temperature,
                top_p: req.top_p,
                num_predict: req.max_tokens,
                stop: &req.stop,
                seed: req.seed,
            },
        }
    }
}

impl WireFormat for Ollama {
    const SYSTEM: &'static str = "ollama";
    const PATH: &'static str = "/api/chat";
    const STREAM_ACCEPT: &'static str = "application/x-ndjson";
    type Decoder = NdjsonDecoder;

    fn body(&self, req: &ChatRequest, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Self::request(req, stream))
    }

    fn parse(&self, body: &[u8]) -> Result<Completion, ProviderError> {
        parse_response(body)
    }

    fn decoder(&self, _: BodyLimits) -> NdjsonDecoder {
        NdjsonDecoder
    }
}

/// Parses a non-streaming `/api/chat` body.
pub fn parse_response(body: &[u8]) -> Result<Completion, ProviderError> {
    let resp: wire::ChatResponse = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("ollama chat: {e}")))?;
    if let Some(err) = resp.error {
        return Err(ProviderError::Upstream(err));
    }
    let message = resp
        .message
        .ok_or_else(|| ProviderError::Malformed("ollama chat has no message".into()))?;
    if !resp.done {
        return Err(ProviderError::Malformed(
            "ollama chat answer is not done".into(),
        ));
    }
    Ok(Completion {
        text: message.content,
        model: resp.model.unwrap_or_default(),
        usage: TokenUsage::reported(resp.prompt_eval_count, resp.eval_count),
        finish_reason: resp.done_reason.unwrap_or_else(|| "stop".into()),
    })
}

/// Ollama `/api/chat` streaming: one JSON object per line; the last has `"done": true`.
#[derive(Debug, Default)]
pub struct NdjsonDecoder;

impl Decoder for NdjsonDecoder {
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let msg: wire::ChatResponse = serde_json::from_str(line)
            .map_err(|e| ProviderError::Malformed(format!("stream line: {e}")))?;
        if let Some(err) = msg.error {
            return Err(ProviderError::Upstream(err));
        }
        if let Some(text) = msg.message.map(|m| m.content).filter(|t| !t.is_empty()) {
            out.push_back(StreamEvent::Delta(text));
        }
        if msg.done {
            out.push_back(StreamEvent::Done {
                model: msg.model.unwrap_or_default(),
                usage: TokenUsage::reported(msg.prompt_eval_count, msg.eval_count),
                finish_reason: msg.done_reason.unwrap_or_else(|| "stop".into()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChatMessage, Role};

    #[test]
    fn request_body_has_the_wire_shape() {
        let req = ChatRequest {
            model: "llama3:8b".into(),
            messages: [
                ChatMessage::new(Role::System, "sys"),
                ChatMessage::new(Role::User, "hi"),
                ChatMessage::new(Role::Assistant, "Hello."),
                ChatMessage::new(Role::User, "more"),
            ]
            .into(),
            temperature: Some(0.2),
            top_p: Some(0.5),
            max_tokens: Some(100),
            stop: vec!["\n\n".into()],
            seed: Some(42),
        };
        let v = serde_json::to_value(Ollama::request(&req, false)).unwrap();
        assert_eq!(v["model"], "llama3:8b");
        assert_eq!(v["stream"], false);
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["role"], "user");
        assert_eq!(v["messages"][2]["role"], "assistant");
        assert_eq!(v["messages"][3]["content"], "more");
        assert_eq!(v["options"]["num_predict"], 100);
        assert_eq!(v["options"]["stop"][0], "\n\n");
        assert_eq!(
            (v["options"]["top_p"].as_f64(), &v["options"]["seed"]),
            (Some(0.5), &serde_json::json!(42))
        );
        assert!((v["options"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    }

    #[test]
    fn parses_a_chat_answer() {
        let body = br#"{"model":"llama3:8b","created_at":"x","message":{"role":"assistant","content":"Hello"},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":9}"#;
        let c = parse_response(body).unwrap();
        assert_eq!(
            (c.text.as_str(), c.usage),
            ("Hello", TokenUsage::reported(26, 9))
        );
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        assert!(matches!(
            parse_response(b"[]"),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(br#"{"done":true}"#),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(br#"{"error":"boom"}"#),
            Err(ProviderError::Upstream(_))
        ));
    }
}
