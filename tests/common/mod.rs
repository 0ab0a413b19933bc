//! Test harness: the real gateway on `127.0.0.1:0`, in process, between a real tonic client
//! and two simulated upstreams (a "cloud" one for the OpenAI kind, a "local" one for Ollama)
//! that speak the real wire formats and count every request.
#![allow(dead_code)]

pub mod clients;
pub mod connect_proxy;
pub mod cost;
pub mod llm_server;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod trials;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Channel;
use vra_gateway::config::{Config, Sources};
use vra_gateway::demo::sim::Sim;
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::{self, CompilationPhase, SectionType};
use vra_gateway::server;

pub struct Harness {
    pub cloud: Sim,
    pub local: Sim,
    pub addr: SocketAddr,
    pub client: GatewayServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::ServeError>>>,
}

/// Settings every test starts from: fast retries, no metrics listener, hybrid on.
pub const BASE: &[(&str, &str)] = &[
    ("VRA_HYBRID_MODE", "true"),
    ("VRA_RETRY_BASE_MS", "1"),
    ("VRA_RETRY_MAX_BACKOFF_MS", "5"),
    ("VRA_METRICS_ADDR", ""),
    ("VRA_GATEWAY_ADDR", "127.0.0.1:0"),
    ("OPENAI_API_KEY", "sk-test-secret-key-0123456789"),
];

/// Builds a configuration from `BASE`, the simulated upstreams and `overrides`.
pub fn config(cloud: &Sim, local: &Sim, overrides: &[(&str, &str)]) -> Config {
    Config::from_sources(&sources(cloud, local, overrides)).expect("test configuration is valid")
}

/// The sources of [`config`], for tests that add a TOML layer before loading.
pub fn sources(cloud: &Sim, local: &Sim, overrides: &[(&str, &str)]) -> Sources {
    let mut sources = Sources::default();
    for (k, v) in BASE {
        sources.env.insert(k.to_string(), v.to_string());
    }
    sources
        .env
        .insert("OPENAI_BASE_URL".into(), cloud.openai_base());
    sources
        .env
        .insert("OLLAMA_HOST".into(), local.ollama_base());
    for (k, v) in overrides {
        sources.env.insert(k.to_string(), v.to_string());
    }
    sources
}

impl Harness {
    /// Starts two simulated upstreams and a gateway configured with `overrides`.
    pub async fn start(overrides: &[(&str, &str)]) -> Harness {
        let cloud = Sim::start().await.expect("cloud sim");
        let local = Sim::start().await.expect("local sim");
        let config = config(&cloud, &local, overrides);
        Harness::start_with(cloud, local, config).await
    }

    /// Starts a gateway with an explicit configuration.
    pub async fn start_with(cloud: Sim, local: Sim, config: Config) -> Harness {
        let Replica { addr, stop, task } = Replica::start(config).await;
        let client = connect(addr).await;
        Harness {
            cloud,
            local,
            addr,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A fresh client (each has its own connection).
    pub async fn client(&self) -> GatewayServiceClient<Channel> {
        connect(self.addr).await
    }

    /// Stops the server and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

pub async fn connect(addr: SocketAddr) -> GatewayServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to gateway");
    GatewayServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// `GetReportUsage` of `report`, from the gateway at `addr`.
pub async fn usage(addr: SocketAddr, report: &str) -> pb::GetReportUsageResponse {
    connect(addr)
        .await
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: report.into(),
        })
        .await
        .expect("usage")
        .into_inner()
}

/// A valid request for `report` / `phase` / `section`.
pub fn request(report: &str, phase: CompilationPhase, section: SectionType) -> pb::GenerateRequest {
    pb::GenerateRequest {
        report_id: report.into(),
        section_id: "1.3".into(),
        section_type: section as i32,
        phase: phase as i32,
        prompt: "Write the section about routing.".into(),
        system_prompt: "You are terse.".into(),
        options: None,
        messages: Vec::new(),
    }
}

pub fn tier(resp: &pb::GenerateResponse) -> pb::ProviderTier {
    pb::ProviderTier::try_from(resp.route.as_ref().expect("route").tier).expect("tier")
}

pub fn reason(resp: &pb::GenerateResponse) -> pb::FallbackReason {
    pb::FallbackReason::try_from(resp.route.as_ref().expect("route").fallback_reason)
        .expect("reason")
}

/// Awaits concurrent calls and counts how they were served: `(primary, fell_back)`, where
/// every call must have been answered, by the primary without a fallback or by the secondary
/// with `expected` — any other outcome fails the test.
pub async fn tally(
    calls: Vec<tokio::task::JoinHandle<Result<pb::GenerateResponse, tonic::Status>>>,
    expected: pb::FallbackReason,
) -> (usize, usize) {
    let (mut primary, mut fell_back) = (0, 0);
    for call in calls {
        let resp = call.await.unwrap().expect("every call is answered");
        match (tier(&resp), reason(&resp)) {
            (pb::ProviderTier::Primary, pb::FallbackReason::Unspecified) => primary += 1,
            (pb::ProviderTier::Secondary, r) if r == expected => fell_back += 1,
            other => panic!("unexpected route {other:?}"),
        }
    }
    (primary, fell_back)
}

pub fn rule(resp: &pb::GenerateResponse) -> &str {
    &resp.route.as_ref().expect("route").rule
}

pub const PHASES: [CompilationPhase; 4] = [
    CompilationPhase::Draft,
    CompilationPhase::Expand,
    CompilationPhase::Refine,
    CompilationPhase::Abstract,
];

pub const SECTIONS: [SectionType; 7] = [
    SectionType::Unspecified,
    SectionType::Introduction,
    SectionType::Conclusion,
    SectionType::Analysis,
    SectionType::Methodology,
    SectionType::Implementation,
    SectionType::Other,
];

/// A bare gateway server (no upstreams of its own), e.g. one of several replicas.
pub struct Replica {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl Replica {
    /// `n` replicas, each its own server with its own ledger connection, of one configuration.
    pub async fn start_n(
        n: usize,
        cloud: &Sim,
        local: &Sim,
        settings: &[(&str, &str)],
    ) -> Vec<Replica> {
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(Replica::start(config(cloud, local, settings)).await);
        }
        replicas
    }

    pub async fn start(config: Config) -> Replica {
        let listeners = server::bind(&config).await.expect("bind");
        let addr = listeners.grpc_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(config, listeners, async {
            let _ = stopped.await;
        }));
        Replica { addr, stop, task }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server ran cleanly");
    }
}

/// Reads a whole stream: the deltas, the final message, and the terminal error if any.
pub async fn collect_stream(
    mut stream: tonic::Streaming<pb::GenerateStreamResponse>,
) -> (
    Vec<String>,
    Option<pb::GenerateResponse>,
    Option<tonic::Status>,
) {
    let mut deltas = Vec::new();
    let mut done = None;
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                if let Some(d) = msg.done {
                    assert!(msg.delta.is_empty(), "the final message carries no delta");
                    assert!(done.is_none(), "exactly one final message");
                    done = Some(d);
                } else {
                    assert!(!msg.delta.is_empty(), "every delta is non-empty");
                    assert!(done.is_none(), "nothing after the final message");
                    deltas.push(msg.delta);
                }
            }
            Ok(None) => return (deltas, done, None),
            Err(status) => return (deltas, done, Some(status)),
        }
    }
}
