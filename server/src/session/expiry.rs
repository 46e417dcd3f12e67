//! The deadline heap: when a session may have been idle for the session timeout.
//!
//! Activity only moves `last_seen`; the heap is not touched per datagram. An entry that
//! comes due is checked against its session and pushed again at the real deadline, so a
//! busy session costs one heap operation per timeout rather than one per datagram.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use mboard_protocol::SessionId;

use super::SessionManager;
use super::compact;
use super::manager::Session;

/// Deadlines, possibly stale: an entry is checked against the session when it comes due.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, SessionId)>>,
}

impl Deadlines {
    /// Schedules a new session `sid` to be checked `timeout` after `now`.
    pub(super) fn schedule(
        &mut self,
        sid: SessionId,
        now: Instant,
        timeout: Duration,
        sessions: &HashMap<SessionId, Session>,
    ) {
        self.heap.push(Reverse((now + timeout, sid)));
        // Closed sessions leave stale heap entries; rebuild before they outnumber live ones.
        if self.heap.len() > 2 * sessions.len() + 1024 {
            self.heap = sessions
                .iter()
                .map(|(sid, s)| Reverse((s.last_seen + timeout, *sid)))
                .collect();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.heap.capacity()
    }
}

impl SessionManager {
    /// Drops every session idle for the timeout or longer at `now`; returns how many.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.session_timeout;
        let mut expired = 0;
        while let Some(&Reverse((deadline, sid))) = self.expiry.heap.peek() {
            if deadline > now {
                break;
            }
            self.expiry.heap.pop();
            let Some(session) = self.sessions.get(&sid) else {
                continue;
            };
            let real = session.last_seen + timeout;
            if real <= now {
                self.remove(sid);
                expired += 1;
                self.expired_total += 1;
            } else {
                self.expiry.heap.push(Reverse((real, sid)));
            }
        }
        self.reclaimer.expire(now, &self.sessions);
        if expired > 0 {
            self.compact();
        }
        expired
    }

    /// Shrinks the tables that a crowd of sessions grew, once it has gone.
    fn compact(&mut self) {
        compact::shrink_map(&mut self.sessions);
        compact::shrink_map(&mut self.per_source);
        compact::shrink_heap(&mut self.expiry.heap);
        self.budget.shrink(&self.sessions);
    }

    /// The earliest instant at which [`SessionManager::expire`] may have work.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiry
            .heap
            .peek()
            .map(|Reverse((deadline, _))| *deadline)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Limits;
    use crate::session::Stats;
    use crate::session::tests::{Sim, addr, block};

    #[test]
    fn idle_sessions_expire_and_free_memory() {
        let mut sim = Sim::new(Limits {
            session_timeout: Duration::from_secs(1),
            ..Limits::default()
        });
        let c = addr(1000);
        let idle = sim.open(c, 100, 10);
        let busy = sim.open(c, 100, 10);
        assert_eq!(sim.mgr.next_expiry(), Some(sim.t0 + Duration::from_secs(1)));
        sim.at(900);
        sim.reply(c, block(busy, 0, &[b'x'; 10]));
        sim.at(999);
        assert_eq!(sim.mgr.expire(sim.now), 0);
        sim.at(1000);
        assert_eq!(sim.mgr.expire(sim.now), 1);
        assert_eq!(sim.reply(c, format!("c:{idle}")), "4:unknown session");
        assert_eq!(sim.reply(c, format!("x:{idle}")), "0:");
        assert_eq!(sim.mgr.stats().sessions, 1);
        sim.at(1899);
        assert_eq!(sim.mgr.expire(sim.now), 0);
        sim.at(1900);
        assert_eq!(sim.mgr.expire(sim.now), 1);
        let after = Stats {
            validated: 1,
            expired: 2,
            ..Stats::default()
        };
        assert_eq!(sim.mgr.stats(), after);
        assert_eq!(sim.mgr.next_expiry(), None);
    }

    #[test]
    fn stale_expiry_entries_do_not_pile_up() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1);
        for _ in 0..10_000 {
            let sid = sim.open(c, 5, 5);
            sim.reply(c, format!("x:{sid}"));
        }
        assert!(sim.mgr.expiry.len() <= 1024 + 2, "{}", sim.mgr.expiry.len());
    }
}
