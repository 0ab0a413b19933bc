//! The tonic service: validate → hand to [`Gateway`] → convert the answer. Thin on purpose;
//! the pipeline lives in [`crate::gateway`], error codes in [`crate::error`].
//!
//! `validate` turns a request into a [`GenerateInput`] or names the field at fault; `convert`
//! turns the pipeline's answers into the contract's messages.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, Stream, StreamExt};
use opentelemetry::context::FutureExt as _;
use tokio::sync::Notify;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use crate::domain::Client;
use crate::edge::{self, Admission, Admitted, CallerDeadline};
use crate::error::GatewayError;
use crate::gateway::{Gateway, GenerateInput, StreamItem};
use crate::metrics::Metrics;
use crate::pb;
use crate::resilience::Deadline;
use crate::telemetry;

mod convert;
mod validate;

pub use validate::{MAX_ID_BYTES, MAX_STOP_SEQUENCES, validate};

use validate::{phase_from, report_id, section_type_from};

use convert::usage_response;

/// The `vra.gateway.v1.GatewayService` implementation.
pub struct GatewayService {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    max_prompt_bytes: usize,
    calls: Arc<CallsInFlight>,
    /// Load shedding of generation calls (see [`edge::Admission`]).
    admission: Arc<Admission>,
    /// `VRA_STREAM_MAX_MS`: a stream's deadline at the latest.
    stream_max: Option<Duration>,
}

impl GatewayService {
    /// A service without limits on calls in flight or stream duration; see [`Self::with_limits`].
    pub fn new(gateway: Arc<Gateway>, metrics: Arc<Metrics>, max_prompt_bytes: usize) -> Self {
        Self {
            gateway,
            metrics,
            max_prompt_bytes,
            calls: Arc::default(),
            admission: Admission::new(usize::MAX),
            stream_max: None,
        }
    }

    /// Sheds calls past `admission`'s limits and ends streams after `stream_max`.
    pub fn with_limits(mut self, admission: Arc<Admission>, stream_max: Duration) -> Self {
        self.admission = admission;
        self.stream_max = Some(stream_max);
        self
    }

    /// A place for one more generation call, or the status that sheds it (counted).
    fn admit(&self, client: Option<&Client>) -> Result<Admitted, Status> {
        self.admission.try_admit(client).map_err(|shed| {
            self.metrics.rejected(shed.reason());
            GatewayError::Overloaded(shed).into_status()
        })
    }

    /// The generation calls this service is handling, for graceful shutdown.
    pub fn calls(&self) -> Arc<CallsInFlight> {
        self.calls.clone()
    }
}

/// Counts the generation calls being handled (a stream until its last message), so that
/// graceful shutdown can end as soon as none is left instead of waiting for idle connections.
#[derive(Debug, Default)]
pub struct CallsInFlight {
    count: AtomicUsize,
    /// Notified when the count drops to zero.
    idle: Notify,
    /// Notified when the count rises from zero.
    busy: Notify,
}

impl CallsInFlight {
    /// Counts one call until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> CallGuard {
        if self.count.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy.notify_waiters();
        }
        CallGuard(self.clone())
    }

    /// Calls being handled now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once no call has been in flight for `quiet` in a row.
    pub async fn idle_for(&self, quiet: Duration) {
        loop {
            self.idle().await;
            let busy = self.busy.notified();
            tokio::pin!(busy);
            busy.as_mut().enable();
            if self.count() != 0 {
                continue;
            }
            if tokio::time::timeout(quiet, busy).await.is_err() {
                return;
            }
        }
    }
}

/// One call in flight; dropping it (finished, cancelled, panicked) counts it out.
#[derive(Debug)]
pub struct CallGuard(Arc<CallsInFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The caller's deadline: stamped by the edge layer when the call arrived (see
/// [`crate::edge`]), else — for a service mounted without that layer — computed now.
/// The authenticated caller, put there by the edge's authentication layer (`None` with
/// authentication off). Recorded on the call's span as `vra.client.id`.
fn client_of<T>(request: &Request<T>, span: &Span) -> Option<Arc<Client>> {
    let client = request.extensions().get::<Arc<Client>>().cloned();
    if let Some(c) = &client {
        span.record("vra.client.id", c.id.as_str());
    }
    client
}

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

fn record_input(span: &Span, input: &GenerateInput) {
    span.record("vra.report.id", input.report_id.as_str());
    span.record("vra.section.id", input.section_id.as_str());
    span.record("vra.phase", input.phase.as_str());
    span.record("vra.section_type", input.section_type.as_str());
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

/// The pipeline's stream items, guaranteed to end with a terminal item (`Done` or an error):
/// should the producer vanish without one (a bug), the client gets INTERNAL instead of an OK
/// stream that silently lacks its `done` message.
fn terminated(
    rx: tokio::sync::mpsc::Receiver<Result<StreamItem, GatewayError>>,
) -> impl Stream<Item = Result<StreamItem, GatewayError>> {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(item @ Ok(StreamItem::Delta(_))) => Some((item, Some(rx))),
            Some(terminal) => Some((terminal, None)),
            None => {
                tracing::error!("stream producer ended without a terminal message");
                Some((Err(GatewayError::Internal), None))
            }
        }
    })
}

#[tonic::async_trait]
impl pb::gateway_service_server::GatewayService for GatewayService {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let (span, cx) = rpc_span("Generate", request.metadata());
        let deadline = deadline_of(&request);
        let client = client_of(&request, &span);
        let admitted = span.in_scope(|| self.admit(client.as_deref()))?;
        let gateway = self.gateway.clone();
        let metrics = self.metrics.clone();
        let max = self.max_prompt_bytes;
        let counted = (self.calls.enter(), admitted);
        async move {
            let input = validate(request.into_inner(), max);
            let mut input = finish(&Span::current(), input)?;
            input.client = client;
            record_input(&Span::current(), &input);
            let _in_flight = (metrics.in_flight("Generate"), counted);
            // A panic in the pipeline is a bug; the caller still gets a status (INTERNAL),
            // and every guard the call held is released by the unwind.
            let call = AssertUnwindSafe(gateway.generate(&input, deadline))
                .catch_unwind()
                .map(|run| {
                    run.unwrap_or_else(|panic| {
                        metrics.panicked("Generate");
                        telemetry::caught_panic("Generate", &*panic);
                        Err(GatewayError::Internal)
                    })
                });
            let result = match deadline.0 {
                Some(at) => tokio::time::timeout_at(at, call)
                    .await
                    .unwrap_or(Err(GatewayError::DeadlineExceeded)),
                None => call.await,
            };
            let (tier, provider, outcome) = match &result {
                Ok(g) => (g.route.tier.as_str(), g.route.provider.clone(), "ok"),
                Err(e) => ("NONE", String::new(), e.outcome()),
            };
            if let Err(GatewayError::DeadlineExceeded) = &result {
                tracing::warn!(report = %input.report_id, phase = %input.phase, "caller deadline exceeded; upstream request dropped");
            }
            metrics.request("Generate", input.phase.as_str(), tier, &provider, outcome);
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
        let admitted = span.in_scope(|| self.admit(client.as_deref()))?;
        // A stream ends at the caller's deadline or after VRA_STREAM_MAX_MS, whichever is first.
        let deadline = deadline.at_most(
            self.stream_max
                .and_then(|max| tokio::time::Instant::now().checked_add(max)),
        );
        let input = {
            let _enter = span.enter();
            let input = validate(
                pb::GenerateRequest::from(request.into_inner()),
                self.max_prompt_bytes,
            );
            let mut input = finish(&span, input)?;
            input.client = client;
            record_input(&span, &input);
            input
        };
        let phase = input.phase.as_str();
        let in_flight = (
            self.metrics.in_flight("GenerateStream"),
            self.calls.enter(),
            admitted,
        );
        let rx = {
            let _enter = span.enter();
            let _cx = cx.attach();
            self.gateway.generate_stream(input, deadline)
        };
        let metrics = self.metrics.clone();
        let stream = terminated(rx).map(move |item| {
            let _keep = &in_flight;
            match item {
                Ok(StreamItem::Delta(delta)) => {
                    Ok(pb::GenerateStreamResponse { delta, done: None })
                }
                Ok(StreamItem::Done(generated)) => {
                    metrics.request(
                        "GenerateStream",
                        phase,
                        generated.route.tier.as_str(),
                        &generated.route.provider,
                        "ok",
                    );
                    telemetry::record_status(&span, tonic::Code::Ok, None);
                    Ok(pb::GenerateStreamResponse {
                        delta: String::new(),
                        done: Some(generated.into()),
                    })
                }
                Err(e) => {
                    metrics.request("GenerateStream", phase, "NONE", "", e.outcome());
                    finish::<()>(&span, Err(e)).map(|()| pb::GenerateStreamResponse::default())
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resolve_route(
        &self,
        request: Request<pb::ResolveRouteRequest>,
    ) -> Result<Response<pb::ResolveRouteResponse>, Status> {
        let (span, cx) = rpc_span("ResolveRoute", request.metadata());
        let client = client_of(&request, &span);
        let gateway = self.gateway.clone();
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
        let gateway = self.gateway.clone();
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
}
