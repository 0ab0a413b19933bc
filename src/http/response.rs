//! The HTTP door's answers in OpenAI's exact shapes — a `chat.completion`, the
//! `chat.completion.chunk`s of a stream, the model list — and the `x-vra-*` headers that say
//! how a call was routed.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::domain::{CacheStatus, Nanos, RouteInfo, TokenUsage};
use crate::gateway::{Generated, Started};

/// Every answer's call id, also the body's `id`.
pub const REQUEST_ID: &str = "x-request-id";

/// How one call was routed, as headers (on every answer, and before a stream's first byte).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteHeaders<'a> {
    pub route: &'a RouteInfo,
    pub attempts: u32,
    /// The report's cloud calls after this call (`None` when unknown yet: a stream that
    /// reserved none).
    pub cloud_calls_used: Option<u32>,
    pub cloud_calls_limit: u32,
    pub cost: Option<Nanos>,
    /// `None` without a cache.
    pub cache: Option<CacheStatus>,
}

impl<'a> RouteHeaders<'a> {
    pub fn of_call(g: &'a Generated) -> Self {
        Self {
            route: &g.route,
            attempts: g.attempts,
            cloud_calls_used: Some(g.budget.used),
            cloud_calls_limit: g.budget.limit,
            cost: g.cost,
            cache: g.cache,
        }
    }

    pub fn of_stream(s: &'a Started) -> Self {
        Self {
            route: &s.route,
            attempts: s.attempts,
            cloud_calls_used: s.cloud_calls_used,
            cloud_calls_limit: s.cloud_calls_limit,
            cost: None,
            cache: s.cache,
        }
    }

    /// Writes `x-vra-tier`, `x-vra-provider`, `x-vra-model`, `x-vra-rule`,
    /// `x-vra-fallback-reason` (`none` when none), `x-vra-attempts`,
    /// `x-vra-cloud-calls-used`, `x-vra-cloud-calls-limit`, `x-vra-cost-usd` (when known) and
    /// `x-vra-cache` (`HIT`, `MISS` or `BYPASS`; absent without a cache).
    pub fn write(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        let r = self.route;
        put("x-vra-tier", r.tier.as_str().to_string());
        put("x-vra-provider", r.provider.clone());
        put("x-vra-model", r.model.clone());
        put("x-vra-rule", r.rule.id().to_string());
        put(
            "x-vra-fallback-reason",
            r.fallback.map_or("none", |f| f.as_str()).to_string(),
        );
        put("x-vra-attempts", self.attempts.to_string());
        if let Some(used) = self.cloud_calls_used {
            put("x-vra-cloud-calls-used", used.to_string());
        }
        put(
            "x-vra-cloud-calls-limit",
            self.cloud_calls_limit.to_string(),
        );
        if let Some(cost) = self.cost {
            put("x-vra-cost-usd", format!("{:.9}", cost.usd()));
        }
        if let Some(cache) = self.cache {
            put("x-vra-cache", cache.as_str().to_string());
        }
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Self {
        Usage {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.input.saturating_add(u.output),
        }
    }
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'a str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'a str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

/// A unary answer: OpenAI's `chat.completion`; `model` is the model that answered.
pub fn completion(id: &str, created: u64, g: &Generated) -> Vec<u8> {
    let body = Completion {
        id,
        object: "chat.completion",
        created,
        model: &g.route.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &g.text,
                refusal: None,
            },
            finish_reason: &g.finish_reason,
            logprobs: None,
        }],
        usage: g.usage.into(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

/// Writes a stream's `chat.completion.chunk` events, each as one SSE `data:` event.
#[derive(Debug, Clone)]
pub struct Chunks {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Chunks {
    fn event(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<Usage>) -> Vec<u8> {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        sse(&serde_json::to_vec(&chunk).unwrap_or_default())
    }

    fn choice<'a>(delta: Delta<'a>, finish_reason: Option<&'a str>) -> Vec<ChunkChoice<'a>> {
        vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason,
            logprobs: None,
        }]
    }

    /// The first event: the assistant's role, no text yet.
    pub fn start(&self) -> Bytes {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        Bytes::from(self.event(Self::choice(delta, None), None))
    }

    /// One piece of text.
    pub fn delta(&self, text: &str) -> Bytes {
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        Bytes::from(self.event(Self::choice(delta, None), None))
    }

    /// The end: the finish reason, the usage when asked for (`stream_options.include_usage`,
    /// a chunk with no choices, as OpenAI sends it), and `[DONE]`.
    pub fn finish(&self, g: &Generated, include_usage: bool) -> Bytes {
        let mut out = self.event(Self::choice(Delta::default(), Some(&g.finish_reason)), None);
        if include_usage {
            out.extend(self.event(Vec::new(), Some(g.usage.into())));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// One SSE event carrying `json` (which, being JSON, has no newline).
pub fn sse(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

/// `GET /v1/models`: `vra-auto`, then each configured tier's model (owned by its provider),
/// each once.
pub fn models(tiers: &[(&str, &str)]) -> Vec<u8> {
    let mut data = vec![Model {
        id: super::request::AUTO_MODEL,
        object: "model",
        created: 0,
        owned_by: "vra-gateway",
    }];
    for &(provider, model) in tiers {
        if !data.iter().any(|m| m.id == model) {
            data.push(Model {
                id: model,
                object: "model",
                created: 0,
                owned_by: provider,
            });
        }
    }
    serde_json::to_vec(&ModelList {
        object: "list",
        data,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BudgetInfo, FallbackReason, Rule, Tier};

    fn generated() -> Generated {
        Generated {
            text: "Hello".into(),
            route: RouteInfo {
                tier: Tier::Secondary,
                provider: "local".into(),
                model: "llama3:8b".into(),
                cloud: false,
                fallback: Some(FallbackReason::CostLimit),
                rule: Rule::RefinePrimary,
            },
            usage: TokenUsage::reported(12, 3),
            budget: BudgetInfo {
                used: 6,
                limit: 6,
                exhausted: true,
                cost_used: Nanos::ZERO,
                cost_reserved: Nanos::ZERO,
                cost_limit: None,
            },
            attempts: 1,
            finish_reason: "stop".into(),
            cost: Some(Nanos(1_500)),
            cache: None,
        }
    }

    #[test]
    fn a_completion_has_openais_shape_and_names_the_model_that_answered() {
        let v: serde_json::Value =
            serde_json::from_slice(&completion("chatcmpl-1", 7, &generated())).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["model"], "llama3:8b");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 15);
    }

    #[test]
    fn route_headers_say_how_the_call_was_routed() {
        let g = generated();
        let mut h = HeaderMap::new();
        RouteHeaders::of_call(&g).write(&mut h);
        for (name, value) in [
            ("x-vra-tier", "SECONDARY"),
            ("x-vra-provider", "local"),
            ("x-vra-model", "llama3:8b"),
            ("x-vra-rule", "refine-primary"),
            ("x-vra-fallback-reason", "COST_LIMIT"),
            ("x-vra-attempts", "1"),
            ("x-vra-cloud-calls-used", "6"),
            ("x-vra-cloud-calls-limit", "6"),
            ("x-vra-cost-usd", "0.000001500"),
        ] {
            assert_eq!(h[name], value, "{name}");
        }
        let unpriced = Generated {
            cost: None,
            route: RouteInfo {
                fallback: None,
                ..g.route.clone()
            },
            ..g
        };
        let mut h = HeaderMap::new();
        RouteHeaders::of_call(&unpriced).write(&mut h);
        assert!(h.get("x-vra-cost-usd").is_none());
        assert_eq!(h["x-vra-fallback-reason"], "none");
    }

    #[test]
    fn a_stream_is_chunks_then_usage_then_done() {
        let chunks = Chunks {
            id: "chatcmpl-2".into(),
            created: 1,
            model: "gpt-4o".into(),
        };
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        let events = |b: Bytes| -> Vec<String> {
            text(b)
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| e.strip_prefix("data: ").expect("a data event").to_string())
                .collect()
        };
        let start: serde_json::Value = serde_json::from_str(&events(chunks.start())[0]).unwrap();
        assert_eq!(start["object"], "chat.completion.chunk");
        assert_eq!(start["choices"][0]["delta"]["role"], "assistant");
        let delta: serde_json::Value =
            serde_json::from_str(&events(chunks.delta("Hi"))[0]).unwrap();
        assert_eq!(delta["choices"][0]["delta"]["content"], "Hi");
        assert!(delta["choices"][0]["finish_reason"].is_null());
        let end = events(chunks.finish(&generated(), true));
        assert_eq!(end.len(), 3);
        let finish: serde_json::Value = serde_json::from_str(&end[0]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: serde_json::Value = serde_json::from_str(&end[1]).unwrap();
        assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(end[2], "[DONE]");
        assert_eq!(events(chunks.finish(&generated(), false)).len(), 2);
    }

    #[test]
    fn the_model_list_starts_with_vra_auto_and_names_each_model_once() {
        let v: serde_json::Value = serde_json::from_slice(&models(&[
            ("openai", "gpt-4o"),
            ("local", "llama3:8b"),
            ("other", "gpt-4o"),
        ]))
        .unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["vra-auto", "gpt-4o", "llama3:8b"]);
        assert_eq!(v["data"][1]["owned_by"], "openai");
    }
}
