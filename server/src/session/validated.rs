//! Validated addresses: sources that proved they receive what we send them.
//!
//! An address is validated when it echoes a session id we sent it; until then the handler
//! keeps what it sends there within the amplification allowance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::SessionManager;

/// Addresses that echoed a session id, each until when it counts.
#[derive(Debug)]
pub(super) struct Validated {
    until: HashMap<SocketAddr, Instant>,
    ttl: Duration,
    max: usize,
}

impl Validated {
    /// A table of at most `max` addresses, each valid for `ttl` after its last echo.
    pub(super) fn new(ttl: Duration, max: usize) -> Self {
        Validated {
            until: HashMap::new(),
            ttl,
            max,
        }
    }

    /// Addresses held, some of which may have lapsed and await a sweep.
    pub(super) fn len(&self) -> usize {
        self.until.len()
    }

    fn contains(&self, from: SocketAddr, now: Instant) -> bool {
        self.until.get(&from).is_some_and(|&until| until > now)
    }

    /// Records that `from` echoed a session id at `now`.
    pub(super) fn insert(&mut self, from: SocketAddr, now: Instant) {
        let until = now + self.ttl;
        if let Some(slot) = self.until.get_mut(&from) {
            *slot = until;
            return;
        }
        if self.until.len() >= self.max {
            self.until.retain(|_, until| *until > now);
        }
        // A full table of live entries leaves newcomers unvalidated: they still get every
        // reply, only large ones as offers.
        if self.until.len() < self.max {
            self.until.insert(from, until);
        }
    }
}

impl SessionManager {
    /// Whether `from` has proved, recently enough, that it receives what we send it.
    pub(crate) fn is_validated(&self, from: SocketAddr, now: Instant) -> bool {
        self.validated.contains(from, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Limits;
    use crate::session::tests::{Sim, addr};

    #[test]
    fn echoing_a_session_id_validates_the_address_for_a_while() {
        let limits = Limits {
            validation_ttl: Duration::from_secs(10),
            max_validated: 2,
            ..Limits::default()
        };
        let mut sim = Sim::new(limits);
        let (owner, other) = (addr(1000), addr(1001));
        let sid = sim.open(owner, 10, 10);
        assert!(
            !sim.mgr.is_validated(owner, sim.now),
            "an open alone proves nothing"
        );
        sim.reply(other, format!("c:{sid}"));
        assert!(
            !sim.mgr.is_validated(other, sim.now),
            "a foreign echo proves nothing"
        );
        sim.reply(owner, format!("c:{sid}"));
        assert!(sim.mgr.is_validated(owner, sim.now));
        sim.advance(Duration::from_millis(9_999));
        assert!(sim.mgr.is_validated(owner, sim.now));
        sim.advance(Duration::from_millis(1));
        assert!(!sim.mgr.is_validated(owner, sim.now), "validation lapses");
        // The table is bounded: a third live address is not remembered.
        for (i, port) in [2000u16, 2001, 2002].into_iter().enumerate() {
            let a = addr(port);
            let sid = sim.open(a, 10, 10);
            sim.reply(a, format!("x:{sid}"));
            assert_eq!(sim.mgr.is_validated(a, sim.now), i < 2, "address {i}");
        }
        assert!(sim.mgr.validated.len() <= 2);
        // Once entries lapse, there is room again.
        sim.advance(Duration::from_secs(10));
        let a = addr(2003);
        let sid = sim.open(a, 10, 10);
        sim.reply(a, format!("x:{sid}"));
        assert!(sim.mgr.is_validated(a, sim.now));
    }
}
