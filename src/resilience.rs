//! Retry, backoff, deadline and circuit-breaker policy — plain functions and data.
//!
//! The gateway's call loop ([`crate::gateway`]) asks this module three questions: may I try
//! again ([`RetryPolicy::should_retry`]), how long do I wait ([`RetryPolicy::delay`], which
//! honours `Retry-After` up to the cap and never sleeps past the caller's deadline), and may I
//! call this provider at all right now ([`CircuitBreaker::allow`]).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{CircuitConfig, RetryConfig};
use crate::providers::ProviderError;

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
    pub fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| Instant::now() + t))
    }

    /// Whether sleeping `d` from now would end past the deadline.
    pub fn would_pass(&self, d: Duration) -> bool {
        self.0.is_some_and(|end| Instant::now() + d >= end)
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
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

/// Permission to call, from [`CircuitBreaker::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call normally.
    Call,
    /// Call as the half-open probe.
    Probe,
    /// Skip the provider.
    Reject,
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

    /// Whether a call may go to the provider now.
    pub fn allow(&self) -> Permit {
        if self.config.failure_threshold == 0 {
            return Permit::Call;
        }
        let mut inner = self.lock();
        match inner.open_until {
            None => Permit::Call,
            Some(until) if Instant::now() < until => Permit::Reject,
            Some(_) if inner.probe_in_flight => Permit::Reject,
            Some(_) => {
                inner.probe_in_flight = true;
                Permit::Probe
            }
        }
    }

    /// Records a call's outcome. `fault` is false for failures that say nothing about the
    /// provider's health (e.g. a 400 for this request).
    pub fn record(&self, permit: Permit, success: bool, fault: bool) {
        if self.config.failure_threshold == 0 || permit == Permit::Reject {
            return;
        }
        let mut inner = self.lock();
        if permit == Permit::Probe {
            inner.probe_in_flight = false;
        }
        if success || !fault {
            if success {
                inner.consecutive_failures = 0;
                inner.open_until = None;
            }
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        if permit == Permit::Probe || inner.consecutive_failures >= self.config.failure_threshold {
            inner.open_until = Some(Instant::now() + self.config.open_for);
        }
    }
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

    #[test]
    fn parses_both_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(3)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_faults_then_probes() {
        let b = CircuitBreaker::new(CircuitConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(30),
        });
        b.record(b.allow(), false, true);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(b.allow(), false, false); // a 400: not the provider's fault
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(b.allow(), false, true);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(), Permit::Reject);
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = b.allow();
        assert_eq!(probe, Permit::Probe);
        assert_eq!(b.allow(), Permit::Reject, "one probe at a time");
        b.record(probe, false, true);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = b.allow();
        b.record(probe, true, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(), Permit::Call);
    }

    #[test]
    fn disabled_breaker_always_calls() {
        let b = CircuitBreaker::new(CircuitConfig {
            failure_threshold: 0,
            open_for: Duration::from_secs(1),
        });
        for _ in 0..10 {
            b.record(b.allow(), false, true);
        }
        assert_eq!(b.allow(), Permit::Call);
    }
}
