//! `count`: exactly N calls, one after the other, then exit — the workload of the instruction
//! counts (`bench/callgrind.sh`). A timed run makes a different number of calls on every
//! machine; a fixed number lets callgrind's totals of two runs (N₁ and N₂ calls) be subtracted,
//! which cancels start-up and shutdown and leaves the exact instructions per call.
//!
//! - `count grpc`: unary `Generate` calls to a gateway (or the gRPC floor), the same request
//!   as the `grpc` driver; the gateway runs under callgrind.
//! - `count http`: the same call through the gateway's OpenAI-compatible door (the report in
//!   `x-vra-*` headers, REFINE), with the load generator's HTTP/1.1 client.
//! - `count reqwest`: the same chat request as the gateway sends, straight to the fake
//!   upstream with a bare reqwest client built like the gateway's; this process runs under
//!   callgrind, so it measures the client half of the gateway's work.
//!
//! Any failed call fails the command: an instruction count of errors means nothing.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::drive::Target;
use crate::grpc::{GrpcTarget, PROMPT, SYSTEM_PROMPT};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Unary Generate calls over one gRPC connection.
    Grpc {
        /// Gateway (or grpc-echo) address, HOST:PORT.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        count: CountArgs,
    },
    /// The same call through the gateway's OpenAI-compatible door, over one HTTP/1.1
    /// keep-alive connection.
    Http {
        /// The door's URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        count: CountArgs,
    },
    /// The gateway's upstream request, sent with a bare hyper-util client (HTTP/1.1).
    Hyper {
        /// Full URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        count: CountArgs,
    },
    /// The gateway's upstream request, sent with a bare reqwest client.
    Reqwest {
        /// Full URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        count: CountArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CountArgs {
    /// Calls to make.
    #[arg(long)]
    pub calls: u64,
    /// Distinct report ids cycled through (grpc); each new one creates a ledger entry, as
    /// most calls of a busy gateway do.
    #[arg(long, default_value_t = 100_000)]
    pub reports: u64,
}

/// The chat request the gateway sends upstream for a `count grpc` call.
fn chat_body() -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": PROMPT},
        ],
        "stream": false,
    })
}

pub async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Grpc { target, count } => {
            let t = GrpcTarget::connect(
                &target,
                1,
                false,
                false,
                count.reports.max(1),
                vra_gateway::pb::CompilationPhase::Refine,
            )
            .await?;
            for seq in 0..count.calls {
                t.call(seq)
                    .await
                    .map_err(|e| format!("call {seq} failed: {e}"))?;
            }
        }
        Command::Http { target, count } => {
            let report = crate::http::Report {
                phase: "REFINE",
                hot: false,
                reports: count.reports.max(1),
            };
            let t =
                crate::http::HttpTarget::new(&target, "vra-auto", "sk-bench", false, Some(report))?;
            for seq in 0..count.calls {
                t.call(seq)
                    .await
                    .map_err(|e| format!("call {seq} failed: {e}"))?;
            }
        }
        Command::Hyper { target, count } => {
            use http_body_util::BodyExt;
            let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
            connector.set_nodelay(true);
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build::<_, http_body_util::Full<bytes::Bytes>>(connector);
            let uri: http::Uri = target
                .parse()
                .map_err(|e| format!("bad URL {target}: {e}"))?;
            let body = chat_body();
            for seq in 0..count.calls {
                let request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::AUTHORIZATION, "Bearer sk-bench")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        serde_json::to_vec(&body).map_err(|e| e.to_string())?,
                    )))
                    .map_err(|e| e.to_string())?;
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.request(request))
                        .await
                        .map_err(|_| format!("call {seq} timed out"))?
                        .map_err(|e| format!("call {seq} failed: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("call {seq}: status {}", response.status()));
                }
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("call {seq} failed: {e}"))?
                    .to_bytes();
                let _: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("call {seq}: bad JSON: {e}"))?;
            }
        }
        Command::Reqwest { target, count } => {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .build()
                .map_err(|e| e.to_string())?;
            let url = reqwest::Url::parse(&target).map_err(|e| format!("bad URL {target}: {e}"))?;
            let body = chat_body();
            for seq in 0..count.calls {
                let response = client
                    .post(url.clone())
                    .timeout(Duration::from_secs(10))
                    .bearer_auth("sk-bench")
                    .json(&body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("call {seq} failed: {e}"))?;
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| format!("call {seq} failed: {e}"))?;
                let _: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("call {seq}: bad JSON: {e}"))?;
            }
        }
    }
    Ok(())
}
