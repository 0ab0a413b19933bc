//! The OpenAI-compatible HTTP door, end to end: the real binary with `VRA_HTTP_ADDR`, an HTTP
//! client speaking OpenAI's wire format, and the simulated upstreams. The same calls over gRPC
//! and over HTTP get the same route, budget and `[Hybrid]` lines.

mod common;

use std::time::Duration;

use common::clients::{TestClient, write_clients_file};
use common::process::{Running, gateway_env};
use reqwest::StatusCode;
use serde_json::{Value, json};
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{CompilationPhase as P, ProviderTier as T, SectionType as S};

/// A running gateway with the HTTP door on, and the door's base URL (`http://host:port/v1`).
struct Door {
    gw: Running,
    base: String,
    cloud: Sim,
    local: Sim,
    http: reqwest::Client,
}

impl Door {
    async fn start(extra: &[(&str, &str)]) -> Door {
        vra_gateway::install_crypto_provider();
        let cloud = Sim::start().await.expect("cloud sim");
        let local = Sim::start().await.expect("local sim");
        let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
        let mut env = gateway_env(&cloud_url, &local_url, &[("VRA_HTTP_ADDR", "127.0.0.1:0")]);
        env.extend_from_slice(extra);
        let mut gw = Running::start(&env).await;
        let line = gw.wait_for("OpenAI-compatible HTTP door on ").await;
        let base = line
            .split("HTTP door on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the door's URL")
            .to_string();
        Door {
            gw,
            base,
            cloud,
            local,
            http: reqwest::Client::new(),
        }
    }

    fn post(&self, headers: &[(&str, &str)], body: Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base))
            .json(&body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request
    }

    async fn call(&self, headers: &[(&str, &str)], body: Value) -> (StatusCode, Header, Value) {
        let response = self.post(headers, body).send().await.expect("an answer");
        let status = response.status();
        let headers = Header(response.headers().clone());
        let body = response.json().await.expect("a JSON body");
        (status, headers, body)
    }

    async fn stop(self) -> Vec<String> {
        self.gw.sigterm();
        let (code, lines) = self.gw.finish().await;
        assert_eq!(code, 0, "{}", lines.join("\n"));
        lines
    }
}

struct Header(reqwest::header::HeaderMap);

impl Header {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.0))
            .to_str()
            .unwrap()
    }
}

fn report(id: &str, phase: &str, section: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-vra-report-id", id.to_string()),
        ("x-vra-section-id", "1.3".to_string()),
        ("x-vra-phase", phase.to_string()),
        ("x-vra-section-type", section.to_string()),
    ]
}

fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn chat(prompt: &str) -> Value {
    json!({
        "model": "vra-auto",
        "messages": [
            {"role": "system", "content": "You write technical reports."},
            {"role": "user", "content": prompt}
        ]
    })
}

#[tokio::test]
async fn a_unary_call_is_routed_by_the_matrix_and_says_how() {
    let door = Door::start(&[]).await;
    let headers = report("door-1", "refine", "ANALYSIS");
    let (status, h, body) = door
        .call(&borrowed(&headers), chat("Polish the analysis."))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(h.get("x-request-id"), body["id"].as_str().unwrap());
    assert!(h.get("x-request-id").starts_with("chatcmpl-"));
    for (name, value) in [
        ("x-vra-tier", "PRIMARY"),
        ("x-vra-provider", "openai"),
        ("x-vra-model", "gpt-4o"),
        ("x-vra-rule", "refine-primary"),
        ("x-vra-fallback-reason", "none"),
        ("x-vra-attempts", "1"),
        ("x-vra-cloud-calls-used", "1"),
        ("x-vra-cloud-calls-limit", "1"),
    ] {
        assert_eq!(h.get(name), value, "{name}");
    }
    assert!(h.get("x-vra-cost-usd").parse::<f64>().unwrap() > 0.0);
    // The report's budget (MAX_CLOUD_CALLS=1) is spent: the next primary call goes local.
    let (status, h, body) = door
        .call(&borrowed(&headers), chat("Polish it again."))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (h.get("x-vra-tier"), h.get("x-vra-fallback-reason")),
        ("SECONDARY", "COST_LIMIT")
    );
    assert_eq!(body["model"], "llama3:8b");
    assert_eq!((door.cloud.requests(), door.local.requests()), (1, 1));
    let lines = door.stop().await.join("\n");
    assert!(
        lines.contains(
            "[Hybrid] Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o | Report=door-1"
        ),
        "{lines}"
    );
    assert!(
        lines.contains("Reason=COST_LIMIT | Report=door-1"),
        "{lines}"
    );
}

#[tokio::test]
async fn the_body_metadata_carries_the_report_when_headers_cannot() {
    let door = Door::start(&[]).await;
    let mut body = chat("Expand the methodology.");
    body["metadata"] = json!({
        "vra_report_id": "door-meta", "vra_section_id": "2", "vra_phase": "EXPAND",
        "vra_section_type": "methodology"
    });
    let (status, h, _) = door.call(&[], body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (h.get("x-vra-tier"), h.get("x-vra-rule")),
        ("SECONDARY", "expand-secondary")
    );
    // Headers win over metadata.
    let (_, h, _) = door.call(&[("x-vra-phase", "ABSTRACT")], body).await;
    assert_eq!(h.get("x-vra-rule"), "abstract-always-primary");
    door.stop().await;
}

#[tokio::test]
async fn a_stream_sends_openai_chunks_with_usage_then_done() {
    let door = Door::start(&[]).await;
    let headers = report("door-stream", "DRAFT", "INTRODUCTION");
    let mut body = chat("Draft the introduction.");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = door.post(&borrowed(&headers), body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let h = Header(response.headers().clone());
    assert_eq!(h.get("content-type"), "text/event-stream");
    assert_eq!(
        (h.get("x-vra-tier"), h.get("x-vra-rule")),
        ("PRIMARY", "draft-reasoning-primary")
    );
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data events only"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.is_empty());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    door.stop().await;
}

#[tokio::test]
async fn a_named_model_pins_its_tier_and_an_unknown_one_is_refused() {
    let door = Door::start(&[]).await;
    let headers = report("door-pin", "REFINE", "ANALYSIS");
    let mut body = chat("Polish.");
    body["model"] = json!("llama3:8b");
    let (status, h, body_back) = door.call(&borrowed(&headers), body).await;
    assert_eq!(status, StatusCode::OK, "{body_back}");
    assert_eq!(
        (h.get("x-vra-tier"), h.get("x-vra-rule")),
        ("SECONDARY", "pinned")
    );
    assert_eq!(door.cloud.requests(), 0);
    let mut body = chat("Polish.");
    body["model"] = json!("gpt-9");
    let (status, _, error) = door.call(&borrowed(&headers), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(error["error"]["param"], "model");
    // The model list names what may be pinned.
    let models: Value = door
        .http
        .get(format!("{}/models", door.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["vra-auto", "gpt-4o", "llama3:8b"]);
    door.stop().await;
}

#[tokio::test]
async fn what_cannot_be_honoured_is_refused_naming_the_field() {
    let door = Door::start(&[]).await;
    let headers = report("door-bad", "DRAFT", "OTHER");
    let mut tools = chat("x");
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let mut no_phase = borrowed(&headers);
    no_phase.retain(|(k, _)| *k != "x-vra-phase");
    for (headers, body, param) in [
        (borrowed(&headers), tools, "tools"),
        (
            borrowed(&headers),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type",
        ),
        (no_phase, chat("x"), "x-vra-phase"),
    ] {
        let (status, _, error) = door.call(headers.as_slice(), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    assert_eq!(door.cloud.requests() + door.local.requests(), 0);
    // Not JSON, and an unknown route: OpenAI's error shape too.
    let response = door
        .http
        .post(format!("{}/chat/completions", door.base))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let response = door
        .http
        .get(format!("{}/nothing", door.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    door.stop().await;
}

#[tokio::test]
async fn a_token_from_the_clients_file_is_the_api_key() {
    let clients = write_clients_file(&[TestClient::new("reports", "vra_door_token")]);
    let clients = clients.to_string_lossy().into_owned();
    let door = Door::start(&[("VRA_CLIENTS_FILE", clients.as_str())]).await;
    let headers = report("door-auth", "EXPAND", "OTHER");
    let (status, _, error) = door.call(&borrowed(&headers), chat("x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let mut with_token = borrowed(&headers);
    with_token.push(("authorization", "Bearer vra_door_token"));
    let (status, _, body) = door.call(&with_token, chat("x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The health check needs no credentials.
    let health = door
        .http
        .get(door.base.replace("/v1", "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let lines = door.stop().await.join("\n");
    assert!(!lines.contains("vra_door_token"), "no token in logs");
}

#[tokio::test]
async fn the_callers_deadline_ends_the_call_with_504() {
    let door = Door::start(&[]).await;
    door.cloud.set_default(Step::Hang);
    let mut headers = report("door-deadline", "REFINE", "ANALYSIS");
    headers.push(("x-vra-timeout-ms", "300".to_string()));
    let (status, _, error) = door.call(&borrowed(&headers), chat("x")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
    assert_eq!(error["error"]["code"], "timeout");
    assert!(
        door.cloud.wait_closed(1, Duration::from_secs(5)).await,
        "the upstream request was dropped"
    );
    door.stop().await;
}

/// Shedding over HTTP: past `VRA_MAX_IN_FLIGHT`, and past a client's `max_in_flight`, a call
/// is answered 429 at once in OpenAI's rate-limit shape with `Retry-After`, and sends nothing
/// upstream; once the call holding the slot ends, calls are served again.
#[tokio::test]
async fn calls_past_the_in_flight_limits_are_shed_with_429() {
    let clients = write_clients_file(&[
        TestClient {
            max_in_flight: Some(1),
            ..TestClient::new("busy", "vra_busy_token")
        },
        TestClient::new("calm", "vra_calm_token"),
    ]);
    let clients = clients.to_string_lossy().into_owned();
    let door = Door::start(&[
        ("VRA_CLIENTS_FILE", clients.as_str()),
        ("VRA_MAX_IN_FLIGHT", "2"),
    ])
    .await;
    door.cloud.set_default(Step::Hang);
    let headers = report("door-shed", "REFINE", "ANALYSIS");
    let as_client = |token: &'static str| {
        let mut h = borrowed(&headers);
        h.push((
            "authorization",
            match token {
                "busy" => "Bearer vra_busy_token",
                _ => "Bearer vra_calm_token",
            },
        ));
        h
    };
    // `busy` holds its one slot with a call the upstream never answers.
    let held = door.post(&as_client("busy"), chat("x")).send();
    let held = tokio::spawn(held);
    assert!(door.cloud.wait_in_flight(1, Duration::from_secs(10)).await);
    let (status, h, error) = door.call(&as_client("busy"), chat("x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_in_flight")
    );
    assert_eq!(h.get("retry-after"), "1");
    // `calm` takes the gateway's second slot; the third call is shed by VRA_MAX_IN_FLIGHT.
    let held_too = tokio::spawn(door.post(&as_client("calm"), chat("x")).send());
    assert!(door.cloud.wait_in_flight(2, Duration::from_secs(10)).await);
    let (status, _, error) = door.call(&as_client("calm"), chat("x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("VRA_MAX_IN_FLIGHT"),
        "{error}"
    );
    assert_eq!(door.cloud.requests(), 2, "shed calls send nothing upstream");
    // The held calls end (the client gives up); their slots come back.
    held.abort();
    held_too.abort();
    assert!(door.cloud.wait_closed(2, Duration::from_secs(10)).await);
    door.cloud.set_default(Step::reply("back"));
    let mut served = false;
    for _ in 0..50 {
        let (status, _, _) = door.call(&as_client("busy"), chat("x")).await;
        if status == StatusCode::OK {
            served = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "the slot was released");
    door.stop().await;
}

/// A conversation reaches the upstream turn by turn, in the upstream's own format.
#[tokio::test]
async fn a_conversation_reaches_the_upstream_turn_by_turn() {
    let door = Door::start(&[]).await;
    let headers = report("door-conv", "EXPAND", "ANALYSIS");
    let conversation = json!([
        {"role": "system", "content": "You write technical reports."},
        {"role": "user", "content": "Draft the analysis."},
        {"role": "assistant", "content": [{"type": "text", "text": "1. Data 2. Findings"}]},
        {"role": "user", "content": "Expand point 2."}
    ]);
    let (status, _, body) = door
        .call(
            &borrowed(&headers),
            json!({"model": "vra-auto", "messages": conversation}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = door
        .local
        .recorded()
        .pop()
        .expect("the local upstream was asked");
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "system", "content": "You write technical reports."},
            {"role": "user", "content": "Draft the analysis."},
            {"role": "assistant", "content": "1. Data 2. Findings"},
            {"role": "user", "content": "Expand point 2."}
        ])
    );
    door.stop().await;
}

/// One pipeline, two doors: the same calls over gRPC and over HTTP get the same route and
/// budget, and the same `[Hybrid]` line.
#[tokio::test]
async fn the_grpc_and_http_doors_route_the_same_calls_the_same_way() {
    let door = Door::start(&[("MAX_CLOUD_CALLS", "10")]).await;
    let mut grpc = common::connect(door.gw.addr.parse().unwrap()).await;
    for (phase, section, p, s) in [
        ("DRAFT", "INTRODUCTION", P::Draft, S::Introduction),
        ("DRAFT", "METHODOLOGY", P::Draft, S::Methodology),
        ("EXPAND", "ANALYSIS", P::Expand, S::Analysis),
        ("REFINE", "OTHER", P::Refine, S::Other),
        ("ABSTRACT", "OTHER", P::Abstract, S::Other),
    ] {
        let over_grpc = grpc
            .generate(common::request("both-grpc", p, s))
            .await
            .unwrap()
            .into_inner();
        let route = over_grpc.route.unwrap();
        let budget = over_grpc.budget.unwrap();
        let headers = report("both-http", phase, section);
        let (status, h, _) = door.call(&borrowed(&headers), chat("x")).await;
        assert_eq!(status, StatusCode::OK);
        let tier = if route.tier == T::Primary as i32 {
            "PRIMARY"
        } else {
            "SECONDARY"
        };
        assert_eq!(h.get("x-vra-tier"), tier, "{phase} {section}");
        assert_eq!(h.get("x-vra-rule"), route.rule, "{phase} {section}");
        assert_eq!(h.get("x-vra-model"), route.model);
        assert_eq!(
            h.get("x-vra-cloud-calls-used"),
            budget.cloud_calls_used.to_string(),
            "both reports spent alike"
        );
    }
    let lines = door.stop().await;
    let hybrid = |report: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("[Hybrid]") && l.contains(report))
            .map(|l| {
                let at = l.find("[Hybrid]").unwrap();
                l[at..].replace(report, "R")
            })
            .collect()
    };
    assert_eq!(hybrid("Report=both-grpc"), hybrid("Report=both-http"));
    assert_eq!(hybrid("Report=both-grpc").len(), 5);
}

/// The response cache through the OpenAI door: `x-vra-cache` says HIT, MISS or BYPASS;
/// `Cache-Control` maps to the cache modes; a fallback answer is stored under the model that
/// gave it (a call naming that model hits it), never under the primary's.
#[tokio::test]
async fn the_cache_answers_through_the_door_and_cache_control_steers_it() {
    let door = Door::start(&[("VRA_CACHE", "memory")]).await;
    let headers = report("cache-1", "refine", "ANALYSIS");
    let mut with = borrowed(&headers);
    let (status, h, first) = door.call(&with, chat("Polish the analysis.")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (h.get("x-vra-cache"), h.get("x-vra-tier")),
        ("MISS", "PRIMARY")
    );
    let (_, h, again) = door.call(&with, chat("Polish the analysis.")).await;
    assert_eq!(h.get("x-vra-cache"), "HIT");
    assert_eq!(
        again["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
    assert_eq!(again["usage"], first["usage"], "the original token counts");
    assert_eq!(door.cloud.requests(), 1);

    // The report's one cloud unit is spent: this call falls back, its answer is the secondary's.
    let (_, h, _) = door.call(&with, chat("Summarise the analysis.")).await;
    assert_eq!(
        (h.get("x-vra-cache"), h.get("x-vra-fallback-reason")),
        ("MISS", "COST_LIMIT")
    );
    // A call naming the secondary's model hits that answer...
    let mut pinned = chat("Summarise the analysis.");
    pinned["model"] = json!("llama3:8b");
    let (_, h, _) = door.call(&with, pinned).await;
    assert_eq!(
        (h.get("x-vra-cache"), h.get("x-vra-tier")),
        ("HIT", "SECONDARY")
    );
    // ...a primary call of a report with budget left does not.
    let fresh = report("cache-2", "refine", "ANALYSIS");
    let (_, h, _) = door
        .call(&borrowed(&fresh), chat("Summarise the analysis."))
        .await;
    assert_eq!(
        (h.get("x-vra-cache"), h.get("x-vra-tier")),
        ("MISS", "PRIMARY")
    );

    // Cache-Control: no-cache skips the lookup; only-if-cached on a miss is a 404.
    with.push(("cache-control", "no-cache"));
    let (_, h, _) = door.call(&with, chat("Polish the analysis.")).await;
    assert_eq!(h.get("x-vra-cache"), "BYPASS");
    with.pop();
    with.push(("cache-control", "only-if-cached"));
    let (status, _, body) = door.call(&with, chat("Never asked before.")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_cached");

    // A stream of a cached answer: the route headers say HIT, the text is the same.
    let mut streamed = chat("Polish the analysis.");
    streamed["stream"] = json!(true);
    let response = door
        .post(&borrowed(&headers), streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(Header(response.headers().clone()).get("x-vra-cache"), "HIT");
    let text = response.text().await.unwrap();
    let content = first["choices"][0]["message"]["content"].as_str().unwrap();
    let delta = serde_json::to_string(content).unwrap();
    assert!(text.contains(&delta), "{text}");
    let lines = door.stop().await.join("\n");
    assert!(
        lines.contains("[Hybrid] Event=CACHE_HIT | Phase=REFINE | Section=1.3 | Provider=OPENAI | Model=gpt-4o | Report=cache-1"),
        "{lines}"
    );
}
