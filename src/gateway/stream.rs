//! A streamed call: the pipeline runs up to the first event ([`super::tier`]), then the deltas
//! flow to the client through a bounded channel; after the first delta no retry or fallback is
//! possible.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt};
use opentelemetry::context::FutureExt as _;
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use crate::cost;
use crate::domain::ProviderError;
use crate::error::GatewayError;
use crate::providers::{ChatRequest, EventStream, Provider, StreamEvent};
use crate::resilience::Deadline;
use crate::telemetry;

use super::cache::Looked;
use super::tier::{Sent, Served};
use super::{CallState, Gateway, GenerateInput, Generated, Started, StreamItem};
use crate::cache::Entry;
use crate::domain::CacheStatus;
use crate::routing;

/// Capacity of the channel between the upstream reader and the client: a slow client fills it
/// and then slows the upstream read instead of growing memory.
const STREAM_BUFFER: usize = 16;

impl Gateway {
    /// Streaming generation. Retries and fallback happen before the first delta; the returned
    /// channel then yields deltas and a final `Done`, or one error. Dropping the receiver
    /// cancels the upstream request promptly.
    pub fn generate_stream(
        self: &Arc<Self>,
        input: GenerateInput,
        deadline: Deadline,
    ) -> mpsc::Receiver<Result<StreamItem, GatewayError>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let gateway = self.clone();
        let span = Span::current();
        let cx = opentelemetry::Context::current();
        tokio::spawn(
            async move {
                let closed = tx.clone();
                let deadline_at = deadline;
                tokio::select! {
                    // The client went away: dropping the pipeline drops the upstream request.
                    _ = closed.closed() => {
                        tracing::debug!("stream cancelled by the client");
                    }
                    _ = deadline_at.passed() => {
                        let _ = tx.send(Err(GatewayError::DeadlineExceeded)).await;
                    }
                    run = AssertUnwindSafe(gateway.run_stream(&input, deadline, &tx)).catch_unwind() => {
                        if let Err(panic) = run {
                            gateway.metrics.panicked("GenerateStream");
                            telemetry::caught_panic("GenerateStream", &*panic);
                            let _ = tx.send(Err(GatewayError::Internal)).await;
                        }
                    }
                }
            }
            .instrument(span)
            .with_context(cx),
        );
        rx
    }

    async fn run_stream(
        &self,
        input: &GenerateInput,
        deadline: Deadline,
        tx: &mpsc::Sender<Result<StreamItem, GatewayError>>,
    ) {
        let mut state = CallState::new(self, input, deadline);
        let decision = self.decide(input);
        let cached = match self.cache_lookup(&state, decision).await {
            Ok(Looked::Go(cached)) => cached,
            Ok(Looked::Hit(entry)) => {
                self.replay_cached(&state, decision, &entry, tx).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let idle = self.stream_idle;
        let served = self
            .serve(&mut state, decision, move |provider, req| {
                Box::pin(open_stream(provider, req, idle))
            })
            .await;
        // `_lease` holds the endpoint's slot while the rest of the stream is read.
        let Served {
            value: (first, mut rest),
            sent:
                Sent {
                    lease: _lease,
                    hold,
                    max_tokens,
                },
            tier,
            fallback,
            decision,
        } = match served {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let route = self.route_info(tier, decision.rule, fallback);
        // Logged as soon as the route is final, before the text flows.
        state.hybrid().routed(&route.provider, &route.model);
        let started = Started {
            route: route.clone(),
            attempts: state.attempts,
            cloud_calls_used: state.last_used,
            cloud_calls_limit: state.limits.report,
            cache: cached.status(),
        };
        if tx.send(Ok(StreamItem::Started(started))).await.is_err() {
            return;
        }
        let mut end = None;
        // What was streamed, for a usage estimate when the upstream reports none.
        let (mut chunks, mut bytes) = (0u32, 0usize);
        // The text, for the cache (dropped once it outgrows an entry).
        let mut kept = self.cache_keeps(&cached).then(String::new);
        let mut keep = |text: &str| {
            if let Some(all) = &mut kept {
                if self.cache_fits(all.len() + text.len()) {
                    all.push_str(text);
                } else {
                    kept = None;
                }
            }
        };
        match first {
            StreamEvent::Delta(text) => {
                chunks += 1;
                bytes += text.len();
                keep(&text);
                if tx.send(Ok(StreamItem::Delta(text))).await.is_err() {
                    return;
                }
            }
            done @ StreamEvent::Done { .. } => end = Some(done),
        }
        while end.is_none() {
            let error = match rest.next().await {
                Some(Ok(StreamEvent::Delta(text))) => {
                    chunks = chunks.saturating_add(1);
                    bytes = bytes.saturating_add(text.len());
                    keep(&text);
                    if tx.send(Ok(StreamItem::Delta(text))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(done @ StreamEvent::Done { .. })) => {
                    end = Some(done);
                    continue;
                }
                Some(Err(e)) => e,
                None => ProviderError::Truncated,
            };
            let error = error.to_string();
            state
                .hybrid()
                .stream_aborted(&route.provider, &route.model, &error);
            self.metrics.stream_aborted();
            let _ = tx.send(Err(GatewayError::StreamAborted(error))).await;
            return;
        }
        let Some(StreamEvent::Done {
            usage,
            finish_reason,
            ..
        }) = end
        else {
            return;
        };
        let usage = cost::complete_usage(usage, state.messages(), bytes, chunks, max_tokens);
        let (budget, cost) = self.finish_call(&state, &route, usage, hold).await;
        telemetry::record_route(&Span::current(), &route, &budget);
        let cache = cached.status();
        // Stored only now, after the final event: a stream cut short is never an answer.
        if let Some(text) = kept {
            self.cache_store(&state, cached, &route, &text, usage, &finish_reason)
                .await;
        }
        let _ = tx
            .send(Ok(StreamItem::Done(Generated {
                text: String::new(),
                route,
                usage,
                budget,
                attempts: state.attempts,
                finish_reason,
                cost,
                cache,
            })))
            .await;
    }

    /// A hit on a stream: the route, the whole cached text as one delta, and the same final
    /// message a unary hit returns.
    async fn replay_cached(
        &self,
        state: &CallState<'_>,
        decision: routing::Decision,
        entry: &Entry,
        tx: &mpsc::Sender<Result<StreamItem, GatewayError>>,
    ) {
        let mut done = self.answer_cached(state, decision, entry).await;
        let started = Started {
            route: done.route.clone(),
            attempts: 0,
            cloud_calls_used: None,
            cloud_calls_limit: state.limits.report,
            cache: Some(CacheStatus::Hit),
        };
        if tx.send(Ok(StreamItem::Started(started))).await.is_err() {
            return;
        }
        let text = std::mem::take(&mut done.text);
        if !text.is_empty() && tx.send(Ok(StreamItem::Delta(text))).await.is_err() {
            return;
        }
        let _ = tx.send(Ok(StreamItem::Done(done))).await;
    }
}

/// Opens an upstream stream and waits for its first event, so that failures before the first
/// delta can still be retried or fall back.
async fn open_stream(
    provider: Arc<dyn Provider>,
    request: Arc<ChatRequest>,
    idle: Duration,
) -> Result<(StreamEvent, EventStream), ProviderError> {
    let mut stream = provider.stream(&request, idle).await?;
    match stream.next().await {
        Some(Ok(first)) => Ok((first, stream)),
        Some(Err(e)) => Err(e),
        None => Err(ProviderError::Truncated),
    }
}
