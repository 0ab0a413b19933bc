//! The gRPC driver: `Generate` / `GenerateStream` through the generated tonic client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use vra_gateway::pb::gateway_service_client::GatewayServiceClient;
use vra_gateway::pb::{self, CompilationPhase, SectionType};

use crate::drive::Target;

/// The prompt of every call: short, like a section instruction (the payload size is not what
/// is measured here).
pub const PROMPT: &str = "Write the section about the routing matrix of the gateway.";
pub const SYSTEM_PROMPT: &str = "You are terse.";

#[derive(Clone)]
pub struct GrpcTarget {
    clients: Arc<[GatewayServiceClient<Channel>]>,
    /// `authorization: Bearer …` on every call (a gateway with a clients file).
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    stream: bool,
    hot_report: bool,
    reports: u64,
    phase: CompilationPhase,
    /// Every call's prompt ends in its number: no two calls share a cache key.
    distinct_prompts: bool,
}

impl GrpcTarget {
    /// Opens `connections` HTTP/2 connections to `target` (HOST:PORT).
    pub async fn connect(
        target: &str,
        connections: usize,
        stream: bool,
        hot_report: bool,
        reports: u64,
        phase: CompilationPhase,
    ) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Endpoint::from_shared(format!("http://{target}"))
                .map_err(|e| format!("bad target {target}: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?;
            clients.push(GatewayServiceClient::new(channel));
        }
        Ok(Self {
            clients: clients.into(),
            token: None,
            stream,
            hot_report,
            reports,
            phase,
            distinct_prompts: false,
        })
    }

    /// Every call gets a prompt of its own (see `--distinct-prompts`).
    pub fn with_distinct_prompts(mut self, distinct: bool) -> Self {
        self.distinct_prompts = distinct;
        self
    }

    /// Sends `authorization: Bearer {token}` with every call.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, String> {
        self.token = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| "the token must be visible ASCII".to_string())?;
        Ok(self)
    }

    /// The request with the token, if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// Many distinct reports by default so the budget is never the bottleneck; one on request.
    fn report_id(&self, seq: u64) -> String {
        if self.hot_report {
            "bench-hot-report".to_string()
        } else {
            format!("bench-report-{:06}", seq % self.reports)
        }
    }
}

impl Target for GrpcTarget {
    async fn call(&self, seq: u64) -> Result<Option<Instant>, String> {
        let mut client = self.clients[(seq % self.clients.len() as u64) as usize].clone();
        let report_id = self.report_id(seq);
        let req = pb::GenerateRequest {
            report_id,
            section_id: "2.1".into(),
            section_type: SectionType::Introduction as i32,
            phase: self.phase as i32,
            prompt: if self.distinct_prompts {
                format!("{PROMPT} (call {seq})")
            } else {
                PROMPT.into()
            },
            system_prompt: SYSTEM_PROMPT.into(),
            ..Default::default()
        };
        if !self.stream {
            let resp = client
                .generate(self.request(req))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            if resp.get_ref().text.is_empty() {
                return Err("empty completion".into());
            }
            return Ok(None);
        }
        let req = pb::GenerateStreamRequest::from(req);
        let mut stream = client
            .generate_stream(self.request(req))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut first = None;
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if first.is_none() && !msg.delta.is_empty() {
                        first = Some(Instant::now());
                    }
                    if msg.done.is_some() {
                        // Read to the end (the trailers) like a well-behaved client: dropping
                        // the stream early makes the client reset it, and h2 servers answer a
                        // flood of resets with GOAWAY (ENHANCE_YOUR_CALM).
                        while let Ok(Some(_)) = stream.message().await {}
                        return match first {
                            Some(t) => Ok(Some(t)),
                            None => Err("stream had no delta".into()),
                        };
                    }
                }
                Ok(None) => return Err("stream ended without done".into()),
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            }
        }
    }
}
