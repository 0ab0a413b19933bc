//! Retry, backoff, deadline and circuit-breaker policy — plain functions and data.
//!
//! The gateway's call loop ([`crate::gateway`]) asks this module three questions: may I try
//! again ([`RetryPolicy::should_retry`]), how long do I wait ([`RetryPolicy::delay`], which
//! honours `Retry-After` up to the cap; the gateway then checks it against the caller's
//! [`Deadline`]), and may I call this provider at all right now ([`CircuitBreaker::admit`]).
//!
//! Time arithmetic here never panics: a deadline too far away to represent is no deadline, and
//! every sum is checked or saturating, whatever a caller or an upstream sends.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::ProviderError;

/// Exponential backoff with full jitter, bounded attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl From<RetryConfig> for RetryPolicy {
    fn from(c: RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            base: c.base,
            cap: c.max_backoff,
        }
    }
}

impl RetryPolicy {
    /// Whether attempt number `attempt` (1-based, just failed with `err`) may be followed by
    /// another one.
    pub fn should_retry(&self, attempt: u32, err: &ProviderError) -> bool {
        attempt < self.max_attempts && err.is_retryable()
    }

    /// The upper bound of the jittered wait after failed attempt `attempt` (1-based):
    /// `min(cap, base · 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// How long to wait after failed attempt `attempt`: the upstream's `Retry-After` (capped)
    /// when it sent one, else `random(0, ceiling)`. `unit` is a uniform sample in [0, 1).
    pub fn delay(&self, attempt: u32, err: &ProviderError, unit: f64) -> Duration {
        match err.retry_after() {
            Some(ra) => ra.min(self.cap),
            None => self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0)),
        }
    }
}

/// The caller's deadline, if it sent one (`grpc-timeout`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// The deadline `timeout` after `start`; none when there is no timeout or it lies too far
    /// in the future to represent (it could never pass anyway).
    pub fn after(start: Instant, timeout: Option<Duration>) -> Self {
        Deadline(timeout.and_then(|t| start.checked_add(t)))
    }

    /// The time left until the deadline (zero once it passed); `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// The earlier of this deadline and `at`.
    pub fn at_most(self, at: Option<Instant>) -> Self {
        match (self.0, at) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (a, b) => Deadline(a.or(b)),
        }
    }

    /// Resolves when the deadline passes (never, without one).
    pub async fn passed(self) {
        sleep_until(self.0).await
    }

    /// Whether sleeping `d` from now would end past the deadline.
    pub fn would_pass(&self, d: Duration) -> bool {
        self.0
            .is_some_and(|end| Instant::now().checked_add(d).is_none_or(|t| t >= end))
    }
}

/// Resolves at `at` (never, without one).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct BreakerInner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// Skips a provider after `failure_threshold` consecutive failed calls, for `open_for`; then
/// lets one probe call through (half-open) and closes again on its success.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    inner: Mutex<BreakerInner>,
}

/// Permission to call a provider, from [`CircuitBreaker::admit`]. A guard: the call reports
/// its verdict with [`CallPermit::succeeded`] or [`CallPermit::failed`]; a permit dropped
/// without a verdict — the caller's deadline passed, the client cancelled, the task panicked —
/// gives no verdict about the provider. For the half-open probe that means the probe slot is
/// released and the circuit stays half-open, so the very next call probes again: an abandoned
/// probe never pins the circuit open, and an impatient caller never opens it either.
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome; dropping it says nothing"]
pub struct CallPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
}

impl CallPermit<'_> {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: the circuit closes.
    pub fn succeeded(mut self) {
        self.breaker.record(self.probe, Verdict::Success);
        self.probe = false;
    }

    /// The call failed. `fault` is false for failures that say nothing about the provider's
    /// health (a 400 for this request, a refused budget): those count neither way.
    pub fn failed(mut self, fault: bool) {
        let verdict = if fault {
            Verdict::Fault
        } else {
            Verdict::Neutral
        };
        self.breaker.record(self.probe, verdict);
        self.probe = false;
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        // `succeeded`/`failed` clear `probe` after recording; what is left is an abandoned probe.
        if self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Fault,
    Neutral,
}

impl CircuitBreaker {
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                open_until: None,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// A permit to call the provider now, or `None` while the circuit is open (or half-open
    /// with its one probe in flight).
    pub fn admit(&self) -> Option<CallPermit<'_>> {
        if self.config.failure_threshold == 0 {
            return Some(CallPermit {
                breaker: self,
                probe: false,
            });
        }
        let mut inner = self.lock();
        let probe = match inner.open_until {
            None => false,
            Some(until) if Instant::now() < until => return None,
            Some(_) if inner.probe_in_flight => return None,
            Some(_) => {
                inner.probe_in_flight = true;
                true
            }
        };
        Some(CallPermit {
            breaker: self,
            probe,
        })
    }

    fn record(&self, probe: bool, verdict: Verdict) {
        if self.config.failure_threshold == 0 {
            return;
        }
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        match verdict {
            Verdict::Success => {
                inner.consecutive_failures = 0;
                inner.open_until = None;
            }
            Verdict::Neutral => {}
            Verdict::Fault => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if probe || inner.consecutive_failures >= self.config.failure_threshold {
                    // Saturating: an open period too long to represent stays open "forever".
                    let now = Instant::now();
                    inner.open_until = Some(
                        now.checked_add(self.config.open_for)
                            .unwrap_or(now + Duration::from_secs(86_400 * 365)),
                    );
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// 0 disables the breaker.
    pub failure_threshold: u32,
    pub open_for: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_millis(4000),
        }
    }

    fn status(code: u16) -> ProviderError {
        ProviderError::Status {
            status: code,
            retry_after: None,
            message: String::new(),
        }
    }

    #[test]
    fn retries_only_transient_errors_within_the_attempt_budget() {
        let p = policy();
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(p.should_retry(1, &status(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!p.should_retry(1, &status(code)), "{code}");
        }
        assert!(p.should_retry(1, &ProviderError::Timeout));
        assert!(p.should_retry(2, &ProviderError::Connect("refused".into())));
        assert!(
            !p.should_retry(3, &ProviderError::Timeout),
            "third attempt is the last"
        );
        assert!(!p.should_retry(1, &ProviderError::Malformed("x".into())));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_with_full_jitter() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(250));
        assert_eq!(p.ceiling(2), Duration::from_millis(500));
        assert_eq!(p.ceiling(5), Duration::from_millis(4000));
        assert_eq!(p.ceiling(40), Duration::from_millis(4000));
        let err = status(503);
        assert_eq!(p.delay(2, &err, 0.0), Duration::ZERO);
        assert_eq!(p.delay(2, &err, 0.5), Duration::from_millis(250));
        assert!(p.delay(2, &err, 0.999) < Duration::from_millis(500));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = policy();
        let err = |secs| ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
            message: String::new(),
        };
        assert_eq!(p.delay(1, &err(1), 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, &err(120), 0.0), Duration::from_millis(4000));
    }

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(CircuitConfig {
            failure_threshold: threshold,
            open_for: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_faults_then_probes() {
        let b = breaker(2);
        b.admit().unwrap().failed(true);
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failed(false); // a 400: not the provider's fault
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failed(true);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = b.admit().unwrap();
        assert!(probe.is_probe());
        assert!(b.admit().is_none(), "one probe at a time");
        probe.failed(true);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(31)).await;
        b.admit().unwrap().succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_probe_slot_without_a_verdict() {
        let b = breaker(1);
        b.admit().unwrap().failed(true);
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = b.admit().unwrap();
        assert!(probe.is_probe());
        drop(probe); // the caller gave up (deadline, cancel, panic)
        assert_eq!(b.state(), BreakerState::HalfOpen, "no verdict either way");
        let next = b.admit().expect("the next call probes at once");
        assert!(next.is_probe());
        next.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_neutral_probe_verdict_keeps_exactly_one_probe() {
        let b = breaker(1);
        b.admit().unwrap().failed(true);
        tokio::time::advance(Duration::from_secs(31)).await;
        b.admit().unwrap().failed(false); // e.g. the probe got a 400
        let second = b.admit().expect("half-open again");
        assert!(second.is_probe());
        assert!(b.admit().is_none(), "still one probe at a time");
        drop(second);
    }

    #[test]
    fn deadlines_too_far_away_are_no_deadline() {
        let now = Instant::now();
        assert!(Deadline::after(now, Some(Duration::MAX)).0.is_none());
        assert!(!Deadline::after(now, Some(Duration::MAX)).would_pass(Duration::MAX));
        let soon = Deadline::after(now, Some(Duration::from_millis(10)));
        assert!(
            soon.would_pass(Duration::MAX),
            "no overflow, and it would pass"
        );
        assert!(soon.would_pass(Duration::from_secs(1)));
        assert!(!Deadline(None).would_pass(Duration::MAX));
    }

    #[test]
    fn disabled_breaker_always_calls() {
        let b = breaker(0);
        for _ in 0..10 {
            b.admit().unwrap().failed(true);
        }
        assert!(b.admit().is_some());
    }
}
