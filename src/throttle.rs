//! Log throttles: a condition every call hits (a ledger that is down, a scan of bad tokens)
//! logs one line per period, with a count of the lines held back, instead of flooding the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one log line through per period and counts the ones it held back, so a condition
/// every call hits (a ledger that is down or full) cannot flood the log.
#[derive(Debug)]
pub struct Throttle {
    origin: std::time::Instant,
    period_ms: u64,
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Self {
            origin: std::time::Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now; `n` lines were held back since the last one. `None`: hold it back.
    pub fn check(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs at most one line per peer per period; remembers at most `max_peers` peers, and
/// beyond that (a scan from many addresses) lets one line through per period for all the
/// others together, so neither the log nor the memory grows with the scanner.
#[derive(Debug)]
pub struct PeerThrottle {
    period: Duration,
    max_peers: usize,
    last: Mutex<HashMap<Option<IpAddr>, Instant>>,
    overflow: Throttle,
}

impl PeerThrottle {
    pub fn new(period: Duration, max_peers: usize) -> Self {
        Self {
            period,
            max_peers,
            last: Mutex::new(HashMap::new()),
            overflow: Throttle::new(period),
        }
    }

    /// Whether to log a rejection of `peer` now.
    pub fn check(&self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if let Some(at) = last.get_mut(&peer) {
            if now.duration_since(*at) < self.period {
                return false;
            }
            *at = now;
            return true;
        }
        if last.len() >= self.max_peers {
            last.retain(|_, at| now.duration_since(*at) < self.period);
        }
        if last.len() >= self.max_peers {
            return self.overflow.check().is_some();
        }
        last.insert(peer, now);
        true
    }

    /// Peers remembered now (for tests).
    pub fn remembered(&self) -> usize {
        self.last.lock().map(|l| l.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        let every_time = Throttle::new(Duration::ZERO);
        assert_eq!(every_time.check(), Some(0));
        assert_eq!(every_time.check(), Some(0));
    }

    #[test]
    fn the_peer_throttle_is_per_peer_and_bounded() {
        let t = PeerThrottle::new(Duration::from_secs(3600), 2);
        let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        assert!(t.check(ip(1)));
        assert!(!t.check(ip(1)));
        assert!(t.check(ip(2)));
        // Full: the others share one line per period.
        assert!(t.check(ip(3)));
        assert!(!t.check(ip(4)));
        assert!(!t.check(ip(3)));
        assert_eq!(t.remembered(), 2);
        let every_time = PeerThrottle::new(Duration::ZERO, 1);
        assert!(every_time.check(ip(1)));
        assert!(every_time.check(ip(2)));
        assert!(every_time.check(ip(1)));
        assert_eq!(every_time.remembered(), 1);
    }
}
