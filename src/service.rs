//! The tonic service: validate → hand to [`Gateway`] → convert the answer. Thin on purpose;
//! the pipeline lives in [`crate::gateway`], error codes in [`crate::error`].

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

use crate::budget::ReportUsage;
use crate::domain::{
    BudgetInfo, Client, FallbackReason, Nanos, Phase, QuotaInfo, RouteInfo, SectionType, Tier,
    TokenUsage, has_forbidden_id_char,
};
use crate::edge::{self, Admission, Admitted, CallerDeadline};
use crate::error::GatewayError;
use crate::gateway::{Gateway, GenerateInput, Generated, StreamItem};
use crate::metrics::Metrics;
use crate::pb;
use crate::resilience::Deadline;
use crate::telemetry;

/// Longest accepted `report_id` / `section_id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most `options.stop` sequences accepted.
pub const MAX_STOP_SEQUENCES: usize = 16;

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

fn phase_from(value: i32) -> Result<Phase, GatewayError> {
    match pb::CompilationPhase::try_from(value) {
        Ok(pb::CompilationPhase::Draft) => Ok(Phase::Draft),
        Ok(pb::CompilationPhase::Expand) => Ok(Phase::Expand),
        Ok(pb::CompilationPhase::Refine) => Ok(Phase::Refine),
        Ok(pb::CompilationPhase::Abstract) => Ok(Phase::Abstract),
        Ok(pb::CompilationPhase::Unspecified) => Err(GatewayError::invalid(
            "phase",
            "must be set (COMPILATION_PHASE_DRAFT, _EXPAND, _REFINE or _ABSTRACT)",
        )),
        Err(_) => Err(GatewayError::invalid(
            "phase",
            format!("unknown value {value}"),
        )),
    }
}

fn section_type_from(value: i32) -> Result<SectionType, GatewayError> {
    use pb::SectionType as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => SectionType::Unspecified,
        Ok(P::Introduction) => SectionType::Introduction,
        Ok(P::Conclusion) => SectionType::Conclusion,
        Ok(P::Analysis) => SectionType::Analysis,
        Ok(P::Methodology) => SectionType::Methodology,
        Ok(P::Implementation) => SectionType::Implementation,
        Ok(P::Other) => SectionType::Other,
        Err(_) => {
            return Err(GatewayError::invalid(
                "section_type",
                format!("unknown value {value}"),
            ));
        }
    })
}

/// Checks an id that ends up in ledger keys, log lines and spans. The value is never echoed:
/// the message names the field and the rule only.
fn id(field: &'static str, value: &str, required: bool) -> Result<(), GatewayError> {
    if required && value.is_empty() {
        return Err(GatewayError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(GatewayError::invalid(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes, got {}", value.len()),
        ));
    }
    if has_forbidden_id_char(value) {
        return Err(GatewayError::invalid(
            field,
            "must not contain control characters (C0/C1, including newline, carriage return and tab), line separators, bidi controls or `|`",
        ));
    }
    Ok(())
}

fn report_id(value: &str) -> Result<(), GatewayError> {
    id("report_id", value, true)
}

/// Validates a generation request into the gateway's input. Errors name the field.
pub fn validate(
    req: pb::GenerateRequest,
    max_prompt_bytes: usize,
) -> Result<GenerateInput, GatewayError> {
    report_id(&req.report_id)?;
    id("section_id", &req.section_id, false)?;
    let phase = phase_from(req.phase)?;
    let section_type = section_type_from(req.section_type)?;
    if req.prompt.trim().is_empty() {
        return Err(GatewayError::invalid("prompt", "must not be empty"));
    }
    for (field, text) in [
        ("prompt", &req.prompt),
        ("system_prompt", &req.system_prompt),
    ] {
        if text.len() > max_prompt_bytes {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "{} bytes exceeds VRA_MAX_PROMPT_BYTES ({max_prompt_bytes})",
                    text.len()
                ),
            ));
        }
    }
    let options = req.options.unwrap_or_default();
    if let Some(t) = options.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(GatewayError::invalid(
            "options.temperature",
            "must be between 0 and 2",
        ));
    }
    if options.max_tokens == Some(0) {
        return Err(GatewayError::invalid(
            "options.max_tokens",
            "must be greater than 0 when set",
        ));
    }
    if options.stop.len() > MAX_STOP_SEQUENCES {
        return Err(GatewayError::invalid(
            "options.stop",
            format!(
                "at most {MAX_STOP_SEQUENCES} sequences, got {}",
                options.stop.len()
            ),
        ));
    }
    if options
        .stop
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_ID_BYTES)
    {
        return Err(GatewayError::invalid(
            "options.stop",
            format!("sequences must be 1 to {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(GenerateInput {
        report_id: req.report_id,
        section_id: req.section_id,
        section_type,
        phase,
        prompt: req.prompt,
        system_prompt: Some(req.system_prompt).filter(|s| !s.is_empty()),
        temperature: options.temperature,
        max_tokens: options.max_tokens,
        stop: options.stop,
        client: None,
    })
}

impl From<QuotaInfo> for pb::ClientQuota {
    fn from(q: QuotaInfo) -> Self {
        pb::ClientQuota {
            used: q.used,
            limit: q.limit,
        }
    }
}

impl From<Tier> for pb::ProviderTier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Primary => pb::ProviderTier::Primary,
            Tier::Secondary => pb::ProviderTier::Secondary,
        }
    }
}

impl From<Option<FallbackReason>> for pb::FallbackReason {
    fn from(r: Option<FallbackReason>) -> Self {
        match r {
            None => pb::FallbackReason::Unspecified,
            Some(FallbackReason::CostLimit) => pb::FallbackReason::CostLimit,
            Some(FallbackReason::PrimaryError) => pb::FallbackReason::PrimaryError,
            Some(FallbackReason::CircuitOpen) => pb::FallbackReason::CircuitOpen,
            Some(FallbackReason::LedgerUnavailable) => pb::FallbackReason::LedgerUnavailable,
            Some(FallbackReason::ClientQuota) => pb::FallbackReason::ClientQuota,
        }
    }
}

impl From<RouteInfo> for pb::Route {
    fn from(r: RouteInfo) -> Self {
        pb::Route {
            tier: pb::ProviderTier::from(r.tier) as i32,
            provider: r.provider,
            model: r.model,
            cloud: r.cloud,
            fallback_reason: pb::FallbackReason::from(r.fallback) as i32,
            rule: r.rule.id().to_string(),
        }
    }
}

impl From<BudgetInfo> for pb::Budget {
    fn from(b: BudgetInfo) -> Self {
        pb::Budget {
            cloud_calls_used: b.used,
            cloud_calls_limit: b.limit,
            exhausted: b.exhausted,
            cloud_cost_used_usd: b.cost_used.usd(),
            cloud_cost_reserved_usd: b.cost_reserved.usd(),
            cloud_cost_limit_usd: b.cost_limit.map(Nanos::usd),
        }
    }
}

impl From<TokenUsage> for pb::Usage {
    fn from(u: TokenUsage) -> Self {
        pb::Usage {
            input_tokens: u.input,
            output_tokens: u.output,
            estimated: u.estimated,
        }
    }
}

impl From<Phase> for pb::CompilationPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Draft => pb::CompilationPhase::Draft,
            Phase::Expand => pb::CompilationPhase::Expand,
            Phase::Refine => pb::CompilationPhase::Refine,
            Phase::Abstract => pb::CompilationPhase::Abstract,
        }
    }
}

impl From<Generated> for pb::GenerateResponse {
    fn from(g: Generated) -> Self {
        pb::GenerateResponse {
            text: g.text,
            route: Some(g.route.into()),
            usage: Some(g.usage.into()),
            budget: Some(g.budget.into()),
            attempts: g.attempts,
            finish_reason: g.finish_reason,
            cost_usd: g.cost.map(Nanos::usd),
        }
    }
}

/// The `GetReportUsage` answer: counters, cost and savings, and the per-phase breakdown.
/// `primary_priced` says whether the all-cloud equivalent (and so the savings) is known.
fn usage_response(
    report_id: String,
    usage: ReportUsage,
    budget: BudgetInfo,
    quota: Option<QuotaInfo>,
    primary_priced: bool,
) -> pb::GetReportUsageResponse {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let total = usage.cloud_cost.saturating_add(usage.local_cost);
    let all_cloud = primary_priced.then_some(usage.all_cloud);
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        for tier in [Tier::Primary, Tier::Secondary] {
            let cell = usage.cell(phase, tier);
            if cell.calls == 0 {
                continue;
            }
            phases.push(pb::PhaseUsage {
                phase: pb::CompilationPhase::from(phase) as i32,
                tier: pb::ProviderTier::from(tier) as i32,
                calls: cell.calls,
                usage: Some(pb::Usage {
                    input_tokens: cell.input_tokens,
                    output_tokens: cell.output_tokens,
                    estimated: cell.estimated > 0,
                }),
                cost_usd: cell.cost.usd(),
            });
        }
    }
    pb::GetReportUsageResponse {
        report_id,
        budget: Some(budget.into()),
        primary_calls: usage.primary_calls,
        secondary_calls: usage.secondary_calls,
        fallbacks: usage.fallbacks,
        cloud_usage: Some(pb::Usage {
            input_tokens: clamp(usage.cloud_input_tokens),
            output_tokens: clamp(usage.cloud_output_tokens),
            estimated: usage.cloud_estimated > 0,
        }),
        local_usage: Some(pb::Usage {
            input_tokens: clamp(usage.local_input_tokens),
            output_tokens: clamp(usage.local_output_tokens),
            estimated: usage.local_estimated > 0,
        }),
        client_quota: quota.map(Into::into),
        cost: Some(pb::ReportCost {
            cloud_usd: usage.cloud_cost.usd(),
            local_usd: usage.local_cost.usd(),
            total_usd: total.usd(),
            all_cloud_usd: all_cloud.map(Nanos::usd),
            // Signed: a local model priced above the primary costs more than all-cloud.
            savings_usd: all_cloud.map(|a| a.usd() - total.usd()),
            unpriced_calls: usage.unpriced_calls,
            abandoned_usd: usage.abandoned.usd(),
        }),
        phases,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::GenerateRequest {
        pb::GenerateRequest {
            report_id: "r-1".into(),
            section_id: "1.3".into(),
            section_type: pb::SectionType::Analysis as i32,
            phase: pb::CompilationPhase::Refine as i32,
            prompt: "Write it.".into(),
            system_prompt: String::new(),
            options: None,
        }
    }

    fn field_of(req: pb::GenerateRequest) -> &'static str {
        match validate(req, 100) {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(
            field_of(pb::GenerateRequest {
                report_id: String::new(),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                report_id: "x".repeat(257),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                section_id: "x".repeat(257),
                ..request()
            }),
            "section_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                phase: 0,
                ..request()
            }),
            "phase"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                phase: 42,
                ..request()
            }),
            "phase"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                section_type: 42,
                ..request()
            }),
            "section_type"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                prompt: String::new(),
                ..request()
            }),
            "prompt"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                prompt: "x".repeat(101),
                ..request()
            }),
            "prompt"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                system_prompt: "x".repeat(101),
                ..request()
            }),
            "system_prompt"
        );
        let opts = |o: pb::GenerationOptions| pb::GenerateRequest {
            options: Some(o),
            ..request()
        };
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                temperature: Some(3.0),
                ..Default::default()
            })),
            "options.temperature"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                temperature: Some(f32::NAN),
                ..Default::default()
            })),
            "options.temperature"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                max_tokens: Some(0),
                ..Default::default()
            })),
            "options.max_tokens"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                stop: vec![String::new()],
                ..Default::default()
            })),
            "options.stop"
        );
    }

    #[test]
    fn boundaries_are_inclusive() {
        let ok = validate(
            pb::GenerateRequest {
                report_id: "x".repeat(256),
                prompt: "x".repeat(100),
                ..request()
            },
            100,
        );
        assert!(ok.is_ok());
        let input = validate(request(), 100).unwrap();
        assert_eq!(
            (input.phase, input.section_type),
            (Phase::Refine, SectionType::Analysis)
        );
        assert_eq!(input.system_prompt, None);
    }

    const FIELDS: [&str; 9] = [
        "report_id",
        "section_id",
        "phase",
        "section_type",
        "prompt",
        "system_prompt",
        "options.temperature",
        "options.max_tokens",
        "options.stop",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Arbitrary requests: validation never panics; an error names a known field and never
        /// echoes the ids; an accepted request has ids that cannot split a log line.
        #[test]
        fn validation_is_total_and_never_echoes(
            report_id in "(?s).{0,40}",
            section_id in "(?s).{0,40}",
            prompt in "(?s).{0,60}",
            phase in -2i32..7,
            section_type in -2i32..9,
            temperature in proptest::option::of(proptest::num::f32::ANY),
            max_tokens in proptest::option::of(proptest::num::u32::ANY),
            stop in proptest::collection::vec("(?s).{0,8}", 0..20),
        ) {
            let req = pb::GenerateRequest {
                report_id: report_id.clone(),
                section_id: section_id.clone(),
                section_type,
                phase,
                prompt,
                system_prompt: String::new(),
                options: Some(pb::GenerationOptions { temperature, max_tokens, stop }),
            };
            match validate(req, 50) {
                Ok(input) => {
                    proptest::prop_assert!(!has_forbidden_id_char(&input.report_id));
                    proptest::prop_assert!(!has_forbidden_id_char(&input.section_id));
                    proptest::prop_assert!(!input.report_id.is_empty());
                }
                Err(GatewayError::InvalidArgument { field, reason }) => {
                    proptest::prop_assert!(FIELDS.contains(&field), "{}", field);
                    for id in [&report_id, &section_id] {
                        if id.chars().count() > 3 {
                            proptest::prop_assert!(!reason.contains(id.as_str()), "{}", reason);
                        }
                    }
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
            }
        }

    }
}
