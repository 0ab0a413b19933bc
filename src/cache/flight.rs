//! Single flight: of concurrent identical requests (one [`CacheKey`]) one goes upstream, the
//! others wait for it — each bounded by its own deadline — and then read its answer from the
//! store. Without it, a burst of identical calls all miss and all pay.
//!
//! The leader holds a [`FlightGuard`]; its drop (answer stored, call failed, call dropped —
//! whatever ends it) wakes every follower. A follower that finds nothing stored (the leader
//! failed, or its answer was not storable) goes on by itself, and may lead the next flight.
//! Flights live only while their leader does: the map holds calls in progress, no more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::key::CacheKey;

#[derive(Default)]
pub struct Flights {
    /// Each flight in progress, with a receiver that wakes when its leader is done.
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
}

/// Joining a flight: lead it, or wait for its leader.
pub enum Join {
    Lead(FlightGuard),
    Follow(Leader),
}

/// A flight's leader, as its followers wait for it.
pub struct Leader(watch::Receiver<()>);

impl Leader {
    /// Resolves when the leader's call is over.
    pub async fn done(mut self) {
        // The leader never sends: `changed` ends with an error when its guard drops the sender.
        while self.0.changed().await.is_ok() {}
    }
}

/// Held by a flight's leader until its answer is stored (or its call is over).
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    _done: watch::Sender<()>,
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        let mut inflight = self.lock();
        if let Some(leader) = inflight.get(key) {
            return Join::Follow(Leader(leader.clone()));
        }
        let (done, leader) = watch::channel(());
        inflight.insert(key.clone(), leader);
        Join::Lead(FlightGuard {
            flights: Arc::clone(self),
            key: key.clone(),
            _done: done,
        })
    }

    /// Flights in progress (tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, watch::Receiver<()>>> {
        // A panic while the lock is held leaves the map consistent (one insert or remove).
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        // Out of the map first, then the sender drops (after this body) and wakes followers:
        // one that joins again finds no flight and leads.
        self.flights.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    fn key(text: &str) -> CacheKey {
        CacheKey::sample(text, None)
    }

    #[tokio::test]
    async fn followers_wait_for_the_leader_and_the_flight_ends_with_it() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(guard) = flights.join(&key("a")) else {
            panic!("the first call leads");
        };
        let Join::Follow(follower) = flights.join(&key("a")) else {
            panic!("the second call follows");
        };
        assert!(
            matches!(flights.join(&key("b")), Join::Lead(_)),
            "another request has its own flight"
        );
        let mut waiting = Box::pin(follower.done());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "the leader is busy"
        );
        drop(guard);
        assert!(
            waiting.now_or_never().is_some(),
            "woken by the leader's end"
        );
        assert!(flights.is_empty(), "no flight outlives its leader");
        assert!(matches!(flights.join(&key("a")), Join::Lead(_)));
    }
}
