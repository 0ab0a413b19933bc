//! OpenAI-compatible Chat Completions: `POST {base}/chat/completions`.
//!
//! Speaks the wire format of OpenAI and of the many servers that copy it (vLLM, llama.cpp,
//! LM Studio...). Non-streaming answers come from `choices[0].message.content` and `usage`;
//! streaming uses SSE (see [`super::stream::SseDecoder`]).

use std::time::Duration;

use async_trait::async_trait;

use super::stream::SseDecoder;
use super::{
    BuildError, ChatRequest, Completion, EventStream, Provider, ProviderError, TokenUsage, http,
};
use crate::config::ProviderConfig;

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
        pub max_tokens: Option<u32>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        pub stop: &'a [String],
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

/// An OpenAI-compatible upstream.
pub struct OpenAi {
    config: ProviderConfig,
    endpoint: http::Endpoint,
}

impl OpenAi {
    pub fn new(
        config: ProviderConfig,
        extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<Self, BuildError> {
        Ok(Self {
            endpoint: http::Endpoint::new(&config, "/chat/completions", extra_roots)?,
            config,
        })
    }

    fn body<'a>(req: &'a ChatRequest, stream: bool) -> wire::Request<'a> {
        wire::Request {
            model: &req.model,
            messages: req.messages(),
            temperature: req.temperature,
            max_tokens: req.max_tokens,
            stop: &req.stop,
            stream,
            stream_options: stream.then_some(wire::StreamOptions {
                include_usage: true,
            }),
        }
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

#[async_trait]
impl Provider for OpenAi {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn address(&self) -> (&str, u16) {
        self.endpoint.address()
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        self.endpoint
            .complete(&Self::body(req, false), parse_response)
            .await
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        idle: Duration,
    ) -> Result<EventStream, ProviderError> {
        self.endpoint
            .stream(
                &Self::body(req, true),
                "text/event-stream",
                SseDecoder::new(self.config.limits.line_bytes),
                idle,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_has_the_wire_shape() {
        let req = ChatRequest {
            model: "gpt-4o".into(),
            system: Some("be brief".into()),
            prompt: "hello".into(),
            temperature: Some(0.5),
            max_tokens: Some(64),
            stop: vec!["END".into()],
        };
        let v = serde_json::to_value(OpenAi::body(&req, true)).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["content"], "hello");
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["stop"][0], "END");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let plain = ChatRequest {
            system: None,
            temperature: None,
            max_tokens: None,
            stop: vec![],
            ..req
        };
        let v = serde_json::to_value(OpenAi::body(&plain, false)).unwrap();
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
