//! Making room for a new reservation: the limits in all and per host, and who gives way.
//!
//! A host may hold up to its share whenever there is room. Beyond it, a host may take only
//! room that leaves one share free, so a newcomer always finds a share's worth at once: a
//! client refused busy does not wait for room, it fails. And what a host holds beyond its
//! share is on loan: once another host has filled the share left free, a host within its
//! share takes it back. When a reservation does not fit, unclaimed sessions past the claim
//! grace give way first (they may be spoofed), oldest first (see `unclaimed`); then claimed sessions moving
//! slower than the progress floor (see `reclaim`), those of hosts over their share first;
//! then, however fast they move, the sessions hosts hold beyond their share, the youngest
//! of the host most over its share first. Claimed sessions give way only for a host within
//! its share: a host over its share takes nobody's session. Nothing is dropped unless
//! dropping makes room.

use std::net::SocketAddr;
use std::time::Instant;

use mboard_protocol::SessionId;

use super::hosts::HostKey;
use super::unclaimed::{Ask, Walk, Walked};
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
        let Walk {
            picked,
            left,
            walked,
        } = if enough {
            self.walk(now, short, need)
        } else {
            Walk {
                left: short,
                ..Walk::default()
            }
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

    /// The unclaimed sessions that give way for `need`, short of `short`.
    fn walk(&mut self, now: Instant, short: Shortfall, need: Need) -> Walk {
        self.budget.unclaimed.walk(&Ask {
            sessions: &self.sessions,
            now,
            grace: self.limits.claim_grace,
            short,
            requester: need.requester,
        })
    }

    /// Whether a request short of the same things as one refused after a walk, and of
    /// as much at least, would be refused again, with nothing changed since: no session
    /// made, claimed, grown, shrunk or gone, none past its claim grace, none turned slow.
    ///
    /// The bounds that decide whether to walk count a host's slow sessions both as slow
    /// and as held beyond its share, so a request they let through may still find too
    /// little; without this, a flood of such requests would each walk the pool of slow
    /// sessions and the unclaimed queue, however long they are, to be refused.
    fn refused_already(&self, now: Instant, short: Shortfall) -> bool {
        // Short of the same things, or a request short of more would find other help:
        // which hosts lend depends on what is short (see `loans`).
        let same = |a: u64, b: u64| (a > 0) == (b > 0);
        self.refused.is_some_and(|r| {
            r.generation == self.budget.generation
                && now < r.until
                && same(short.bytes, r.short.bytes)
                && same(short.slots, r.short.slots)
                && short.bytes >= r.short.bytes
                && short.slots >= r.short.slots
        })
    }

    /// Remembers that `need`, as short as `short`, was refused after a walk that looked
    /// as far as `walked` into the unclaimed queues. Only a request that every
    /// later one can count on at most as much as: not for a session of its own (which
    /// would not give way to itself), from a host not holding room beyond its share (whose
    /// loans it could not take).
    fn remember_refusal(&mut self, now: Instant, need: Need, short: Shortfall, walked: Walked) {
        #[cfg(test)]
        {
            self.walks += 1;
        }
        if need.requester.is_some() || self.budget.hosts.is_over(need.host) {
            self.refused = None;
            return;
        }
        let next_unclaimed = self.budget.unclaimed.next_due(
            walked,
            short.slots > 0,
            &self.sessions,
            self.limits.claim_grace,
            now,
        );
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
}
