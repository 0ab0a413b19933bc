//! The edge: what every call passes through before it reaches a service, as tower layers
//! stacked once, in order, in [`crate::server::run`].
//!
//! 1. [`DeadlineLayer`] reads the caller's `grpc-timeout` the moment the call arrives, stamps
//!    the resulting [`CallerDeadline`] into the request's extensions ([`stamp_deadline`]) and
//!    answers DEADLINE_EXCEEDED itself if the call is still not answered when it passes — also
//!    while the request body is still arriving, before any service runs.
//! 2. [`crate::auth::AuthLayer`] (when `config.security.authenticates()`) admits the call
//!    with its `Arc<`[`crate::domain::Client`]`>` in the request's extensions, or answers
//!    UNAUTHENTICATED itself without reaching a service. Health checks pass without
//!    credentials. After the deadline stamp, so the stamp still starts the clock at arrival.
//! 3. Load shedding ([`Admission`]) is the first step of each generation RPC rather than a
//!    layer: its permit must live as long as the call, and for a stream that is the response
//!    body, which only the service holds. Past `VRA_MAX_IN_FLIGHT` calls (or a client's
//!    `max_in_flight`) a call gets RESOURCE_EXHAUSTED at once, before any upstream work.
//!
//! Why at arrival, and why a layer: tonic's own timeout layer, which sits just outside these
//! layers, starts its clock when the call arrives and answers CANCELLED "Timeout expired" when
//! it runs out. The gateway's deadline is a little earlier than the caller's (see
//! [`deadline_from`]) and enforced around the whole call, so the caller gets
//! DEADLINE_EXCEEDED, as the contract says — even for a call whose large body has not
//! finished arriving when the deadline passes (the SDK suites caught tonic's CANCELLED there).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{Either, Map};
use tokio::time::{Instant, Timeout};

use crate::domain::{Client, Shed};
use crate::error::GatewayError;
use crate::resilience::Deadline;

/// The caller's deadline as stamped at arrival, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct CallerDeadline(pub Deadline);

/// Edge layer 1: stamps the caller's deadline into the request (use with
/// `tower::util::MapRequestLayer`).
pub fn stamp_deadline<B>(mut request: http::Request<B>) -> http::Request<B> {
    let deadline = deadline_from(
        request
            .headers()
            .get("grpc-timeout")
            .map(http::HeaderValue::as_bytes),
        Instant::now(),
    );
    request.extensions_mut().insert(CallerDeadline(deadline));
    request
}

/// Edge layer 1: [`stamp_deadline`], and DEADLINE_EXCEEDED from the edge when the stamped
/// deadline passes before the call is answered (a stream is answered when its response starts).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = EnforceDeadline<S>;

    fn layer(&self, inner: S) -> EnforceDeadline<S> {
        EnforceDeadline { inner }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct EnforceDeadline<S> {
    inner: S,
}

type Answered<R, E> = Result<Result<R, E>, tokio::time::error::Elapsed>;

/// The inner call under the deadline, its expiry turned into a DEADLINE_EXCEEDED response.
type DeadlineFuture<F, R, E> = Map<Timeout<F>, fn(Answered<R, E>) -> Result<R, E>>;

fn exceeded<B: Default, E>(
    answered: Answered<http::Response<B>, E>,
) -> Result<http::Response<B>, E> {
    answered.unwrap_or_else(|_| Ok(GatewayError::DeadlineExceeded.into_status().into_http()))
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for EnforceDeadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<DeadlineFuture<S::Future, Self::Response, S::Error>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let request = stamp_deadline(request);
        let at = request
            .extensions()
            .get::<CallerDeadline>()
            .and_then(|d| d.0.0);
        let call = self.inner.call(request);
        match at {
            Some(at) => Either::Left(
                tokio::time::timeout_at(at, call).map(exceeded::<ResBody, S::Error> as fn(_) -> _),
            ),
            None => Either::Right(call),
        }
    }
}

/// The gateway's deadline for a call that arrived at `arrival` with this `grpc-timeout`: a
/// little before the caller's (10 %, at least 1 ms, at most 50 ms), so the gateway's
/// DEADLINE_EXCEEDED reaches the caller before its own timer or tonic's transport cancels the
/// call (tonic, on both sides, reports CANCELLED "Timeout expired"); the 1 ms floor keeps the
/// gateway's timer at least one tick of the runtime's clock ahead of tonic's. No (valid)
/// timeout, no deadline.
pub fn deadline_from(grpc_timeout: Option<&[u8]>, arrival: Instant) -> Deadline {
    let timeout = grpc_timeout.and_then(|value| {
        let parsed = parse_grpc_timeout(value);
        if parsed.is_none() {
            tracing::debug!(
                "ignoring malformed grpc-timeout ({} bytes): treated as no deadline",
                value.len()
            );
        }
        parsed
    });
    let margin = |t: Duration| {
        (t / 10)
            .clamp(Duration::from_millis(1), Duration::from_millis(50))
            .min(t)
    };
    Deadline::after(arrival, timeout.map(|t| t.saturating_sub(margin(t))))
}

/// Parses a `grpc-timeout` value: at most 8 characters of a decimal number and a unit
/// (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros, `n`anos). That is the gRPC spec's
/// "1 to 8 digits", read exactly as tonic's own timeout layer reads it (which also takes a
/// leading `+`), so the two always agree on whether a call has a deadline. Anything else is
/// `None`.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, number) = value.split_last()?;
    if number.len() > 8 {
        return None;
    }
    // At most 8 characters: no overflow below, even in hours.
    let n: u64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Load shedding: generation calls in flight, in all and per client (those with a
/// `max_in_flight`). Each admitted call holds an [`Admitted`] guard; dropping it — the call
/// ended, failed, was cancelled or panicked — gives the place back.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    in_flight: AtomicUsize,
    /// Client id → its calls in flight; only clients with a limit, only while non-zero (so
    /// bounded by the clients file).
    per_client: Mutex<HashMap<String, u32>>,
}

impl Admission {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more call of `client`, or why there is none.
    pub fn try_admit(self: &Arc<Self>, client: Option<&Client>) -> Result<Admitted, Shed> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| Shed::Gateway)?;
        let mut admitted = Admitted {
            admission: self.clone(),
            client: None,
        };
        if let Some(client) = client
            && let Some(limit) = client.max_in_flight
        {
            let mut per_client = self.per_client();
            let n = per_client.entry(client.id.clone()).or_insert(0);
            if *n >= limit {
                // `admitted` drops here and gives the global place back.
                return Err(Shed::Client);
            }
            *n += 1;
            admitted.client = Some(client.id.clone());
        }
        Ok(admitted)
    }

    /// Calls admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn per_client(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.per_client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One admitted call's place; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    /// The client whose per-client count this call holds.
    client: Option<String>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(id) = &self.client {
            let mut per_client = self.admission.per_client();
            if let Some(n) = per_client.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    per_client.remove(id);
                }
            }
        }
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one process accepts from its clients at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `VRA_MAX_IN_FLIGHT`: generation calls in flight; more are shed.
    pub max_in_flight: usize,
    /// `VRA_MAX_CONCURRENT_STREAMS`: HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// `VRA_H2_KEEPALIVE_MS` (`None`: off).
    pub h2_keepalive: Option<Duration>,
    /// `VRA_STREAM_MAX_MS`: longest total duration of one stream.
    pub stream_max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, max_in_flight: Option<u32>) -> Client {
        Client {
            id: id.into(),
            cloud_calls_per_day: None,
            max_cloud_calls: None,
            max_in_flight,
            admin: false,
        }
    }

    #[test]
    fn admission_caps_calls_in_all_and_per_client_and_gives_places_back() {
        let admission = Admission::new(3);
        let (a, b) = (client("a", Some(1)), client("b", None));
        let first = admission.try_admit(Some(&a)).expect("a's first call");
        assert_eq!(admission.try_admit(Some(&a)).unwrap_err(), Shed::Client);
        assert_eq!(admission.in_flight(), 1, "a shed call holds no place");
        let others = [
            admission.try_admit(Some(&b)).unwrap(),
            admission.try_admit(None).unwrap(),
        ];
        assert_eq!(admission.try_admit(None).unwrap_err(), Shed::Gateway);
        drop(first);
        let again = admission.try_admit(Some(&a)).expect("a's place came back");
        drop((again, others));
        assert_eq!(admission.in_flight(), 0);
        assert!(
            admission.per_client().is_empty(),
            "no count outlives its calls"
        );
    }

    fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
        headers
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    }

    #[test]
    fn parses_grpc_timeout_units() {
        let mut m = http::HeaderMap::new();
        for (v, d) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("100u", Duration::from_micros(100)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d), "{v}");
        }
        for bad in [
            "5x",
            "123456789S",
            "S",
            "+S",
            "-1S",
            "1.5S",
            "99999999999999999H",
            " 5S",
        ] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&m), None, "{bad}");
        }
        // A leading `+`, as tonic's timeout layer reads it.
        m.insert("grpc-timeout", "+1S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(1)));
        m.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(
            grpc_timeout(&m),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn the_deadline_is_stamped_at_arrival_a_little_early() {
        let request = http::Request::builder()
            .header("grpc-timeout", "200m")
            .body(())
            .unwrap();
        let before = Instant::now();
        let stamped = stamp_deadline(request);
        let CallerDeadline(Deadline(Some(at))) = stamped.extensions().get().copied().unwrap()
        else {
            panic!("a deadline")
        };
        let after = Instant::now();
        // 200 ms less the margin of 10 %.
        let expected = Duration::from_millis(180);
        assert!(at >= before + expected && at <= after + expected);
        let none = stamp_deadline(http::Request::new(()));
        assert!(
            none.extensions()
                .get::<CallerDeadline>()
                .unwrap()
                .0
                .0
                .is_none()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any bytes as `grpc-timeout`: no panic; a value is accepted only in the spec's shape.
        #[test]
        fn grpc_timeout_parser_is_total(value in proptest::collection::vec(proptest::num::u8::ANY, 0..12)) {
            if parse_grpc_timeout(&value).is_some() {
                let (unit, number) = value.split_last().unwrap();
                let digits = number.strip_prefix(b"+").unwrap_or(number);
                proptest::prop_assert!(b"HMSmun".contains(unit));
                proptest::prop_assert!(!digits.is_empty() && number.len() <= 8);
                proptest::prop_assert!(digits.iter().all(u8::is_ascii_digit));
            }
        }

        /// Every spec-shaped value parses to exactly its duration, up to 8 digits of hours.
        #[test]
        fn grpc_timeout_round_trips(n in 0u64..100_000_000, unit in 0usize..6) {
            let (suffix, expected) = [
                ("H", Duration::from_secs(n * 3600)),
                ("M", Duration::from_secs(n * 60)),
                ("S", Duration::from_secs(n)),
                ("m", Duration::from_millis(n)),
                ("u", Duration::from_micros(n)),
                ("n", Duration::from_nanos(n)),
            ][unit];
            let text = format!("{n}{suffix}");
            proptest::prop_assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(expected));
            // The resulting deadline never overflows.
            let _ = deadline_from(Some(text.as_bytes()), Instant::now());
        }
    }
}
