//! The tonic service: validate → hand to [`Gateway`] → convert the answer. Thin on purpose;
//! the pipeline lives in [`crate::gateway`], error codes in [`crate::error`].
//!
//! `validate` turns a request into a [`GenerateInput`] or names the field at fault; `convert`
//! turns the pipeline's answers into the contract's messages.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use opentelemetry::context::FutureExt as _;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use crate::domain::Client;
use crate::edge::{self, CallerDeadline};
use crate::error::GatewayError;
use crate::front::{Front, record_input};
use crate::gateway::StreamItem;
use crate::pb;
use crate::resilience::Deadline;
use crate::telemetry;

mod convert;
mod validate;

pub use validate::{MAX_ID_BYTES, MAX_STOP_SEQUENCES, validate};

use validate::{phase_from, report_id, section_type_from};

use convert::usage_response;

/// The `vra.gateway.v1.GatewayService` implementation: the gRPC door to the [`Front`].
pub struct GatewayService {
    front: Arc<Front>,
}

impl GatewayService {
    pub fn new(front: Arc<Front>) -> Self {
        Self { front }
    }
}

/// The authenticated caller, put there by the edge's authentication layer (`None` with
/// authentication off). Recorded on the call's span as `vra.client.id`.
fn client_of<T>(request: &Request<T>, span: &Span) -> Option<Arc<Client>> {
    let client = request.extensions().get::<Arc<Client>>().cloned();
    if let Some(c) = &client {
        span.record("vra.client.id", c.id.as_str());
    }
    client
}

/// The caller's deadline: stamped by the edge layer when the call arrived (see
/// [`crate::edge`]), else — for a service mounted without that layer — computed now.
fn deadline_of<T>(request: &Request<T>) -> Deadline {
    match request.extensions().get::<CallerDeadline>() {
        Some(stamped) => stamped.0,
        None => edge::deadline_from(
            request.metadata().get("grpc-timeout").map(|v| v.as_bytes()),
            tokio::time::Instant::now(),
        ),
    }
}

/// Opens the server span of an RPC and continues the caller's trace.
fn rpc_span(method: &'static str, metadata: &MetadataMap) -> (Span, opentelemetry::Context) {
    let span = telemetry::server_span(method);
    let cx = telemetry::extract_parent(&span, &metadata.clone().into_headers());
    (span, cx)
}

/// Records the outcome on the span and turns an error into a status.
fn finish<T>(span: &Span, result: Result<T, GatewayError>) -> Result<T, Status> {
    match result {
        Ok(v) => {
            telemetry::record_status(span, tonic::Code::Ok, None);
            Ok(v)
        }
        Err(e) => {
            let status = e.into_status();
            telemetry::record_status(span, status.code(), Some(status.message()));
            Err(status)
        }
    }
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_service_server::GatewayService for GatewayService {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let (span, cx) = rpc_span("Generate", request.metadata());
        let deadline = deadline_of(&request);
        let client = client_of(&request, &span);
        let ticket = finish(&span, self.front.admit("Generate", client.as_deref()))?;
        let front = self.front.clone();
        async move {
            let input = validate(request.into_inner(), front.max_prompt_bytes());
            let mut input = finish(&Span::current(), input)?;
            input.client = client;
            record_input(&Span::current(), &input);
            let result = front.generate("Generate", ticket, &input, deadline).await;
            finish(&Span::current(), result).map(|g| Response::new(g.into()))
        }
        .instrument(span)
        .with_context(cx)
        .await
    }

    type GenerateStreamStream = StreamOf<pb::GenerateStreamResponse>;

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let (span, cx) = rpc_span("GenerateStream", request.metadata());
        let deadline = deadline_of(&request);
        let client = client_of(&request, &span);
        let ticket = finish(&span, self.front.admit("GenerateStream", client.as_deref()))?;
        let input = {
            let _enter = span.enter();
            let input = validate(
                pb::GenerateRequest::from(request.into_inner()),
                self.front.max_prompt_bytes(),
            );
            let mut input = finish(&span, input)?;
            input.client = client;
            record_input(&span, &input);
            input
        };
        let items = {
            let _enter = span.enter();
            let _cx = cx.attach();
            self.front
                .generate_stream("GenerateStream", ticket, input, deadline)
        };
        // The contract's stream is deltas then `done`: the route arrives with `done`.
        let stream = items.filter_map(move |item| {
            std::future::ready(match item {
                Ok(StreamItem::Started(_)) => None,
                Ok(StreamItem::Delta(delta)) => {
                    Some(Ok(pb::GenerateStreamResponse { delta, done: None }))
                }
                Ok(StreamItem::Done(generated)) => {
                    telemetry::record_status(&span, tonic::Code::Ok, None);
                    Some(Ok(pb::GenerateStreamResponse {
                        delta: String::new(),
                        done: Some(generated.into()),
                    }))
                }
                Err(e) => Some(
                    finish::<()>(&span, Err(e)).map(|()| pb::GenerateStreamResponse::default()),
                ),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resolve_route(
        &self,
        request: Request<pb::ResolveRouteRequest>,
    ) -> Result<Response<pb::ResolveRouteResponse>, Status> {
        let (span, cx) = rpc_span("ResolveRoute", request.metadata());
        let client = client_of(&request, &span);
        let gateway = self.front.gateway().clone();
        async move {
            let req = request.into_inner();
            let parsed = report_id(&req.report_id)
                .and_then(|()| Ok((phase_from(req.phase)?, section_type_from(req.section_type)?)));
            let (phase, section) = finish(&Span::current(), parsed)?;
            let (route, budget, quota) = gateway
                .resolve(client.as_deref(), &req.report_id, phase, section)
                .await;
            telemetry::record_route(&Span::current(), &route, &budget);
            Ok(Response::new(pb::ResolveRouteResponse {
                route: Some(route.into()),
                budget: Some(budget.into()),
                client_quota: quota.map(Into::into),
            }))
        }
        .instrument(span)
        .with_context(cx)
        .await
    }

    async fn get_report_usage(
        &self,
        request: Request<pb::GetReportUsageRequest>,
    ) -> Result<Response<pb::GetReportUsageResponse>, Status> {
        let (span, cx) = rpc_span("GetReportUsage", request.metadata());
        let client = client_of(&request, &span);
        let gateway = self.front.gateway().clone();
        async move {
            let req = request.into_inner();
            finish(&Span::current(), report_id(&req.report_id))?;
            let usage = gateway.usage(client.as_deref(), &req.report_id).await;
            let (usage, budget, quota) = finish(&Span::current(), usage)?;
            Ok(Response::new(usage_response(
                req.report_id,
                usage,
                budget,
                quota,
                gateway.primary_priced(),
            )))
        }
        .instrument(span)
        .with_context(cx)
        .await
    }

    async fn purge_cache(
        &self,
        request: Request<pb::PurgeCacheRequest>,
    ) -> Result<Response<pb::PurgeCacheResponse>, Status> {
        let (span, cx) = rpc_span("PurgeCache", request.metadata());
        let client = client_of(&request, &span);
        let gateway = self.front.gateway().clone();
        async move {
            let req = request.into_inner();
            if let Some(id) = &req.client_id
                && !Client::valid_id(id)
            {
                let invalid =
                    GatewayError::invalid("client_id", "use 1 to 64 of A-Z a-z 0-9 . _ -");
                finish(&Span::current(), Err::<(), _>(invalid))?;
            }
            let purged = gateway
                .purge_cache(client.as_deref(), req.client_id.as_deref())
                .await;
            let purged = finish(&Span::current(), purged)?;
            Ok(Response::new(pb::PurgeCacheResponse { purged }))
        }
        .instrument(span)
        .with_context(cx)
        .await
    }
}
