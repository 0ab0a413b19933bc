//! `grpc-echo`: a tonic server of the gateway's own service that answers at once with a fixed
//! response — the gRPC floor. Driving it with the same client as the gateway separates what
//! the gRPC round trip costs (client, HTTP/2, protobuf, tonic) from what the gateway's
//! pipeline adds on top (routing, budget, the upstream HTTP call, telemetry).

use std::net::SocketAddr;
use std::pin::Pin;

use clap::Args;
use futures_util::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use vra_gateway::pb::gateway_service_server::{GatewayService, GatewayServiceServer};
use vra_gateway::pb::{self, ProviderTier};

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Listen address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Deltas per stream.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
}

struct Echo {
    response: pb::GenerateResponse,
    tokens: usize,
}

fn fixed_response(tokens: usize) -> pb::GenerateResponse {
    pb::GenerateResponse {
        text: "token ".repeat(tokens),
        route: Some(pb::Route {
            tier: ProviderTier::Primary as i32,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            cloud: true,
            fallback_reason: 0,
            rule: "refine-primary".into(),
        }),
        usage: Some(pb::Usage {
            input_tokens: 24,
            output_tokens: tokens as u32,
            ..Default::default()
        }),
        budget: Some(pb::Budget {
            cloud_calls_used: 1,
            cloud_calls_limit: 1_000_000_000,
            ..Default::default()
        }),
        attempts: 1,
        finish_reason: "stop".into(),
        ..Default::default()
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::GenerateStreamResponse, Status>> + Send>>;

#[async_trait::async_trait]
impl GatewayService for Echo {
    async fn generate(
        &self,
        _request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }

    type GenerateStreamStream = ResponseStream;

    async fn generate_stream(
        &self,
        _request: Request<pb::GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let done = pb::GenerateResponse {
            text: String::new(),
            ..self.response.clone()
        };
        let messages = (0..self.tokens)
            .map(|_| pb::GenerateStreamResponse {
                delta: "token ".into(),
                done: None,
            })
            .chain(std::iter::once(pb::GenerateStreamResponse {
                delta: String::new(),
                done: Some(done),
            }))
            .map(Ok);
        Ok(Response::new(Box::pin(futures_util::stream::iter(
            messages,
        ))))
    }

    async fn resolve_route(
        &self,
        _request: Request<pb::ResolveRouteRequest>,
    ) -> Result<Response<pb::ResolveRouteResponse>, Status> {
        Ok(Response::new(pb::ResolveRouteResponse {
            route: self.response.route.clone(),
            budget: self.response.budget,
            client_quota: None,
        }))
    }

    async fn get_report_usage(
        &self,
        request: Request<pb::GetReportUsageRequest>,
    ) -> Result<Response<pb::GetReportUsageResponse>, Status> {
        Ok(Response::new(pb::GetReportUsageResponse {
            report_id: request.into_inner().report_id,
            budget: self.response.budget,
            ..Default::default()
        }))
    }

    async fn purge_cache(
        &self,
        _request: Request<pb::PurgeCacheRequest>,
    ) -> Result<Response<pb::PurgeCacheResponse>, Status> {
        Ok(Response::new(pb::PurgeCacheResponse { purged: 0 }))
    }
}

/// Serves until the process is killed.
pub async fn serve(options: Options) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    println!("grpc-echo listening on {local}");
    let echo = Echo {
        response: fixed_response(options.tokens.max(1)),
        tokens: options.tokens.max(1),
    };
    tonic::transport::Server::builder()
        .add_service(GatewayServiceServer::new(echo))
        // TCP_NODELAY on accepted connections, as `Server::serve` would set it (it is ignored
        // with a custom incoming stream): without it Nagle's algorithm can hold a response.
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| format!("grpc-echo server: {e}"))
}
