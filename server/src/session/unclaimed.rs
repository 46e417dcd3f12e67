//! The queue of unclaimed sessions, the first to give way when the server is full.
//!
//! It is two queues, oldest first: sessions that hold memory (offers nobody fetched) and
//! sessions that hold none (opens before their first block). An unclaimed session's
//! reservation does not change until it is claimed, so a session stays in the queue it
//! joined. A request short of memory only walks the first: otherwise a crowd of opens,
//! which cost a spoofer nothing, would stand in front of every offer that could give way,
//! and the bound on a walk would stop it before it reached them. A request short of table
//! slots takes the oldest of both, since any session frees a slot.
//!
//! Entries go stale (claimed or gone since); that is checked when one is looked at.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mboard_protocol::SessionId;

use super::compact;
use super::manager::Session;
use super::room::Shortfall;

/// Entries of the queues one request looks at, at most.
pub(super) const EVICT_WALK: usize = 1_024;

/// Stale entries one request may step over before the queues are pruned.
const STALE_WALK: usize = 256;

/// How far into each queue a walk looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Walked {
    pub(super) holding: usize,
    pub(super) empty: usize,
}

/// What a walk found: the sessions to drop, oldest first, what they leave missing, and
/// how far it looked.
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub(super) picked: Vec<SessionId>,
    pub(super) left: Shortfall,
    pub(super) walked: Walked,
}

/// What the walk needs to know of the manager.
pub(super) struct Ask<'a> {
    pub(super) sessions: &'a HashMap<SessionId, Session>,
    pub(super) now: Instant,
    pub(super) grace: Duration,
    pub(super) short: Shortfall,
    /// The session the room is made for, which never gives way to itself.
    pub(super) requester: Option<SessionId>,
}

/// Unclaimed sessions, with when they were created, in the two queues; each queue's
/// instants never go back.
#[derive(Debug, Default)]
pub(super) struct Unclaimed {
    holding: VecDeque<(Instant, SessionId)>,
    empty: VecDeque<(Instant, SessionId)>,
}

impl Unclaimed {
    /// Queues a new session created at `now`, reserving `cost` bytes.
    pub(super) fn push(&mut self, now: Instant, sid: SessionId, cost: u64) {
        let queue = if cost > 0 {
            &mut self.holding
        } else {
            &mut self.empty
        };
        // A reply built off the loop is offered at the instant its request arrived, after
        // later ones: queued no earlier than the last, it is young a few milliseconds
        // longer, and the queue stays in order for the walk and `next_due`.
        let at = queue.back().map_or(now, |&(last, _)| last.max(now));
        queue.push_back((at, sid));
    }

    /// Entries in both, stale ones too.
    pub(super) fn len(&self) -> usize {
        self.holding.len() + self.empty.len()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.holding.capacity() + self.empty.capacity()
    }

    /// Drops the stale entries.
    pub(super) fn prune(&mut self, sessions: &HashMap<SessionId, Session>) {
        let live = |(_, sid): &(Instant, SessionId)| sessions.get(sid).is_some_and(|s| !s.claimed);
        self.holding.retain(live);
        self.empty.retain(live);
    }

    /// Gives memory back after a crowd of sessions has left.
    pub(super) fn shrink(&mut self) {
        compact::shrink_deque(&mut self.holding);
        compact::shrink_deque(&mut self.empty);
    }

    /// The unclaimed sessions past the grace that give way for `ask.short`, oldest first,
    /// until it is made up, the next one is within the grace, or [`EVICT_WALK`] entries
    /// were looked at. Drops nothing but stale entries.
    pub(super) fn walk(&mut self, ask: &Ask<'_>) -> Walk {
        match self.walk_once(ask) {
            Some(walk) => walk,
            // Stale entries behind a picked one stay when nothing is dropped. Cleared, they
            // neither use up the bound nor make the next request walk further than this
            // one, which a refusal remembered relies on.
            None => {
                self.prune(ask.sessions);
                self.walk_once(ask).unwrap_or_default()
            }
        }
    }

    /// One walk; `None` once it has stepped over more than [`STALE_WALK`] stale entries.
    fn walk_once(&mut self, ask: &Ask<'_>) -> Option<Walk> {
        let mut walk = Walk {
            left: ask.short,
            ..Walk::default()
        };
        let (mut stale, mut looked) = (0, 0);
        while !walk.left.is_met() && looked < EVICT_WALK {
            // Opens free only slots: they are looked at only while slots are missing.
            let slots = walk.left.slots > 0;
            let Some((empty, created, sid)) = self.next(walk.walked, slots) else {
                break;
            };
            let at = if empty {
                &mut walk.walked.empty
            } else {
                &mut walk.walked.holding
            };
            match ask.sessions.get(&sid) {
                Some(s) if !s.claimed && Some(sid) != ask.requester => {
                    if created + ask.grace > ask.now {
                        break;
                    }
                    walk.left = walk.left.minus(s.reserved);
                    walk.picked.push(sid);
                }
                // Claimed or gone since, or being claimed: a stale entry, dropped at once at
                // the front.
                _ if *at == 0 => {
                    let queue = if empty {
                        &mut self.empty
                    } else {
                        &mut self.holding
                    };
                    queue.pop_front();
                    continue;
                }
                _ => {
                    stale += 1;
                    if stale > STALE_WALK {
                        return None;
                    }
                }
            }
            *at += 1;
            looked += 1;
        }
        Some(walk)
    }

    /// The older of the two queues' next entries past `walked` (opens only if `slots`),
    /// and whether it is an open's.
    fn next(&self, walked: Walked, slots: bool) -> Option<(bool, Instant, SessionId)> {
        let holding = self.holding.get(walked.holding);
        let empty = if slots {
            self.empty.get(walked.empty)
        } else {
            None
        };
        match (holding, empty) {
            (Some(&(h, _)), Some(&(e, es))) if e < h => Some((true, e, es)),
            (Some(&(h, hs)), _) => Some((false, h, hs)),
            (None, Some(&(e, es))) => Some((true, e, es)),
            (None, None) => None,
        }
    }

    /// When the next unclaimed session behind those a walk looked at passes its grace:
    /// the earliest after `now`, among opens too if `slots` were short. One past its grace
    /// already lies beyond the walk's bound, where the same walk would not reach it either.
    pub(super) fn next_due(
        &self,
        walked: Walked,
        slots: bool,
        sessions: &HashMap<SessionId, Session>,
        grace: Duration,
        now: Instant,
    ) -> Option<Instant> {
        let due = |queue: &VecDeque<(Instant, SessionId)>, walked: usize| {
            // The queue is in order: skip those past their grace without looking at them.
            let young = queue.partition_point(|&(created, _)| created + grace <= now);
            queue
                .range(young.max(walked).min(queue.len())..)
                .find(|(_, sid)| sessions.get(sid).is_some_and(|s| !s.claimed))
                .map(|&(created, _)| created + grace)
        };
        let empty = slots.then(|| due(&self.empty, walked.empty)).flatten();
        [due(&self.holding, walked.holding), empty]
            .into_iter()
            .flatten()
            .min()
    }

    /// Every unclaimed session in `sessions` is queued once, in the queue its reservation
    /// says, and each queue is in order.
    #[cfg(test)]
    pub(super) fn check(&self, sessions: &HashMap<SessionId, Session>) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (queue, holds) in [(&self.holding, true), (&self.empty, false)] {
            if !queue
                .iter()
                .zip(queue.iter().skip(1))
                .all(|(a, b)| a.0 <= b.0)
            {
                return Err(format!("out of order (holding: {holds})"));
            }
            for (_, sid) in queue {
                let Some(s) = sessions.get(sid).filter(|s| !s.claimed) else {
                    continue;
                };
                if (s.reserved > 0) != holds || !seen.insert(*sid) {
                    return Err(format!("{sid} misqueued (holding: {holds})"));
                }
            }
        }
        let unclaimed = sessions.values().filter(|s| !s.claimed).count();
        if seen.len() != unclaimed {
            return Err(format!("{} queued of {unclaimed} unclaimed", seen.len()));
        }
        Ok(())
    }
}
