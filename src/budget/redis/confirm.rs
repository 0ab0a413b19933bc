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
//! `WAIT` blocks the connection it is sent on until the replicas answer, so confirmed
//! reservations get [`CONNECTIONS`] connections of their own (each a full connection to the
//! deployment: one node, or a cluster client reaching every master), taken in turn; the
//! ledger's other operations keep their shared connection and never queue behind a `WAIT`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::connection::{Conn, Target};

/// Connections for confirmed reservations. Each carries one `EVALSHA` + `WAIT` at a time (the
/// server runs a connection's commands in order, and `WAIT` holds the ones behind it); the
/// replicas answer every waiting connection with the same acknowledgement, so a few
/// connections confirm many reservations per replication round trip.
pub const CONNECTIONS: usize = 8;

/// How many replicas must hold a reservation, and the connections that ask them.
pub struct Confirmation {
    replicas: u32,
    /// `WAIT`'s own timeout in ms: half the ledger's, so that the server answers with the
    /// replicas it has (a clear "not confirmed") before the gateway's timeout gives up on it.
    wait_ms: u64,
    conns: Vec<Conn>,
    next: AtomicUsize,
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
            conns,
            next: AtomicUsize::new(0),
        }))
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The next connection, in turn.
    pub fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
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

/// Half the ledger timeout in ms, at least 1 (`WAIT … 0` would block for ever).
fn wait_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_never_blocks_for_ever_and_answers_before_the_ledger_timeout() {
        assert_eq!(wait_ms(Duration::from_millis(200)), 100);
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
        let confirm = Confirmation::new(&target, 2, Duration::from_millis(300))
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
}
