//! Making room for a new reservation: the limits in all and per host, and who gives way.
//!
//! A host may hold up to its share whenever there is room. Beyond it, a host may take only
//! room that leaves one share free, so a newcomer always finds a share's worth at once: a
//! client refused busy does not wait for room, it fails. And what a host holds beyond its
//! share is on loan: once another host has filled the share left free, a host within its
//! share takes it back. When a reservation does not fit, unclaimed sessions past the claim
//! grace give way first (they may be spoofed), oldest first; then claimed sessions moving
//! slower than the progress floor (see `reclaim`), those of hosts over their share first;
//! then, however fast they move, the sessions hosts hold beyond their share, the youngest
//! of the host most over its share first. Claimed sessions give way only for a host within
//! its share: a host over its share takes nobody's session. Nothing is dropped unless
//! dropping makes room.

use std::net::SocketAddr;
use std::time::Instant;

use mboard_protocol::SessionId;

use super::hosts::HostKey;
use super::{SessionError, SessionManager};

/// What a reservation needs room for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    /// The host it is for.
    pub(super) host: HostKey,
    /// Bytes it reserves.
    pub(super) bytes: u64,
    /// Whether it needs a new entry in the session table.
    pub(super) slot: bool,
    /// Whether the bytes are taken now. An `a:` only checks that they could be: its first
    /// block takes them, once the owner has shown it receives our datagrams, so an open
    /// (which may be spoofed) never makes anyone give way for memory it does not hold.
    pub(super) take_bytes: bool,
    /// The session the room is for: it never gives way to itself.
    pub(super) requester: Option<SessionId>,
}

/// What is missing for a reservation to fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Shortfall {
    pub(super) bytes: u64,
    pub(super) slots: u64,
}

impl Shortfall {
    pub(super) fn is_met(self) -> bool {
        self.bytes == 0 && self.slots == 0
    }

    /// What is still missing once a session holding `reserved` bytes is gone.
    pub(super) fn minus(self, reserved: u64) -> Shortfall {
        Shortfall {
            bytes: self.bytes.saturating_sub(reserved),
            slots: self.slots.saturating_sub(1),
        }
    }
}

/// A request refused after a walk, and until when nothing but a change of the budget can
/// make room for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refused {
    generation: u64,
    until: Instant,
    short: Shortfall,
}

/// Stale entries of the unclaimed queue one request may step over before it is pruned.
const STALE_WALK: usize = 256;

/// Entries of the unclaimed queue one request looks at, at most.
pub(super) const EVICT_WALK: usize = 1_024;

/// The claimed sessions that give way for a reservation, in order.
#[derive(Debug, Default)]
struct Plan {
    /// Slow ones (see `reclaim`).
    slow: Vec<SessionId>,
    /// Held beyond their host's share (see [`SessionManager::recall`]).
    recalled: Vec<SessionId>,
}

/// Whether `need`'s host is over its share of each resource once the need is met.
#[derive(Debug, Clone, Copy)]
struct Over {
    memory: bool,
    sessions: bool,
}

impl SessionManager {
    /// Checks the limits for a new session of `cost` bytes, making room if need be, and
    /// picks its id. `take_bytes`: see [`Need`].
    pub(super) fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        cost: u64,
        take_bytes: bool,
    ) -> Result<SessionId, SessionError> {
        // Expire first, so idle sessions never make a live client busy.
        self.expire(now);
        let per_source = self.per_source.get(&from).copied().unwrap_or(0);
        if per_source >= self.limits.max_sessions_per_source {
            return Err(SessionError::Busy);
        }
        let need = Need {
            host: from.into(),
            bytes: cost,
            slot: true,
            take_bytes,
            requester: None,
        };
        self.make_room(now, need)?;
        Ok(self.new_sid())
    }

    /// Makes room for `need`, or refuses it as busy and drops nothing.
    ///
    /// Without this, a few spoofed requests for large replies (or `a:` opens) would hold
    /// the whole budget for a session timeout, and a host trickling a block now and then
    /// into each of its sessions would hold it for ever: every real client would be told
    /// busy.
    pub(super) fn make_room(&mut self, now: Instant, need: Need) -> Result<(), SessionError> {
        let (short, over) = self.shortfall(need);
        if short.is_met() {
            return Ok(());
        }
        // A host over its share gets no claimed session for what it is over on.
        let over_on_what_is_short =
            (short.bytes > 0 && over.memory) || (short.slots > 0 && over.sessions);
        if !over_on_what_is_short && self.refused_already(now, short) {
            return Err(SessionError::Busy);
        }
        let (reclaimable, lent) = if over_on_what_is_short {
            (Shortfall::default(), Shortfall::default())
        } else {
            (self.reclaimable(now), self.lent(need.host))
        };
        // Everything that could give way, at most: refused at once if it is not enough,
        // so that a request that cannot be helped drops nothing and walks nothing.
        let unclaimed = Shortfall {
            bytes: self.budget.unclaimed_reserved,
            slots: (self.sessions.len() - self.budget.hosts.claimed()) as u64,
        };
        let enough = short.bytes <= unclaimed.bytes + reclaimable.bytes + lent.bytes
            && short.slots <= unclaimed.slots + reclaimable.slots + lent.slots;
        // Unclaimed sessions are only picked here, and dropped once the whole plan is
        // known to make room: a request the loans cannot help drops nothing.
        let (picked, left, walked) = if enough {
            self.evictable(now, short, need.requester)
        } else {
            (Vec::new(), short, 0)
        };
        let plan = if left.is_met() {
            Some(Plan::default())
        } else if enough && !over_on_what_is_short {
            let plan = self.plan(now, left, need);
            if plan.is_none() {
                self.remember_refusal(now, need, short, walked);
            }
            plan
        } else {
            None
        };
        let Some(plan) = plan else {
            if short.bytes > 0 && over.memory {
                self.host_refusals.memory += 1;
            }
            if short.slots > 0 && over.sessions {
                self.host_refusals.sessions += 1;
            }
            return Err(SessionError::Busy);
        };
        self.give_way(now, need, short.slots, picked, plan);
        Ok(())
    }

    /// Whether a request as short as `short` was refused after a walk, with nothing
    /// changed since: no session made, claimed, grown, shrunk or gone, none past its
    /// claim grace, none turned slow. It would be refused again, after the same walk.
    ///
    /// The bounds that decide whether to walk count a host's slow sessions both as slow
    /// and as held beyond its share, so a request they let through may still find too
    /// little; without this, a flood of such requests would each walk the pool of slow
    /// sessions and the unclaimed queue, however long they are, to be refused.
    fn refused_already(&self, now: Instant, short: Shortfall) -> bool {
        self.refused.is_some_and(|r| {
            r.generation == self.budget.generation
                && now < r.until
                && short.bytes >= r.short.bytes
                && short.slots >= r.short.slots
        })
    }

    /// Remembers that `need`, as short as `short`, was refused after a walk that looked
    /// at the first `walked` entries of the unclaimed queue. Only a request that every
    /// later one can count on at most as much as: not for a session of its own (which
    /// would not give way to itself), from a host not holding room beyond its share (whose
    /// loans it could not take).
    fn remember_refusal(&mut self, now: Instant, need: Need, short: Shortfall, walked: usize) {
        #[cfg(test)]
        {
            self.walks += 1;
        }
        if need.requester.is_some() || self.budget.hosts.is_over(need.host) {
            self.refused = None;
            return;
        }
        let grace = self.limits.claim_grace;
        // The next unclaimed session to pass its grace, behind those the walk looked at
        // (picked, or passed over as freeing nothing it lacked). One past its grace already
        // lies beyond the walk's bound, where the same walk would not reach it either.
        let next_unclaimed = self
            .budget
            .unclaimed
            .iter()
            .skip(walked)
            .filter(|(_, sid)| self.sessions.get(sid).is_some_and(|s| !s.claimed))
            .map(|(created, _)| *created + grace)
            .find(|&due| due > now);
        let until = [next_unclaimed, self.reclaimer.next_due()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + self.limits.session_timeout);
        self.refused = Some(Refused {
            generation: self.budget.generation,
            until,
            short,
        });
    }

    /// The claimed sessions that give way for `left`: slow ones first, then room held on
    /// loan (see [`SessionManager::recall`]); `None` if together they would not make it
    /// up.
    fn plan(&mut self, now: Instant, left: Shortfall, need: Need) -> Option<Plan> {
        let fairness = self.limits.fairness;
        let hosts = &self.budget.hosts;
        let (slow, left) = self.reclaimer.plan(
            now,
            left,
            need.requester,
            &self.sessions,
            &fairness,
            |host| hosts.is_over(host),
        );
        if left.is_met() {
            return Some(Plan {
                slow,
                recalled: Vec::new(),
            });
        }
        let recalled = self.recall(left, need, &slow)?;
        Some(Plan { slow, recalled })
    }

    /// What reclaiming slow claimed sessions could free at most, with the pool of slow
    /// ones brought up to `now`.
    fn reclaimable(&mut self, now: Instant) -> Shortfall {
        let fairness = self.limits.fairness;
        let hosts = &self.budget.hosts;
        self.reclaimer
            .refresh(now, &self.sessions, &fairness, |host| hosts.is_over(host));
        self.reclaimer.bound()
    }

    /// Drops the sessions picked for `need`, which lacks `slots` table slots, unclaimed
    /// ones first: all of them, unless `need` takes no bytes yet and the slots are found.
    fn give_way(
        &mut self,
        now: Instant,
        need: Need,
        mut slots: u64,
        unclaimed: Vec<SessionId>,
        plan: Plan,
    ) {
        for sid in unclaimed {
            if !need.take_bytes && slots == 0 {
                // The rest was for bytes an open does not take yet (see `Need`).
                return;
            }
            self.remove(sid);
            self.evicted_total += 1;
            slots = slots.saturating_sub(1);
        }
        let slow = plan
            .slow
            .into_iter()
            .map(|sid| (sid, SessionError::Reclaimed));
        let recalled = plan
            .recalled
            .into_iter()
            .map(|sid| (sid, SessionError::Recalled));
        for (sid, why) in slow.chain(recalled) {
            if !need.take_bytes && slots == 0 {
                // The rest was for bytes an open does not take yet (see `Need`).
                break;
            }
            self.reclaim(now, sid, why);
            slots = slots.saturating_sub(1);
        }
    }

    /// What `need` lacks under the limits that apply to its host.
    fn shortfall(&self, need: Need) -> (Shortfall, Over) {
        let shares = self.budget.hosts.shares();
        let usage = self.budget.hosts.usage(need.host);
        let over = Over {
            memory: usage.reserved + need.bytes > shares.memory,
            sessions: need.slot && usage.sessions + 1 > shares.sessions,
        };
        // Beyond its share, a host may only take room that leaves one share free.
        let max_memory = self.limits.max_session_memory;
        let memory_limit = if over.memory {
            max_memory.saturating_sub(shares.memory)
        } else {
            max_memory
        };
        let max_sessions = u64::from(self.limits.max_sessions);
        let table_limit = if over.sessions {
            max_sessions.saturating_sub(u64::from(shares.sessions))
        } else {
            max_sessions
        };
        let slots = if need.slot {
            (self.sessions.len() as u64 + 1).saturating_sub(table_limit)
        } else {
            0
        };
        let short = Shortfall {
            bytes: self
                .budget
                .reserved
                .saturating_add(need.bytes)
                .saturating_sub(memory_limit),
            slots,
        };
        (short, over)
    }

    /// The unclaimed sessions past the claim grace that give way, oldest first, until
    /// `short` is made up or the next one is within the grace, what is still missing, and
    /// how many entries at the front of the queue it looked at.
    /// Drops nothing (see [`SessionManager::give_way`]) but stale entries.
    ///
    /// Looks at no more than [`EVICT_WALK`] entries: under a flood of opens the queue is
    /// thousands long, and a request short of memory walked all of it, with the sessions'
    /// lock held, for sessions that hold next to nothing. One that holds no memory is not
    /// picked when only memory is short: dropping it would free nothing that is missing.
    fn evictable(
        &mut self,
        now: Instant,
        short: Shortfall,
        requester: Option<SessionId>,
    ) -> (Vec<SessionId>, Shortfall, usize) {
        let grace = self.limits.claim_grace;
        let (mut left, mut picked, mut passed) = (short, Vec::new(), 0);
        let mut stale = 0;
        let queue = &mut self.budget.unclaimed;
        while !left.is_met() && picked.len() + passed < EVICT_WALK {
            let Some(&(created, sid)) = queue.get(picked.len() + passed) else {
                break;
            };
            match self.sessions.get(&sid) {
                Some(s) if !s.claimed && Some(sid) != requester => {
                    if created + grace > now {
                        break;
                    }
                    if left.slots == 0 && s.reserved == 0 {
                        passed += 1;
                        continue;
                    }
                    left = left.minus(s.reserved);
                    picked.push(sid);
                }
                // Claimed or gone since, or being claimed: a stale entry, dropped at once at
                // the front.
                _ if picked.is_empty() && passed == 0 => {
                    queue.pop_front();
                }
                _ => {
                    passed += 1;
                    stale += 1;
                }
            }
        }
        // Stale entries behind a picked one stay when nothing is dropped; clear them before
        // requests that are refused walk them again and again.
        let mut walked = picked.len() + passed;
        if stale > STALE_WALK {
            self.budget.prune(&self.sessions);
            // Those it looked at are that many fewer entries now.
            walked -= stale;
        }
        (picked, left, walked)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use mboard_protocol::Offer;

    use crate::config::Limits;
    use crate::session::SessionError;
    use crate::session::tests::{Sim, addr, block, unshared};

    #[test]
    fn sessions_per_source_limit() {
        let mut sim = Sim::new(Limits {
            max_sessions_per_source: 3,
            ..unshared()
        });
        let (a, b) = (addr(1000), addr(1001));
        let first = sim.open(a, 10, 10);
        sim.open(a, 10, 10);
        sim.open(a, 10, 10);
        assert_eq!(sim.reply(a, "a:10:10"), "4:busy");
        sim.open(b, 10, 10);
        // Downloads count too.
        assert_eq!(
            sim.mgr.offer(sim.now, a, Bytes::from_static(b"0:big")),
            Err(SessionError::Busy)
        );
        sim.reply(a, format!("x:{first}"));
        sim.open(a, 10, 10);
    }

    #[test]
    fn total_sessions_limit() {
        let mut sim = Sim::new(Limits {
            max_sessions: 2,
            ..unshared()
        });
        sim.open(addr(1), 10, 10);
        sim.open(addr(2), 10, 10);
        assert_eq!(sim.reply(addr(3), "a:10:10"), "4:busy");
        // Once the others have expired, there is room again without a separate sweep.
        sim.advance(Duration::from_secs(30));
        sim.open(addr(3), 10, 10);
    }

    #[test]
    fn opens_reserve_nothing_until_their_first_block() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..unshared()
        });
        // Spoofed opens: their owners never send a block, and they hold no budget.
        for port in 1..=5 {
            sim.open(addr(port), 8_000, 1_000);
        }
        assert_eq!(sim.mgr.stats().reserved, 0);
        let c = addr(100);
        let sid = sim.open(c, 8_000, 1_000);
        assert!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000]))
                .starts_with("0:")
        );
        assert_eq!(sim.mgr.stats().reserved, 8_008);
        // Another open is refused while its reservation could not fit ...
        assert_eq!(sim.reply(addr(101), "a:5000:1000"), "4:busy");
        // ... and one that fitted at its open but not at its first block is refused there,
        // unchanged, so that its block can be sent again once there is room.
        let late = sim.open(addr(102), 1_000, 1_000);
        let other = sim.open(addr(103), 1_500, 1_500);
        assert!(
            sim.reply(addr(103), block(other, 0, &[b'o'; 1_500]))
                .starts_with("0:")
        );
        assert_eq!(
            sim.reply(addr(102), block(late, 0, &[b'l'; 1_000])),
            "4:busy"
        );
        sim.reply(addr(103), format!("x:{other}"));
        assert_eq!(
            sim.reply(addr(102), block(late, 0, &[b'l'; 1_000])),
            format!("0:{late}:0:1")
        );
    }

    #[test]
    fn a_first_block_makes_room_among_unfetched_offers() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..unshared()
        });
        let c = addr(2);
        let sid = sim.open(c, 5_000, 1_000);
        // A spoofed request for a large reply: an offer nobody fetches.
        let _ = sim
            .mgr
            .offer(sim.now, addr(1), Bytes::from(vec![b'a'; 8_000]));
        assert_eq!(sim.reply(c, block(sid, 0, &[b'x'; 1_000])), "4:busy");
        sim.at(499);
        assert_eq!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000])),
            "4:busy",
            "still within the grace"
        );
        sim.at(500);
        assert_eq!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000])),
            format!("0:{sid}:0:1")
        );
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert_eq!(sim.mgr.stats().sessions, 1);
        // A claimed session is never dropped to make room as unclaimed, however old (and
        // with the progress floor off, never at all).
        sim.at(5_000);
        assert!(sim.mgr.reserve(sim.now, addr(3), 6_000).is_err());
        assert_eq!(sim.mgr.stats().evicted, 1);
    }

    #[test]
    fn unfetched_offers_make_room_but_fetched_ones_stay() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..unshared()
        });
        let (spoofed, real) = (addr(1), addr(2));
        let offer = |r: Result<Offer, SessionError>| match r {
            Ok(o) => o,
            other => panic!("not an offer: {other:?}"),
        };
        offer(
            sim.mgr
                .offer(sim.now, spoofed, Bytes::from(vec![b'a'; 6_000])),
        );
        let fetched = offer(sim.mgr.offer(sim.now, real, Bytes::from(vec![b'b'; 3_000])));
        sim.reply(real, format!("g:{}:0", fetched.sid));
        assert!(sim.mgr.reserve(sim.now, addr(3), 5_000).is_err());
        sim.at(600);
        let r = sim
            .mgr
            .reserve(sim.now, addr(3), 5_000)
            .expect("the unfetched offer makes room");
        sim.mgr.cancel(r);
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert!(
            sim.reply(real, format!("g:{}:1", fetched.sid))
                .starts_with(&format!("0:{}:1:", fetched.sid))
        );
    }

    #[test]
    fn the_session_table_makes_room_the_same_way() {
        let mut sim = Sim::new(Limits {
            max_sessions: 2,
            ..unshared()
        });
        sim.open(addr(1), 10, 10);
        let kept = sim.open(addr(2), 10, 10);
        sim.reply(addr(2), block(kept, 0, &[b'k'; 10]));
        assert_eq!(sim.reply(addr(3), "a:10:10"), "4:busy");
        sim.at(500);
        sim.open(addr(3), 10, 10);
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert_eq!(
            sim.reply(addr(4), "a:10:10"),
            "4:busy",
            "the new one is in its grace"
        );
    }

    #[test]
    fn nothing_is_dropped_when_dropping_could_not_make_room() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..unshared()
        });
        let claimed = sim.open(addr(1), 7_000, 1_000);
        sim.reply(addr(1), block(claimed, 0, &[b'c'; 1_000]));
        let unclaimed = sim.open(addr(2), 1_500, 1_500);
        sim.at(1_000);
        // 7,007 claimed + 3,000 > 10,000 even without the unclaimed session: keep it.
        assert_eq!(sim.reply(addr(3), "a:3000:1000"), "4:busy");
        assert_eq!(sim.mgr.stats().evicted, 0);
        assert!(
            sim.reply(addr(2), block(unclaimed, 0, &[b'u'; 1_500]))
                .starts_with("0:")
        );
    }

    #[test]
    fn memory_limit_counts_reservations_and_allocates_at_the_first_block() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..unshared()
        });
        let c = addr(1000);
        // 8,000 bytes in blocks of 1,000: 8 bitmap bytes on top.
        let sid = sim.open(c, 8_000, 1_000);
        assert_eq!(sim.mgr.stats().reserved, 0, "an open reserves nothing yet");
        assert_eq!(sim.mgr.stats().buffered, 0, "and allocates nothing");
        // The first block reserves, and allocates the declared size once.
        sim.reply(c, block(sid, 7, &[b'7'; 1_000]));
        assert_eq!(sim.mgr.stats().reserved, 8_008);
        assert_eq!(sim.mgr.stats().buffered, 8_000, "{:?}", sim.mgr.stats());
        assert_eq!(sim.reply(c, "a:1993:1000"), "4:busy");
        let second = sim.open(c, 1_900, 1_000);
        sim.reply(c, block(second, 0, &[b's'; 1_000]));
        assert_eq!(sim.mgr.stats().reserved, 9_916);
        sim.reply(c, block(sid, 0, &[b'0'; 1_000]));
        assert_eq!(sim.mgr.stats().buffered, 9_900, "{:?}", sim.mgr.stats());
        // A download that would not fit is refused before anything is built.
        assert!(sim.mgr.reserve(sim.now, c, 1_000).is_err());
        sim.reply(c, format!("x:{sid}"));
        let r = sim
            .mgr
            .reserve(sim.now, c, 1_000)
            .expect("room after close");
        sim.mgr.cancel(r);
        assert_eq!(sim.mgr.stats().sessions, 1);
    }

    #[test]
    fn an_upload_reserves_room_for_its_reply() {
        // A 3-byte upload whose reply may be a whole datagram: the reservation covers the
        // reply, so committing never takes the budget past its limit.
        let mut sim = Sim::new(Limits {
            max_session_memory: 2_000,
            ..unshared()
        });
        let c = addr(1000);
        let sid = sim.open(c, 3, 3);
        sim.reply(c, block(sid, 0, b"4:0"));
        assert_eq!(sim.mgr.stats().reserved, 1_472);
        assert_eq!(
            sim.reply(c, "a:3:3"),
            "4:busy",
            "a second one would not fit"
        );
        sim.commit_and_run(c, sid, b"0:big reply");
        assert_eq!(sim.mgr.stats().reserved, 11);
    }
}
