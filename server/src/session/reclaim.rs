//! Reclaiming claimed sessions that do not move, when a new one does not fit.
//!
//! A session is *slow* when it has moved fewer bytes than the progress floor asks for the
//! time since it started, after a grace: `progress < floor × (age − grace)`, as Apache's
//! `mod_reqtimeout` extends a request body's deadline by one second per `MinRate` bytes.
//! Bytes, not blocks: the client picks the block size, and counting blocks would let
//! `a:16777216:1` hold 18 MiB for one tiny datagram a second. A session that trickles a
//! 65,000-byte block every 20 s into a 16 MiB upload (3 KB/s) falls below the default
//! 8 KiB/s within 13 s; an honest upload that moves at all moves hundreds of times faster.
//!
//! Finding slow sessions takes a walk over the table, so a walk's findings are kept,
//! best first, and used until they run out; the table is walked again at most every
//! [`RESCAN`]. A reclaimed session's id is remembered for a session timeout so that its
//! owner is told `4:expired: …` rather than `unknown session`.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mboard_protocol::SessionId;

use super::compact;
use super::fairness::Fairness;
use super::hosts::HostKey;
use super::manager::{Reclaimed, Session, State};
use super::room::Shortfall;
use super::{SessionError, SessionManager};

/// The longest the table is walked for slow sessions: a walk that found too few is not
/// repeated sooner, so requests that cannot be helped cost a lookup, not a walk of up to
/// 100,000 sessions each.
pub(super) const RESCAN: Duration = Duration::from_millis(100);

/// Whether `session` moves slower than the floor at `now`.
pub(super) fn is_slow(session: &Session, now: Instant, fairness: &Fairness) -> bool {
    if fairness.progress_floor == 0
        || !session.claimed
        || matches!(session.state, State::Executing(_))
    {
        return false;
    }
    let age = now.saturating_duration_since(session.created);
    let Some(judged) = age.checked_sub(fairness.progress_grace) else {
        return false;
    };
    judged.as_secs_f64() * fairness.progress_floor as f64 > session.progress as f64
}

/// Slow sessions found, reclaimed ones remembered, and counts.
#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    /// Sessions found slow by the last walk, the best to reclaim last; possibly stale
    /// (moved, closed or gone since), which is checked before one is used.
    candidates: Vec<SessionId>,
    scanned: Option<Instant>,
    tombstones: Tombstones,
    reclaimed: Reclaimed,
}

impl Reclaimer {
    pub(super) fn reclaimed(&self) -> Reclaimed {
        self.reclaimed
    }

    /// The slow sessions (never `requester`) that would make up `short`, best first, or
    /// `None` if all of them together would not.
    ///
    /// Best first: sessions of hosts over their share (`over_share`), then the largest,
    /// then the oldest.
    pub(super) fn plan(
        &mut self,
        now: Instant,
        short: Shortfall,
        requester: Option<SessionId>,
        sessions: &HashMap<SessionId, Session>,
        fairness: &Fairness,
        over_share: impl Fn(HostKey) -> bool,
    ) -> Option<Vec<SessionId>> {
        if fairness.progress_floor == 0 {
            return None;
        }
        let slow = |sid: &SessionId| sessions.get(sid).is_some_and(|s| is_slow(s, now, fairness));
        let mut scanned = false;
        loop {
            // Reclaimed ones leave the end of the list: drop them first.
            while self.candidates.last().is_some_and(|sid| !slow(sid)) {
                self.candidates.pop();
            }
            let (mut take, mut left) = (Vec::new(), short);
            for sid in self.candidates.iter().rev() {
                if left.is_met() {
                    break;
                }
                if Some(*sid) != requester && slow(sid) {
                    left = left.minus(sessions[sid].reserved);
                    take.push(*sid);
                }
            }
            if left.is_met() {
                return Some(take);
            }
            // Every candidate was looked at: keep those still slow for later.
            self.candidates.retain(|sid| slow(sid));
            let due = self.scanned.is_none_or(|at| now >= at + RESCAN);
            if scanned || !due {
                return None;
            }
            self.scan(now, sessions, fairness, &over_share);
            scanned = true;
        }
    }

    /// Walks the table for slow sessions and orders them, the best to reclaim last.
    fn scan(
        &mut self,
        now: Instant,
        sessions: &HashMap<SessionId, Session>,
        fairness: &Fairness,
        over_share: &impl Fn(HostKey) -> bool,
    ) {
        self.scanned = Some(now);
        let mut found: Vec<_> = sessions
            .iter()
            .filter(|(_, s)| is_slow(s, now, fairness))
            .map(|(sid, s)| ((over_share(s.host), s.reserved, Reverse(s.created)), *sid))
            .collect();
        found.sort_unstable();
        self.candidates = found.into_iter().map(|(_, sid)| sid).collect();
    }

    /// Remembers that `sid`, owned by `owner`, was reclaimed at `now`, and counts it.
    pub(super) fn bury(&mut self, sid: SessionId, owner: SocketAddr, until: Instant, max: usize) {
        self.tombstones.insert(sid, owner, until, max);
    }

    pub(super) fn count(&mut self, over_share: bool) {
        if over_share {
            self.reclaimed.over_share += 1;
        } else {
            self.reclaimed.within_share += 1;
        }
    }

    /// Why `sid`, which is not in the table, is refused to `from`.
    pub(super) fn gone(&self, sid: SessionId, from: SocketAddr) -> SessionError {
        if self.tombstones.owner(sid) == Some(from) {
            SessionError::Reclaimed
        } else {
            SessionError::UnknownSession
        }
    }

    /// Forgets that `sid` was reclaimed: its owner closed it.
    pub(super) fn forget(&mut self, sid: SessionId) {
        self.tombstones.remove(sid);
    }

    #[cfg(test)]
    pub(super) fn tombstones_len(&self) -> usize {
        self.tombstones.owners.len()
    }

    /// Drops what is out of date at `now` and gives memory back.
    pub(super) fn expire(&mut self, now: Instant) {
        self.tombstones.expire(now);
        if self.candidates.is_empty() {
            compact::shrink_vec(&mut self.candidates);
        }
    }
}

/// Reclaimed sessions' ids, each with its owner, until a session timeout has passed.
#[derive(Debug, Default)]
struct Tombstones {
    owners: HashMap<SessionId, SocketAddr>,
    /// When each entry lapses, in order; possibly stale (closed by its owner).
    order: VecDeque<(Instant, SessionId)>,
}

impl Tombstones {
    fn insert(&mut self, sid: SessionId, owner: SocketAddr, until: Instant, max: usize) {
        while self.owners.len() >= max.max(1) {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.owners.remove(&old);
        }
        self.owners.insert(sid, owner);
        self.order.push_back((until, sid));
    }

    fn owner(&self, sid: SessionId) -> Option<SocketAddr> {
        self.owners.get(&sid).copied()
    }

    fn remove(&mut self, sid: SessionId) {
        self.owners.remove(&sid);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, sid)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.owners.remove(&sid);
        }
        if self.order.len() > 2 * self.owners.len() + 1024 {
            let owners = &self.owners;
            self.order.retain(|(_, sid)| owners.contains_key(sid));
        }
        compact::shrink_map(&mut self.owners);
        compact::shrink_deque(&mut self.order);
    }
}

impl SessionManager {
    /// Drops the slow session `sid` to make room, remembering it for its owner.
    pub(super) fn reclaim(&mut self, now: Instant, sid: SessionId) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let shares = super::hosts::Shares::of(&self.limits);
        let over = shares.exceeded_by(self.budget.hosts.usage(session.host));
        let owner = session.owner;
        self.remove(sid);
        let until = now + self.limits.session_timeout;
        let max = self.limits.max_sessions as usize;
        self.reclaimer.bury(sid, owner, until, max);
        self.reclaimer.count(over);
    }
}
