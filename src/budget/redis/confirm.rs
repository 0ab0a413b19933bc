//! Reservations confirmed by replicas (`VRA_LEDGER_MIN_REPLICAS`).
//!
//! Redis replicates asynchronously: a master that acknowledged a reservation and died before
//! its replica copied it takes that unit with it, and the promoted replica lets the report spend
//! the unit again. With `VRA_LEDGER_MIN_REPLICAS=n`, a reservation is sent together with
//! `WAIT n timeout` — a pipeline of the two commands, so they travel back to back on one
//! connection and `WAIT` covers exactly the writes sent before it on that connection — and a
//! grant counts only when `n` replicas have acknowledged it. A grant they do not confirm in
//! time fails safe (the unit stays taken; the call falls back with `LEDGER_UNAVAILABLE`).
//!
//! Only reservations wait. A refusal is safe whether or not it survives a failover, and a
//! record that a failover loses leaves its confirmed hold behind, which then expires as an
//! abandoned charge of its worst case: the cap can only get stricter.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer (Redis reads nothing
//! more from it meanwhile), so confirmed reservations get [`CONNECTIONS`] connections of their
//! own — each a full connection to the deployment: one node, or a cluster client reaching every
//! master — each leased to one reservation at a time ([`Confirmation::lease`]). A reservation
//! that finds none free waits in the gateway, not on Redis: if the ledger timeout passes first
//! it fails safe having sent nothing (no unit taken), instead of queueing behind a `WAIT` that
//! a slow replica holds up. The ledger's other operations keep their shared connection and
//! never wait for a replica.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::connection::{Conn, Target};

/// Connections for confirmed reservations, each carrying one `EVALSHA` + `WAIT` at a time. The
/// replicas answer every waiting connection with the same acknowledgement, so a few
/// connections confirm many reservations per replication round trip.
pub const CONNECTIONS: usize = 8;

/// How many replicas must hold a reservation, and the connections that ask them.
pub struct Confirmation {
    replicas: u32,
    /// `WAIT`'s own timeout in ms: a third of the ledger's, so that the server answers with the
    /// replicas it has (a clear "not confirmed") before the gateway gives up, even when a
    /// script unknown to the server (`NOSCRIPT`) costs the request a second round.
    wait_ms: u64,
    /// The connections not leased right now; `permits` counts them.
    free: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

/// One connection of a [`Confirmation`], returned when dropped.
pub struct Lease<'a> {
    conn: Option<Conn>,
    free: &'a Mutex<Vec<Conn>>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    pub fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}

impl Confirmation {
    /// `None` for `replicas == 0` (grants need no confirmation).
    pub fn new(
        target: &Target,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Option<Confirmation>, String> {
        if replicas == 0 {
            return Ok(None);
        }
        let conns = (0..CONNECTIONS)
            .map(|_| target.connect(timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Confirmation {
            replicas,
            wait_ms: wait_ms(timeout),
            free: Mutex::new(conns),
            permits: Semaphore::new(CONNECTIONS),
        }))
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// A free connection, waiting for one if all are leased; `None` only if the semaphore was
    /// closed, which nothing does.
    pub async fn lease(&self) -> Option<Lease<'_>> {
        let permit = self.permits.acquire().await.ok()?;
        let conn = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()?;
        Some(Lease {
            conn: Some(conn),
            free: &self.free,
            _permit: permit,
        })
    }

    /// `cmd` followed by `WAIT replicas timeout`, as one pipeline: on a cluster it goes to the
    /// master of `cmd`'s keys (`WAIT` has none).
    pub fn pipeline(&self, cmd: redis::Cmd) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.wait_ms);
        pipe
    }
}

/// A third of the ledger timeout in ms, at least 1 (`WAIT … 0` would block for ever).
fn wait_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / 3)
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[test]
    fn wait_never_blocks_for_ever_and_answers_before_the_ledger_timeout() {
        assert_eq!(wait_ms(Duration::from_millis(200)), 66);
        assert_eq!(wait_ms(Duration::from_millis(1)), 1);
        assert_eq!(wait_ms(Duration::ZERO), 1);
    }

    #[test]
    fn no_replicas_asked_means_no_confirmation() {
        let target = Target::parse("redis://127.0.0.1:1").unwrap();
        assert!(
            Confirmation::new(&target, 0, Duration::from_millis(10))
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_reservation_and_its_wait_travel_as_one_pipeline() {
        let target = Target::parse("redis://127.0.0.1:1").unwrap();
        let confirm = Confirmation::new(&target, 2, Duration::from_millis(450))
            .unwrap()
            .unwrap();
        assert_eq!(confirm.replicas(), 2);
        let packed = confirm
            .pipeline(redis::cmd("EVALSHA"))
            .get_packed_pipeline();
        let text = String::from_utf8_lossy(&packed);
        assert!(
            text.contains("EVALSHA") && text.ends_with("$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n150\r\n"),
            "{text:?}"
        );
    }

    #[tokio::test]
    async fn each_connection_carries_one_reservation_at_a_time() {
        let target = Target::parse("redis://127.0.0.1:1").unwrap();
        let confirm = Confirmation::new(&target, 1, Duration::from_millis(300))
            .unwrap()
            .unwrap();
        let mut leases = Vec::new();
        for _ in 0..CONNECTIONS {
            leases.push(confirm.lease().await.expect("a free connection"));
        }
        let next = confirm.lease();
        tokio::pin!(next);
        assert!(
            next.as_mut().now_or_never().is_none(),
            "all leased: the next reservation waits in the gateway"
        );
        leases.pop();
        assert!(
            next.await.is_some(),
            "a returned connection is leased again"
        );
    }
}
