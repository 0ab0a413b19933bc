//! What both doors do around the pipeline, so that the gRPC service ([`crate::service`]) and
//! the OpenAI-compatible HTTP door ([`crate::http`]) run a generation call the same way:
//!
//! - **admission**: a call past `VRA_MAX_IN_FLIGHT` (or its client's `max_in_flight`) is shed
//!   before any work ([`crate::edge::Admission`]), and counted;
//! - **counting**: every admitted call is counted in flight until its last message, so a
//!   graceful shutdown ends as soon as none is left ([`CallsInFlight`]);
//! - **isolation**: a panic in the pipeline is a bug: the caller still gets an answer
//!   (INTERNAL), the panic is counted, and every guard the call held is released by the unwind;
//! - **the caller's deadline**, and for a stream `VRA_STREAM_MAX_MS`;
//! - **the request metric** (`vra_gateway_requests_total`) with the call's outcome.
//!
//! Validation, routing, budget and fallback are the pipeline's ([`crate::gateway`]); how a
//! request arrives and how the answer and errors are written are each door's own.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, Stream, StreamExt};
use tokio::sync::Notify;

use crate::domain::Client;
use crate::edge::{Admission, Admitted};
use crate::error::GatewayError;
use crate::gateway::{Gateway, GenerateInput, Generated, StreamItem};
use crate::metrics::{InFlight, Metrics};
use crate::resilience::Deadline;
use crate::telemetry;

/// The pipeline with the limits both doors apply. Cheap to share behind an `Arc`.
pub struct Front {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    max_prompt_bytes: usize,
    calls: Arc<CallsInFlight>,
    /// Load shedding of generation calls (see [`Admission`]).
    admission: Arc<Admission>,
    /// `VRA_STREAM_MAX_MS`: a stream's deadline at the latest.
    stream_max: Option<Duration>,
}

/// An admitted generation call: counted in flight and holding its place under the in-flight
/// limits until dropped (with a stream, after its last message).
#[must_use = "a call is counted only while its ticket lives"]
pub struct Ticket {
    _admitted: Admitted,
    _counted: CallGuard,
    _gauge: InFlight,
}

impl Front {
    /// A front without limits on calls in flight or stream duration; see [`Self::with_limits`].
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

    /// The pipeline, for the calls that need no admission (route predictions, usage reads).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// `VRA_MAX_PROMPT_BYTES`, for the doors' validation.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_bytes
    }

    /// The largest request a door reads: ample room above the prompt limit, so that an
    /// oversized prompt reaches validation (and is refused naming its field) instead of failing
    /// in the transport.
    pub fn max_request_bytes(&self) -> usize {
        self.max_prompt_bytes
            .saturating_mul(4)
            .saturating_add(1 << 20)
            .max(16 << 20)
    }

    /// The generation calls being handled, for graceful shutdown.
    pub fn calls(&self) -> Arc<CallsInFlight> {
        self.calls.clone()
    }

    /// A place for one more generation call of `method`, or the error that sheds it (counted).
    pub fn admit(
        &self,
        method: &'static str,
        client: Option<&Client>,
    ) -> Result<Ticket, GatewayError> {
        let admitted = self.admission.try_admit(client).map_err(|shed| {
            self.metrics.rejected(shed.reason());
            GatewayError::Overloaded(shed)
        })?;
        Ok(Ticket {
            _admitted: admitted,
            _counted: self.calls.enter(),
            _gauge: self.metrics.in_flight(method),
        })
    }

    /// Runs one unary generation under `ticket`, bounded by `deadline`.
    pub async fn generate(
        &self,
        method: &'static str,
        ticket: Ticket,
        input: &GenerateInput,
        deadline: Deadline,
    ) -> Result<Generated, GatewayError> {
        let _ticket = ticket;
        let started = std::time::Instant::now();
        let metrics = &self.metrics;
        let call = AssertUnwindSafe(self.gateway.generate(input, deadline))
            .catch_unwind()
            .map(|run| {
                run.unwrap_or_else(|panic| {
                    metrics.panicked(method);
                    telemetry::caught_panic(method, &*panic);
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
            Ok(g) => (g.route.tier.as_str(), g.route.provider.as_str(), "ok"),
            Err(e) => ("NONE", "", e.outcome()),
        };
        if let Err(GatewayError::DeadlineExceeded) = &result {
            tracing::warn!(report = %input.report_id, phase = %input.phase, "caller deadline exceeded; upstream request dropped");
        }
        metrics.request(method, input.phase.as_str(), tier, provider, outcome);
        metrics.request_duration(method, outcome, started.elapsed());
        if let Ok(g) = &result {
            metrics.route(g.route.rule.id(), g.route.tier.as_str());
        }
        result
    }

    /// Runs one streamed generation under `ticket`: deltas, then one `Done` or one error, and
    /// then the end. The stream ends at `deadline` or after `VRA_STREAM_MAX_MS`, whichever is
    /// first; dropping it cancels the upstream request. Call it inside the call's span (and
    /// trace context): the pipeline's task inherits them.
    pub fn generate_stream(
        &self,
        method: &'static str,
        ticket: Ticket,
        input: GenerateInput,
        deadline: Deadline,
    ) -> impl Stream<Item = Result<StreamItem, GatewayError>> + Send + 'static {
        let deadline = deadline.at_most(
            self.stream_max
                .and_then(|max| tokio::time::Instant::now().checked_add(max)),
        );
        let phase = input.phase.as_str();
        let started = std::time::Instant::now();
        let rx = self.gateway.generate_stream(input, deadline);
        let metrics = self.metrics.clone();
        let mut first = true;
        terminated(rx).map(move |item| {
            let _ticket = &ticket;
            match &item {
                Ok(StreamItem::Started(_)) => {}
                Ok(StreamItem::Delta(_)) => {
                    if std::mem::take(&mut first) {
                        metrics.time_to_first_token(method, started.elapsed());
                    }
                }
                Ok(StreamItem::Done(generated)) => {
                    metrics.request(
                        method,
                        phase,
                        generated.route.tier.as_str(),
                        &generated.route.provider,
                        "ok",
                    );
                    metrics.request_duration(method, "ok", started.elapsed());
                    metrics.route(generated.route.rule.id(), generated.route.tier.as_str());
                }
                Err(e) => {
                    metrics.request(method, phase, "NONE", "", e.outcome());
                    metrics.request_duration(method, e.outcome(), started.elapsed());
                }
            }
            item
        })
    }
}

/// Records what a call is about on its server span (either door's).
pub fn record_input(span: &tracing::Span, input: &GenerateInput) {
    span.record("vra.report.id", input.report_id.as_str());
    span.record("vra.section.id", input.section_id.as_str());
    span.record("vra.phase", input.phase.as_str());
    span.record("vra.section_type", input.section_type.as_str());
}

/// The pipeline's channel as a stream that ends after its terminal message (`Done` or an
/// error); a producer that vanishes without one is reported as INTERNAL, never a silent cut.
fn terminated(
    rx: tokio::sync::mpsc::Receiver<Result<StreamItem, GatewayError>>,
) -> impl Stream<Item = Result<StreamItem, GatewayError>> {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(item @ Ok(StreamItem::Started(_) | StreamItem::Delta(_))) => {
                Some((item, Some(rx)))
            }
            Some(terminal) => Some((terminal, None)),
            None => {
                tracing::error!("stream producer ended without a terminal message");
                Some((Err(GatewayError::Internal), None))
            }
        }
    })
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
