//! Endpoint pools: one provider served by several base URLs (`base_urls`, or a
//! comma-separated `OPENAI_BASE_URL` / `OLLAMA_HOST`).
//!
//! A [`Pool`] holds one [`Provider`] per endpoint — each still one wire format and one HTTP
//! request to one base URL — and hands out a [`Lease`] per attempt. The gateway asks for a
//! lease before every attempt (and before reserving the attempt's budget unit), sends the
//! request through the lease's provider, and gives the lease its verdict. The pool does four
//! things:
//!
//! - **Balancing: power of two choices on outstanding requests.** Among the usable endpoints
//!   with room, two are drawn at random and the one with fewer requests in flight from this
//!   process wins. A retry passes the endpoints it already tried and gets an untried one when
//!   one has room. This is a small own implementation rather than `tower::balance`: the
//!   gateway needs per-attempt control (budget reservation, retry placement, verdicts), which
//!   a `tower::Service` balancer hides behind `call`.
//! - **Outlier ejection.** `eject_after_failures` consecutive failures (connect errors,
//!   timeouts, 408, 429, 5xx: [`ProviderError::is_retryable`]) eject an endpoint for
//!   `eject_ms`. When that has passed, exactly one request goes to it as a probe: success
//!   brings it back (streak and ejection count reset); failure ejects it again for twice as
//!   long, up to [`PoolConfig::MAX_EJECTION`]. Other errors (a 400 for this request) show the
//!   endpoint answering and reset the streak. With every endpoint ejected, [`Pool::acquire`]
//!   fails at once with [`ProviderError::AllEndpointsEjected`], a provider fault: the circuit
//!   breaker and the fallback take over. A provider with a single endpoint is never ejected:
//!   there is no other endpoint to send to, and its circuit breaker already decides when to
//!   stop calling it (so one `base_url` behaves exactly as before pools).
//! - **Concurrency cap.** An endpoint never has more than `max_in_flight` leases out.
//! - **FIFO queue.** When no usable endpoint has room, the call waits in a queue of at most
//!   `max_queue` ([`ProviderError::QueueFull`] beyond). The queue is a `VecDeque` of oneshot
//!   senders under the pool's one mutex: a lease that ends hands its slot straight to the
//!   queue's head (with the head's own retry preference), so no later arrival can overtake
//!   a waiter. Room can also appear with no lease ending — an ejected endpoint due for its
//!   probe — so the waiters also wake when the next ejection ends, and a call that joins the
//!   queue serves it at once: the waiters before it take any room first, then it may. (A tokio
//!   `Semaphore` is FIFO too, but one per endpoint cannot express "the first free slot of any
//!   endpoint, in arrival order", and a pool-wide one cannot cap each endpoint.) Waiting is
//!   not bounded here: the caller's deadline races the whole call, so a deadline that passes
//!   in the queue drops the waiter and nothing reaches the upstream.
//!
//! Everything is a guard: a [`Lease`] releases its slot when dropped — a unary attempt's when
//! its answer is read, a stream's when the stream ends — also without verdict (a cancelled
//! call counts neither way, and a probe it carried may be sent again); a waiter
//! that is dropped leaves the queue; a lease handed to a waiter that just went away is
//! released by the channel. One `std` mutex guards all state and is never held across an
//! `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::ProviderConfig;
use super::{BuildError, Provider, ProviderError};
use crate::resilience::sleep_until;

/// One provider's endpoints, their load and health, and the queue of calls waiting for one.
pub struct Pool {
    config: ProviderConfig,
    endpoints: Vec<Member>,
    state: Mutex<State>,
    /// Wakes the waiters when an ejection begins: its end is a moment they must wake for.
    ejections: Notify,
}

/// A fixed endpoint of the pool.
struct Member {
    provider: Arc<dyn Provider>,
    /// `host:port`, for logs and the ejection metric (bounded: it comes from configuration).
    label: String,
}

struct State {
    slots: Vec<Slot>,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

/// An endpoint's load and health.
#[derive(Default)]
struct Slot {
    in_flight: usize,
    /// Consecutive failures.
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections since the endpoint was last healthy (the next one lasts 2^this times longer).
    ejections: u32,
    /// A probe request is out.
    probing: bool,
}

struct Waiter {
    id: u64,
    tried: Vec<usize>,
    tx: oneshot::Sender<Result<Lease, ProviderError>>,
}

/// What the health of an endpoint did after a lease's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// The endpoint was ejected for this long after this many consecutive failures.
    Ejected { duration: Duration, failures: u32 },
    /// Its probe succeeded: it takes requests again.
    Restored,
}

impl Pool {
    /// A pool of one provider per `config.base_urls` entry, built by `build`.
    pub fn build(
        config: &ProviderConfig,
        mut build: impl FnMut(&ProviderConfig) -> Result<Arc<dyn Provider>, BuildError>,
    ) -> Result<Arc<Pool>, BuildError> {
        let providers = config
            .base_urls
            .iter()
            .map(|url| {
                let mut one = config.clone();
                one.base_url = url.clone();
                one.base_urls = vec![url.clone()];
                build(&one)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool::new(config.clone(), providers))
    }

    /// A pool over `providers` (at least one), with `config`'s pool settings.
    pub fn new(config: ProviderConfig, providers: Vec<Arc<dyn Provider>>) -> Arc<Pool> {
        assert!(!providers.is_empty(), "a pool needs at least one endpoint");
        let endpoints: Vec<Member> = providers
            .into_iter()
            .map(|provider| {
                let (host, port) = provider.address();
                let label = format!("{host}:{port}");
                Member { provider, label }
            })
            .collect();
        let slots = endpoints.iter().map(|_| Slot::default()).collect();
        Arc::new(Pool {
            config,
            endpoints,
            state: Mutex::new(State {
                slots,
                waiters: VecDeque::new(),
                next_waiter: 0,
            }),
            ejections: Notify::new(),
        })
    }

    /// The provider's configuration (name, kind, tier, every base URL, pool settings).
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn settings(&self) -> &PoolConfig {
        &self.config.pool
    }

    /// The `gen_ai.provider.name` of its wire format (`openai`, `ollama`).
    pub fn system(&self) -> &'static str {
        self.endpoints[0].provider.system()
    }

    /// The endpoints' `host:port` labels, in configuration order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|m| m.label.as_str())
    }

    /// Whether at least one endpoint takes requests now (not ejected, or due for its probe).
    pub fn usable(&self) -> bool {
        let st = self.lock();
        let now = Instant::now();
        st.slots.iter().any(|s| s.usable(now))
    }

    /// Its endpoints now: `(healthy, ejected)`. An ejected endpoint stays ejected until a probe
    /// succeeds, also past its ejection time (no request may have come to probe it).
    pub fn health(&self) -> (usize, usize) {
        let st = self.lock();
        let ejected = st
            .slots
            .iter()
            .filter(|s| s.ejected_until.is_some())
            .count();
        (st.slots.len() - ejected, ejected)
    }

    /// Calls waiting for an endpoint now.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// A lease on an endpoint for one attempt, preferring one not in `tried`. Waits in the
    /// FIFO queue while every usable endpoint is full; fails at once with
    /// [`ProviderError::AllEndpointsEjected`] or [`ProviderError::QueueFull`].
    pub async fn acquire(self: &Arc<Self>, tried: &[usize]) -> Result<Lease, ProviderError> {
        let (id, mut rx) = {
            let mut st = self.lock();
            let now = Instant::now();
            if !st.slots.iter().any(|s| s.usable(now)) {
                return Err(ProviderError::AllEndpointsEjected);
            }
            if st.waiters.is_empty()
                && let Some(index) = self.pick(&st, tried, now)
            {
                return Ok(self.lease(&mut st, index, now));
            }
            if st.waiters.len() >= self.settings().max_queue {
                return Err(ProviderError::QueueFull {
                    max_queue: self.settings().max_queue,
                });
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push_back(Waiter {
                id,
                tried: tried.to_vec(),
                tx,
            });
            (id, rx)
        };
        let _leave = LeaveQueue { pool: self, id };
        // A lease that ends serves the queue; so does an ejection that ends, which no lease
        // announces: the waiters sleep until the next one ends, and an ejection that begins
        // meanwhile wakes them to sleep until its end instead. Each turn serves the queue
        // first, so room that appeared unannounced goes to the waiters in order, this call
        // included.
        loop {
            let ejected = self.ejections.notified();
            tokio::pin!(ejected);
            // Registered before the state is read, so no ejection can slip in between.
            ejected.as_mut().enable();
            let back = {
                let mut st = self.lock();
                let now = Instant::now();
                self.serve_queue(&mut st, now);
                next_return(&st, now)
            };
            tokio::select! {
                lease = &mut rx => return lease.unwrap_or(Err(ProviderError::AllEndpointsEjected)),
                () = sleep_until(back) => {}
                () = ejected => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power of two choices among the usable endpoints with room, untried ones first.
    fn pick(&self, st: &State, tried: &[usize], now: Instant) -> Option<usize> {
        let cap = self.settings().max_in_flight.unwrap_or(usize::MAX);
        let open: Vec<usize> = (0..st.slots.len())
            .filter(|&i| st.slots[i].usable(now) && st.slots[i].in_flight < cap)
            .collect();
        let fresh: Vec<usize> = open
            .iter()
            .copied()
            .filter(|i| !tried.contains(i))
            .collect();
        let candidates = if fresh.is_empty() { open } else { fresh };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                Some(if st.slots[b].in_flight < st.slots[a].in_flight {
                    b
                } else {
                    a
                })
            }
        }
    }

    /// Takes a slot of endpoint `index` (the lock is held).
    fn lease(self: &Arc<Self>, st: &mut State, index: usize, now: Instant) -> Lease {
        let slot = &mut st.slots[index];
        slot.in_flight += 1;
        let probe = slot.ejected_until.is_some_and(|until| now >= until);
        if probe {
            slot.probing = true;
        }
        Lease {
            pool: self.clone(),
            index,
            probe,
            held: true,
        }
    }

    /// Records an attempt's verdict on endpoint `index` (`probe`: it was the probe).
    fn judge(&self, index: usize, probe: bool, healthy: bool) -> Option<HealthChange> {
        let mut st = self.lock();
        let now = Instant::now();
        let settings = *self.settings();
        let slot = &mut st.slots[index];
        if probe {
            slot.probing = false;
        }
        if healthy {
            slot.failures = 0;
            if !probe {
                return None;
            }
            slot.ejected_until = None;
            slot.ejections = 0;
            return Some(HealthChange::Restored);
        }
        slot.failures = slot.failures.saturating_add(1);
        let streak = slot.ejected_until.is_none() && slot.failures >= settings.eject_after_failures;
        // A lone endpoint is the provider: its circuit breaker already judges it.
        if !(probe || streak) || self.endpoints.len() < 2 {
            return None;
        }
        slot.ejections = slot.ejections.saturating_add(1);
        let factor = 1u32 << (slot.ejections - 1).min(16);
        let duration = settings
            .eject
            .saturating_mul(factor)
            .min(PoolConfig::MAX_EJECTION);
        slot.ejected_until = Some(now + duration);
        let change = HealthChange::Ejected {
            duration,
            failures: slot.failures,
        };
        self.ejections.notify_waiters();
        // Waiters may have nothing usable left.
        self.fail_waiters_if_unusable(&mut st, now);
        Some(change)
    }

    /// Gives back a slot (`probe`: a probe without verdict, which may be sent again), then
    /// serves the queue.
    fn free(self: &Arc<Self>, index: usize, probe: bool) {
        let mut st = self.lock();
        let now = Instant::now();
        let slot = &mut st.slots[index];
        slot.in_flight -= 1;
        if probe {
            slot.probing = false;
        }
        self.serve_queue(&mut st, now);
    }

    /// With no usable endpoint left, fails every waiter; returns whether it did.
    fn fail_waiters_if_unusable(&self, st: &mut State, now: Instant) -> bool {
        if st.slots.iter().any(|s| s.usable(now)) {
            return false;
        }
        for w in st.waiters.drain(..) {
            let _ = w.tx.send(Err(ProviderError::AllEndpointsEjected));
        }
        true
    }

    /// Hands free slots to the waiters, head first; with no usable endpoint left, fails them.
    fn serve_queue(self: &Arc<Self>, st: &mut State, now: Instant) {
        while !st.waiters.is_empty() {
            if self.fail_waiters_if_unusable(st, now) {
                return;
            }
            let tried = st
                .waiters
                .front()
                .map(|w| w.tried.as_slice())
                .unwrap_or_default();
            let Some(index) = self.pick(st, tried, now) else {
                return;
            };
            let Some(waiter) = st.waiters.pop_front() else {
                return;
            };
            let lease = self.lease(st, index, now);
            if let Err(Ok(mut lease)) = waiter.tx.send(Ok(lease)) {
                // The waiter went away just now: undo in place (the lock is held).
                lease.held = false;
                let slot = &mut st.slots[index];
                slot.in_flight -= 1;
                if lease.probe {
                    slot.probing = false;
                }
            }
        }
    }
}

/// When the next ejected endpoint is due back (for its probe), if one is.
fn next_return(st: &State, now: Instant) -> Option<Instant> {
    st.slots
        .iter()
        .filter_map(|s| s.ejected_until)
        .filter(|&until| until > now)
        .min()
}

impl Slot {
    /// Takes requests now: not ejected, or ejected, due, and no probe out yet.
    fn usable(&self, now: Instant) -> bool {
        match self.ejected_until {
            None => true,
            Some(until) => now >= until && !self.probing,
        }
    }
}

/// Removes a waiter that is dropped before it got its lease.
struct LeaveQueue<'a> {
    pool: &'a Pool,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.waiters.retain(|w| w.id != self.id);
    }
}

/// One attempt's hold on one endpoint: a slot of its `max_in_flight`, given back when the
/// lease is dropped. A stream keeps its lease until the stream ends. The attempt's verdict
/// ([`Lease::judge`]) feeds the endpoint's ejection; a lease dropped without one (a cancelled
/// call) says nothing about the endpoint, and a probe it carried may be sent again.
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
    /// A probe without its verdict yet.
    probe: bool,
    held: bool,
}

impl Lease {
    /// The endpoint's provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.pool.endpoints[self.index].provider
    }

    /// The endpoint's position in the provider's `base_urls`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The endpoint's `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.pool.endpoints[self.index].label
    }

    /// Whether this attempt is the probe of an ejected endpoint (and has no verdict yet).
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the attempt's outcome for the endpoint's health (the slot stays held until the
    /// lease is dropped); returns what changed, for the caller to log and count. Failures
    /// that count are the retryable ones (connect errors, timeouts, 408, 429, 5xx); anything
    /// else shows the endpoint answering.
    pub fn judge(&mut self, outcome: Result<(), &ProviderError>) -> Option<HealthChange> {
        let healthy = match outcome {
            Ok(()) => true,
            Err(e) => !e.is_retryable(),
        };
        let probe = std::mem::replace(&mut self.probe, false);
        self.pool.judge(self.index, probe, healthy)
    }

    /// [`Lease::judge`], then gives the slot back.
    pub fn finish(mut self, outcome: Result<(), &ProviderError>) -> Option<HealthChange> {
        self.judge(outcome)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.held {
            self.held = false;
            self.pool.free(self.index, self.probe);
        }
    }
}

/// A provider's endpoint pool: concurrency cap, queue and outlier ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Requests in flight per endpoint at most (`None`: unlimited).
    pub max_in_flight: Option<usize>,
    /// Calls waiting for a free endpoint at most; one more is turned away.
    pub max_queue: usize,
    /// Consecutive failures (connect errors, timeouts, 408, 429, 5xx) that eject an endpoint.
    pub eject_after_failures: u32,
    /// How long a first ejection lasts; it doubles with each failed probe, up to
    /// [`PoolConfig::MAX_EJECTION`].
    pub eject: Duration,
}

impl PoolConfig {
    /// The longest an endpoint stays ejected.
    pub const MAX_EJECTION: Duration = Duration::from_secs(300);
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            max_queue: 256,
            eject_after_failures: 3,
            eject: Duration::from_millis(10_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;
    use crate::providers::{BodyLimits, CostTier};
    use crate::providers::{ChatRequest, Completion, EventStream};
    use async_trait::async_trait;

    struct Fake(ProviderConfig, u16);

    #[async_trait]
    impl Provider for Fake {
        fn config(&self) -> &ProviderConfig {
            &self.0
        }
        async fn complete(&self, _: &ChatRequest) -> Result<Completion, ProviderError> {
            unreachable!()
        }
        async fn stream(&self, _: &ChatRequest, _: Duration) -> Result<EventStream, ProviderError> {
            unreachable!()
        }
        fn address(&self) -> (&str, u16) {
            ("gpu", self.1)
        }
        fn system(&self) -> &'static str {
            "fake"
        }
    }

    fn pool(n: u16, pool: PoolConfig) -> Arc<Pool> {
        use crate::providers::ProviderKind;
        let config = ProviderConfig {
            name: "local".into(),
            kind: ProviderKind::Ollama,
            base_url: "http://gpu:1".into(),
            base_urls: (1..=n).map(|p| format!("http://gpu:{p}")).collect(),
            api_key: None,
            tier: CostTier::Local,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            limits: BodyLimits::default(),
            pool,
            proxy: Default::default(),
            default_model: None,
            max_output_tokens: 4096,
            headers: Vec::new(),
            query: Vec::new(),
        };
        let providers = (1..=n)
            .map(|p| Arc::new(Fake(config.clone(), p)) as Arc<dyn Provider>)
            .collect();
        Pool::new(config, providers)
    }

    fn fail() -> ProviderError {
        ProviderError::Status {
            status: 503,
            retry_after: None,
            message: String::new(),
        }
    }

    #[tokio::test]
    async fn picks_the_less_loaded_and_prefers_untried() {
        let p = pool(2, PoolConfig::default());
        let a = p.acquire(&[]).await.unwrap();
        for _ in 0..20 {
            let b = p.acquire(&[]).await.unwrap();
            assert_ne!(b.index(), a.index(), "the idle endpoint wins");
        }
        let again = p.acquire(&[a.index()]).await.unwrap();
        assert_ne!(again.index(), a.index());
        assert_eq!(again.endpoint(), format!("gpu:{}", again.index() + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_probes_and_restores() {
        let settings = PoolConfig {
            eject_after_failures: 2,
            eject: Duration::from_millis(30),
            ..PoolConfig::default()
        };
        let p = pool(2, settings);
        let e = fail();
        // Fails endpoint `i` once (holding a lease on the other so the pick is forced).
        let fail_on = |i: usize| {
            let p = p.clone();
            let e = e.clone();
            async move {
                let other = p.acquire(&[i]).await.unwrap();
                let lease = p.acquire(&[]).await.unwrap();
                assert_eq!(lease.index(), i);
                let change = lease.finish(Err(&e));
                drop(other);
                change
            }
        };
        assert_eq!(fail_on(0).await, None);
        let change = fail_on(0).await;
        assert!(
            matches!(change, Some(HealthChange::Ejected { duration, failures: 2 }) if duration == Duration::from_millis(30))
        );
        for _ in 0..10 {
            assert_eq!(p.acquire(&[]).await.unwrap().index(), 1, "0 is ejected");
        }
        // The other one too: the provider fails fast.
        assert_eq!(fail_on(1).await, None);
        let l = p.acquire(&[]).await.unwrap();
        assert_eq!(l.index(), 1);
        assert!(matches!(
            l.finish(Err(&e)),
            Some(HealthChange::Ejected { .. })
        ));
        assert_eq!(
            p.acquire(&[]).await.err(),
            Some(ProviderError::AllEndpointsEjected)
        );
        assert!(!p.usable());

        tokio::time::sleep(Duration::from_millis(40)).await;
        let probe = p.acquire(&[1]).await.unwrap();
        assert!(probe.is_probe());
        let other_probe = p.acquire(&[]).await.unwrap();
        assert_ne!(other_probe.index(), probe.index(), "one probe per endpoint");
        assert_eq!(
            p.acquire(&[]).await.err(),
            Some(ProviderError::AllEndpointsEjected),
            "both probes are out"
        );
        drop(other_probe);
        let change = probe.finish(Err(&e));
        assert!(
            matches!(change, Some(HealthChange::Ejected { duration, .. }) if duration == Duration::from_millis(60)),
            "doubled: {change:?}"
        );
        let probe = p.acquire(&[]).await.unwrap();
        assert!(probe.is_probe(), "a cancelled probe is sent again");
        let index = probe.index();
        assert_eq!(probe.finish(Ok(())), Some(HealthChange::Restored));
        let next = p.acquire(&[]).await.unwrap();
        assert!(!next.is_probe());
        assert_eq!(next.index(), index);
    }

    #[tokio::test]
    async fn a_lone_endpoint_is_never_ejected() {
        let p = pool(
            1,
            PoolConfig {
                eject_after_failures: 1,
                ..PoolConfig::default()
            },
        );
        for _ in 0..5 {
            assert_eq!(p.acquire(&[]).await.unwrap().finish(Err(&fail())), None);
        }
        assert!(p.usable());
    }

    #[tokio::test]
    async fn caps_queues_in_order_and_refuses_past_the_queue() {
        let settings = PoolConfig {
            max_in_flight: Some(1),
            max_queue: 2,
            ..PoolConfig::default()
        };
        let p = pool(1, settings);
        let first = p.acquire(&[]).await.unwrap();
        let (p1, p2) = (p.clone(), p.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        let w1 = tokio::spawn(async move {
            let l = p1.acquire(&[]).await.unwrap();
            tx.send(1).unwrap();
            l
        });
        while p.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let w2 = tokio::spawn(async move {
            let l = p2.acquire(&[]).await.unwrap();
            tx2.send(2).unwrap();
            drop(l);
        });
        while p.queued() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            p.acquire(&[]).await.err(),
            Some(ProviderError::QueueFull { max_queue: 2 })
        );
        drop(first);
        let l1 = w1.await.unwrap();
        assert_eq!(rx.recv().await, Some(1), "first in, first served");
        drop(l1);
        w2.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
        // A waiter that gives up leaves the queue and leaks nothing.
        let held = p.acquire(&[]).await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), p.acquire(&[])).await;
        assert!(gave_up.is_err());
        assert_eq!(p.queued(), 0);
        drop(held);
        drop(p.acquire(&[]).await.unwrap());
    }

    /// A pool of `n` endpoints of one slot each, ejected for 10 s after one failure, with
    /// endpoint 0 held by the returned lease and every other endpoint ejected.
    async fn one_held_the_rest_ejected(n: u16) -> (Arc<Pool>, Lease) {
        let p = pool(
            n,
            PoolConfig {
                max_in_flight: Some(1),
                eject_after_failures: 1,
                eject: Duration::from_secs(10),
                ..PoolConfig::default()
            },
        );
        let held = p.acquire(&[1, 2, 3]).await.unwrap();
        assert_eq!(held.index(), 0);
        for _ in 1..n {
            let lease = p.acquire(&[0]).await.unwrap();
            assert!(matches!(
                lease.finish(Err(&fail())),
                Some(HealthChange::Ejected { .. })
            ));
        }
        (p, held)
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_served_when_an_endpoint_returns_from_ejection() {
        let (p, held) = one_held_the_rest_ejected(2).await;
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.acquire(&[]).await }
        });
        while p.queued() < 1 {
            tokio::task::yield_now().await;
        }
        // No lease ends: the endpoint coming back is what serves the waiter.
        let lease = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter is served once the ejection ends, not at its deadline")
            .unwrap()
            .unwrap();
        assert_eq!((lease.index(), lease.is_probe()), (1, true));
        assert_eq!(held.index(), 0, "the first lease is still held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_arrival_takes_room_the_waiters_leave_instead_of_queueing_behind_them() {
        let (p, _held) = one_held_the_rest_ejected(3).await;
        // A waiter that is not polled again by itself: only the arrival can serve it.
        let mut waiter = Box::pin(p.acquire(&[]));
        assert!((&mut waiter).now_or_never().is_none());
        assert_eq!(p.queued(), 1);
        // Both ejections end; a new call arrives.
        tokio::time::advance(Duration::from_secs(11)).await;
        let arrival = p
            .acquire(&[])
            .now_or_never()
            .expect("a free endpoint is taken at once")
            .unwrap();
        assert_eq!(p.queued(), 0, "the waiter was served first");
        let first = waiter
            .now_or_never()
            .expect("served by the arrival")
            .unwrap();
        assert!(first.is_probe() && arrival.is_probe());
        assert_ne!(first.index(), arrival.index());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_for_an_ejection_that_begins_while_it_waits() {
        let p = pool(
            2,
            PoolConfig {
                max_in_flight: Some(1),
                eject_after_failures: 1,
                eject: Duration::from_secs(10),
                ..PoolConfig::default()
            },
        );
        let held = p.acquire(&[1]).await.unwrap();
        let failing = p.acquire(&[]).await.unwrap();
        assert_eq!((held.index(), failing.index()), (0, 1));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.acquire(&[]).await }
        });
        while p.queued() < 1 {
            tokio::task::yield_now().await;
        }
        // Endpoint 1 fails and is ejected as its slot frees: nothing to hand over now, and
        // the waiter had no ejection to wait for when it queued.
        assert!(matches!(
            failing.finish(Err(&fail())),
            Some(HealthChange::Ejected { .. })
        ));
        assert_eq!(p.queued(), 1);
        let lease = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter is served when that ejection ends")
            .unwrap()
            .unwrap();
        assert_eq!((lease.index(), lease.is_probe()), (1, true));
        drop(held);
    }
}
